"""`textebm sample`: sentences from a trained run, one per line."""

from __future__ import annotations

import argparse

from textebm.cli.common import path_type, seed_type
from textebm.config import MAX_SAMPLES, SAMPLE_BATCH_SIZE
from textebm.devices import (
    add_device_argument,
    add_precision_argument,
    decoding_precision_warning,
    resolve_device,
)
from textebm.progress import add_progress_argument


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("sample", help="sample sentences from a trained run")
    p.add_argument("--checkpoint", required=True, help="run folder")
    p.add_argument("-n", type=int, default=10, help=f"number of sentences (default 10, at most {MAX_SAMPLES:,})")
    p.add_argument("--out", type=path_type, help="write to this file (atomically) instead of stdout")
    p.add_argument("--seed", type=seed_type, default=0, help="random seed (default 0): same seed, same sentences")
    p.add_argument("--greedy", action="store_true", help="greedy decoding (z still comes from the prior chain)")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="softmax temperature of ancestral sampling (default 1; --greedy ignores it, and --top-k, "
                        "--top-p)")
    p.add_argument("--top-k", type=int, default=0, help="sample among the k most probable tokens (0: off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold in (0, 1]")
    p.add_argument("--prior-steps", type=int, help="Langevin steps of the prior chain (default: the run's)")
    p.add_argument("--max-length", type=int, default=40, help="maximum tokens per sentence (default 40)")
    p.add_argument("--batch-size", type=int, default=SAMPLE_BATCH_SIZE,
                   help=f"sentences decoded together (default {SAMPLE_BATCH_SIZE}); each batch draws from its own "
                        "seed, made from --seed")
    add_precision_argument(p)
    add_device_argument(p)
    add_progress_argument(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from textebm.cli.common import check_decode_length, check_option
    from textebm.config import MAX_CHAIN_STEPS
    from textebm.errors import UserError
    from textebm.generation.sampling import SamplingOptions, generate_text
    from textebm.io import atomic_write_text, check_writable
    from textebm.model.runs import load_run
    from textebm.progress import Progress

    check_option("-n", args.n, 1, MAX_SAMPLES)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, not {args.batch_size}")
    check_decode_length(args.max_length)
    if args.prior_steps is not None:
        check_option("--prior-steps", args.prior_steps, 0, MAX_CHAIN_STEPS)
    options = SamplingOptions(args.max_length, args.greedy, args.temperature, args.top_k, args.top_p,
                              args.prior_steps).validate()
    ignored = [flag for flag, given in (("--temperature", args.temperature != 1.0), ("--top-k", args.top_k != 0),
                                        ("--top-p", args.top_p != 1.0)) if given]
    if args.greedy and ignored:
        print(f"textebm sample: warning: --greedy takes the most probable token: {', '.join(ignored)} "
              "ignored", file=sys.stderr)
    if args.out:
        check_writable(args.out)  # before the sentences are drawn, not after
    device = resolve_device(args.device, args.threads, args.tf32)
    if warning := decoding_precision_warning(args.precision, device):
        print(f"textebm sample: warning: {warning}", file=sys.stderr)
    loaded = load_run(args.checkpoint, device, precision=args.precision)
    with Progress.auto(args.progress).bar("sampling", args.n, "sentence") as bar:
        sentences = generate_text(loaded.model, loaded.vocab, args.n, options, args.seed, args.batch_size,
                                  on_batch=bar.update)
    text = "".join(s + "\n" for s in sentences)
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {len(sentences)} sentence{'s' * (len(sentences) != 1)} to {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
