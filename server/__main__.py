"""`python -m server --checkpoint RUN ...`: the same as `textebm serve` (used by bench/load_test.py)."""

from __future__ import annotations

import argparse
import sys

from textebm.cli.serve import add_arguments, run
from textebm.errors import UserError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server", description="serve a textebm run over HTTP")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args)
    except UserError as err:
        print(f"textebm serve: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
