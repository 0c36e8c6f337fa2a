"""Checkpoints: weights in safetensors (readable without torch), the training state beside them
(never a code-running pickle), saves that survive a kill at any moment, runs saved in the older
one-file format, and resumes on the CPU of a checkpoint a CUDA run wrote (and CUDA twins)."""

import json
import os
import random
import shlex
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.numpy import load_file as load_numpy

import textebm.io
from textebm.data.vocab import load_vocab
from textebm.errors import UserError
from textebm.model.checkpoints import (
    LEGACY,
    PREVIOUS_WEIGHTS,
    TRAINING_STATE,
    WEIGHTS,
    load_checkpoint,
    load_weights,
    restore_rng,
    rng_state,
    save_checkpoint,
)
from textebm.model.runs import build_model, load_config, load_run
from textebm.training.learner import make_learner


def save_format_1(folder, weights, optimizers, step, rng, extra):
    """A checkpoint as textebm wrote it before safetensors (textebm/model/runs.py at commit 72f527c): one
    torch.save of the weights, the optimizer and RNG states and the step, as `checkpoint.pt`."""
    torch.save({"format": 1, "step": step, "model": weights, "optimizers": optimizers, "rng": rng,
                "extra": extra}, folder / LEGACY)


def to_format_1(folder):
    """Turn a run folder's checkpoint into the older format, with the same content."""
    state = torch.load(folder / TRAINING_STATE, weights_only=True)
    weights, _ = load_weights(folder)
    save_format_1(folder, weights, state["optimizers"], state["step"], state["rng"], state["extra"])
    (folder / WEIGHTS).unlink()
    (folder / TRAINING_STATE).unlink()


def resume_args(corpus, folder, steps, *extra):
    return ["train", "--corpus", corpus, "--out", folder, "--resume", "--max-steps", steps, "--threads", "1",
            "--no-progress", "--device", "cpu", *extra]


def train_records(folder):
    lines = (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return {r["step"]: r for r in map(json.loads, lines) if r["kind"] == "train"}


# --- the files ----------------------------------------------------------------------------------

def test_weights_load_with_safetensors_alone(saved_run):
    """numpy arrays through safetensors: no torch, no unpickler; the step in the metadata."""
    folder, model, _, _ = saved_run
    arrays = load_numpy(folder / WEIGHTS)
    expected = model.state_dict()
    assert arrays.keys() == expected.keys()
    for name, tensor in expected.items():
        assert (arrays[name] == tensor.numpy()).all(), name
    with safe_open(folder / WEIGHTS, framework="numpy") as weights:
        assert weights.metadata()["step"] == "7"
    state = torch.load(folder / TRAINING_STATE, weights_only=True)  # tensors and plain data only
    assert state["step"] == 7 and "model" not in state


def test_the_training_state_holds_the_optimizer_and_rng_states(saved_run):
    folder, _, optimizers, _ = saved_run
    checkpoint = load_checkpoint(folder)
    state = checkpoint["optimizers"]["generator"]["state"]
    assert state, "the generator optimizer state was not saved"
    for key, value in optimizers["generator"].state_dict()["state"].items():
        assert torch.equal(state[key]["exp_avg"], value["exp_avg"])
    assert checkpoint["step"] == 7 and torch.equal(checkpoint["rng"]["torch"], rng_state()["torch"])


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, dict):
        for value in obj.values():
            yield from _tensors(value)
    elif isinstance(obj, (list, tuple)):
        for value in obj:
            yield from _tensors(value)


def test_checkpoints_load_onto_the_cpu(saved_run, monkeypatch):
    """A CUDA run must get CPU tensors (torch.set_rng_state takes only a CPU ByteTensor; Adam keeps its
    step counters on the CPU): every load maps onto the CPU, load_state_dict places the rest."""
    folder = saved_run[0]
    real_load, mapped = torch.load, []

    def spy(*args, **kwargs):
        mapped.append(kwargs.get("map_location"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    checkpoint = load_checkpoint(folder)
    monkeypatch.undo()
    to_format_1(folder)
    monkeypatch.setattr(torch, "load", spy)
    legacy = load_checkpoint(folder)
    assert mapped == ["cpu", "cpu"]  # the training state, then the older format's one file
    assert {t.device.type for t in [*_tensors(checkpoint), *_tensors(legacy)]} == {"cpu"}


# --- never a code-running pickle, damage is a user error -----------------------------------------

class RunsCode:
    """A pickle that runs a shell command when it is loaded with a full unpickler."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


@pytest.mark.parametrize("name", [TRAINING_STATE, LEGACY])
def test_a_code_running_pickle_is_refused(saved_run, tmp_path, name):
    folder = saved_run[0]
    if name == LEGACY:
        to_format_1(folder)
    marker = tmp_path / "pwned"
    torch.save({"format": 1, "step": 1, "model": RunsCode(f"touch {shlex.quote(str(marker))}")}, folder / name)
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(folder)
    if name == LEGACY:
        with pytest.raises(UserError, match="corrupt"):
            load_run(folder)
    else:
        assert load_run(folder).step == 7  # sampling reads the weights alone
    assert not marker.exists(), "loading the checkpoint ran code"
    torch.load(folder / name, weights_only=False)  # the crafted file really is dangerous
    assert marker.exists()


DAMAGES = ["truncated", "empty", "not_a_checkpoint", *(f"garbage-{seed}" for seed in range(15))]


@pytest.mark.parametrize("name", [WEIGHTS, TRAINING_STATE, LEGACY])
@pytest.mark.parametrize("damage", DAMAGES)
def test_damaged_files_are_user_errors(saved_run, name, damage):
    folder = saved_run[0]
    if name == LEGACY:
        to_format_1(folder)
    path = folder / name
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage.startswith("garbage"):  # the loaders fail on random bytes in many ways
        path.write_bytes(random.Random(damage).randbytes(4096))
    elif damage == "empty":
        path.write_bytes(b"")
    elif name == WEIGHTS:
        from safetensors.torch import save_file
        save_file({"weights": torch.zeros(3)}, path)  # safetensors, but not ours (no metadata)
    else:
        torch.save({"weights": torch.zeros(3)}, path)
    loads = [load_checkpoint] + ([load_run] if name != TRAINING_STATE else [])
    for load in loads:
        with pytest.raises(UserError) as info:
            load(folder)
        assert str(folder) in str(info.value) and "\n" not in str(info.value)


def test_weights_that_do_not_fit_the_config(saved_run, tiny_config):
    folder = saved_run[0]
    config = dict(tiny_config.to_dict(), hidden_dim=tiny_config.hidden_dim + 1)
    (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(UserError, match="do not fit the run's config") as info:
        load_run(folder)
    # the reason, on torch's second line, was cut off: which tensor, which shapes
    message = str(info.value)
    assert "for LatentEBMTextModel: size mismatch for " in message and "torch.Size" in message
    assert "\n" not in message and len(message) < 300 + len(str(folder)) + 100


def test_a_vocabulary_that_does_not_fit_the_weights_says_so(saved_run):
    folder = saved_run[0]
    vocab = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
    vocab["itos"] = vocab["itos"][:-1]  # a word removed by hand: torch named the embedding's shapes
    (folder / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    words = len(vocab["itos"])
    with pytest.raises(UserError, match=f"vocabulary \\(vocab.json\\) has {words} entries, its weights {words + 1}"):
        load_run(folder)


def test_missing_files(saved_run):
    folder = saved_run[0]
    (folder / TRAINING_STATE).unlink()
    assert load_run(folder).step == 7  # sampling needs the weights alone
    with pytest.raises(UserError, match=f"no {TRAINING_STATE}"):
        load_checkpoint(folder)
    (folder / WEIGHTS).unlink()
    for load in (load_run, load_checkpoint):
        with pytest.raises(UserError, match="has no checkpoint"):
            load(folder)


def test_mixed_files_of_two_checkpoints_are_refused(saved_run, tmp_path):
    folder, model, optimizers, _ = saved_run
    other = tmp_path / "other"
    other.mkdir()
    save_checkpoint(other, model, optimizers, 7)
    shutil.copy(other / WEIGHTS, folder / WEIGHTS)
    with pytest.raises(UserError, match="not the weights of"):
        load_checkpoint(folder)


# --- saves that survive a kill ------------------------------------------------------------------

def test_a_failed_save_keeps_the_previous_checkpoint(saved_run, monkeypatch):
    folder, model, optimizers, _ = saved_run
    before = {name: (folder / name).read_bytes() for name in (WEIGHTS, TRAINING_STATE)}

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("killed")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(folder, model, optimizers, 8)
    monkeypatch.undo()
    assert {name: (folder / name).read_bytes() for name in before} == before
    assert load_checkpoint(folder)["step"] == 7
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]


class Killed(BaseException):
    pass


def test_a_kill_between_the_two_renames_resumes_from_the_previous_pair(saved_run, monkeypatch):
    """The weights are renamed into place first: killed before the training state follows, the
    folder holds new weights and the old state, whose weights the save kept aside."""
    folder, model, optimizers, _ = saved_run
    weights_at_7 = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.decoder.out.bias.add_(1.0)
    real_replace, renamed = os.replace, []

    def replace_then_die(src, dst):
        if renamed:
            raise Killed
        renamed.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(textebm.io.os, "replace", replace_then_die)
    with pytest.raises(Killed):
        save_checkpoint(folder, model, optimizers, 8)
    monkeypatch.undo()
    assert [Path(p).name for p in renamed] == [WEIGHTS] and (folder / PREVIOUS_WEIGHTS).is_file()
    assert load_weights(folder)[1] == 8  # sampling takes the newest weights
    checkpoint = load_checkpoint(folder)
    assert checkpoint["step"] == 7
    for name, tensor in weights_at_7.items():
        assert torch.equal(checkpoint["model"][name], tensor), name
    save_checkpoint(folder, model, optimizers, 9)
    assert load_checkpoint(folder)["step"] == 9 and not (folder / PREVIOUS_WEIGHTS).exists()


# --- runs saved in the older one-file format ------------------------------------------------------

def test_a_run_of_the_older_format_loads_and_is_replaced_by_the_next_save(saved_run):
    folder, model, optimizers, _ = saved_run
    to_format_1(folder)
    assert sorted(p.name for p in folder.iterdir()) == [LEGACY, "config.json", "vocab.json"]
    loaded = load_run(folder)
    assert loaded.step == 7
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[name], tensor), name
    state = load_checkpoint(folder)["optimizers"]["generator"]["state"]
    for key, value in optimizers["generator"].state_dict()["state"].items():
        assert torch.equal(state[key]["exp_avg_sq"], value["exp_avg_sq"])
    save_checkpoint(folder, model, optimizers, 8)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", WEIGHTS, "training_state.pt", "vocab.json"]


def test_a_run_of_the_older_format_resumes_as_it_would_have(cli, run_copy, tmp_path, small_corpus):
    """The same 20-step run, its checkpoint in either format, resumed for two steps: the same losses."""
    legacy = tmp_path / "legacy"
    shutil.copytree(run_copy, legacy)
    to_format_1(legacy)
    for folder in (run_copy, legacy):
        status, out, err = cli(*resume_args(small_corpus, folder, 22))
        assert status == 0, err
        assert "resumed from step 20" in out and "reseeded" not in out
    new, old = train_records(run_copy), train_records(legacy)
    assert sorted(old) == list(range(1, 23))
    for step in (21, 22):
        assert old[step]["nll_token"] == pytest.approx(new[step]["nll_token"], rel=1e-6), step
    assert not (legacy / LEGACY).exists() and load_checkpoint(legacy)["step"] == 22


def test_reproduce_counts_a_segment_up_to_the_last_save_of_either_format(saved_run):
    """`textebm reproduce`'s budget ledger closes an interrupted segment at the time of the run's last
    save: the training state's mtime (written last), or the older format's one file."""
    from textebm.experiments.reproduce import BUDGET, spent_seconds

    folder = saved_run[0]
    started = 1_000_000.0
    (folder / BUDGET).write_text(json.dumps({"spent_seconds": 0.0, "segments": [{"started": started}]}))
    os.utime(folder / TRAINING_STATE, (started + 30, started + 30))
    os.utime(folder / WEIGHTS, (started + 99, started + 99))
    assert spent_seconds(folder) == pytest.approx(30)
    to_format_1(folder)
    os.utime(folder / LEGACY, (started + 50, started + 50))
    assert spent_seconds(folder) == pytest.approx(50)


# --- RNG states across devices --------------------------------------------------------------------

CUDA_PHILOX_STATE = torch.tensor([1234, 0], dtype=torch.int64).view(torch.uint8)  # seed, offset: 16 bytes


def test_restore_rng_puts_the_saved_streams_back():
    chain = torch.Generator().manual_seed(3)
    torch.randn(5, generator=chain)
    checkpoint = {"rng": rng_state(), "extra": {"chain_rng": chain.get_state()}}
    expected_chain, expected_global = torch.randn(4, generator=chain), torch.randn(4)
    torch.randn(7)
    assert restore_rng(checkpoint, chain) == []
    assert torch.equal(torch.randn(4, generator=chain), expected_chain)
    assert torch.equal(torch.randn(4), expected_global)


def test_a_chain_state_of_another_device_reseeds_and_says_so():
    """A CUDA run's chain generator (16 bytes of Philox state) cannot go into a CPU generator (5,056)."""
    chain = torch.Generator().manual_seed(3)
    checkpoint = {"rng": {"torch": torch.get_rng_state(), "cuda": [CUDA_PHILOX_STATE]},
                  "extra": {"chain_rng": CUDA_PHILOX_STATE}}
    notes = restore_rng(checkpoint, chain, reseed=25)
    assert len(notes) == 1 and "reseeded with 25" in notes[0] and "16 bytes" in notes[0]
    assert torch.equal(chain.get_state(), torch.Generator().manual_seed(25).get_state())


def test_resume_on_the_cpu_of_a_checkpoint_a_cuda_run_wrote(cli, run_copy, small_corpus):
    """The checkpoint as a CUDA run saves it (its chain generator's state of 16 bytes, CUDA's global
    states beside the CPU's): the CPU run resumes, reseeds its chain noise and says so in one line."""
    state = torch.load(run_copy / TRAINING_STATE, weights_only=True)
    assert state["extra"]["chain_rng"].numel() == 5056
    state["extra"]["chain_rng"] = CUDA_PHILOX_STATE
    for rng in [state["rng"], *state["extra"]["rng_ranks"]]:
        rng["cuda"] = [CUDA_PHILOX_STATE]
    torch.save(state, run_copy / TRAINING_STATE)
    status, out, err = cli(*resume_args(small_corpus, run_copy, 22))
    assert status == 0, err
    notes = [line for line in out.splitlines() if "reseeded" in line]
    assert len(notes) == 1 and "reseeded with 20" in notes[0], out  # seed 0 + step 20
    assert "reseeded" in (run_copy / "train.log").read_text(encoding="utf-8")
    assert max(train_records(run_copy)) == 22 and load_checkpoint(run_copy)["step"] == 22


# --- CUDA twins (skipped without a GPU) --------------------------------------------------------------

@pytest.mark.cuda
def test_cuda_resume_places_the_state_and_keeps_adam_steps_on_the_cpu(cli, tmp_path, train_args):
    folder = tmp_path / "cuda"
    args = train_args("--out", folder, "--max-steps", "2")
    args[args.index("--device") + 1] = "cuda"
    assert cli(*args)[0] == 0
    config, vocab = load_config(folder), load_vocab(folder)
    model = build_model(config, vocab).to("cuda")
    learner = make_learner(model, config, "cuda")
    checkpoint = load_checkpoint(folder)
    assert learner.load_state(checkpoint) == []
    assert torch.equal(learner.chain_rng.get_state(), checkpoint["extra"]["chain_rng"])
    for optimizer in learner.optimizers.values():
        for state in optimizer.state.values():
            assert state["step"].device.type == "cpu" and state["exp_avg"].device.type == "cuda"
    status, out, err = cli(*args[:-1], "4", "--resume")  # (args end with --max-steps 2)
    assert status == 0 and "reseeded" not in out, err


@pytest.mark.cuda
def test_cuda_resume_of_a_cpu_run_and_back(cli, run_copy, small_corpus):
    status, out, err = cli(*resume_args(small_corpus, run_copy, 21, "--device", "cuda"))
    assert status == 0 and "reseeded" in out, err
    assert load_checkpoint(run_copy)["extra"]["chain_rng"].numel() == 16
    status, out, err = cli(*resume_args(small_corpus, run_copy, 22))
    assert status == 0 and "reseeded" in out, err
    assert load_checkpoint(run_copy)["extra"]["chain_rng"].numel() == 5056
