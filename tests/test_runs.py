"""Run folders: checkpoint round trip, safe loading (never a code-running pickle), atomic writes."""

import json
import os
import random
import shlex

import pytest
import torch

from textebm.errors import UserError
from textebm.io import atomic_write, atomic_write_text
from textebm.runs import (
    CHECKPOINT,
    build_model,
    create_run,
    is_run,
    load_checkpoint,
    load_config,
    load_run,
    save_checkpoint,
)
from textebm.sampling import SamplingOptions, generate_text
from textebm.train import make_optimizers
from textebm.vocab import WordVocab


@pytest.fixture
def saved_run(tmp_path, tiny_config, train_lines):
    vocab = WordVocab.build(train_lines[:200])
    torch.manual_seed(0)
    model = build_model(tiny_config, vocab)
    optimizers = make_optimizers(model, tiny_config)
    # one real optimizer step, so that the optimizer state is not empty
    tokens = torch.tensor([[1, 5, 2], [1, 6, 2]])
    loss = -model.decoder.log_likelihood(torch.randn(2, tiny_config.latent_dim), tokens).mean()
    loss.backward()
    optimizers["generator"].step()
    folder = tmp_path / "run"
    create_run(folder, tiny_config, vocab)
    save_checkpoint(folder, model, optimizers, 7)
    return folder, model, optimizers, vocab


def test_checkpoint_round_trip_weights_and_samples(saved_run):
    folder, model, optimizers, vocab = saved_run
    loaded = load_run(folder)
    assert loaded.step == 7 and loaded.config == model.config
    assert not loaded.model.training
    original, restored = model.state_dict(), loaded.model.state_dict()
    assert original.keys() == restored.keys()
    for key in original:
        assert torch.equal(original[key], restored[key]), key
    assert loaded.vocab.itos == vocab.itos
    options = SamplingOptions(max_length=20)
    model.eval()
    a = generate_text(model, vocab, 12, options, seed=3)
    b = generate_text(loaded.model, loaded.vocab, 12, options, seed=3)
    assert a == b and len(a) == 12


def test_checkpoint_holds_optimizer_state(saved_run):
    folder, model, optimizers, vocab = saved_run
    payload = load_checkpoint(folder)
    state = payload["optimizers"]["generator"]["state"]
    assert state, "the generator optimizer state was not saved"
    expected = optimizers["generator"].state_dict()["state"]
    for key, value in expected.items():
        assert torch.equal(state[key]["exp_avg"], value["exp_avg"])
    assert "rng" in payload and payload["step"] == 7


def test_checkpoint_loads_with_weights_only(saved_run):
    folder = saved_run[0]
    torch.load(folder / CHECKPOINT, weights_only=True)  # plain tensors and data: no pickle objects


class RunsCode:
    """A pickle that runs a shell command when it is loaded with a full unpickler."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def test_a_code_running_pickle_is_refused(saved_run, tmp_path):
    folder = saved_run[0]
    marker = tmp_path / "pwned"
    torch.save({"format": 1, "step": 1, "model": RunsCode(f"touch {shlex.quote(str(marker))}")}, folder / CHECKPOINT)
    with pytest.raises(UserError, match="corrupt"):
        load_checkpoint(folder)
    with pytest.raises(UserError):
        load_run(folder)
    assert not marker.exists(), "loading the checkpoint ran code"
    # the crafted file really is dangerous: a full unpickler runs the command
    torch.load(folder / CHECKPOINT, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("damage", ["truncated", "empty", "not_a_checkpoint", "wrong_shapes",
                                    *(f"garbage-{seed}" for seed in range(40))])
def test_damaged_checkpoints_are_user_errors(saved_run, damage, tiny_config):
    folder = saved_run[0]
    path = folder / CHECKPOINT
    data = path.read_bytes()
    if damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage.startswith("garbage"):  # the weights-only unpickler fails on random bytes in many ways
        path.write_bytes(random.Random(damage).randbytes(4096))
    elif damage == "empty":
        path.write_bytes(b"")
    elif damage == "not_a_checkpoint":
        torch.save({"weights": torch.zeros(3)}, path)
    elif damage == "wrong_shapes":
        config = dict(tiny_config.to_dict(), hidden_dim=tiny_config.hidden_dim + 1)
        (folder / "config.json").write_text(json.dumps(config), encoding="utf-8")
    with pytest.raises(UserError) as info:
        load_run(folder)
    assert str(folder) in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_checkpoint(saved_run):
    folder = saved_run[0]
    (folder / CHECKPOINT).unlink()
    with pytest.raises(UserError, match="no checkpoint.pt"):
        load_run(folder)


def test_folders_that_are_not_runs(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "missing")
    with pytest.raises(UserError, match="not a textebm run"):
        load_config(tmp_path)
    assert not is_run(tmp_path)
    (tmp_path / "config.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(UserError, match="unreadable"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(UserError, match="not a config"):
        load_config(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"latent_dim": 4, "unknown_thing": 1}), encoding="utf-8")
    with pytest.raises(UserError, match="unknown config key"):
        load_config(tmp_path)


def test_run_folder_contents(saved_run):
    folder = saved_run[0]
    assert is_run(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint.pt", "config.json", "vocab.json"]
    assert json.loads((folder / "config.json").read_text(encoding="utf-8"))["latent_dim"] == 4


def test_atomic_writes_leave_no_temp_files(tmp_path):
    target = tmp_path / "sub" / "file.txt"
    atomic_write_text(target, "first")
    atomic_write_text(target, "second")
    assert target.read_text(encoding="utf-8") == "second"
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]


def test_a_failed_atomic_write_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "file.txt"
    atomic_write_text(target, "old")

    def explode(handle):
        handle.write(b"half of the new cont")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError):
        atomic_write(target, explode)
    assert target.read_text(encoding="utf-8") == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["file.txt"]


def test_checkpoint_writes_are_atomic(saved_run, monkeypatch):
    """A save that dies half-way (here: torch.save raising) leaves the previous checkpoint intact."""
    folder, model, optimizers, vocab = saved_run
    before = (folder / CHECKPOINT).read_bytes()

    def broken_save(obj, f, *args, **kwargs):
        f.write(b"partial")
        raise OSError("killed")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError):
        save_checkpoint(folder, model, optimizers, 8)
    monkeypatch.undo()
    assert (folder / CHECKPOINT).read_bytes() == before
    assert load_checkpoint(folder)["step"] == 7
    assert not [p for p in folder.iterdir() if p.name.endswith(".tmp")]
