"""Progress of a long command on stderr: one line beforehand that says how much work is coming, then
a bar per stage with the time left. stdout stays for results (e.g. the one JSON object of `--json`).

Shown when stderr is a terminal, or when asked (`--progress`); `--no-progress` silences it. The
library reports to a `Progress`; the command decides whether it shows.
"""

from __future__ import annotations

import argparse
import os
import sys


def add_progress_argument(parser) -> None:
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="progress with the time left on stderr (default: when stderr is a terminal; "
                             "stdout is unaffected)")


class Progress:
    """Stage bars and notes on stderr, or nothing at all (`enabled=False`)."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    @classmethod
    def auto(cls, asked: bool | None) -> Progress:
        """On when asked, off when refused, else on exactly when stderr is a terminal."""
        return cls(sys.stderr.isatty() if asked is None else asked)

    def note(self, text: str) -> None:
        if self.enabled:
            from tqdm import tqdm

            tqdm.write(text, file=sys.stderr)

    def bar(self, desc: str, total: int, unit: str):
        """A tqdm bar (elapsed, time left, rate); disabled, it counts silently."""
        from tqdm import tqdm

        sizeless = _sizeless_terminal()  # tqdm draws nothing in 0 x 0: give it a size
        return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr, disable=not self.enabled, leave=True,
                    dynamic_ncols=not sizeless, ncols=100 if sizeless else None, nrows=24 if sizeless else None)


def _sizeless_terminal() -> bool:
    """Whether stderr is a pseudo-terminal that reports 0 columns (`script`, some containers)."""
    try:
        return os.get_terminal_size(sys.stderr.fileno()).columns == 0
    except (OSError, ValueError, AttributeError):  # not a terminal, or no file descriptor (captured)
        return False


QUIET = Progress(False)
