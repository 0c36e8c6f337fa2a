"""`textebm reproduce GRID --out DIR`: train and evaluate every run of an experiment grid, resuming
what was interrupted and skipping what is done, then write the results (textebm.reproduce)."""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "reproduce", help="train and evaluate every run of an experiment grid (resumable); write its tables",
        description="Train and evaluate every run of GRID (a TOML file, or the name of a grid shipped with "
                    "textebm, e.g. results), JOBS at a time with one torch thread each. Started again, it "
                    "resumes interrupted runs from their checkpoints (a wall-clock budget counts the time "
                    "already spent) and skips runs and evaluations already complete. Writes DIR/results.json, "
                    "DIR/results.md (markdown tables) and a quality-diversity figure per corpus.")
    p.add_argument("grid", metavar="GRID", help="grid file, or the name of a shipped grid (results)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder of the runs and the results")
    p.add_argument("--jobs", type=int, default=1, metavar="N", help="processes at a time (default 1)")
    p.add_argument("--train-only", action="store_true",
                   help="train (or resume) every run, leave the evaluations for a later call")
    p.add_argument("--dry-run", action="store_true", help="list what is done and what would run; start nothing")
    p.add_argument("--data-dir", metavar="D", help="folder of the corpora (default: $TEXTEBM_DATA_DIR, else data/)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import shlex
    import sys
    from pathlib import Path

    from textebm.errors import UserError
    from textebm.grid import load_grid
    from textebm.reproduce import format_plan, plan, reproduce

    if args.jobs < 1:
        raise UserError(f"--jobs must be at least 1, not {args.jobs}")
    grid = load_grid(args.grid)
    out = Path(args.out).expanduser()
    if args.dry_run:
        print(format_plan(grid, out, plan(grid, out), args.jobs))
        return 0
    command = shlex.join(["textebm", "reproduce", args.grid, "--out", args.out, "--jobs", str(args.jobs)])
    status = reproduce(grid, out, args.jobs, args.data_dir, args.device, command,
                       echo=lambda text: print(text, flush=True), train_only=args.train_only)
    if status == "interrupted":
        print(f"interrupted: run `{command}` again to resume", file=sys.stderr)
        return 130
    return 0 if status == "done" else 1
