"""The BDMC sandwich around log p(x) on sentences sampled from a trained run, and where `evaluate`'s
estimators lie in it (issue 24's check: a gap of at most 1 nat per sentence on 50 sentences).

    python -m bench.bdmc_sandwich RUN [--sentences 50] [--temperatures 200] [--chains 4]
        [--estimate 20x8 --estimate 80x8] [--ais 1000x2000] [--seed 0] [--threads 1] [--out FILE.json]

Sentences come with their codes from the model itself (`bdmc.model_samples`; for an EBM prior the
codes are resampled from the final states of log Z's AIS, `--ais CHAINSxTEMPERATURES`), so each code
is a posterior draw and reverse annealing from it bounds log p(x) from above, forward annealing from
below (`textebm.inference.bdmc`). The annealing's reference is the Laplace Gaussian that `evaluate`
fits (one tempered chain, Hessian, Newton step). Each `--estimate TEMPERATURESxCHAINS` is
`evaluate`'s estimator with that many AIS temperatures and chains, run on the same sentences through
`likelihood.evaluate_sentences`: its mean, how far it lies below the lower bound, and how many
sentences it puts inside the sandwich widened by 0.5 nat. Times are CPU seconds of this process.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from textebm.errors import UserError
from textebm.io import atomic_write_text

WIDENED = 0.5  # nats: an estimate this close to the sandwich counts as inside


def pair(text: str, what: str) -> tuple[int, int]:
    """'AxB' as two positive integers."""
    a, sep, b = text.partition("x")
    if not (sep and a.isdigit() and b.isdigit() and int(a) > 0 and int(b) > 0):
        raise UserError(f"{what} {text!r}: expected two positive integers as AxB, e.g. 80x8")
    return int(a), int(b)


def parse_args(argv):
    p = argparse.ArgumentParser(prog="python -m bench.bdmc_sandwich", description=__doc__.split("\n\n")[0])
    p.add_argument("run", help="a trained run folder (latent model: EBM or Gaussian prior)")
    p.add_argument("--sentences", type=int, default=50, help="sentences sampled from the model")
    p.add_argument("--max-length", type=int, default=40, help="their longest length in tokens")
    p.add_argument("--temperatures", type=int, default=200, help="of each annealing, forward and reverse")
    p.add_argument("--chains", type=int, default=4, help="annealing chains per sentence, each way")
    p.add_argument("--estimate", action="append", metavar="TxC",
                   help="evaluate's estimator at T temperatures and C chains (repeatable; default 20x8 and 80x8)")
    p.add_argument("--ais", default="1000x2000", metavar="CxT", help="log Z's AIS: chains x temperatures")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", help="also write the figures to this JSON file")
    return p.parse_args(argv)


def sandwich(loaded, sentences: int, max_length: int, temperatures: int, chains: int,
             estimates: list[tuple[int, int]], ais: tuple[int, int], seed: int) -> dict:
    """The figures of the module docstring, as a dict."""
    import torch

    from textebm.inference.annealing import GaussianReference
    from textebm.inference.bdmc import bdmc, model_samples
    from textebm.inference.laplace import best_chain_end, laplace_proposal
    from textebm.inference.likelihood import evaluate_sentences, partition_function

    model, pad = loaded.model, loaded.vocab.pad_id
    g = torch.Generator().manual_seed(seed)
    partition, estimate = partition_function(model.prior, *ais, generator=g)
    tokens, codes = model_samples(model, sentences, max_length, generator=g, ais=estimate)
    lengths = (tokens != pad).sum(1)
    tic = time.process_time()
    start = best_chain_end(model, tokens, model.posterior_chains(tokens, 1, None, g))
    reference = GaussianReference.laplace(laplace_proposal(model, tokens, start))
    bounds = bdmc(model, tokens, codes, partition["log_z"], steps=temperatures, num_chains=chains, step_size=1.0,
                  generator=g, reference=reference)
    out = {"run": str(loaded.folder), "step": loaded.step, "sentences": sentences,
           "mean_tokens": float(lengths.float().mean()), "log_z": partition["log_z"],
           "temperatures": temperatures, "chains": chains,
           "lower": float(bounds.lower.mean()), "upper": float(bounds.upper.mean()),
           "gap": float(bounds.gap.mean()), "gap_max": float(bounds.gap.max()),
           "cpu_s_per_sentence": (time.process_time() - tic) / sentences, "estimates": []}
    ids = [row[:int(n)].tolist() for row, n in zip(tokens, lengths)]
    for steps, draws in estimates:
        tic = time.process_time()
        res = evaluate_sentences(model, ids, pad, partition["log_z"], 1, draws, torch.Generator().manual_seed(seed + 1),
                                 anneal_steps=steps)
        inside = (res.log_px >= bounds.lower - WIDENED) & (res.log_px <= bounds.upper + WIDENED)
        out["estimates"].append({"temperatures": steps, "chains": draws, "mean": float(res.log_px.mean()),
                                 "below_lower": float((bounds.lower - res.log_px).mean()),
                                 "inside": int(inside.sum()),
                                 "cpu_s_per_sentence": (time.process_time() - tic) / sentences})
    return out


def report(figures: dict) -> str:
    lines = [f"{figures['sentences']} sentences sampled from {figures['run']} (step {figures['step']}, "
             f"{figures['mean_tokens']:.1f} tokens on average), log Z {figures['log_z']:.2f}",
             f"BDMC, {figures['temperatures']} temperatures x {figures['chains']} chains each way: lower "
             f"{figures['lower']:.2f}, upper {figures['upper']:.2f} nats per sentence, gap {figures['gap']:.2f} "
             f"on average (largest {figures['gap_max']:.2f}); {figures['cpu_s_per_sentence']:.1f} CPU s per sentence"]
    for e in figures["estimates"]:
        lines.append(f"evaluate at {e['temperatures']} temperatures x {e['chains']} chains: {e['mean']:.2f}, "
                     f"{e['below_lower']:+.2f} below the lower bound on average, {e['inside']} of "
                     f"{figures['sentences']} within {WIDENED} nat of the sandwich; "
                     f"{e['cpu_s_per_sentence']:.1f} CPU s per sentence")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if min(args.sentences, args.max_length, args.temperatures, args.chains, args.threads) < 1:
            raise UserError("--sentences, --max-length, --temperatures, --chains and --threads must be at least 1")
        estimates = [pair(e, "--estimate") for e in (args.estimate or ["20x8", "80x8"])]
        ais = pair(args.ais, "--ais")
        import torch

        from bench import load_latent_run

        torch.set_num_threads(args.threads)
        loaded = load_latent_run(args.run, "BDMC")
        figures = sandwich(loaded, args.sentences, args.max_length, args.temperatures, args.chains, estimates,
                           ais, args.seed)
    except UserError as err:
        print(f"bdmc_sandwich: error: {err}", file=sys.stderr)
        return 2
    print(report(figures))
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(figures, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
