"""A run's checkpoint: the weights in safetensors, the rest of the training state beside them.

    RUN/model.safetensors   the model's state_dict, readable by safetensors alone (no unpickler, no
                            torch needed); metadata {"format": "2", "step": "N", "id": ...};
                            RUN/config.json beside it says the architecture
    RUN/training_state.pt   what only a resume needs: optimizer states, RNG states, the clocks, the
                            step and the id of its weights; tensors and plain data, loaded with
                            torch.load(weights_only=True)
    RUN/checkpoint.pt       the one-file format of runs saved before these two (format 1): it still
                            loads, and the first save of such a run resumed replaces it

A save writes both files whole under temporary names, then renames them into place, the weights
first (textebm.io.atomic_write_files), and keeps the weights it replaces as a hard link
(`.model.previous.safetensors`) until both renames are done: a process killed between the two
renames leaves a training state whose weights are still there, and the resume takes them.

Everything loads onto the CPU: `load_state_dict` places each tensor on its parameter's device, and
Adam's step counters stay on the CPU, where torch keeps them. A generator's state is only valid on
its own kind of device (the CPU's Mersenne Twister state is 5,056 bytes, CUDA's Philox state 16): a
run resumed on another kind of device reseeds its chain noise and says so.
"""

from __future__ import annotations

import io
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from textebm.errors import UserError
from textebm.io import atomic_write_files

WEIGHTS = "model.safetensors"
TRAINING_STATE = "training_state.pt"
PREVIOUS_WEIGHTS = ".model.previous.safetensors"
LEGACY = "checkpoint.pt"
FORMAT = 2
LEGACY_FORMAT = 1


def has_checkpoint(folder: Path) -> bool:
    folder = Path(folder)
    return (folder / WEIGHTS).is_file() or (folder / LEGACY).is_file()


def save_checkpoint(folder: Path, model: torch.nn.Module, optimizers: dict[str, torch.optim.Optimizer],
                    step: int, extra: dict[str, Any] | None = None) -> None:
    folder, weights_id = Path(folder), uuid.uuid4().hex
    weights = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    state = {"format": FORMAT, "step": step, "weights_id": weights_id,
             "optimizers": {name: opt.state_dict() for name, opt in optimizers.items()},
             "rng": rng_state(), "extra": extra or {}}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    metadata = {"format": str(FORMAT), "step": str(step), "id": weights_id}
    previous = folder / PREVIOUS_WEIGHTS
    previous.unlink(missing_ok=True)
    if (folder / WEIGHTS).is_file():
        try:
            os.link(folder / WEIGHTS, previous)
        except OSError:  # a file system without hard links
            shutil.copyfile(folder / WEIGHTS, previous)
    atomic_write_files([(folder / WEIGHTS, safetensors_bytes(weights, metadata)),
                        (folder / TRAINING_STATE, buffer.getvalue())])
    previous.unlink(missing_ok=True)
    (folder / LEGACY).unlink(missing_ok=True)


def load_weights(folder: Path) -> tuple[dict[str, torch.Tensor], int]:
    """The model's state_dict (on the CPU) and the step it was saved at."""
    folder = Path(folder)
    if not (folder / WEIGHTS).is_file():
        legacy = _load_legacy(folder)
        return legacy["model"], int(legacy["step"])
    tensors, metadata = _read_weights(folder / WEIGHTS)
    return tensors, int(metadata["step"])


def weights_identity(folder: Path) -> str:
    """What tells one save of a run's weights from another: the id written with them (a fresh one each
    save), or for the older one-file format its size and modification time."""
    folder = Path(folder)
    if (folder / WEIGHTS).is_file():
        try:
            with safe_open(folder / WEIGHTS, framework="pt", device="cpu") as weights:
                return (weights.metadata() or {}).get("id", "")
        except (SafetensorError, OSError) as err:
            raise UserError(f"{folder / WEIGHTS} is corrupt or truncated ({_first_line(err)})") from None
    stat = (folder / LEGACY).stat()
    return f"{LEGACY}:{stat.st_size}:{stat.st_mtime_ns}"


def load_checkpoint(folder: Path) -> dict[str, Any]:
    """Everything a resume needs, on the CPU: step, model, optimizers, rng, extra."""
    folder = Path(folder)
    if not (folder / TRAINING_STATE).is_file():
        if (folder / WEIGHTS).is_file() and not (folder / LEGACY).is_file():
            raise UserError(f"{folder} has weights but no {TRAINING_STATE} to resume from (copied without it?)")
        return _load_legacy(folder)
    state = _torch_load(folder / TRAINING_STATE)
    if state.get("format") != FORMAT or "optimizers" not in state:
        raise UserError(f"{folder / TRAINING_STATE} is not a textebm training state of format {FORMAT}")
    for name in (WEIGHTS, PREVIOUS_WEIGHTS):  # the previous weights: killed between the two renames
        if (folder / name).is_file():
            tensors, metadata = _read_weights(folder / name)
            if metadata.get("id") == state["weights_id"]:
                return {**state, "model": tensors}
    raise UserError(f"{folder / WEIGHTS} is not the weights of {folder / TRAINING_STATE} (files of two "
                    f"checkpoints mixed?)")


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    try:
        with safe_open(path, framework="pt", device="cpu") as weights:
            metadata = weights.metadata() or {}
            tensors = {name: weights.get_tensor(name) for name in weights.keys()}
    except (SafetensorError, OSError) as err:
        raise UserError(f"{path} is corrupt or truncated ({_first_line(err)})") from None
    if metadata.get("format") != str(FORMAT) or not metadata.get("step", "").isdigit():
        raise UserError(f"{path} is not a textebm checkpoint of format {FORMAT} (its metadata: {metadata})")
    return tensors, metadata


def _load_legacy(folder: Path) -> dict[str, Any]:
    path = Path(folder) / LEGACY
    if not path.is_file():
        raise UserError(f"{folder} has no checkpoint (no {WEIGHTS}: a run that never reached its first checkpoint?)")
    payload = _torch_load(path)
    if payload.get("format") != LEGACY_FORMAT or "model" not in payload:
        raise UserError(f"{path} is not a textebm checkpoint of format {LEGACY_FORMAT}")
    return payload


def _torch_load(path: Path) -> dict:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - the weights-only unpickler fails on damaged bytes in many types
        # (UnpicklingError, EOFError, IndexError, KeyError, ...); none of it can run code
        raise UserError(f"{path} is corrupt or truncated ({_first_line(err)})") from None
    if not isinstance(payload, dict):
        raise UserError(f"{path} is not a textebm checkpoint")
    return payload


def _first_line(err: Exception) -> str:
    return (str(err).splitlines()[0] if str(err) else type(err).__name__)[:200]


# ---- random number generators -----------------------------------------------------------------

def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(checkpoint: dict, chain_rng: torch.Generator, rank: int = 0, world: int = 1,
                reseed: int = 0) -> list[str]:
    """This process's RNG states as the checkpoint saved them: the chain-noise generator and torch's
    global generators (the CPU's, each CUDA device's). A chain-noise state of another kind of device
    cannot be restored: the generator is seeded with `reseed` instead (as are CUDA's global generators
    of a CUDA run resumed from a checkpoint that has none), and the returned line says so."""
    extra = checkpoint.get("extra", {})
    ranks = extra.get("rng_ranks", [checkpoint["rng"]])
    state = ranks[rank] if len(ranks) == world else checkpoint["rng"]
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda", [])
    if chain_rng.device.type == "cuda":
        for device, device_state in enumerate(cuda[:torch.cuda.device_count()]):
            torch.cuda.set_rng_state(device_state.cpu(), device)
    saved, own = extra.get("chain_rng"), chain_rng.get_state()
    if saved is None or saved.numel() == own.numel():
        if saved is not None:
            chain_rng.set_state(saved.cpu())
        return []
    chain_rng.manual_seed(reseed)
    if chain_rng.device.type == "cuda" and not cuda:
        torch.cuda.manual_seed_all(reseed)
    return [f"the checkpoint's chain-noise generator is another kind of device's ({saved.numel()} bytes; this "
            f"{chain_rng.device.type} generator's state is {own.numel()}): reseeded with {reseed}, so the run goes "
            f"on with other random draws than an uninterrupted run would"]
