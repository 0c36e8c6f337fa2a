"""Checks of the library's arguments: a call from Python fails as the command line does, with one UserError
that names the argument, before any work, instead of torch's error from deep inside (a reshape of 0 chains,
a seed past 64 bits) or a silent wrong answer (one sentence given as a string, read as one per character)."""

from __future__ import annotations

import operator

from textebm.config import MAX_CHAIN_STEPS, MAX_CHAINS, MAX_SEED
from textebm.errors import UserError


def check_lines(lines, what: str = "lines") -> list[str]:
    """`lines` as a non-empty list of strings."""
    if isinstance(lines, (str, bytes)):
        raise UserError(f"{what}: expected a list of sentences, got one string (wrap it: [{str(lines)[:40]!r}])")
    lines = list(lines)
    if not lines:
        raise UserError(f"{what}: no sentences")
    if not all(isinstance(line, str) for line in lines):
        raise UserError(f"{what}: every sentence must be a string")
    return lines


def _integer(value) -> int | None:
    """`value` as an int where it is one (a numpy integer too), else None (a float, a bool, text)."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def check_count(name: str, value, least: int = 1, most: int | None = None) -> int:
    """An integer of at least `least` and at most `most` (chains, points, sentences, a batch size)."""
    number = _integer(value)
    if number is None or number < least or (most is not None and number > most):
        span = f"of at least {least}" if most is None else f"from {least} to {most}"
        raise UserError(f"{name} must be an integer {span}, not {value!r}")
    return number


def check_chains(name: str, value) -> int:
    """A number of chains run side by side (rows of every batch): from 1 to `MAX_CHAINS`."""
    return check_count(name, value, most=MAX_CHAINS)


def check_steps(name: str, value) -> int | None:
    """A chain's number of Langevin steps, or None (the run's own)."""
    return None if value is None else check_count(name, value, least=0, most=MAX_CHAIN_STEPS)


def check_seed(seed) -> int:
    """A seed torch takes: an integer from 0 to `MAX_SEED`, as `--seed` is."""
    number = _integer(seed)
    if number is None or not 0 <= number <= MAX_SEED:
        raise UserError(f"seed must be an integer from 0 to 2**63 - 1, not {seed!r}")
    return number
