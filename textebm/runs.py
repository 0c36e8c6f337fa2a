"""The run folder: everything a training run needs to resume, and everything sampling needs to load.

    RUN/config.json      resolved config (plain data)
    RUN/vocab.json       vocabulary (+ RUN/spm.model for SentencePiece)
    RUN/checkpoint.pt    weights, optimizer states, RNG states, step: tensors and plain data only,
                         loaded with torch.load(weights_only=True), so it can never run code
    RUN/metrics.jsonl    one JSON object per logged step / validation
    RUN/train.log        the human-readable log

All files are written atomically (textebm.io); a run killed at any moment resumes from its
last checkpoint.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from textebm.config import Config, with_chain_overrides
from textebm.errors import UserError
from textebm.io import atomic_write_bytes, atomic_write_text
from textebm.model import LatentEBMTextModel
from textebm.vae import VAETextModel
from textebm.vocab import Vocabulary, load_vocab

CHECKPOINT = "checkpoint.pt"
FORMAT = 1


def is_run(folder: Path) -> bool:
    return (Path(folder) / "config.json").is_file()


def create_run(folder: Path, config: Config, vocab: Vocabulary) -> None:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    atomic_write_text(folder / "config.json", json.dumps(config.to_dict(), indent=2) + "\n")
    vocab.save(folder)


# Runs saved before the chains had noise scales and step schedules ran plain constant-step Langevin:
# they keep doing so when loaded, whatever today's defaults are.
CHAIN_KEYS_BEFORE_TEMPERING = {"prior_noise": 1.0, "posterior_noise": 1.0, "posterior_step_schedule": "constant"}


def load_config(folder: Path) -> Config:
    folder = Path(folder)
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


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(folder: Path, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                    step: int, extra: dict[str, Any] | None = None) -> None:
    payload = {
        "format": FORMAT,
        "step": step,
        "model": model.state_dict(),
        "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
        "rng": rng_state(),
        "extra": extra or {},
    }
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(Path(folder) / CHECKPOINT, buffer.getvalue())


def load_checkpoint(folder: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    path = Path(folder) / CHECKPOINT
    if not path.is_file():
        raise UserError(f"{folder} has no {CHECKPOINT} (a run that never reached its first checkpoint?)")
    try:
        payload = torch.load(path, map_location=device, weights_only=True)
    except Exception as err:  # noqa: BLE001 - the weights-only unpickler fails on damaged bytes in many types
        # (UnpicklingError, EOFError, IndexError, KeyError, ...); none of it can run code
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise UserError(f"{path} is corrupt or truncated ({reason[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT or "model" not in payload:
        raise UserError(f"{path} is not a textebm checkpoint of format {FORMAT}")
    return payload


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
    `precision` (fp32, bf16, int8) is how it decodes (`textebm.precision`)."""
    folder = Path(folder)
    config = with_chain_overrides(load_config(folder), list(chain_overrides))
    vocab = load_vocab(folder)
    checkpoint = load_checkpoint(folder, device)
    model = build_model(config, vocab).to(device)
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as err:
        raise UserError(f"{folder}/{CHECKPOINT} does not fit the run's config: {str(err).splitlines()[0]}") from None
    model.eval()
    model.set_decoding_precision(precision)
    return LoadedRun(folder, config, vocab, model, int(checkpoint["step"]))
