"""`textebm chain`, `textebm interpolate`, `textebm score`: run in-process through their own parser
(the same protocol as textebm.cli.main: UserError -> one line on stderr, exit status 2)."""

from __future__ import annotations

import json
import os
import random

import pytest

from textebm.generation.interpolation import sentence_codes

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TRAINED = [
    "the company said it expects to report a loss",
    "stocks fell sharply in heavy trading yesterday",
    "the bank raised its prime rate to N N",
    "investors are worried about the economy",
]


@pytest.fixture
def analysis(capsys):
    """Invoke one of the three analysis commands through `textebm`: returns (status, stdout, stderr)."""
    from textebm.cli import main

    def invoke(*argv):
        capsys.readouterr()
        status = main([str(a) for a in argv])
        out, err = capsys.readouterr()
        return status, out, err

    return invoke


@pytest.fixture(scope="module")
def memorised_run(tmp_path_factory, tiny_overrides):
    """A tiny run trained on four sentences repeated: its decoder has learnt to reproduce them."""
    from textebm.cli import main

    folder = tmp_path_factory.mktemp("memorised")
    corpus = folder / "four.txt"
    corpus.write_text("\n".join(TRAINED * 40) + "\n", encoding="utf-8")
    sets = []
    for item in tiny_overrides + ["checkpoint_every=1000"]:
        sets += ["--set", item]
    previous = os.environ.get("TEXTEBM_OFFLINE")
    os.environ["TEXTEBM_OFFLINE"] = "1"
    try:
        status = main(["train", "--corpus", str(corpus), "--out", str(folder / "run"), "--preset", "cpu", *sets,
                       "--device", "cpu", "--threads", "1", "--no-progress", "--max-steps", "120", "--seed", "0"])
    finally:
        if previous is None:
            os.environ.pop("TEXTEBM_OFFLINE", None)
        else:
            os.environ["TEXTEBM_OFFLINE"] = previous
    assert status == 0
    return folder / "run"


# ---- chain -------------------------------------------------------------------------------------

def test_chain_prints_the_chosen_steps_and_writes_a_png(analysis, trained_run, tmp_path):
    png = tmp_path / "plots" / "chain.png"
    status, out, err = analysis("chain", "--checkpoint", trained_run, "--steps", "0,3,6", "--chains", "2",
                                "--max-length", "8", "--plot", png, "--device", "cpu")
    assert status == 0, err
    assert out.count("chain ") == 2
    for step in (0, 3, 6):
        assert out.count(f"step {step:>4}") == 2
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert not list(png.parent.glob("*.tmp"))


def test_chain_json_has_a_profile_per_step_and_step_0_decodes_the_initial_z(analysis, trained_run):
    import torch

    from textebm.generation.decoding import decode
    from textebm.model.runs import load_run

    status, out, _ = analysis("chain", "--checkpoint", trained_run, "--steps", "0", "--chains", "3",
                              "--max-length", "10", "--seed", "7", "--json", "--device", "cpu")
    assert status == 0
    result = json.loads(out)
    assert result["steps"] == [0]
    loaded = load_run(trained_run)
    model, vocab = loaded.model, loaded.vocab
    z0 = model.prior.sigma * torch.randn(3, model.prior.latent_dim, generator=torch.Generator().manual_seed(7))
    expected = [vocab.decode(row) for row in decode(model.decoder, z0, model.bos_id, model.eos_id, 10, True).tolist()]
    assert [c["sentences"]["0"] for c in result["chains"]] == expected
    assert all(len(c["energy"]) == 1 and len(c["log_density"]) == 1 for c in result["chains"])

    status, out, _ = analysis("chain", "--checkpoint", trained_run, "--steps", "5,2", "--chains", "1", "--json")
    profile = json.loads(out)["chains"][0]
    assert len(profile["energy"]) == 6 and set(profile["sentences"]) == {"2", "5"}


@pytest.mark.parametrize("noise", ["1", "0"])
def test_chain_runs_the_chain_of_prior_sample_with_the_runs_noise_scale(analysis, trained_run, noise):
    # the chain ran with noise 1 whatever the run's prior_noise, unlike model.prior_sample, which docs name
    import torch

    from textebm.model.runs import load_run

    status, out, err = analysis("chain", "--checkpoint", trained_run, "--steps", "6", "--chains", "2", "--seed", "3",
                                "--set", f"prior_noise={noise}", "--json", "--device", "cpu")
    assert status == 0, err
    result = json.loads(out)
    loaded = load_run(trained_run, chain_overrides=[f"prior_noise={noise}"])
    trajectory: list = []
    loaded.model.prior_sample(2, steps=6, generator=torch.Generator().manual_seed(3), trajectory=trajectory)
    with torch.no_grad():
        energies = loaded.model.prior.energy(torch.stack(trajectory).flatten(0, 1)).view(7, 2).T
    assert result["noise_scale"] == float(noise)
    torch.testing.assert_close(torch.tensor([c["energy"] for c in result["chains"]]), energies, rtol=0, atol=1e-6)


@pytest.mark.parametrize("steps", ["a,b", "-1,3", "", "1,,2"])
def test_chain_bad_steps_exit_2_with_one_line(analysis, trained_run, one_line_error, steps):
    status, _, err = analysis("chain", "--checkpoint", trained_run, f"--steps={steps}")
    one_line_error(status, err, "chain", "--steps")


@pytest.mark.parametrize("extra, fragment", [
    (["--steps", "0,100001"], "--steps goes up to 100000, not 100001"),
    (["--chains", "0"], "--chains must be from 1 to 10000, not 0"),
    (["--chains", "100000000000"], "--chains must be from 1 to 10000, not 100000000000"),  # out of memory
    (["--max-length", "0"], "--max-length must be from 1 to 2000, not 0"),
    (["--max-length", "100000000"], "--max-length must be from 1 to 2000, not 100000000"),
    (["--step-size", "0"], "--step-size must be a positive number, not 0.0"),
    (["--step-size=-0.5"], "--step-size must be a positive number, not -0.5"),
    (["--step-size", "inf"], "--step-size must be a positive number, not inf"),
    (["--plot", "chain.jpg"], "chain.jpg: a figure is written as .png, .pdf or .svg, not .jpg"),
])
def test_chain_bad_options_exit_2_before_any_chain_runs(analysis, trained_run, one_line_error, monkeypatch, tmp_path,
                                                        extra, fragment):
    import textebm.evaluation.prior_chains

    monkeypatch.setattr(textebm.evaluation.prior_chains, "sentences_along_chains",
                        lambda *a, **k: pytest.fail("the chains ran"))
    monkeypatch.chdir(tmp_path)  # where a relative --plot would land
    status, out, err = analysis("chain", "--checkpoint", trained_run, *extra, "--device", "cpu")
    one_line_error(status, err, "chain", fragment)
    assert out == "" and list(tmp_path.iterdir()) == []


def test_a_diverged_chain_exits_2_with_one_line_naming_the_step_size(analysis, trained_run, tmp_path,
                                                                      one_line_error):
    one_line_error(*analysis("chain", "--checkpoint", trained_run, "--steps", "0,3", "--chains", "2",
                             "--step-size", "1e30", "--device", "cpu")[::2], "chain",
                   "Langevin chain met a non-finite z", "3 steps of size 1e+30", "diverged", "smaller --step-size")
    sentence = tmp_path / "one.txt"
    sentence.write_text("the market fell\n", encoding="utf-8")
    one_line_error(*analysis("score", "--checkpoint", trained_run, sentence, "--num-chains", "1",
                             "--set", "posterior_step_size=1e30", "--device", "cpu")[::2], "score",
                   "Langevin chain met a non-finite z", "diverged", "--set posterior_step_size=S")


def test_chain_not_a_run_exits_2(analysis, tmp_path, one_line_error):
    status, _, err = analysis("chain", "--checkpoint", tmp_path)
    one_line_error(status, err, "chain", "not a textebm run")


@pytest.fixture(scope="module")
def language_model_run(tmp_path_factory, train_args):
    """A tiny run trained with prior=none: a plain language model, no latent."""
    from textebm.cli import main

    folder = tmp_path_factory.mktemp("lm") / "run"
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TEXTEBM_OFFLINE", "1")
        assert main(train_args("--out", str(folder), "--max-steps", "3", overrides=["prior=none"])) == 0
    return folder


@pytest.mark.parametrize("command", [["chain"], ["interpolate", "--from", "a b", "--to", "c d"]])
def test_latent_commands_refuse_a_run_without_latent(analysis, language_model_run, one_line_error, command):
    status, _, err = analysis(command[0], "--checkpoint", language_model_run, *command[1:])
    one_line_error(status, err, command[0], "prior=none")
    assert err.count(f"textebm {command[0]}:") == 1  # it was said twice


def test_score_of_a_language_model_run_is_its_exact_nll(analysis, language_model_run, tmp_path):
    import json

    from textebm.evaluation.protocol_metrics import lm_nll_of_lines
    from textebm.model.runs import load_run

    lines = ["the company said", "stocks fell"]
    path = tmp_path / "lines.txt"
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    status, out, err = analysis("score", "--checkpoint", language_model_run, path, "--json")
    assert status == 0, err
    loaded = load_run(language_model_run)
    exact = [lm_nll_of_lines(loaded.model, loaded.vocab, [line])[0] for line in lines]  # no latent: no chains
    assert [row["total"] for row in json.loads(out)] == pytest.approx(exact, rel=1e-5) and exact[0] != exact[1]


# ---- interpolate -------------------------------------------------------------------------------

def test_interpolate_endpoints_decode_the_posterior_codes(analysis, memorised_run):
    import torch

    from textebm.generation.decoding import decode
    from textebm.model.runs import load_run

    status, out, err = analysis("interpolate", "--checkpoint", memorised_run, "--from", TRAINED[0],
                                "--to", TRAINED[1], "--points", "5", "--seed", "3", "--json")
    assert status == 0, err
    points = json.loads(out)["points"]
    assert [p["t"] for p in points] == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    loaded = load_run(memorised_run)
    codes = sentence_codes(loaded.model, loaded.vocab, TRAINED[:2], 8, 3)
    ids = decode(loaded.model.decoder, codes, loaded.model.bos_id, loaded.model.eos_id, 40, True)
    assert [points[0]["sentence"], points[-1]["sentence"]] == [loaded.vocab.decode(r) for r in ids.tolist()]
    assert torch.isfinite(codes).all()

    status, out, _ = analysis("interpolate", "--checkpoint", memorised_run, "--from", TRAINED[0], "--to", TRAINED[1])
    assert status == 0 and out.count("t=") == 7


@pytest.mark.parametrize("flag", ["--from", "--to"])
def test_interpolate_empty_sentence_exits_2(analysis, trained_run, one_line_error, flag):
    argv = {"--from": "the market fell", "--to": "prices rose", flag: "   "}
    status, _, err = analysis("interpolate", "--checkpoint", trained_run, *[x for kv in argv.items() for x in kv])
    one_line_error(status, err, "interpolate", flag)


@pytest.mark.parametrize("extra, fragment", [
    (["--points", "1"], "--points must be from 2 to 10000, not 1"),
    (["--points", "100000000000"], "--points must be from 2 to 10000, not 100000000000"),  # out of memory
    (["--chains", "0"], "--chains must be from 1 to 10000, not 0"),
    (["--chains", "100000000000"], "--chains must be from 1 to 10000, not 100000000000"),
    (["--set", "posterior_steps=1000000000000"], "posterior_steps goes up to 100000, not 1000000000000"),
    (["--max-length", "0"], "--max-length must be from 1 to 2000, not 0"),
    (["--max-length", "2001"], "--max-length must be from 1 to 2000, not 2001"),  # greedy decoding ran for hours
])
def test_interpolate_bad_counts_exit_2(analysis, trained_run, one_line_error, extra, fragment):
    status, out, err = analysis("interpolate", "--checkpoint", trained_run, "--from", "the market fell",
                                "--to", "prices rose", *extra, "--device", "cpu")
    one_line_error(status, err, "interpolate", fragment)
    assert out == ""


# ---- score -------------------------------------------------------------------------------------

def test_score_one_line_per_input_line_and_deterministic(analysis, trained_run, tmp_path, short_lines):
    text = tmp_path / "in.txt"
    text.write_text("\n".join(short_lines[:5]) + "\n", encoding="utf-8")
    status, out, err = analysis("score", "--checkpoint", trained_run, text, "--num-chains", "2", "--seed", "4")
    assert status == 0, err
    rows = [line.split("\t") for line in out.splitlines()]
    assert len(rows) == 5
    assert [r[3] for r in rows] == [line.strip() for line in short_lines[:5]]
    assert all(float(r[0]) == pytest.approx(float(r[1]) / int(r[2]), rel=1e-3) for r in rows)
    _, again, _ = analysis("score", "--checkpoint", trained_run, text, "--num-chains", "2", "--seed", "4")
    assert again == out
    out_file = tmp_path / "scores.json"
    status, _, _ = analysis("score", "--checkpoint", trained_run, text, "--json", "--out", out_file)
    assert status == 0 and len(json.loads(out_file.read_text())) == 5


def test_score_rows_keep_four_columns_when_a_sentence_holds_tabs(analysis, trained_run, tmp_path):
    # the sentence was printed raw: "the\tcat\tsat" made a row of 7 columns
    text = tmp_path / "tabs.txt"
    text.write_text("the\tmarket\t\tfell  today\nprices rose\n", encoding="utf-8")
    status, out, err = analysis("score", "--checkpoint", trained_run, text, "--num-chains", "1")
    assert status == 0, err
    rows = [line.split("\t") for line in out.splitlines()]
    assert [len(r) for r in rows] == [4, 4]
    assert [r[3] for r in rows] == ["the market fell today", "prices rose"]
    assert int(rows[0][2]) == 5  # four words and </s>: scored as tokenised


def test_score_progress_on_stderr_when_asked(analysis, trained_run, tmp_path, short_lines):
    text = tmp_path / "in.txt"
    text.write_text("\n".join(short_lines[:5]) + "\n", encoding="utf-8")
    status, out, err = analysis("score", "--checkpoint", trained_run, text, "--num-chains", "2", "--progress")
    assert status == 0, err
    assert len(out.splitlines()) == 5  # stdout: the scores only
    assert "score: 5 sentences x 2 posterior chains x 3 steps" in err and f"scoring {text}: 100%" in err
    status, _, err = analysis("score", "--checkpoint", trained_run, text, "--num-chains", "2")
    assert status == 0 and "scoring" not in err  # stderr is not a terminal here


def test_score_ranks_memorised_sentences_below_shuffled_ones(analysis, memorised_run, tmp_path):
    rng = random.Random(0)
    shuffled = []
    for sentence in TRAINED:
        words = sentence.split()
        while " ".join(words) == sentence:
            rng.shuffle(words)
        shuffled.append(" ".join(words))
    normal, anomalous = tmp_path / "normal.txt", tmp_path / "shuffled.txt"
    normal.write_text("\n".join(TRAINED) + "\n", encoding="utf-8")
    anomalous.write_text("\n".join(shuffled) + "\n", encoding="utf-8")
    status, out, err = analysis("score", "--checkpoint", memorised_run, "--auroc", normal, anomalous, "--json")
    assert status == 0, err
    report = json.loads(out)
    assert report["auroc_per_token"] == 1.0 and report["auroc_total"] == 1.0
    assert report["mean_per_token_normal"] < report["mean_per_token_anomalous"]


@pytest.mark.parametrize("content, fragment", [(b"", "no sentences"), (b"\n  \n", "no sentences"),
                                               (b"caf\xe9 au lait\n", "not UTF-8")])
def test_score_bad_files_exit_2(analysis, trained_run, tmp_path, one_line_error, content, fragment):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    status, _, err = analysis("score", "--checkpoint", trained_run, path)
    one_line_error(status, err, "score", fragment)


def test_an_output_that_cannot_be_written_exits_2_before_the_chains_run(analysis, trained_run, tmp_path,
                                                                        one_line_error, monkeypatch):
    import textebm.evaluation.anomaly

    monkeypatch.setattr(textebm.evaluation.anomaly, "score_lines", lambda *a, **k: pytest.fail("scored first"))
    good = tmp_path / "good.txt"
    good.write_text("the market fell\n", encoding="utf-8")
    one_line_error(*analysis("score", "--checkpoint", trained_run, good, "--out", tmp_path)[::2], "score",
                   f"cannot write {tmp_path}: it is a folder")
    png = tmp_path / "figure.png"
    png.mkdir()
    one_line_error(*analysis("chain", "--checkpoint", trained_run, "--plot", png, "--device", "cpu")[::2], "chain",
                   f"cannot write {png}: it is a folder")


def test_score_argument_errors_exit_2(analysis, trained_run, tmp_path, one_line_error):
    good = tmp_path / "good.txt"
    good.write_text("the market fell\n", encoding="utf-8")
    one_line_error(*analysis("score", "--checkpoint", tmp_path, good)[::2], "score", "not a textebm run")
    one_line_error(*analysis("score", "--checkpoint", trained_run)[::2], "score", "--auroc")
    one_line_error(*analysis("score", "--checkpoint", trained_run, tmp_path / "missing.txt")[::2], "score",
                   "does not exist")
    one_line_error(*analysis("score", "--checkpoint", trained_run, good, "--num-chains", "0")[::2], "score",
                   "--num-chains")
    one_line_error(*analysis("score", "--checkpoint", trained_run, good, "--batch-size", "0")[::2], "score",
                   "--batch-size must be at least 1, not 0")
    for steps in ("-1", "1000000000000"):  # 10**12 steps ran out of memory with a traceback
        one_line_error(*analysis("score", "--checkpoint", trained_run, good, "--posterior-steps", steps)[::2],
                       "score", f"--posterior-steps must be from 0 to 100000, not {steps}")
    one_line_error(*analysis("score", "--checkpoint", trained_run, good, "--num-chains", "100000000000")[::2],
                   "score", "--num-chains must be from 1 to 10000, not 100000000000")
