"""`textebm compare RUN RUN ...`: several runs side by side, from their evaluation reports.

Reads each run's RUN/evaluation-<split>.json (written by `textebm evaluate`) and prints each run's
NLL per sentence with its paired difference from the first run on the same sentences
(`textebm.evaluation.paired`); with --out, also draws FPPL against RPPL per decoding, one curve per
run, real text as a point.
"""

from __future__ import annotations

import argparse

from textebm.cli.common import path_type


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("compare", help="several runs' NLL paired sentence by sentence, and their "
                              "quality-diversity curves on one figure",
                              description="Prints each run's NLL per sentence and its difference from the first "
                              "run's on the same held-out sentences, with the paired standard error (the spread "
                              "of the per-sentence differences over sqrt n; it holds the estimator's noise, not "
                              "its bias). With --out: FPPL against RPPL over each run's decoding sweep (greedy "
                              "and the temperatures of `textebm evaluate`), one curve per run, real text as a "
                              "point.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folders evaluated by `textebm evaluate`")
    p.add_argument("--split", choices=("test", "valid"), default="test", help="which evaluation (default test)")
    p.add_argument("--out", type=path_type, metavar="FIGURE",
                   help="also draw the quality-diversity figure here (.png, .pdf or .svg)")
    p.add_argument("--labels", nargs="+", metavar="NAME", help="curve labels (default: the run folders' names)")
    p.add_argument("--title", help="figure title")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from textebm.errors import UserError
    from textebm.evaluation.paired import paired_nll_differences
    from textebm.evaluation.plots import figure_format, plot_quality_diversity
    from textebm.evaluation.reports import load_evaluation
    from textebm.io import check_writable

    labels = args.labels or [Path(run).name for run in args.runs]
    if len(labels) != len(args.runs):
        raise UserError(f"--labels gives {len(labels)} names for {len(args.runs)} runs")
    if args.out:
        check_writable(args.out)
        figure_format(args.out)
    evaluations = [(label, load_evaluation(Path(run), args.split)) for label, run in zip(labels, args.runs)]
    try:
        rows = paired_nll_differences(evaluations)
    except UserError as why:
        if not args.out:
            raise
        rows = None  # the figure alone, as asked; say why the table is missing
        print(f"textebm compare: no NLL table: {why}", file=sys.stderr)
    if args.out:
        figure = plot_quality_diversity(evaluations, Path(args.out), args.title)
    if rows:
        width = max(len(label) for label in labels)
        print(f"NLL per sentence (nats) on {rows[0][2].sentences} {args.split} sentences; difference from "
              f"{labels[0]}, paired over the sentences (negative: better)")
        for i, (label, nll, paired) in enumerate(rows):
            change = f"  {paired.difference:+.2f} +- {paired.stderr:.2f}" if i else ""
            print(f"{label:<{width}}  {nll:.2f}{change}")
    if args.out:
        print(figure)
    return 0
