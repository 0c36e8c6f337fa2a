"""`textebm interpolate`: sentences decoded (greedy) along the straight line between the posterior
codes of two sentences.

A single short-run posterior sample is noisy (the chain starts from noise and ends with a noise
step), so each sentence's code is the mean of `--chains` independent posterior samples: an
estimate of the posterior mean E[z | x], stable across seeds."""

from __future__ import annotations

import argparse

from textebm.cli.common import add_chain_argument
from textebm.devices import add_device_argument


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("interpolate", help="sentences along the line between two sentences' latent codes")
    p.add_argument("--checkpoint", required=True, help="run folder")
    p.add_argument("--from", dest="source", required=True, help="first sentence")
    p.add_argument("--to", dest="target", required=True, help="second sentence")
    p.add_argument("--points", type=int, default=7, help="points on the line, endpoints included (default 7)")
    p.add_argument("--chains", type=int, default=8, help="posterior samples averaged per code (default 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--max-length", type=int, default=40, help="maximum tokens per sentence (default 40)")
    p.add_argument("--json", action="store_true", help="JSON output")
    add_chain_argument(p)
    add_device_argument(p)
    p.set_defaults(run=run)


def posterior_codes(model, vocab, sentences: list[str], chains: int, seed: int):
    """Mean of `chains` posterior samples per sentence: shape (len(sentences), latent)."""
    import torch

    from textebm.batches import encode_lines, pad

    tokens = pad(encode_lines(sentences, vocab, model.config.max_length).sentences, model.pad_id).to(model.device)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    return model.posterior_chains(tokens, chains, generator=generator).mean(dim=1)


def interpolate(model, vocab, source: str, target: str, points: int, chains: int, seed: int,
                max_length: int) -> list[tuple[float, str]]:
    import torch

    from textebm.decoding import decode

    codes = posterior_codes(model, vocab, [source, target], chains, seed)
    weights = torch.linspace(0.0, 1.0, points, device=model.device).unsqueeze(1)
    line = (1 - weights) * codes[0] + weights * codes[1]  # (points, latent), one batch
    ids = decode(model.decoder, line, model.bos_id, model.eos_id, max_length, greedy=True)
    return [(float(w), vocab.decode(row)) for w, row in zip(weights.squeeze(1).tolist(), ids.tolist())]


def run(args: argparse.Namespace) -> int:
    import json
    import sys

    from textebm.cli.common import load_latent_run
    from textebm.errors import UserError

    for flag, text in (("--from", args.source), ("--to", args.target)):
        if not text.strip():
            raise UserError(f"{flag} is empty: give a sentence")
    if args.points < 2:
        raise UserError(f"--points must be at least 2 (the two endpoints), not {args.points}")
    if args.chains < 1:
        raise UserError(f"--chains must be at least 1, not {args.chains}")
    if args.max_length < 1:
        raise UserError(f"--max-length must be at least 1, not {args.max_length}")
    loaded = load_latent_run(args.checkpoint, args.device, args.threads, "interpolate", args.chain)
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
