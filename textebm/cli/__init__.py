"""The `textebm` command: one module per subcommand, each thin (parse, call the library, report).

A subcommand module defines `add_parser(subparsers)`, which registers its parser and sets
`run=<function(args) -> int>` as a default. Modules import heavy libraries (torch, datasets)
inside `run`, so that `textebm --help` stays fast.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys

from textebm import __version__
from textebm.errors import NonFiniteError, UserError

SUBCOMMANDS = ["train", "sample", "plot", "eval_ppl", "serve", "evaluate", "compare", "chain", "interpolate", "score",
               "reconstruct", "reproduce", "data"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="textebm",
        description="Latent-space energy-based prior models for text: train, sample, evaluate, serve.",
    )
    parser.add_argument("--version", action="version", version=f"textebm {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in SUBCOMMANDS:
        importlib.import_module(f"textebm.cli.{name}").add_parser(subparsers)
    return parser


def _smaller_steps(args: argparse.Namespace) -> str:
    """How the command's own options make its Langevin chains take smaller (or fewer) steps."""
    if hasattr(args, "step_size"):
        return "give a smaller --step-size"
    if hasattr(args, "chain"):
        return "give smaller step sizes: --set prior_step_size=S, --set posterior_step_size=S"
    return "give fewer --prior-steps, or sample a run trained with a smaller prior_step_size"


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush does not fail a second time."""
    try:
        fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # captured or replaced (tests): nothing to flush at exit
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, fd)
    os.close(devnull)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = int(args.run(args) or 0)
        sys.stdout.flush()  # a closed pipe or a full disk shows here, inside the handlers below
        return status
    except BrokenPipeError:  # the reader left (`textebm data | head`): end quietly, as other Unix tools do
        _drop_stdout()
        return 128 + 13  # as if killed by SIGPIPE
    except OSError as err:
        if err.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        _drop_stdout()
        where = f" writing {err.filename}" if err.filename else ""
        print(f"textebm {args.command}: error: no space left on the device{where}", file=sys.stderr)
        return 1
    except UserError as err:
        print(f"textebm {args.command}: error: {err}", file=sys.stderr)
        return 2
    except NonFiniteError as err:  # a chain that diverged: its step size is too large for this energy
        print(f"textebm {args.command}: error: {err}: the chain diverged; {_smaller_steps(args)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"textebm {args.command}: interrupted", file=sys.stderr)
        return 130
    except (MemoryError, RuntimeError) as err:  # last: NonFiniteError is a RuntimeError
        if not _out_of_memory(err):
            raise
        print(f"textebm {args.command}: error: out of memory ({_first_line(err)}); {_less_at_once(args)}, or "
              "free memory", file=sys.stderr)
        return 1


def _out_of_memory(err: BaseException) -> bool:
    """Python's MemoryError, torch's CUDA OutOfMemoryError, its CPU allocator's refusal, or a CUDA library's
    (RuntimeErrors)."""
    return (isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError"
            or any(words in str(err) for words in ("can't allocate memory", "not enough memory", "out of memory",
                                                    "ALLOC_FAILED")))


def _less_at_once(args) -> str:
    """What to lower, in the command's own options."""
    if args.command == "train":
        return "lower --set batch_size (or max_length, hidden_dim), or on a GPU take a smaller --preset"
    if args.command == "evaluate":
        return "lower --chunk or --max-rows (the decoder rows scored together)"
    return "ask for less at once (fewer sentences, chains or points per batch: --batch-size where the command has it)"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


if __name__ == "__main__":
    sys.exit(main())
