"""The `textebm train` and `textebm sample` commands: bad input (exit 2, one line, no traceback),
sampling determinism and batching, resume after SIGKILL, Ctrl-C."""

import gzip
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from textebm.model.latent_ebm import LatentEBMTextModel

# --- bad input: in-process (fast) ---------------------------------------------------------------

def test_missing_corpus_file(cli, one_line_error, tmp_path, train_args):
    args = train_args("--out", tmp_path / "run", "--max-steps", "1")
    args[args.index("--corpus") + 1] = str(tmp_path / "nope.txt")
    one_line_error(*cli(*args)[::2], "train", "nope.txt")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("content, fragment", [
    (b"", "no sentences"),
    (b"\n  \n\n", "no sentences"),
    (b"good line\nbad \xff\xfe line\n", "not UTF-8"),
])
def test_bad_corpus_files(cli, one_line_error, tmp_path, train_args, content, fragment):
    corpus = tmp_path / "corpus.txt"
    corpus.write_bytes(content)
    args = train_args("--out", tmp_path / "run", "--max-steps", "1")
    args[args.index("--corpus") + 1] = str(corpus)
    one_line_error(*cli(*args)[::2], "train", fragment)


@pytest.mark.parametrize("damage, fragment", [
    ("truncated", "Compressed file ended before the end-of-stream marker was reached"),
    ("not_gzip", "Not a gzipped file"),
])
def test_a_damaged_gz_corpus_exits_2_with_one_line(cli, one_line_error, tmp_path, train_args, train_lines, damage,
                                                   fragment):
    whole = gzip.compress(("\n".join(train_lines[:50]) + "\n").encode("utf-8"))
    corpus = tmp_path / "corpus.txt.gz"
    corpus.write_bytes(whole[:len(whole) // 2] if damage == "truncated" else b"plain text, not gzip\n")
    args = train_args("--out", tmp_path / "run", "--max-steps", "1")
    args[args.index("--corpus") + 1] = str(corpus)
    one_line_error(*cli(*args)[::2], "train", f"cannot read {corpus}: ", fragment)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_a_very_long_line_is_truncated_counted_and_reported(cli, tmp_path, train_args, train_lines):
    corpus = tmp_path / "corpus.txt"
    long_line = " ".join(["word"] * 5000)
    short = [line for line in train_lines if len(line.split()) <= 30][:60]
    corpus.write_text("\n".join([long_line, *short]) + "\n", encoding="utf-8")
    args = train_args("--out", tmp_path / "run", "--max-steps", "2")
    args[args.index("--corpus") + 1] = str(corpus)
    status, out, err = cli(*args)
    assert status == 0, err
    assert "Traceback" not in err
    assert "truncated to max_length=30 tokens: 1 training and 0 validation lines" in out + err


@pytest.mark.parametrize("extra, fragment", [
    (["--preset", "nope"], "unknown preset 'nope'"),
    (["--set", "no_such_key=3"], "unknown config key 'no_such_key'"),
    (["--set", "latent_dim=abc"], "latent_dim"),
    (["--set", "latent_dim=0"], "latent_dim"),
    (["--set", "cell=rnn"], "cell"),
    (["--set", "latent_dim"], "key=value"),
    (["--vocab-size", "1"], "at least 5"),
    (["--max-steps", "0"], "--max-steps"),
    (["--max-minutes", "-1"], "--max-minutes"),
    (["--max-cpu-minutes", "0"], "--max-cpu-minutes must be positive"),
    (["--max-cpu-minutes", "nan"], "--max-cpu-minutes must be positive"),
    (["--threads", "0"], "--threads"),
    (["--device", "tpu"], "device"),
    (["--max-cpu-minutes", "1", "--keep-at", "0.5,2"], "--keep-at 2 is past --max-cpu-minutes 1"),
])
def test_bad_options(cli, one_line_error, tmp_path, train_args, extra, fragment):
    args = train_args("--out", tmp_path / "run", *extra)
    one_line_error(*cli(*args)[::2], "train", fragment)
    assert not (tmp_path / "run" / "model.safetensors").exists()


def test_device_cuda_without_gpu(cli, one_line_error, tmp_path, train_args, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    args = train_args("--out", tmp_path / "run", "--max-steps", "1")
    args[args.index("--device") + 1] = "cuda"
    one_line_error(*cli(*args)[::2], "train", "no CUDA GPU")


@pytest.mark.parametrize("native", [True, False])
def test_the_cpu_presets_auto_chain_precision_says_what_it_took(cli, tmp_path, train_args, monkeypatch, native):
    import textebm.devices

    monkeypatch.setattr(textebm.devices, "_cpu_has_bf16", lambda: native)
    status, out, err = cli(*train_args("--out", tmp_path / "run", "--max-steps", "1",
                                       overrides=["chain_precision=auto"]))
    assert status == 0, err
    line = f"chain precision: {'bf16' if native else 'fp32'} (chain_precision=auto"
    assert line in out + err
    assert line in (tmp_path / "run" / "train.log").read_text()  # the run folder says what its chains ran in


def test_missing_split_suggests_train_split(cli, one_line_error, tmp_path, data_folder):
    data_dir = data_folder(yahoo="valid test")
    args = ["train", "--corpus", "yahoo", "--data-dir", data_dir, "--out", tmp_path / "run", "--max-steps", "1",
            "--device", "cpu", "--no-progress"]
    one_line_error(*cli(*args)[::2], "train", "no train split", "--train-split valid")


def test_offline_missing_known_corpus(cli, one_line_error, tmp_path):
    args = ["train", "--corpus", "ptb", "--data-dir", tmp_path / "empty", "--out", tmp_path / "run",
            "--max-steps", "1", "--device", "cpu", "--no-progress"]
    one_line_error(*cli(*args)[::2], "train", f"data folder {tmp_path / 'empty'} does not exist")
    (tmp_path / "empty").mkdir()  # an existing folder without PTB: fetched, which offline cannot
    one_line_error(*cli(*args)[::2], "train", str(tmp_path / "empty" / "ptb"), "TEXTEBM_OFFLINE")


def test_resume_without_a_run(cli, one_line_error, tmp_path, train_args, small_corpus):
    base = ["train", "--corpus", small_corpus, "--device", "cpu", "--no-progress", "--resume"]
    one_line_error(*cli(*base, "--out", tmp_path / "missing")[::2], "train", "does not exist")
    (tmp_path / "empty").mkdir()
    one_line_error(*cli(*base, "--out", tmp_path / "empty")[::2], "train", "not a textebm run")
    one_line_error(*cli(*base)[::2], "train", "--out")


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_step_0(cli, run_copy, trained_run):
    """Killed (or crashed) before its first checkpoint: config, vocabulary and the lost steps' records are
    there, no weights. `--resume` trains it from step 0 as a fresh run of its config would."""
    for name in ("model.safetensors", "training_state.pt"):
        (run_copy / name).unlink()
    status, out, err = cli("train", "--out", run_copy, "--resume", "--max-steps", "3", "--device", "cpu",
                           "--threads", "1", "--no-progress")
    assert status == 0, err
    assert f"{run_copy} has no checkpoint yet (stopped before its first): training it from step 0" in out
    restarted, original = _train_records(run_copy), _train_records(trained_run)
    assert sorted(restarted) == [1, 2, 3], "the lost steps' records are dropped, not kept beside the new ones"
    for s in (1, 2, 3):
        assert restarted[s]["nll_token"] == pytest.approx(original[s]["nll_token"], rel=1e-5), s
    assert torch.load(run_copy / "training_state.pt", weights_only=True)["step"] == 3


def test_resume_rejects_new_config(cli, one_line_error, run_copy, small_corpus):
    args = ["train", "--corpus", small_corpus, "--out", run_copy, "--resume", "--set", "latent_dim=3",
            "--device", "cpu", "--no-progress"]
    one_line_error(*cli(*args)[::2], "train", "--resume")


@pytest.mark.parametrize("key, value, said", [
    ("latent_dim", 8, "latent_dim 4 -> 8"),  # the weights' shapes: a 30-line load_state_dict traceback
    ("seed", 5, "seed 0 -> 5"),  # the data order, changed mid-run without a word
    ("lowercase", True, "lowercase False -> True"),  # ignored without a word: the vocabulary is vocab.json's
])
def test_resume_refuses_a_config_json_edited_since_the_checkpoint(cli, one_line_error, run_copy, key, value, said):
    path = run_copy / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config[key] = value
    path.write_text(json.dumps(config), encoding="utf-8")
    one_line_error(*cli("train", "--out", run_copy, "--resume", "--max-steps", "99", "--device", "cpu",
                        "--no-progress")[::2], "train", "changed since the checkpoint was saved", said)


def test_resume_may_change_how_the_run_reports(cli, run_copy):
    path = run_copy / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["log_every"] = 7
    path.write_text(json.dumps(config), encoding="utf-8")
    status, _, err = cli("train", "--out", run_copy, "--resume", "--max-steps", "3", "--device", "cpu", "--no-progress")
    assert status == 0, err


def test_a_checkpoint_that_does_not_fit_the_config_is_one_line(cli, one_line_error, run_copy):
    # a checkpoint from before configs were saved in it: only the weights can tell
    from textebm.model.checkpoints import TRAINING_STATE

    state = torch.load(run_copy / TRAINING_STATE, weights_only=True)
    del state["extra"]["config"]
    torch.save(state, run_copy / TRAINING_STATE)
    path = run_copy / "config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    config["hidden_dim"] = 64
    path.write_text(json.dumps(config), encoding="utf-8")
    one_line_error(*cli("train", "--out", run_copy, "--resume", "--max-steps", "99", "--device", "cpu",
                        "--no-progress")[::2], "train", "the checkpoint's weights do not fit the run's config")


def test_resume_reads_the_corpus_from_the_run_and_refuses_another(cli, one_line_error, run_copy, tmp_path):
    other = tmp_path / "other.txt"
    other.write_text("a b c\nd e f\n", encoding="utf-8")
    args = ["train", "--out", run_copy, "--resume", "--device", "cpu", "--no-progress"]
    one_line_error(*cli(*args, "--corpus", other)[::2], "train", f"--corpus {other} is not the corpus", "drop --corpus")
    one_line_error(*cli(*args, "--corpus", "ptb")[::2], "train", "--corpus ptb is not the corpus")
    one_line_error(*cli("train", "--out", tmp_path / "new", "--device", "cpu")[::2], "train", "--corpus is required")


def test_a_run_on_a_relative_corpus_path_resumes_and_reconstructs_from_another_folder(cli, tmp_path, monkeypatch,
                                                                                      train_args, small_corpus):
    """The run records its corpus files (absolute paths, sha256): `--corpus small.txt` given in one folder
    is found from another, with no --data-dir; a changed file is named in a warning."""
    work = tmp_path / "work"
    work.mkdir()
    (work / "small.txt").write_bytes(small_corpus.read_bytes())
    monkeypatch.chdir(work)
    args = train_args("--out", tmp_path / "run", "--max-steps", "1")
    args[args.index("--corpus") + 1] = "small.txt"
    assert cli(*args)[0] == 0
    record = json.loads((tmp_path / "run" / "corpus.json").read_text(encoding="utf-8"))
    assert record["files"]["train"]["path"] == str((work / "small.txt").resolve())
    monkeypatch.chdir(tmp_path)
    status, out, err = cli("train", "--resume", "--out", tmp_path / "run", "--max-steps", "2", "--device", "cpu",
                           "--threads", "1", "--no-progress")
    assert status == 0, err
    assert "warning" not in out + err
    status, out, err = cli("reconstruct", "--checkpoint", tmp_path / "run", "--split", "valid", "--max-sentences",
                           "2", "--device", "cpu", "--threads", "1")
    assert status == 0 and "warning" not in err, err
    with open(work / "small.txt", "a", encoding="utf-8") as handle:
        handle.write("a sentence added after training\n")
    status, out, err = cli("reconstruct", "--checkpoint", tmp_path / "run", "--split", "valid", "--max-sentences",
                           "2", "--device", "cpu", "--threads", "1")
    assert status == 0 and f"warning: small.txt's train split ({(work / 'small.txt').resolve()}) is not the text" \
        in err, err


def test_training_into_an_existing_run_needs_resume(cli, one_line_error, run_copy, train_args):
    files = ("model.safetensors", "training_state.pt")
    before = [(run_copy / name).read_bytes() for name in files]
    one_line_error(*cli(*train_args("--out", run_copy, "--max-steps", "1"))[::2], "train", "--resume")
    assert [(run_copy / name).read_bytes() for name in files] == before


@pytest.mark.parametrize("command", ["train", "sample", "chain", "interpolate", "reconstruct", "evaluate", "score",
                                     "eval-ppl"])
def test_a_seed_out_of_range_is_refused_as_the_command_line_is_read(cli, command):
    from textebm.cli.common import seed_type

    for bad in (str(2**63), "99999999999999999999", "-1"):
        status, _, err = cli(command, "--seed", bad)
        assert status == 2 and f"argument --seed: seed must be an integer from 0 to 2**63 - 1, not {bad}" in err, err
    assert seed_type(str(2**63 - 1)) == 2**63 - 1


@pytest.mark.parametrize("command, option", [("sample", "--out"), ("score", "--out"), ("plot", "--out"),
                                             ("compare", "--out"), ("chain", "--plot"), ("train", "--out"),
                                             ("reproduce", "--out"), ("eval-ppl", "--rppl-out"),
                                             ("evaluate", "--rppl-out"), ("train", "--data-dir"),
                                             ("data", "--data-dir"), ("eval-ppl", "--data-dir"),
                                             ("reproduce", "--data-dir"), ("evaluate", "--data-dir"),
                                             ("reconstruct", "--data-dir"),
                                             ("reconstruct", "--input")])  # it read the test split instead
def test_an_empty_path_is_refused_not_read_as_no_option(cli, trained_run, command, option):
    status, out, err = cli(command, option, "", "--checkpoint", trained_run)
    assert status == 2 and out == "" and f"argument {option}: expected a path, not an empty string" in err, err


def test_training_into_a_file_exits_2_and_leaves_it(cli, one_line_error, tmp_path, train_args):
    notes = tmp_path / "notes.txt"
    notes.write_text("keep\n")
    one_line_error(*cli(*train_args("--out", notes, "--max-steps", "1"))[::2], "train",
                   f"cannot write {notes}: it is not a folder")
    assert notes.read_text() == "keep\n"


def test_sample_checks_its_out_before_it_draws_a_sentence(cli, one_line_error, trained_run, tmp_path, monkeypatch):
    import textebm.generation.sampling

    monkeypatch.setattr(textebm.generation.sampling, "generate_text",
                        lambda *args: pytest.fail("sentences drawn before --out was checked"))
    notes = tmp_path / "notes.txt"
    notes.write_text("keep\n")
    for out, reason in ((tmp_path, "it is a folder"), (notes / "out.txt", f"{notes} is not a folder")):
        one_line_error(*cli("sample", "--checkpoint", trained_run, "--out", out)[::2], "sample",
                       f"cannot write {out}: {reason}")


@pytest.mark.parametrize("extra, fragment", [
    (["--temperature", "0"], "temperature"),
    (["--temperature", "-1"], "temperature"),
    (["--temperature", "nan"], "temperature"),
    (["--top-p", "0"], "top_p"),
    (["--top-p", "1.5"], "top_p"),
    (["--top-k", "-2"], "top_k"),
    (["-n", "0"], "-n"),
    (["-n", "-5"], "-n"),
    (["-n", "100000000000"], "-n must be from 1 to 10000000"),  # ran for ever without a word
    (["--max-length", "0"], "--max-length must be from 1 to 2000"),
    (["--max-length", "2001"], "--max-length must be from 1 to 2000"),
    (["--prior-steps", "-1"], "--prior-steps must be from 0 to 100000"),
    (["--prior-steps", "1000000000000"], "--prior-steps must be from 0 to 100000"),  # a MemoryError traceback
    (["--batch-size", "0"], "--batch-size"),
])
def test_sample_bad_options(cli, one_line_error, trained_run, extra, fragment):
    one_line_error(*cli("sample", "--checkpoint", trained_run, *extra)[::2], "sample", fragment)


def test_sample_from_a_folder_that_is_not_a_run(cli, one_line_error, tmp_path):
    one_line_error(*cli("sample", "--checkpoint", tmp_path)[::2], "sample", "not a textebm run")
    one_line_error(*cli("sample", "--checkpoint", tmp_path / "missing")[::2], "sample", "does not exist")


@pytest.mark.parametrize("damage", ["truncated", "corrupt"])
def test_sample_from_a_damaged_checkpoint(cli, one_line_error, run_copy, damage):
    path = run_copy / "model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3] if damage == "truncated" else bytes(b ^ 0x5A for b in data))
    one_line_error(*cli("sample", "--checkpoint", run_copy)[::2], "sample", "model.safetensors")


def test_sample_device_cuda_without_gpu(cli, one_line_error, trained_run, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    one_line_error(*cli("sample", "--checkpoint", trained_run, "--device", "cuda")[::2], "sample", "no CUDA GPU")


class RunsCode:
    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


# --- bad input: real processes (nothing but one line reaches the terminal) ----------------------

def _run(exe, env, *args, timeout=120):
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, env=env, timeout=timeout)


def test_subprocess_missing_corpus(textebm_exe, subprocess_env, one_line_error, tmp_path):
    proc = _run(textebm_exe, subprocess_env, "train", "--corpus", tmp_path / "none.txt", "--out", tmp_path / "r",
                "--device", "cpu")
    one_line_error(proc.returncode, proc.stderr, "train", "none.txt")
    assert proc.stdout == ""


@pytest.mark.parametrize("command", ["sample", "resume"])
def test_subprocess_code_running_checkpoint_is_refused(textebm_exe, subprocess_env, one_line_error, run_copy,
                                                      tmp_path, small_corpus, command):
    """The pickled files: a resume's training state, and the one file of the older format."""
    marker = tmp_path / "pwned"
    name = "training_state.pt" if command == "resume" else "checkpoint.pt"
    if command == "sample":
        for new in ("model.safetensors", "training_state.pt"):
            (run_copy / new).unlink()
    torch.save({"format": 1, "step": 1, "model": RunsCode(f"touch {shlex.quote(str(marker))}")}, run_copy / name)
    args = (["sample", "--checkpoint", run_copy, "-n", "2"] if command == "sample" else
            ["train", "--corpus", small_corpus, "--out", run_copy, "--resume", "--max-steps", "30"])
    proc = _run(textebm_exe, subprocess_env, *args, "--device", "cpu")
    one_line_error(proc.returncode, proc.stderr, args[0], name)
    assert not marker.exists(), "loading the crafted checkpoint ran its code"
    assert proc.stdout == "" or command == "resume"


def test_subprocess_truncated_checkpoint(textebm_exe, subprocess_env, one_line_error, run_copy):
    path = run_copy / "model.safetensors"
    path.write_bytes(path.read_bytes()[:1000])
    proc = _run(textebm_exe, subprocess_env, "sample", "--checkpoint", run_copy, "--device", "cpu")
    one_line_error(proc.returncode, proc.stderr, "sample", "corrupt or truncated")


# --- sampling --------------------------------------------------------------------------------------

def test_sample_is_reproducible_under_a_seed(cli, trained_run, tmp_path):
    args = ["sample", "--checkpoint", trained_run, "-n", "30", "--device", "cpu"]
    status, first, err = cli(*args, "--seed", "1")
    assert status == 0, err
    lines = first.splitlines()
    assert len(lines) == 30 and any(lines)
    assert cli(*args, "--seed", "1")[1] == first
    assert cli(*args, "--seed", "2")[1] != first
    # --out writes the same sentences, atomically, to a file
    out = tmp_path / "samples.txt"
    status, stdout, err = cli(*args, "--seed", "1", "--out", out)
    assert status == 0 and stdout == ""
    assert out.read_text(encoding="utf-8") == first
    assert "wrote 30 sentences" in err


def test_sample_options_are_applied(cli, trained_run):
    base = ["sample", "--checkpoint", trained_run, "-n", "20", "--device", "cpu", "--seed", "4"]
    greedy = cli(*base, "--greedy")[1].splitlines()
    assert len(greedy) == 20
    assert cli(*base, "--top-k", "1")[1].splitlines() == greedy  # top-1 sampling is greedy
    short = cli(*base, "--max-length", "3")[1].splitlines()
    assert all(len(line.split()) <= 3 for line in short)
    assert cli(*base, "--top-p", "0.5", "--temperature", "0.7", "--prior-steps", "0")[0] == 0
    status, out, err = cli(*base, "--greedy", "--temperature", "0.5", "--top-p", "0.9")  # accepted, said ignored
    assert status == 0 and out.splitlines() == greedy
    assert "warning: --greedy takes the most probable token: --temperature, --top-p ignored" in err
    assert "warning" not in cli(*base, "--greedy")[2]


def test_sample_many_sentences_in_batches(cli, trained_run, monkeypatch):
    calls = []
    original = LatentEBMTextModel.generate

    def counting(self, n, *args, **kwargs):
        calls.append(n)
        return original(self, n, *args, **kwargs)

    monkeypatch.setattr(LatentEBMTextModel, "generate", counting)
    status, out, err = cli("sample", "--checkpoint", trained_run, "-n", "1000", "--device", "cpu",
                           "--max-length", "20")
    assert status == 0, err
    assert len(out.splitlines()) == 1000
    assert sum(calls) == 1000 and len(calls) <= 4, calls  # batches of 256, not one call per sentence


# --- a whole run, resume after SIGKILL, Ctrl-C ---------------------------------------------------------

def test_train_writes_a_complete_run(trained_run):
    config = json.loads((trained_run / "config.json").read_text(encoding="utf-8"))
    assert config["latent_dim"] == 4 and config["hidden_dim"] == 32  # the resolved config, --set included
    records = [json.loads(line) for line in (trained_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, 21))
    assert any(r["kind"] in ("final", "epoch", "valid") for r in records)
    assert torch.load(trained_run / "training_state.pt", weights_only=True)["step"] == 20
    assert (trained_run / "learning_curves.png").read_bytes()[:4] == b"\x89PNG"
    corpus = json.loads((trained_run / "corpus.json").read_text(encoding="utf-8"))
    train_file = corpus["files"]["train"]
    assert train_file["sha256"] == hashlib.sha256(Path(train_file["path"]).read_bytes()).hexdigest()
    assert "sample:" in (trained_run / "train.log").read_text(encoding="utf-8")


def _train_records(folder):
    lines = (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    out = {}
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if record.get("kind") == "train":
            out[record["step"]] = record
    return out


def _wait_for(predicate, proc, seconds=120):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"training exited early with status {proc.returncode}: {proc.stderr.read()}")
        time.sleep(0.05)
    raise AssertionError("timed out waiting for the training process")


def _start(exe, env, args):
    return subprocess.Popen([exe, *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env)


def test_resume_after_sigkill_gives_the_same_next_losses(textebm_exe, subprocess_env, train_args, tmp_path, cli,
                                                        small_corpus):
    every = ["checkpoint_every=5", "log_every=1"]
    killed = tmp_path / "killed"
    proc = _start(textebm_exe, subprocess_env,
                  train_args("--out", killed, "--max-steps", "100000", "--seed", "3", overrides=every))
    try:
        _wait_for(lambda: (killed / "training_state.pt").is_file() and max(_train_records(killed), default=0) >= 6,
                  proc)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    step = torch.load(killed / "training_state.pt", weights_only=True)["step"]
    assert step >= 5 and step % 5 == 0

    status, out, err = cli("train", "--out", killed, "--resume", "--max-steps", step + 2,  # the corpus: the run's
                           "--device", "cpu", "--threads", "1", "--no-progress")
    assert status == 0, err
    assert f"resumed from step {step}" in out
    resumed = _train_records(killed)
    assert sorted(resumed) == list(range(1, step + 3)), "records after the checkpoint must be rewritten once"

    fresh = tmp_path / "fresh"
    status, _, err = cli(*train_args("--out", fresh, "--max-steps", step + 2, "--seed", "3", overrides=every))
    assert status == 0, err
    reference = _train_records(fresh)
    for s in range(1, step + 3):
        assert resumed[s]["nll_token"] == pytest.approx(reference[s]["nll_token"], rel=1e-5), s
        if "energy_gap" in reference[s]:
            assert resumed[s]["energy_gap"] == pytest.approx(reference[s]["energy_gap"], rel=1e-4, abs=1e-6), s


def test_ctrl_c_saves_and_exits_130(textebm_exe, subprocess_env, train_args, tmp_path):
    folder = tmp_path / "run"
    proc = _start(textebm_exe, subprocess_env,
                  train_args("--out", folder, "--max-steps", "100000", overrides=["checkpoint_every=100000"]))
    try:
        _wait_for(lambda: (folder / "metrics.jsonl").is_file() and max(_train_records(folder), default=0) >= 3, proc)
        seen = max(_train_records(folder))
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert f"textebm train --resume --out {folder}" in out
    saved = torch.load(folder / "training_state.pt", weights_only=True)["step"]
    assert saved >= seen
    assert saved == max(_train_records(folder))


# `textebm train` with a stop request (SIGTERM, as `kill` or a grid's driver sends) arriving during set-up.
_STOP_IN_SETUP = """
import os, signal, sys
import textebm.training.train as training
from textebm.cli import main

build = training.make_learner
def make_learner(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGTERM)
    return build(*args, **kwargs)

training.make_learner = make_learner
sys.exit(main(sys.argv[1:]))
"""


def test_a_stop_request_during_set_up_saves_and_says_so(subprocess_env, train_args, tmp_path):
    """Before the first step the run takes a stop request as it does later (saved, a resumable run, the
    log's last line), not as a kill: the handler is installed when training starts, not at its loop."""
    folder = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", _STOP_IN_SETUP, *train_args("--out", folder, "--max-steps", "5")],
                          capture_output=True, text=True, timeout=120, env=subprocess_env)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert "stopped at step 0 (interrupt)" in (folder / "train.log").read_text()
    assert torch.load(folder / "training_state.pt", weights_only=True)["step"] == 0


# ... and two SIGTERMs inside one step, as a cluster's preemption delivers them (to each process, and again
# through torchrun, which passes on what it gets).
_TWO_SIGTERMS_IN_A_STEP = """
import os, signal, sys, time
import textebm.training.learner as learner
from textebm.cli import main

step, calls = learner.Learner.step, []
def twice(self, *args, **kwargs):
    calls.append(1)
    if len(calls) == 3:
        for _ in range(2):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)  # each is handled before the next arrives
    return step(self, *args, **kwargs)

learner.Learner.step = twice
sys.exit(main(sys.argv[1:]))
"""


def test_a_second_sigterm_still_finishes_the_step_and_saves(subprocess_env, train_args, tmp_path):
    """A second Ctrl-C stops at once; a second SIGTERM used to as well, losing the steps since the last
    checkpoint: now the step ends, the checkpoint is saved, exit 130."""
    folder = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", _TWO_SIGTERMS_IN_A_STEP,
                           *train_args("--out", folder, "--max-steps", "50", overrides=["checkpoint_every=100000"])],
                          capture_output=True, text=True, timeout=120, env=subprocess_env)
    assert proc.returncode == 130, proc.stderr[-2000:]
    assert torch.load(folder / "training_state.pt", weights_only=True)["step"] == 3
    assert "stopped at step 3 (interrupt)" in (folder / "train.log").read_text()


# ... and one arriving during the final validation (SIGTERM, while the validation computes).
_STOP_IN_FINAL_VALIDATION = """
import os, signal, sys
import textebm.training.train as training
from textebm.cli import main

report = training._Validation._report
def _report(self, kind, step, per_epoch):
    if kind == "final":
        os.kill(os.getpid(), signal.SIGTERM)
    return report(self, kind, step, per_epoch)

training._Validation._report = _report
sys.exit(main(sys.argv[1:]))
"""


def test_a_stop_request_during_the_final_validation_stops_at_once_and_resume_validates(subprocess_env, train_args,
                                                                                        tmp_path):
    """The weights are saved before the final validation; a SIGTERM during it killed the run silently
    (exit 143, no line, no figure). Now it ends the run at once, as interrupted, and --resume validates."""
    folder = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-c", _STOP_IN_FINAL_VALIDATION,
                           *train_args("--out", folder, "--max-steps", "2")],
                          capture_output=True, text=True, timeout=120, env=subprocess_env)
    assert proc.returncode == 130, proc.stderr[-2000:]
    log = (folder / "train.log").read_text()
    assert "stop requested after step 2: its checkpoint is saved" in log and "stopped at step 2 (interrupt)" in log
    assert f"textebm train --resume --out {folder}" in proc.stdout + proc.stderr
    assert (folder / "learning_curves.png").is_file()
    kinds = [json.loads(line)["kind"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert "final" not in kinds
    resumed = subprocess.run([sys.executable, "-m", "textebm", "train", "--resume", "--out", str(folder),
                              "--max-steps", "2", "--no-progress", "--threads", "1"],
                             capture_output=True, text=True, timeout=120, env=subprocess_env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    kinds = [json.loads(line)["kind"] for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert kinds.count("final") == 1


def test_without_preset_a_cpu_run_takes_the_cpu_preset_and_says_so(cli, tmp_path, small_corpus, tiny_overrides):
    sets = [x for item in tiny_overrides for x in ("--set", item)]
    out_dir = tmp_path / "run"
    status, out, err = cli("train", "--corpus", small_corpus, *sets, "--device", "cpu", "--threads", "1",
                           "--no-progress", "--max-steps", "1", "--out", out_dir)
    assert status == 0, err
    first = out.splitlines()[0]
    assert first.startswith("no CUDA device: preset cpu;") and "--preset default" in first, out
    config = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
    assert config["preset"] == "cpu" and config["batch_size"] == 16  # the cpu preset, then --set


@pytest.mark.parametrize("capability, warned", [("AVX2", True), ("AVX512", False)])
def test_a_bf16_chain_on_a_cpu_without_avx512_is_warned_about(cli, tmp_path, train_args, monkeypatch, capability,
                                                               warned):
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    status, out, err = cli(*train_args("--out", tmp_path / "run", "--max-steps", "1",
                                       overrides=["chain_precision=bf16"]))
    assert status == 0, err
    assert ("chain_precision=bf16 on a CPU without AVX-512" in out + err) is warned


@pytest.mark.parametrize("capability, precision, warned", [("AVX2", "bf16", True), ("AVX512", "bf16", False),
                                                       ("AVX2", "int8", False)])
def test_bf16_decoding_on_a_cpu_without_avx512_is_warned_about(cli, trained_run, monkeypatch, capability, precision,
                                                                warned):
    # emulated there: some 5x slower than fp32, silently, the opposite of what --precision is for
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    status, out, err = cli("sample", "--checkpoint", trained_run, "-n", "2", "--precision", precision,
                           "--device", "cpu")
    assert status == 0 and len(out.splitlines()) == 2, err
    assert ("textebm sample: warning: --precision bf16 on a CPU without AVX-512" in err) is warned


def test_a_resume_with_nothing_left_to_train_says_so_and_does_not_validate_again(cli, train_args, tmp_path):
    # each such resume appended one more identical "final" record (the limit counts steps in all)
    folder = tmp_path / "run"
    status, out, err = cli(*train_args("--out", folder, "--max-steps", "3"))
    assert status == 0, err
    before = (folder / "metrics.jsonl").read_text()
    for limit in ("3", "2"):
        status, out, err = cli("train", "--resume", "--out", folder, "--max-steps", limit, "--no-progress",
                               "--threads", "1")
        assert status == 0, err
        assert "the run is at step 3, already at its max_steps limit" in out + err
        assert "validating" not in out + err
    assert (folder / "metrics.jsonl").read_text() == before


@pytest.mark.parametrize("failure", ["cpu allocator", "MemoryError"])
def test_running_out_of_memory_is_one_line_not_a_traceback(cli, trained_run, monkeypatch, failure):
    import textebm.generation.sampling as sampling

    def exhausted(*args, **kwargs):
        if failure == "MemoryError":
            raise MemoryError
        torch.empty(10**13)  # torch's own refusal: 40 TB

    monkeypatch.setattr(sampling, "generate_text", exhausted)
    status, out, err = cli("sample", "--checkpoint", trained_run, "--device", "cpu")
    assert status == 1 and out == "" and len(err.splitlines()) == 1, err
    assert err.startswith("textebm sample: error: out of memory (") and "ask for less at once" in err, err


def test_another_runtime_error_is_not_called_out_of_memory(trained_run, monkeypatch):
    import textebm.generation.sampling as sampling
    from textebm.cli import main

    def broken(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(sampling, "generate_text", broken)
    with pytest.raises(RuntimeError, match="a bug"):  # a bug keeps its traceback
        main(["sample", "--checkpoint", str(trained_run), "--device", "cpu"])


def test_a_flag_and_a_set_of_the_same_key_are_refused(cli, one_line_error, train_args, tmp_path):
    # the flag won without a word (vocab_size 7000 in config.json after --set vocab_size=50)
    status, _, err = cli(*train_args("--out", tmp_path / "run", "--max-steps", "1", "--vocab-size", "7000",
                                     overrides=["vocab_size=50"]))
    one_line_error(status, err, "train", "--vocab-size and --set vocab_size=... both given")
    assert not (tmp_path / "run").exists()


def test_a_config_key_added_or_dropped_since_the_checkpoint_is_no_edit(cli, run_copy):
    # a later textebm with one key more (or less) must still resume the runs saved now
    from textebm.model.checkpoints import TRAINING_STATE

    state = torch.load(run_copy / TRAINING_STATE, weights_only=True)
    del state["extra"]["config"]["energy_warm_step_size"]
    state["extra"]["config"]["a_key_of_the_past"] = 1
    torch.save(state, run_copy / TRAINING_STATE)
    status, _, err = cli("train", "--out", run_copy, "--resume", "--max-steps", "3", "--device", "cpu", "--no-progress")
    assert status == 0, err
