"""`textebm interpolate`: sentences decoded (greedy) along the straight line between the codes of
two sentences (textebm.generation.interpolation; each code the mean of `--chains` posterior samples)."""

from __future__ import annotations

import argparse

from textebm.cli.common import add_chain_argument, seed_type
from textebm.devices import add_device_argument


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("interpolate", help="sentences along the line between two sentences' latent codes")
    p.add_argument("--checkpoint", required=True, help="run folder")
    p.add_argument("--from", dest="source", required=True, help="first sentence")
    p.add_argument("--to", dest="target", required=True, help="second sentence")
    p.add_argument("--points", type=int, default=7, help="points on the line, endpoints included (default 7)")
    p.add_argument("--chains", type=int, default=8, help="posterior samples averaged per code (default 8)")
    p.add_argument("--seed", type=seed_type, default=0, help="random seed (default 0)")
    p.add_argument("--max-length", type=int, default=40, help="maximum tokens per sentence (default 40)")
    p.add_argument("--json", action="store_true", help="JSON output")
    add_chain_argument(p)
    add_device_argument(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from textebm.cli.common import check_decode_length, check_option, load_latent_run
    from textebm.config import MAX_CHAINS
    from textebm.errors import UserError
    from textebm.generation.interpolation import interpolate

    for flag, text in (("--from", args.source), ("--to", args.target)):
        if not text.strip():
            raise UserError(f"{flag} is empty: give a sentence")
    check_option("--points", args.points, 2, MAX_CHAINS)  # the two endpoints at least
    check_option("--chains", args.chains, 1, MAX_CHAINS)
    check_decode_length(args.max_length)
    loaded = load_latent_run(args.checkpoint, args.device, args.threads, "interpolate", args.chain, args.tf32)
    limit = loaded.config.max_length
    for flag, text in (("--from", args.source), ("--to", args.target)):
        if len(loaded.vocab.encode(text)) > limit:  # its code is inferred from the first `limit` tokens only
            print(f"textebm interpolate: note: {flag} is cut to the run's max_length ({limit} tokens)",
                  file=sys.stderr)
    path = interpolate(loaded.model, loaded.vocab, args.source.strip(), args.target.strip(), args.points,
                       args.chains, args.seed, args.max_length)
    if args.json:
        sys.stdout.write(json.dumps({"from": args.source, "to": args.target, "chains": args.chains, "seed": args.seed,
                                     "points": [{"t": t, "sentence": s} for t, s in path]}, indent=1) + "\n")
        return 0
    print(f"from:      {args.source.strip()}")
    for t, sentence in path:
        print(f"  t={t:.2f}  {sentence}")
    print(f"to:        {args.target.strip()}")
    return 0
