"""Run folders: a saved run loads as it was, what is not a run is said, atomic writes.
(The checkpoint files themselves: tests/test_checkpoints.py.)"""

import json

import pytest
import torch

from textebm.errors import UserError
from textebm.generation.sampling import SamplingOptions, generate_text
from textebm.io import atomic_write, atomic_write_text
from textebm.model.runs import is_run, load_config, load_run


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


def test_folders_that_are_not_runs(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_config(tmp_path / "missing")
    with pytest.raises(UserError, match="not a textebm run"):
        load_config(tmp_path)
    assert not is_run(tmp_path)
    (tmp_path / "notes.txt").write_text("not a run\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"notes\.txt is not a folder \(a run folder is expected\)$"):
        load_config(tmp_path / "notes.txt")
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
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors", "training_state.pt",
                                                         "vocab.json"]
    assert json.loads((folder / "config.json").read_text(encoding="utf-8"))["latent_dim"] == 4


def test_a_run_folder_is_a_run_only_once_complete(tmp_path, tiny_config, train_lines, monkeypatch):
    """config.json marks a run, so it comes last: a kill while the vocabulary is written leaves a folder
    that a new `train --out` may take, not a run whose vocabulary cannot load."""
    from textebm.data.vocab import WordVocab, load_vocab
    from textebm.model.runs import create_run

    vocab = WordVocab.build(train_lines[:50])

    def killed(folder):
        raise KeyboardInterrupt

    monkeypatch.setattr(WordVocab, "save", lambda self, folder: killed(folder))
    with pytest.raises(KeyboardInterrupt):
        create_run(tmp_path / "run", tiny_config, vocab, {"corpus": "x", "files": {}})
    assert not is_run(tmp_path / "run")
    monkeypatch.undo()
    create_run(tmp_path / "run", tiny_config, vocab, {"corpus": "x", "files": {}})
    assert is_run(tmp_path / "run") and load_vocab(tmp_path / "run").itos == vocab.itos
    assert json.loads((tmp_path / "run" / "corpus.json").read_text(encoding="utf-8"))["corpus"] == "x"


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
