"""`textebm reconstruct`: each sentence's code by the model's own inference, decoded back greedily;
corpus BLEU and exact-match share of the copies, against the same for prior samples
(textebm.generation.reconstruction)."""

from __future__ import annotations

import argparse

from textebm.cli.common import add_chain_argument, add_data_dir_argument, path_type, seed_type
from textebm.devices import add_device_argument


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "reconstruct", help="decode sentences back from their latent codes; BLEU against the inputs",
        description="Infer each sentence's latent code (the run's posterior chain, or its encoder's guess "
                    "refined by the chain), decode it greedily and score the reconstructions against the inputs: "
                    "corpus BLEU (nltk, 0-100) and exact-match share. The baseline is the same BLEU for greedy "
                    "decodings of prior samples: a decoder that ignores z scores no better than it.")
    p.add_argument("--checkpoint", required=True, metavar="RUN", help="run folder")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--split", choices=("test", "valid"),
                        help="held-out split of the run's corpus (default test; valid: a single text file's last "
                             "5%%, held out of training)")
    source.add_argument("--input", metavar="FILE", type=path_type,
                        help="text file, one sentence per line, instead of a split")
    add_data_dir_argument(p, of_a_run=True)
    p.add_argument("--max-sentences", type=int, metavar="N", help="the first N sentences only")
    p.add_argument("--chains", type=int, default=1, metavar="C",
                   help="posterior samples averaged per code (default 1: one sample, as training sees it)")
    p.add_argument("--posterior-steps", type=int, metavar="K", help="Langevin steps per chain (default: the run's)")
    p.add_argument("--seed", type=seed_type, default=0, help="random seed (default 0): same seed, same result")
    p.add_argument("--batch-size", type=int, default=64, help="sentences per batch (default 64)")
    p.add_argument("--examples", type=int, default=5, metavar="N", help="reconstructions shown in the text output")
    p.add_argument("--json", action="store_true",
                   help="print exactly one JSON object: the figures and every sentence's reconstruction")
    add_chain_argument(p)
    add_device_argument(p)
    p.set_defaults(run=run)


def _check_args(args) -> None:
    from textebm.cli.common import check_option
    from textebm.config import MAX_CHAIN_STEPS, MAX_CHAINS
    from textebm.errors import UserError

    for name, low in (("batch_size", 1), ("examples", 0)):
        if getattr(args, name) < low:
            raise UserError(f"--{name.replace('_', '-')} must be at least {low}, not {getattr(args, name)}")
    check_option("--chains", args.chains, 1, MAX_CHAINS)
    if args.max_sentences is not None and args.max_sentences < 1:
        raise UserError(f"--max-sentences must be at least 1, not {args.max_sentences}")
    if args.posterior_steps is not None:
        check_option("--posterior-steps", args.posterior_steps, 0, MAX_CHAIN_STEPS)


def run(args: argparse.Namespace) -> int:
    import json
    import sys
    import time

    from textebm.cli.common import load_latent_run, read_sentences
    from textebm.data.corpora import evaluation_splits, open_run_corpus
    from textebm.generation.reconstruction import reconstruct_lines

    _check_args(args)
    lines = None if args.input is None else read_sentences(args.input)  # input errors before the (slower) model load
    loaded = load_latent_run(args.checkpoint, args.device, args.threads, "reconstruct", args.chain, args.tf32)
    if lines is None:
        split = args.split or "test"
        corpus, changed = open_run_corpus(loaded.folder, loaded.config.corpus, args.data_dir)
        for warning in changed:
            print(f"warning: {warning}", file=sys.stderr)
        _, lines, source = evaluation_splits(corpus, loaded.config.train_split, split)
        source = f"{corpus.name} {source}"
    else:
        source = args.input
    lines = lines[:args.max_sentences]

    started = time.perf_counter()
    result = reconstruct_lines(loaded.model, loaded.vocab, lines, args.chains, args.seed, args.batch_size,
                               args.posterior_steps)
    seconds = round(time.perf_counter() - started, 2)
    if result.truncated:
        print(f"{result.truncated} lines cut to the run's max_length ({loaded.config.max_length} tokens)",
              file=sys.stderr)
    if args.json:
        report = {"run": str(loaded.folder), "step": loaded.step, "source": source, **result.summary(),
                  "seconds": seconds, "sentences": result.rows(),
                  "baseline_examples": result.baseline[:args.examples]}
        sys.stdout.write(json.dumps(report, indent=1) + "\n")
        return 0
    print(f"run {loaded.folder} (step {loaded.step}): {len(lines)} sentences of {source}")
    print(f"codes: {result.inference}; greedy decoding")
    for x, y in list(zip(result.inputs, result.outputs))[:args.examples]:
        print(f"  input           {x}\n  reconstruction  {y}")
    print(f"BLEU (0-100)            {result.bleu:6.2f}  exact match {100 * result.exact_match:5.1f}%")
    print(f"prior-sample baseline   {result.baseline_bleu:6.2f}  exact match {100 * result.baseline_exact_match:5.1f}%")
    print(result.verdict)
    print(f"({seconds} s)", file=sys.stderr)
    return 0
