"""Helpers shared by subcommands: device choice, the lm_eval import check, JSON-safe numbers."""

from __future__ import annotations

import math

from textebm.errors import UserError


def add_device_argument(parser) -> None:
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")


def resolve_device(name: str, threads: int | None = None):
    import torch

    if threads is not None:
        if threads < 1:
            raise UserError(f"--threads must be at least 1, not {threads}")
        torch.set_num_threads(threads)

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (use auto, cpu or cuda)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but no CUDA GPU is available (use --device cpu or auto)")
    return device


def load_latent_run(folder: str, device_name: str, threads: int | None, command: str):
    """A run for a command about its latent space; a run trained with prior=none has none."""
    from textebm.runs import load_run

    loaded = load_run(folder, resolve_device(device_name, threads))
    if not loaded.model.has_latent:
        raise UserError(f"textebm {command}: {folder} was trained with prior=none (a language model "
                        "without a latent), so it has no latent space to explore")
    return loaded


def import_lm_eval():
    """Import lm_eval and make sure it is this project's package, not a namesake."""
    try:
        import lm_eval
    except ImportError as err:
        raise UserError(f"cannot import lm_eval ({err}); reinstall textebm with ./setup.sh") from None
    if not getattr(lm_eval, "__textebm__", False):
        if getattr(lm_eval, "__file__", None) is None:  # a namespace package: no __init__.py ran
            where = ", ".join(str(p) for p in getattr(lm_eval, "__path__", []))
            raise UserError(
                f"`lm_eval` was imported as a bare namespace package from {where}, not textebm's "
                "package; reinstall textebm (./setup.sh, or pip install -e .)"
            )
        where = lm_eval.__file__
        raise UserError(
            f"`lm_eval` resolves to another package ({where}), e.g. EleutherAI's "
            "lm-evaluation-harness; it and textebm cannot share one environment: use a separate venv"
        )
    return lm_eval


def json_safe(x):
    """JSON has no infinity or NaN: such values (never expected) become null."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [json_safe(v) for v in x]
    return x
