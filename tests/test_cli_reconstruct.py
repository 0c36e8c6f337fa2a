"""`textebm reconstruct`, in-process through `textebm.cli.main`: text and JSON output, a held-out
split or a file, determinism, and bad input refused with exit status 2 and one line."""

from __future__ import annotations

import json
import shutil

import pytest


@pytest.fixture
def sentences_file(tmp_path, short_lines):
    path = tmp_path / "in.txt"
    path.write_text("\n".join(short_lines[:6]) + "\n\n", encoding="utf-8")  # a blank line, skipped
    return path


def test_json_is_one_object_with_every_sentence(cli, trained_run, sentences_file, short_lines):
    status, out, err = cli("reconstruct", "--checkpoint", trained_run, "--input", sentences_file, "--json",
                           "--seed", "3", "--device", "cpu")
    assert status == 0, err
    report = json.loads(out)  # the whole of stdout
    assert report["source"] == str(sentences_file) and report["step"] == 20
    assert report["num_sentences"] == 6 and len(report["sentences"]) == 6
    for row, line in zip(report["sentences"], short_lines[:6]):  # the input through the run's vocabulary
        seen = row["input"].split()
        assert len(seen) == len(line.split())
        assert all(a == b for a, b in zip(seen, line.split()) if a != "<unk>")
    for key in ("bleu", "baseline_bleu"):
        assert 0.0 <= report[key] <= 100.0
    assert report["exact_match"] == sum(r["exact"] for r in report["sentences"]) / 6
    assert report["bleu_above_baseline"] == pytest.approx(report["bleu"] - report["baseline_bleu"])
    assert "from prior samples" in report["comparison"]
    assert report["inference"] == "the posterior chain (3 Langevin steps from noise)"
    _, again, _ = cli("reconstruct", "--checkpoint", trained_run, "--input", sentences_file, "--json", "--seed", "3")
    assert {k: v for k, v in json.loads(again).items() if k != "seconds"} == \
        {k: v for k, v in report.items() if k != "seconds"}


def test_text_output_says_how_the_two_compare(cli, trained_run, sentences_file):
    status, out, err = cli("reconstruct", "--checkpoint", trained_run, "--input", sentences_file, "--examples", "2",
                           "--chains", "2", "--max-sentences", "4")
    assert status == 0, err
    assert "4 sentences of" in out and "mean of 2 samples" in out
    assert out.count("  input ") == 2 and out.count("  reconstruction ") == 2
    assert "BLEU (0-100)" in out and "prior-sample baseline" in out
    assert "from prior samples" in out.splitlines()[-1]


def test_a_split_of_the_runs_corpus(cli, trained_run, tmp_path, data_folder):
    """A run whose config names PTB reads its held-out split from the data folder."""
    data_dir = data_folder(ptb="train valid test")
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = json.loads((run / "config.json").read_text())
    config["corpus"] = "ptb"
    (run / "config.json").write_text(json.dumps(config))
    status, out, err = cli("reconstruct", "--checkpoint", run, "--split", "valid", "--data-dir", data_dir,
                           "--max-sentences", "5", "--json")
    assert status == 0, err
    report = json.loads(out)
    assert report["source"] == "ptb valid" and report["num_sentences"] == 5


def test_a_run_on_one_text_file_reconstructs_its_held_out_lines(cli, trained_run):
    # the run trained on a single file: its last 5% (20 of 400 lines) held out, reached as --split valid
    status, out, err = cli("reconstruct", "--checkpoint", trained_run, "--split", "valid", "--max-sentences", "3",
                           "--json")
    assert status == 0, err
    report = json.loads(out)
    assert report["source"].endswith("small.txt last 20 lines of train (held out)") and report["num_sentences"] == 3


@pytest.fixture(scope="module")
def language_model_run(tmp_path_factory, train_args):
    """A tiny run trained with prior=none: no latent, nothing to reconstruct from."""
    from textebm.cli import main

    folder = tmp_path_factory.mktemp("lm") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TEXTEBM_OFFLINE", "1")
        assert main(train_args("--out", str(folder), "--max-steps", "2", overrides=["prior=none"])) == 0
    return folder


def test_bad_input_exits_2_with_one_line(cli, trained_run, tmp_path, sentences_file, language_model_run,
                                         one_line_error):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    cases = [
        (["--checkpoint", tmp_path / "missing", "--input", sentences_file], "does not exist"),
        (["--checkpoint", trained_run, "--input", empty], "no sentences"),
        (["--checkpoint", trained_run, "--input", tmp_path / "nope.txt"], "does not exist"),
        (["--checkpoint", language_model_run, "--input", sentences_file], "prior=none"),
        (["--checkpoint", trained_run, "--split", "test"], "no test split"),  # a run on one user file
        (["--checkpoint", trained_run, "--input", sentences_file, "--chains", "0"], "--chains"),
        (["--checkpoint", trained_run, "--input", sentences_file, "--max-sentences", "0"], "--max-sentences"),
        (["--checkpoint", trained_run, "--input", sentences_file, "--posterior-steps", "-1"], "--posterior-steps"),
        (["--checkpoint", trained_run, "--input", sentences_file, "--posterior-steps", "1000000000000"],
         "--posterior-steps must be from 0 to 100000"),  # 10**12 steps: a MemoryError traceback
        (["--checkpoint", trained_run, "--input", sentences_file, "--chains", "100000000000"],
         "--chains must be from 1 to 10000"),
    ]
    for argv, fragment in cases:
        status, out, err = cli("reconstruct", *argv)
        one_line_error(status, err, "reconstruct", fragment)
        assert out == ""


def test_split_and_input_together_is_a_usage_error(cli, trained_run, sentences_file):
    status, _, err = cli("reconstruct", "--checkpoint", trained_run, "--split", "test", "--input", sentences_file)
    assert status == 2 and "not allowed with argument" in err
