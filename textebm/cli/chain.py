"""`textebm chain`: sentences along prior Langevin chains (the paper's Table 3), with each chain's
energy profile (textebm.evaluation.prior_chains, textebm.evaluation.plots). Decoding is greedy by
default, so a change of sentence between steps is the chain's move in z, not the token sampler's noise."""

from __future__ import annotations

import argparse

from textebm.cli.common import add_chain_argument, path_type, seed_type
from textebm.devices import add_device_argument


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("chain", help="sentences decoded along prior Langevin chains, energy plot")
    p.add_argument("--checkpoint", required=True, help="run folder")
    p.add_argument("--steps", default="0,40,100", help="comma-separated chain steps to decode (default 0,40,100)")
    p.add_argument("--chains", type=int, default=5, help="number of chains (default 5)")
    p.add_argument("--step-size", type=float, help="Langevin step size (default: the run's prior step size)")
    p.add_argument("--seed", type=seed_type, default=0, help="random seed (default 0)")
    p.add_argument("--greedy", dest="greedy", action="store_true", default=True,
                   help="greedy decoding (the default)")
    p.add_argument("--sample", dest="greedy", action="store_false", help="sample tokens instead of greedy decoding")
    p.add_argument("--max-length", type=int, default=40, help="maximum tokens per sentence (default 40)")
    p.add_argument("--plot", type=path_type, metavar="FIGURE",
                   help="write the chains' energy profiles to this figure (.png, .pdf or .svg)")
    p.add_argument("--json", action="store_true", help="JSON output (sentences and energy profiles)")
    add_chain_argument(p)
    add_device_argument(p)
    p.set_defaults(run=run)


def parse_steps(text: str) -> list[int]:
    """'0, 40,100' -> [0, 40, 100] (sorted, duplicates dropped); UserError on anything else."""
    from textebm.config import MAX_CHAIN_STEPS
    from textebm.errors import UserError

    try:
        steps = sorted({int(item) for item in text.split(",")})
    except ValueError:
        raise UserError(f"--steps must be comma-separated whole numbers like 0,40,100, not {text!r}") from None
    if steps[0] < 0:
        raise UserError(f"--steps must not be negative: {text!r}")
    if steps[-1] > MAX_CHAIN_STEPS:
        raise UserError(f"--steps goes up to {MAX_CHAIN_STEPS}, not {steps[-1]}")
    return steps


def run(args: argparse.Namespace) -> int:
    import json
    import math
    import sys
    from pathlib import Path

    from textebm.cli.common import check_decode_length, check_option, load_latent_run
    from textebm.config import MAX_CHAINS
    from textebm.errors import UserError
    from textebm.evaluation.plots import figure_format, plot_chain_profiles
    from textebm.evaluation.prior_chains import sentences_along_chains
    from textebm.io import check_writable

    steps = parse_steps(args.steps)
    check_option("--chains", args.chains, 1, MAX_CHAINS)
    check_decode_length(args.max_length)
    if args.step_size is not None and not (math.isfinite(args.step_size) and args.step_size > 0):
        raise UserError(f"--step-size must be a positive number, not {args.step_size}")
    if args.plot:
        check_writable(args.plot)
        figure_format(args.plot)
    loaded = load_latent_run(args.checkpoint, args.device, args.threads, "chain", args.chain, tf32=args.tf32)
    result = sentences_along_chains(loaded.model, loaded.vocab, steps, args.chains, args.step_size, args.seed,
                                    args.greedy, args.max_length)
    if args.plot:
        plot_chain_profiles(result, args.plot, f"{Path(args.checkpoint).name}: prior Langevin chains "
                                               f"(step size {result['step_size']}, {result['prior']} prior)")
        print(f"wrote {args.plot}", file=sys.stderr)
    if args.json:
        sys.stdout.write(json.dumps(result, indent=1) + "\n")
        return 0
    for chain in result["chains"]:
        print(f"chain {chain['chain'] + 1}")
        for step in steps:
            print(f"  step {step:>4}  f={chain['energy'][step]:8.3f}  {chain['sentences'][str(step)]}")
    return 0
