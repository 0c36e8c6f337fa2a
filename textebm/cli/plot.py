"""`textebm plot RUN`: learning curves of a run as a PNG."""

from __future__ import annotations

import argparse

from textebm.cli.common import path_type


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("plot", help="plot a run's learning curves to a figure (PNG, PDF or SVG)")
    p.add_argument("run_folder", metavar="RUN")
    p.add_argument("--out", type=path_type, help="figure path, .png, .pdf or .svg (default: RUN/learning_curves.png)")
    p.add_argument("--x", choices=["step", "minutes", "cpu-minutes"], default="step",
                   help="the horizontal axis: steps, wall-clock minutes (validation included) or training CPU "
                        "minutes (steps only) (default: step)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from textebm.evaluation.plots import figure_format, plot_learning_curves
    from textebm.io import check_writable
    from textebm.model.runs import load_config

    load_config(args.run_folder)  # a clear error when RUN is not a run
    if args.out:
        check_writable(args.out)
        figure_format(args.out)
    print(plot_learning_curves(args.run_folder, args.out, x=args.x))
    return 0
