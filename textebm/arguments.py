"""Checks of the library's arguments: a call from Python fails as the command line does, with one UserError
that names the argument, before any work, instead of torch's error from deep inside (a reshape of 0 chains,
a seed past 64 bits) or a silent wrong answer (one sentence given as a string, read as one per character)."""

from __future__ import annotations

import operator

from textebm.config import MAX_SEED
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


def check_count(name: str, value, least: int = 1) -> int:
    """An integer of at least `least` (chains, points, sentences, a batch size)."""
    number = _integer(value)
    if number is None or number < least:
        raise UserError(f"{name} must be an integer of at least {least}, not {value!r}")
    return number


def check_seed(seed) -> int:
    """A seed torch takes: an integer from 0 to `MAX_SEED`, as `--seed` is."""
    number = _integer(seed)
    if number is None or not 0 <= number <= MAX_SEED:
        raise UserError(f"seed must be an integer from 0 to 2**63 - 1, not {seed!r}")
    return number
