"""`textebm eval-ppl` end to end with the real KenLM tools: output forms and every bad input.

Bad input must give exit status 2 and one line on stderr (or a result that notes the discount
fallback), never a traceback, and must leave nothing in the temporary folder.
"""

from __future__ import annotations

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest

from lm_eval.ngram import ENV_LM_CACHE

REQUIRED_KEYS = {"forward_ppl", "reverse_ppl", "num_samples", "order", "count_eos", "discount_fallback", "oov_rate"}


@pytest.fixture
def eval_ppl(cli, monkeypatch, scratch_tmp, lm_cache):
    """Run `textebm eval-ppl ARGS` in-process; afterwards the temporary folder must be empty."""
    def invoke(*args):
        status, out, err = cli("eval-ppl", *args)
        assert "Traceback" not in err
        assert list(scratch_tmp.iterdir()) == [], "temporary files left behind"
        assert not [p for p in lm_cache.iterdir() if p.name.endswith(".partial")]
        return status, out, err

    return invoke


@pytest.fixture(scope="session")
def small_real(tmp_path_factory, train_lines, test_lines) -> tuple[Path, Path]:
    """A small "real" train (2,000 synthetic train lines) and test (300 synthetic test lines) pair:
    fast to estimate."""
    folder = tmp_path_factory.mktemp("real")
    train, test = folder / "train.txt", folder / "test.txt"
    train.write_text("\n".join(train_lines) + "\n", encoding="utf-8")
    test.write_text("\n".join(test_lines[:300]) + "\n", encoding="utf-8")
    return train, test


@pytest.fixture
def real_args(small_real):
    return ["--train", str(small_real[0]), "--test", str(small_real[1])]


def write(path: Path, text: str | bytes) -> Path:
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def parse_json(out: str) -> dict:
    lines = out.strip().splitlines()
    assert len(lines) == 1, f"expected one JSON line on stdout, got {len(lines)}"
    result = json.loads(lines[0])
    assert isinstance(result, dict)
    return result


# --- results -----------------------------------------------------------------------------------

def test_json_has_the_required_keys(eval_ppl, real_args, test_lines, tmp_path):
    samples = write(tmp_path / "samples.txt", "\n".join(test_lines[1000:1200]) + "\n\n\n")
    status, out, err = eval_ppl("--samples", samples, *real_args, "--json")
    assert status == 0, err
    assert err == ""  # lmplz/build_binary/kenlm chatter stays out of the terminal
    r = parse_json(out)
    assert REQUIRED_KEYS <= set(r)
    assert r["num_samples"] == 200 and r["order"] == 5 and r["count_eos"] is False
    assert r["blank_lines"]["samples"] == 2  # "\n\n\n" after the last line: two blank lines
    # the 2,000-line real LM needs no fallback; 200 samples may be too few for the reverse 5-gram
    assert r["discount_fallback_detail"]["real_lm"] is False
    assert r["discount_fallback"] == any(r["discount_fallback_detail"].values())
    assert set(r["oov_rate"]) == {"samples_under_real_lm", "test_under_real_lm", "test_under_reverse_lm"}
    # the reverse LM's vocabulary holds the real training vocabulary, so it misses no test word
    # that the real LM knows (here 2,000 train lines do not cover every test word)
    assert 0 < r["oov_rate"]["test_under_reverse_lm"] <= r["oov_rate"]["test_under_real_lm"]
    assert 0 < r["oov_rate"]["samples_under_real_lm"] < 0.2  # 2,000 train lines miss some words
    assert 10 < r["forward_ppl"] < 2000 and 10 < r["reverse_ppl"] < 5000
    for key in ("mean_length", "max_length", "unique_share", "copied_share", "distinct_1",
                "distinct_2", "distinct_3", "self_bleu"):
        assert key in r
    assert r["copied_share"] == 0.0 and r["unique_share"] == 1.0


def test_ptb_corpus_count_eos_reproduces_kn5(eval_ppl, real_data_dir):
    status, out, err = eval_ppl("--samples", real_data_dir / "ptb" / "test.txt", "--corpus", "ptb",
                                "--data-dir", real_data_dir, "--count-eos", "--json", "--self-bleu-size", "20")
    assert status == 0, err
    r = parse_json(out)
    assert abs(r["forward_ppl"] - 141.2) < 0.5  # Mikolov et al.'s KN5 (see test_lm_eval_kenlm.py)
    assert r["forward_ppl"] == pytest.approx(r["real_lm_test_ppl"])
    assert r["count_eos"] is True and r["oov_rate"]["samples_under_real_lm"] == 0.0
    assert r["copied_share"] < 0.05  # PTB test sentences rarely occur in train


def test_corpus_resolution_from_env(eval_ppl, data_folder, monkeypatch, tmp_path):
    data_dir = data_folder(ptb="train valid test")
    monkeypatch.setenv("TEXTEBM_DATA_DIR", str(data_dir))
    samples = write(tmp_path / "s.txt", "the company said\nthe market fell sharply\n")
    status, out, err = eval_ppl("--samples", samples, "--corpus", "ptb", "--json", "--order", "3")
    assert status == 0, err
    r = parse_json(out)
    assert r["files"]["train"] == str(data_dir / "ptb" / "train.txt") and r["order"] == 3


def test_table_output(eval_ppl, real_args, tmp_path):
    samples = write(tmp_path / "s.txt", "the company said\nthe market fell sharply\nprices rose\n")
    status, out, err = eval_ppl("--samples", samples, *real_args)
    assert status == 0, err
    assert "forward PPL" in out and "reverse PPL" in out and "self-BLEU" in out
    assert not out.lstrip().startswith("{")
    assert "sentence markers" not in out
    marked = write(tmp_path / "m.txt", "<s> the company said </s>\nthe market fell sharply </s>\n")
    status, out, err = eval_ppl("--samples", marked, *real_args)
    assert status == 0, err
    assert "note: the samples hold sentence markers (</s> x2, <s> x1), scored as words" in out


# --- degenerate samples: a result, with the fallback noted --------------------------------------

def test_one_sentence_gives_a_result_with_fallback_noted(eval_ppl, real_args, tmp_path):
    samples = write(tmp_path / "one.txt", "the company said it would n't comment\n")
    status, out, err = eval_ppl("--samples", samples, *real_args, "--json")
    assert status == 0, err
    r = parse_json(out)
    assert r["num_samples"] == 1 and r["self_bleu"] is None
    assert r["discount_fallback"] is True and r["discount_fallback_detail"]["reverse_lm"] is True


def test_identical_samples_fall_back_and_say_so(eval_ppl, real_args, tmp_path):
    samples = write(tmp_path / "same.txt", "the company said it would n't comment\n" * 300)
    status, out, err = eval_ppl("--samples", samples, *real_args, "--no-train-vocab")
    assert status == 0, err
    assert "discount_fallback" in out and "note:" in out
    status, out, err = eval_ppl("--samples", samples, *real_args, "--json")
    r = parse_json(out)
    assert r["discount_fallback_detail"] == {"real_lm": False, "reverse_lm": True}
    assert r["unique_share"] == pytest.approx(1 / 300) and r["self_bleu"] == pytest.approx(1.0)


def test_long_lines_accepted_up_to_the_limit(eval_ppl, real_args, tmp_path):
    samples = write(tmp_path / "long.txt", "the company said\n" + "the market " * 6000 + "\n")
    status, out, err = eval_ppl("--samples", samples, *real_args, "--json", "--max-tokens", "20000")
    assert status == 0, err
    assert parse_json(out)["max_length"] == 12000


# --- bad input: exit 2, one line -----------------------------------------------------------------

BAD_SAMPLES = {
    "missing": (None, "not found"),
    "empty": (b"", "no sentences"),
    "blank": (b"\n  \n\t\n", "no sentences (3 blank lines)"),
    "not_utf8": (b"good line\n\xff\xfe\xfa bad\n", "not UTF-8 text (line 2"),
    "long_line": (("w " * 10_001 + "\n").encode(), "over the limit of 10000"),
    "folder": ("dir", "is a folder"),
}


@pytest.mark.parametrize("case", sorted(BAD_SAMPLES))
def test_bad_samples_file(eval_ppl, one_line_error, real_args, tmp_path, case):
    content, fragment = BAD_SAMPLES[case]
    path = tmp_path / f"{case}.txt"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    status, out, err = eval_ppl("--samples", path, *real_args, "--json")
    one_line_error(status, err, "eval-ppl", fragment, str(path))
    assert out == ""


def test_corpus_without_test_split(eval_ppl, one_line_error, tmp_path, small_real):
    (tmp_path / "d" / "ptb").mkdir(parents=True)
    write(tmp_path / "d" / "ptb" / "train.txt", small_real[0].read_text(encoding="utf-8"))
    samples = write(tmp_path / "s.txt", "a b c\n")
    status, _, err = eval_ppl("--samples", samples, "--corpus", "ptb", "--data-dir", tmp_path / "d")
    one_line_error(status, err, "eval-ppl", "no test split", str(tmp_path / "d" / "ptb" / "test.txt"),
                   "--test FILE")


def test_a_corpus_folder_that_is_not_there_says_where_it_looked(eval_ppl, one_line_error, tmp_path):
    samples = write(tmp_path / "s.txt", "a b c\n")
    status, out, err = eval_ppl("--samples", samples, "--corpus", "ptb", "--data-dir", tmp_path / "nowhere")
    one_line_error(status, err, "eval-ppl", f"corpus folder not found: {tmp_path / 'nowhere' / 'ptb'}",
                   "--data-dir or $TEXTEBM_DATA_DIR", "textebm data --fetch ptb", "--train FILE")
    assert out == "" and not (tmp_path / "nowhere").exists()


def test_corpus_without_train_split_suggests_train(eval_ppl, one_line_error, data_folder, tmp_path):
    samples = write(tmp_path / "s.txt", "a b c\n")
    status, _, err = eval_ppl("--samples", samples, "--corpus", "yahoo", "--data-dir", data_folder(yahoo="valid test"))
    one_line_error(status, err, "eval-ppl", "no train split", "yahoo/train.txt", "--train FILE")


def test_missing_real_files(eval_ppl, one_line_error, tmp_path, small_real):
    samples = write(tmp_path / "s.txt", "a b c\n")
    status, _, err = eval_ppl("--samples", samples)
    one_line_error(status, err, "eval-ppl", "--corpus", "--train")
    status, _, err = eval_ppl("--samples", samples, "--train", tmp_path / "nope.txt", "--test", small_real[1])
    one_line_error(status, err, "eval-ppl", "training file not found")


@pytest.mark.parametrize("args,fragment", [(["--order", "9"], "order must be between 2 and 6"),
                                           (["--memory", "lots"], "memory bound 'lots' is not a size lmplz reads"),
                                           (["--max-tokens", "0"], "--max-tokens"),
                                           (["--self-bleu-size=-1"], "--self-bleu-size must be 0 or more")])
def test_bad_options(eval_ppl, one_line_error, real_args, tmp_path, args, fragment):
    samples = write(tmp_path / "s.txt", "a b c\nd e f\n")
    status, _, err = eval_ppl("--samples", samples, *real_args, *args)
    one_line_error(status, err, "eval-ppl", fragment)


def test_an_lm_cache_that_cannot_be_written_exits_2(eval_ppl, one_line_error, real_args, tmp_path, monkeypatch):
    notes = write(tmp_path / "notes.txt", "keep\n")
    monkeypatch.setenv(ENV_LM_CACHE, str(notes / "cache"))
    samples = write(tmp_path / "s.txt", "the company said\nthe market fell sharply\n")
    one_line_error(*eval_ppl("--samples", samples, *real_args)[::2], "eval-ppl",
                   f"cannot write the LM cache {notes / 'cache'}: Not a directory", ENV_LM_CACHE)


def test_missing_kenlm_tools_name_the_install_command(eval_ppl, one_line_error, real_args, tmp_path, monkeypatch):
    monkeypatch.setenv("TEXTEBM_KENLM_BIN", str(tmp_path))
    samples = write(tmp_path / "s.txt", "a b c\n")
    status, _, err = eval_ppl("--samples", samples, *real_args)
    one_line_error(status, err, "eval-ppl", "-m lm_eval.kenlm_tools install")


def test_a_missing_kenlm_module_names_the_install_command(eval_ppl, one_line_error, real_args, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "kenlm", None)  # as where its build failed: import kenlm raises
    samples = write(tmp_path / "s.txt", "a b c\n")
    status, _, err = eval_ppl("--samples", samples, *real_args)
    one_line_error(status, err, "eval-ppl", "pip install kenlm")


def test_foreign_lm_eval_is_refused(eval_ppl, one_line_error, real_args, tmp_path, monkeypatch):
    fake = types.ModuleType("lm_eval")
    fake.__file__ = "/site-packages/lm_eval/__init__.py"  # e.g. EleutherAI's harness
    monkeypatch.setitem(sys.modules, "lm_eval", fake)
    samples = write(tmp_path / "s.txt", "a b c\n")
    status, _, err = eval_ppl("--samples", samples, *real_args)
    one_line_error(status, err, "eval-ppl", "another package", "/site-packages/lm_eval/__init__.py",
                   "lm-evaluation-harness")


# --- the installed command -----------------------------------------------------------------------

def test_eval_ppl_is_a_registered_subcommand():
    import textebm.cli

    assert "eval_ppl" in textebm.cli.SUBCOMMANDS


def test_installed_command_bad_input_exit_2(subprocess_env, tmp_path):
    env = dict(subprocess_env, TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    proc = subprocess.run([sys.executable, "-m", "textebm", "eval-ppl", "--samples", str(tmp_path / "nope.txt"),
                           "--train", str(tmp_path / "nope.txt"), "--test", str(tmp_path / "nope.txt")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr
    expected = f"textebm eval-ppl: error: samples file not found: {tmp_path / 'nope.txt'}"
    assert proc.stderr.strip().splitlines() == [expected]
    assert list((tmp_path / "tmp").iterdir()) == []


def test_installed_command_json_is_the_only_output(subprocess_env, tmp_path, small_real):
    """Through a real process (file descriptors, not sys.stdout): one JSON line, empty stderr."""
    env = dict(subprocess_env, TMPDIR=str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    samples = write(tmp_path / "s.txt", "the company said\nthe market fell sharply\nprices rose\n")
    proc = subprocess.run([sys.executable, "-m", "textebm", "eval-ppl", "--samples", str(samples),
                           "--train", str(small_real[0]), "--test", str(small_real[1]), "--json"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert parse_json(proc.stdout)["num_samples"] == 3
    assert list((tmp_path / "tmp").iterdir()) == []


# --- wKL and the neural reverse perplexity (textebm/evaluation/protocol_metrics.py) --------------------------

TINY_REVERSE_LM = ["--synthetic-train", "60", "--synthetic-valid", "20", "--rppl-epochs", "2", "--threads", "1",
                   "--device", "cpu", "--self-bleu-size", "5", "--rppl-set", "embedding_dim=8",
                   "--rppl-set", "hidden_dim=16", "--rppl-set", "batch_size=16"]


def test_wkl_and_neural_rppl_in_json_and_table(eval_ppl, real_args, small_real, train_lines, tmp_path,
                                               monkeypatch):
    from lm_eval import word_kl

    # torch makes its compile-cache folder in the temporary folder when an optimizer is created: torch's
    # cache, not a file of eval-ppl's (whose reverse-LM run folder must be gone, as the fixture checks)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "torchinductor"))

    lines = train_lines[1500:1590]  # 90 real lines as samples: 60 train the reverse LM, 20 validate it
    samples = write(tmp_path / "s.txt", "\n".join(lines) + "\n")
    status, out, err = eval_ppl("--samples", samples, *real_args, "--wkl", "--neural-rppl", *TINY_REVERSE_LM, "--json")
    assert status == 0, err
    r = parse_json(out)
    assert REQUIRED_KEYS <= set(r) and r["num_samples"] == 90  # KenLM's numbers use every sample
    train = small_real[0].read_text(encoding="utf-8").splitlines()
    assert r["wkl"]["sentences"] == 60 and r["wkl"]["value"] == pytest.approx(word_kl(lines[:60], train).kl)
    rppl = r["neural_reverse_ppl"]
    assert rppl["train_sentences"] == 60 and rppl["valid_sentences"] == 20 and rppl["steps"] == 2 * 4
    assert rppl["ppl"] > 1 and rppl["test_sentences"] == 300 and rppl["lm"]["hidden_dim"] == 16
    assert r["protocol"]["matches_protocol_sizes"] is False
    status, out, err = eval_ppl("--samples", samples, *real_args, "--wkl", "--neural-rppl", *TINY_REVERSE_LM)
    assert status == 0, err
    assert "wKL vs real train (60 sentences" in out and "neural rPPL (real test | LSTM LM of 60 + 20" in out
    assert "(DGMVAE's: 40000 + 3000)" in out


@pytest.mark.parametrize("args,fragment", [
    (["--neural-rppl"], "needs 43000 sentences"),
    (["--neural-rppl", "--synthetic-train", "2", "--synthetic-valid", "2"], "needs 4 sentences"),
    (["--wkl", "--synthetic-train", "0"], "--synthetic-train must be from 1 to 10,000,000"),
    (["--neural-rppl", "--rppl-steps", "0"], "--rppl-steps must be at least 1"),
    (["--neural-rppl", "--rppl-set", "prior=ebm"], "--rppl-set prior"),
    (["--neural-rppl", "--rppl-set", "hidden_dim=0"], "hidden_dim must be at least 1"),
    (["--neural-rppl", "--synthetic-train", "1", "--synthetic-valid", "1", "--threads", "0"], "--threads"),
])
def test_protocol_bad_input(eval_ppl, one_line_error, real_args, tmp_path, args, fragment):
    samples = write(tmp_path / "s.txt", "a b c\nd e f\n")
    status, out, err = eval_ppl("--samples", samples, *real_args, *args)
    one_line_error(status, err, "eval-ppl", fragment)
    assert out == ""
