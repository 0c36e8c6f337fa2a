"""`textebm evaluate`: NLL and perplexity by importance sampling, latent diagnostics, FPPL/RPPL of samples.

Thin: reads the split, calls textebm.likelihood / textebm.diagnostics / lm_eval, prints a table
or one JSON object and writes the same JSON to RUN/evaluation-<split>.json. The estimators are
described in textebm/likelihood.py and docs/evaluate-command.md.
"""

from __future__ import annotations

import argparse

from textebm.cli.common import add_chain_argument
from textebm.devices import add_device_argument, add_precision_argument, resolve_device

TEMPERATURES = (0.5, 0.7, 0.85, 1.0)
USAGE_AU_SENTENCES = 256
PPL_CONVENTION = ("exp(sum of per-sentence NLL / number of predicted tokens); tokens = words after encoding "
                  "with the run's vocabulary (unknown words as <unk>, lines cut to the run's max_length) plus "
                  "one end-of-sentence per sentence")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="NLL/perplexity by importance sampling, latent diagnostics, FPPL/RPPL of samples",
        description="Evaluate a trained run on a held-out split: per-sentence NLL and per-word perplexity "
        "by importance sampling (Gaussian proposals fitted to short-run posterior chains; the EBM prior's "
        "log Z by Monte Carlo), KL to the prior, mutual information, active units, and FPPL/RPPL of "
        "generated sentences under KenLM 5-grams. Writes RUN/evaluation-<split>.json.")
    p.add_argument("--checkpoint", required=True, metavar="RUN", help="run folder")
    p.add_argument("--split", choices=("test", "valid"), default="test", help="held-out split (default test)")
    p.add_argument("--data-dir", metavar="D", help="folder of the corpora (default: $TEXTEBM_DATA_DIR, else data/)")
    p.add_argument("--max-sentences", type=int, metavar="N",
                   help="importance-sample the first N held-out sentences only (FPPL/RPPL use them all)")
    p.add_argument("--num-chains", type=int, default=16, metavar="C", help="posterior chains per sentence (default 16)")
    p.add_argument("--posterior-steps", type=int, metavar="K",
                   help="Langevin steps of the proposal's posterior chains (default: the run's K1)")
    p.add_argument("--num-is-samples", type=int, default=100, metavar="S",
                   help="importance samples per sentence (default 100)")
    p.add_argument("--partition-samples", type=int, default=100_000, metavar="N",
                   help="Monte Carlo draws for the prior's log Z (default 100000)")
    p.add_argument("--fppl-samples", type=int, default=1000, metavar="N",
                   help="generated sentences per decoding for FPPL/RPPL (default 1000; 0: skip)")
    p.add_argument("--temperatures", type=float, nargs="+", default=list(TEMPERATURES), metavar="T",
                   help="sampling temperatures of the decoding sweep, besides greedy decoding "
                        f"(default {' '.join(map(str, TEMPERATURES))})")
    p.add_argument("--chunk", type=int, default=32, metavar="N", help="sentences evaluated together (default 32)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    add_chain_argument(p)
    add_precision_argument(p)
    add_device_argument(p)
    p.set_defaults(run=run)


def _check_args(args) -> None:
    import math

    from textebm.errors import UserError

    for name, low in (("num_chains", 1), ("num_is_samples", 1), ("partition_samples", 2), ("fppl_samples", 0),
                      ("chunk", 1)):
        if getattr(args, name) < low:
            raise UserError(f"--{name.replace('_', '-')} must be at least {low}, not {getattr(args, name)}")
    if args.posterior_steps is not None and args.posterior_steps < 0:
        raise UserError(f"--posterior-steps must not be negative, not {args.posterior_steps}")
    if not all(math.isfinite(t) and t > 0 for t in args.temperatures):
        raise UserError(f"--temperatures must be positive numbers, not {' '.join(map(str, args.temperatures))}")
    if args.max_sentences is not None and args.max_sentences < 1:
        raise UserError(f"--max-sentences must be at least 1, not {args.max_sentences}")


def decodings(temperatures) -> list:
    """The decoding sweep: greedy, then ancestral sampling at each temperature (`textebm sample`'s code)."""
    from textebm.sampling import SamplingOptions

    return [("greedy", SamplingOptions(greedy=True))] + [
        (f"temperature {t:g}", SamplingOptions(temperature=t)) for t in temperatures]


def generation_metrics(loaded, train_lines: list[str], test_lines: list[str], n: int, seed: int,
                       temperatures=TEMPERATURES) -> dict:
    """FPPL/RPPL and sample statistics of `n` sentences from the run per decoding (greedy and each
    temperature), all against one load of the real-data LM (lm_eval, KenLM 5-grams, estimated on the
    lines the run trained on and cached by their content; the reverse LMs are scored on the held-out
    lines). The reference row of real text with this evaluator (compare models to it, not to other
    evaluators' numbers): FPPL of the held-out text (`real_lm_test_ppl`), and RPPL and sample
    statistics of `n` random training lines (`real_reference`; their FPPL would be in-sample)."""
    import random

    from textebm.cli.common import import_lm_eval
    from textebm.errors import UserError
    from textebm.sampling import generate_text

    lm_eval = import_lm_eval()
    sweep = decodings(temperatures)
    sets, examples = {}, {}
    for name, options in sweep:
        sentences = generate_text(loaded.model, loaded.vocab, n, options, seed)
        sets[name] = lm_eval.normalize_lines(sentences, "samples")
        examples[name] = sentences[:5]
    real = random.Random(seed).sample(train_lines, min(n, len(train_lines)))
    sets["real"] = lm_eval.normalize_lines(real, "real")
    try:
        out = lm_eval.evaluate_sample_sets(sets, lm_eval.normalize_lines(train_lines, "training"),
                                           lm_eval.normalize_lines(test_lines, "test"))
    except lm_eval.EvalError as err:
        raise UserError(f"FPPL/RPPL: {err} (use --fppl-samples 0 to skip)") from None
    reference = out["sets"].pop("real")
    rows = []
    for name, options in sweep:
        rows.append({"decoding": name, "greedy": options.greedy,
                     "temperature": None if options.greedy else options.temperature,
                     **out["sets"][name], "examples": examples[name]})
    return {
        "real_lm_test_ppl": out["real"]["test_ppl"],
        "real_lm": {key: out["real"][key] for key in ("path", "cached", "num_sentences", "discount_fallback")},
        "real_reference": {"sentences": f"{len(real)} random lines of the training text (seed {seed})",
                           **{key: reference[key] for key in ("num_samples", "reverse_ppl", "unique_share",
                                                                "distinct_1", "distinct_2", "self_bleu")}},
        "n": n, "seed": seed, "max_length": sweep[0][1].max_length, "prior_steps": loaded.config.prior_steps,
        "precision": loaded.model.decoding_precision,
        "order": out["order"], "count_eos": out["count_eos"],
        "decodings": rows,
    }


def evaluate(args) -> dict:
    """Everything the command reports, as one JSON-ready dict."""
    import math
    import sys
    import time

    import torch

    from textebm.batches import encode_lines
    from textebm.config import CHAIN_KEYS
    from textebm.corpora import evaluation_splits, open_corpus
    from textebm.diagnostics import AU_STDERRS, AU_THRESHOLD, PRIOR_DRAWS, latent_usage
    from textebm.likelihood import evaluate_sentences, log_partition
    from textebm.runs import load_run

    _check_args(args)
    started = time.perf_counter()
    device = resolve_device(args.device, args.threads)
    loaded = load_run(args.checkpoint, device, args.chain, args.precision)
    config = loaded.config
    corpus = open_corpus(config.corpus, args.data_dir)
    train_lines, held_out, source = evaluation_splits(corpus, config.train_split, args.split)
    lines = held_out if args.max_sentences is None else held_out[:args.max_sentences]  # for the NLL only
    encoded = encode_lines(lines, loaded.vocab, config.max_length)
    # The sentences actually scored, and their predicted tokens (after any --max-sentences cut).
    num_tokens = sum(len(s) - 1 for s in encoded.sentences)

    generator = torch.Generator(device=device).manual_seed(args.seed)
    model = loaded.model
    log_z, log_z_se = log_partition(model.prior, args.partition_samples, generator=generator)

    def progress(done, total):
        if not args.json:
            print(f"\r  importance sampling: {done}/{total} sentences", end="", file=sys.stderr, flush=True)

    res = evaluate_sentences(model, encoded.sentences, loaded.vocab.pad_id, log_z, args.num_chains,
                             args.num_is_samples, generator, chunk=args.chunk, progress=progress,
                             posterior_steps=args.posterior_steps)
    if not args.json:
        print(file=sys.stderr)
    nll = -res.log_px.double()
    usage = (latent_usage(model, encoded.sentences, loaded.vocab.pad_id, batch_size=args.chunk, generator=generator,
                          au_sentences=USAGE_AU_SENTENCES, log_px=res.log_px) if model.has_latent else None)
    log_w_var = res.log_w.double().var(1, correction=1) if res.log_w.shape[1] > 1 else torch.zeros_like(nll)
    result = {
        "run": str(loaded.folder), "step": loaded.step, "corpus": corpus.name, "split": args.split,
        "evaluated_text": source, "trained_on": config.train_split,
        "prior": config.prior, "latent_dim": model.prior.latent_dim,
        "chains": {key: getattr(config, key) for key in CHAIN_KEYS},
        "num_sentences": len(encoded.sentences), "num_tokens": num_tokens, "truncated_lines": encoded.truncated,
        "nll_per_sentence": float(nll.mean()),
        "nll_per_token": float(nll.sum() / num_tokens),
        "perplexity": math.exp(float(nll.sum() / num_tokens)),
        "perplexity_convention": PPL_CONVENTION,
        "elbo_per_sentence": float(res.log_w.double().mean(1).mean()),
        "log_partition": {"log_z": log_z, "stderr": log_z_se,
                          "num_samples": args.partition_samples if model.prior.is_ebm else 0,
                          "estimator": "log mean_{z ~ N(0, sigma^2 I)} exp f(z) (logsumexp); stderr by the "
                                       "delta method, std(w) / (sqrt(N) mean(w)); exactly 0 for a Gaussian prior"},
        "importance_sampling": None if not model.has_latent else {
            "estimator": "log p(x) = logmeanexp_s [log p(x|z_s) + log p_alpha(z_s) - log q(z_s|x)], z_s ~ q; "
                         "q = 0.5 G + 0.5 N(0, sigma^2 I) (defensive mixture), G = diagonal Gaussian fitted "
                         "to the sentence's posterior-chain samples",
            "num_chains": args.num_chains,
            "posterior_steps": config.posterior_steps if args.posterior_steps is None else args.posterior_steps,
            "posterior_step_size": config.posterior_step_size, "num_samples": args.num_is_samples,
            "proposal_std": "1.2 * chain std + 0.05", "defensive_share": 0.5,
            "ess_mean": float(res.ess.mean()), "ess_median": float(res.ess.median()),
            "ess_min": float(res.ess.min()), "log_w_var_mean": float(log_w_var.mean()),
            "chain_std_mean": float(res.chain_std.mean()),
        },
        "latent_usage": None if usage is None else {
            "gap": usage["gap"], "nll_posterior": usage["nll_posterior"], "nll_prior": usage["nll_prior"],
            "mutual_information": usage["mutual_information"], "active_units": usage["active_units"],
            "unit_sensitivity": usage["unit_sensitivity"],
            "estimators": {
                "gap": "mean log p(x|z+) - mean log p(x|z-) per token; z+ one posterior chain (the run's settings), "
                       f"z- {PRIOR_DRAWS} prior draws per sentence",
                "mutual_information": "E_x[log p(x|z+) - log p(x)] = E_x KL(p(z|x) || p(z)) in nats per sentence, "
                                      "log p(x) the importance-sampled estimate above",
                "active_units": f"units whose swap for a prior draw costs > {AU_THRESHOLD} nats/sentence and > "
                                f"{AU_STDERRS:g} standard errors (first {USAGE_AU_SENTENCES} sentences)",
                "note": "every figure is exactly 0 for a decoder that ignores z (textebm/diagnostics.py)"},
        },
        "exact_likelihood": not model.has_latent,
        "seed": args.seed,
    }
    if args.fppl_samples == 0:
        result["generation"] = None
        result["generation_skipped"] = "--fppl-samples 0"
    else:
        result["generation"] = generation_metrics(loaded, train_lines, held_out, args.fppl_samples, args.seed,
                                                  args.temperatures)
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result


def _fmt(x) -> str:
    return "n/a" if x is None else f"{x:.4g}" if abs(x) < 10 else f"{x:.2f}"


def format_table(r: dict) -> str:
    isd, lz, gen = r["importance_sampling"], r["log_partition"], r["generation"]
    rows = [
        ("run / step", f"{r['run']} / {r['step']}"),
        ("corpus / split", f"{r['corpus']} / {r['evaluated_text']} ({r['num_sentences']} sentences, "
                           f"{r['num_tokens']} tokens); trained on {r['trained_on']}"),
        ("NLL per sentence (nats)", _fmt(r["nll_per_sentence"])),
        ("perplexity (per token, </s> counted)", _fmt(r["perplexity"])),
    ]
    notes = []
    if isd is None:
        rows.append(("likelihood", "exact (prior=none: a language model without latent)"))
    else:
        rows += [
            ("ELBO-style mean log w per sentence", _fmt(r["elbo_per_sentence"])),
            ("log Z of the prior (stderr, draws)", f"{lz['log_z']:.4f} ({lz['stderr']:.2g}, {lz['num_samples']})"),
            ("IS: chains x steps / draws per sentence",
             f"{isd['num_chains']} x {isd['posterior_steps']} / {isd['num_samples']}"),
            ("IS: effective sample size mean / min", f"{isd['ess_mean']:.1f} / {isd['ess_min']:.1f}"),
        ]
        notes.append(f"estimator: {isd['estimator']}; G's std = {isd['proposal_std']}")
    usage = r["latent_usage"]
    if usage is not None:
        rows += [
            ("NLL/token with posterior z / prior z (gap)",
             f"{_fmt(usage['nll_posterior'])} / {_fmt(usage['nll_prior'])} ({usage['gap']:.3f})"),
            ("mutual information, E KL(p(z|x) || p(z)) (nats)", _fmt(usage["mutual_information"])),
            ("active units", f"{usage['active_units']} / {r['latent_dim']}"),
        ]
        notes.append(f"latent usage: {usage['estimators']['note']}")
    if gen is not None:
        rows.append((f"FPPL / RPPL / distinct-2 / self-BLEU ({gen['n']} samples each, {gen['order']}-gram)", ""))
        for row in gen["decodings"]:
            rows.append((f"  {row['decoding']}", f"{_fmt(row['forward_ppl'])} / {_fmt(row['reverse_ppl'])} / "
                                                 f"{_fmt(row['distinct_2'])} / {_fmt(row['self_bleu'])}"))
        ref = gen["real_reference"]
        rows.append((f"  real text (FPPL of held-out; RPPL of {ref['num_samples']} training lines)",
                     f"{_fmt(gen['real_lm_test_ppl'])} / {_fmt(ref['reverse_ppl'])} / {_fmt(ref['distinct_2'])} / "
                     f"{_fmt(ref['self_bleu'])}"))
        rows.append(("quality-diversity figure", r["figure"]))
    else:
        rows.append(("FPPL / RPPL", f"skipped: {r['generation_skipped']}"))
    rows.append(("seconds", _fmt(r["seconds"])))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows] + notes
    lines.append(f"perplexity: {r['perplexity_convention']}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from textebm.cli.common import json_safe
    from textebm.io import atomic_write_text
    from textebm.plots import plot_quality_diversity

    result = evaluate(args)
    if result["generation"] is not None:
        figure = Path(args.checkpoint) / f"quality_diversity-{args.split}.png"
        result["figure"] = str(plot_quality_diversity([(Path(args.checkpoint).name, result)], figure))
    result = json_safe(result)
    text = json.dumps(result, allow_nan=False)
    atomic_write_text(Path(args.checkpoint) / f"evaluation-{args.split}.json", json.dumps(result, indent=2) + "\n")
    print(text if args.json else format_table(result))
    return 0
