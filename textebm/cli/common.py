"""Helpers shared by subcommands: loading a run with a latent, the lm_eval import check, JSON-safe numbers.

(Device options live in `textebm.devices`, shared with the server's launcher.)"""

from __future__ import annotations

import math

from textebm.errors import UserError


def add_chain_argument(parser) -> None:
    """`--set KEY=VALUE` for the chain settings of a trained run (textebm.config.CHAIN_KEYS)."""
    parser.add_argument("--set", dest="chain", action="append", default=[], metavar="KEY=VALUE",
                        help="run the Langevin chains with other settings than the run trained with, e.g. "
                             "--set posterior_noise=1 (chain keys only: prior_steps, prior_step_size, prior_noise, "
                             "posterior_steps, posterior_step_size, posterior_step_schedule, "
                             "posterior_step_size_end, posterior_noise; repeatable)")


def load_latent_run(folder: str, device_name: str, threads: int | None, command: str, chain: list[str] = ()):
    """A run for a command about its latent space; a run trained with prior=none has none."""
    from textebm.devices import resolve_device
    from textebm.runs import load_run

    loaded = load_run(folder, resolve_device(device_name, threads), chain)
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
