"""`textebm compare RUN RUN ...`: several runs' quality-diversity curves on one figure.

Reads each run's RUN/evaluation-<split>.json (written by `textebm evaluate`) and draws FPPL against
RPPL per decoding, one curve per run, real text as a point.
"""

from __future__ import annotations

import argparse


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("compare", help="draw several runs' quality-diversity curves on one figure",
                              description="FPPL against RPPL over each run's decoding sweep (greedy and the "
                              "temperatures of `textebm evaluate`), one curve per run, real text as a point.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders evaluated by `textebm evaluate`")
    p.add_argument("--split", choices=("test", "valid"), default="test", help="which evaluation (default test)")
    p.add_argument("--out", required=True, metavar="PNG", help="where to write the figure")
    p.add_argument("--labels", nargs="+", metavar="NAME", help="curve labels (default: the run folders' names)")
    p.add_argument("--title", help="figure title")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from textebm.errors import UserError
    from textebm.evaluation.held_out import load_evaluation
    from textebm.evaluation.plots import plot_quality_diversity

    labels = args.labels or [Path(run).name for run in args.runs]
    if len(labels) != len(args.runs):
        raise UserError(f"--labels gives {len(labels)} names for {len(args.runs)} runs")
    evaluations = [(label, load_evaluation(Path(run), args.split)) for label, run in zip(labels, args.runs)]
    print(plot_quality_diversity(evaluations, Path(args.out), args.title))
    return 0
