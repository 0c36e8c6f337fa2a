"""The run folder: everything a training run needs to resume, and everything sampling needs to load.

    RUN/config.json      resolved config (plain data)
    RUN/vocab.json       vocabulary (+ RUN/spm.model for SentencePiece)
    RUN/corpus.json      the corpus files it trained on: absolute paths and sha256 (runs from before
                         2026-12-07 have none; textebm.data.corpora.open_run_corpus)
    RUN/model.safetensors  weights (safetensors: no code can run from it)
    RUN/training_state.pt  optimizer states, RNG states, step: tensors and plain data only, loaded
                         with torch.load(weights_only=True) (textebm.model.checkpoints; older runs hold
                         both in RUN/checkpoint.pt, which still loads)
    RUN/metrics.jsonl    one JSON object per logged step / validation
    RUN/train.log        the human-readable log

All files are written atomically (textebm.io), but for metrics.jsonl and train.log, appended a line at a
time (a kill can cut their last line short; textebm.training.training_log.read_records skips it); a run killed
at any moment resumes from its last checkpoint.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from textebm.config import Config, with_chain_overrides
from textebm.data.corpora import RECORD
from textebm.data.vocab import Vocabulary, load_vocab
from textebm.errors import UserError
from textebm.io import atomic_write_text
from textebm.model.checkpoints import WEIGHTS, load_weights
from textebm.model.latent_ebm import LatentEBMTextModel
from textebm.model.vae import VAETextModel


def is_run(folder: Path) -> bool:
    return (Path(folder) / "config.json").is_file()


def create_run(folder: Path, config: Config, vocab: Vocabulary, corpus_record: dict | None = None) -> None:
    """A new run folder. config.json, which makes it a run (`is_run`), is written last: a kill before it
    leaves a folder that a new `train --out` takes over, not a run that cannot load its vocabulary."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab.save(folder)
    if corpus_record is not None:
        atomic_write_text(folder / RECORD, json.dumps(corpus_record, indent=2) + "\n")
    atomic_write_text(folder / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")


# Runs saved before the chains had noise scales and step schedules ran plain constant-step Langevin:
# they keep doing so when loaded, whatever today's defaults are.
CHAIN_KEYS_BEFORE_TEMPERING = {"prior_noise": 1.0, "posterior_noise": 1.0, "posterior_step_schedule": "constant"}


def load_config(folder: Path) -> Config:
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is not a folder (a run folder is expected)")
    if not folder.is_dir():
        raise UserError(f"{folder} does not exist")
    if not is_run(folder):
        raise UserError(f"{folder} is not a textebm run (no config.json)")
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{folder}/config.json is unreadable: {err}") from None
    if not isinstance(data, dict):
        raise UserError(f"{folder}/config.json is not a config object")
    for key, value in CHAIN_KEYS_BEFORE_TEMPERING.items():
        data.setdefault(key, value)
    return Config.from_dict(data)


def build_model(config: Config, vocab: Vocabulary) -> LatentEBMTextModel:
    """The config's model: the latent EBM (or Gaussian) prior model, or the VAE baseline (`model=vae`)."""
    kind = VAETextModel if config.model == "vae" else LatentEBMTextModel
    return kind(config, len(vocab), vocab.pad_id, vocab.bos_id, vocab.eos_id)


@dataclass
class LoadedRun:
    folder: Path
    config: Config
    vocab: Vocabulary
    model: LatentEBMTextModel
    step: int


def load_run(folder: Path, device: torch.device | str = "cpu", chain_overrides: list[str] = (),
             precision: str = "fp32") -> LoadedRun:
    """A trained run, ready to sample from: config, vocabulary and model (in eval mode). `chain_overrides`
    (`key=value`, chain settings only) change how its Langevin chains run from how it trained;
    `precision` (fp32, bf16, int8) is how it decodes (`textebm.generation.precision`). It leaves the caller's
    global random generator as it was (the modules' initial weights, replaced at once, draw from a fork)."""
    from textebm.devices import parse_device

    if isinstance(chain_overrides, str):
        raise UserError(f"chain_overrides: a list of key=value strings, not one string ({chain_overrides!r})")
    device = parse_device(device)  # torch's "not compiled with CUDA" came from deep inside .to(device)
    folder = Path(folder)
    config = with_chain_overrides(load_config(folder), list(chain_overrides))
    vocab = load_vocab(folder)
    weights, step = load_weights(folder)
    words = next((tensor.shape[0] for key, tensor in weights.items() if key.endswith("embed.weight")), len(vocab))
    if words != len(vocab):  # vocab.json edited, or another run's: torch would name a layer's shapes
        raise UserError(f"{folder}'s vocabulary (vocab.json) has {len(vocab)} entries, its weights {words}: the "
                        "vocabulary is not the one the run trained with")
    with torch.random.fork_rng(devices=[]):
        model = build_model(config, vocab).to(device)
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        # torch's first line names only the model; the next says which key or shape (one line: cut if long)
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = " ".join(lines[:2])
        reason = reason if len(reason) <= 300 else reason[:297] + "..."
        raise UserError(f"{folder}'s weights ({WEIGHTS}) do not fit the run's config: {reason}") from None
    model.eval()
    model.set_decoding_precision(precision)
    return LoadedRun(folder, config, vocab, model, step)
