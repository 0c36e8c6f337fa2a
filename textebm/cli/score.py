"""`textebm score`: an anomaly score per sentence (-log p(x, z) at posterior samples), or the AUROC
that separates a normal file from an anomalous one. See textebm.evaluation.anomaly for what the score means."""

from __future__ import annotations

import argparse

from textebm.cli.common import add_chain_argument, path_type, read_sentences, seed_type
from textebm.devices import add_device_argument
from textebm.progress import add_progress_argument


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "score", help="anomaly scores of sentences (negative log joint at posterior samples)",
        description="Score each non-blank line of FILE by -log p(x, z) at posterior samples z ~ p(z | x), "
                    "averaged over chains. Output (tab-separated, one line per non-blank input line): "
                    "per-token score, total score (nats), tokens (words + </s>), sentence (its whitespace as single "
                    "spaces). Higher = more anomalous. With --auroc NORMAL ANOMALOUS: score both files and print the "
                    "AUROC.")
    p.add_argument("--checkpoint", required=True, help="run folder")
    p.add_argument("file", nargs="?", metavar="FILE", help="text file, one sentence per line")
    p.add_argument("--auroc", nargs=2, metavar=("NORMAL", "ANOMALOUS"),
                   help="instead of FILE: score two files, print AUROC (anomalous scored higher = 1.0)")
    p.add_argument("--num-chains", type=int, default=4, help="posterior chains averaged per sentence (default 4)")
    p.add_argument("--posterior-steps", type=int, help="Langevin steps per chain (default: the run's K1)")
    p.add_argument("--seed", type=seed_type, default=0, help="random seed (default 0): same seed, same scores")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per batch (default 64)")
    p.add_argument("--out", type=path_type, help="write to this file (atomically) instead of stdout")
    p.add_argument("--json", action="store_true", help="JSON output instead of tab-separated text")
    add_progress_argument(p)
    add_chain_argument(p)
    add_device_argument(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    import time

    from textebm.cli.common import check_option
    from textebm.config import MAX_CHAIN_STEPS, MAX_CHAINS
    from textebm.devices import resolve_device
    from textebm.errors import UserError
    from textebm.evaluation.anomaly import auroc, score_lines
    from textebm.io import atomic_write_text, check_writable
    from textebm.model.runs import load_run
    from textebm.progress import Progress

    if (args.file is None) == (args.auroc is None):
        raise UserError("give either FILE or --auroc NORMAL ANOMALOUS (exactly one)")
    check_option("--num-chains", args.num_chains, 1, MAX_CHAINS)
    if args.batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, not {args.batch_size}")
    if args.posterior_steps is not None:
        check_option("--posterior-steps", args.posterior_steps, 0, MAX_CHAIN_STEPS)
    if args.out:
        check_writable(args.out)  # before the scoring, not after
    files = [args.file] if args.file else list(args.auroc)
    texts = [read_sentences(f) for f in files]  # input errors before the (slower) model load
    loaded = load_run(args.checkpoint, resolve_device(args.device, args.threads, args.tf32), args.chain)

    started = time.perf_counter()
    progress = Progress.auto(args.progress)
    steps = loaded.config.posterior_steps if args.posterior_steps is None else args.posterior_steps
    progress.note(f"score: {sum(map(len, texts))} sentences x {args.num_chains} posterior chains x {steps} steps")
    results = []
    for name, lines in zip(files, texts):
        with progress.bar(f"scoring {name}", len(lines), "sentence") as bar:
            results.append(score_lines(loaded.model, loaded.vocab, lines, args.num_chains, args.seed, args.batch_size,
                                       args.posterior_steps, progress=lambda done, total: bar.update(done - bar.n)))
    seconds = time.perf_counter() - started
    for name, res in zip(files, results):
        if res.truncated:
            print(f"{name}: {res.truncated} lines cut to the run's max_length ({loaded.config.max_length} tokens)",
                  file=sys.stderr)

    if args.file:
        res, lines = results[0], texts[0]
        if args.json:
            text = json.dumps(res.rows(lines), indent=1) + "\n"
        else:
            # the sentence's whitespace (tabs included) made single spaces, as it is tokenised: four columns a row
            text = "".join(f"{p:.4f}\t{t:.3f}\t{n}\t{' '.join(s.split())}\n"
                           for s, n, t, p in zip(lines, res.tokens, res.total, res.per_token))
        summary = f"scored {len(lines)} sentences in {seconds:.1f} s ({args.num_chains} chains each)"
    else:
        normal, anomalous = results
        report = {"normal": files[0], "anomalous": files[1], "n_normal": len(texts[0]), "n_anomalous": len(texts[1]),
                  "auroc_per_token": auroc(normal.per_token, anomalous.per_token),
                  "auroc_total": auroc(normal.total, anomalous.total),
                  "mean_per_token_normal": sum(normal.per_token) / len(normal.per_token),
                  "mean_per_token_anomalous": sum(anomalous.per_token) / len(anomalous.per_token),
                  "num_chains": args.num_chains, "seed": args.seed, "seconds": round(seconds, 2)}
        if args.json:
            text = json.dumps(report, indent=1) + "\n"
        else:
            text = (f"AUROC per-token score  {report['auroc_per_token']:.4f}\n"
                    f"AUROC total score      {report['auroc_total']:.4f}\n"
                    f"mean per-token score   normal {report['mean_per_token_normal']:.4f}  "
                    f"anomalous {report['mean_per_token_anomalous']:.4f}\n")
        summary = (f"scored {len(texts[0])} + {len(texts[1])} sentences in {seconds:.1f} s "
                   f"({args.num_chains} chains each)")
    if args.out:
        atomic_write_text(args.out, text)
        print(f"wrote {args.out}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    print(summary, file=sys.stderr)
    return 0
