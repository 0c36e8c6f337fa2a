"""`textebm evaluate`: NLL and perplexity by importance sampling, latent diagnostics, FPPL/RPPL of samples.

Thin: parses, calls textebm.evaluation.reports.evaluate_run (which `textebm reproduce` calls alike),
prints a table or one JSON object; the library writes the same JSON to RUN/evaluation-<split>.json (or
--out FILE). Progress goes to stderr (textebm.progress). The estimators are described in docs/evaluate-command.md.
"""

from __future__ import annotations

import argparse

from textebm.cli.common import (
    add_chain_argument,
    add_data_dir_argument,
    add_protocol_arguments,
    cell,
    path_type,
    protocol_options,
    protocol_rows,
    seed_type,
)
from textebm.devices import add_device_argument, add_precision_argument
from textebm.evaluation.decoding_sweep import TEMPERATURES
from textebm.evaluation.held_out import (
    AIS_CHAINS,
    IS_DRAWS,
    PATH_PRECISIONS,
    USAGE_AU_SENTENCES,
    EvaluationOptions,
)
from textebm.progress import add_progress_argument

DEFAULTS = EvaluationOptions(checkpoint="")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="NLL/perplexity by importance sampling, latent diagnostics, FPPL/RPPL of samples",
        description="Evaluate a trained run on a held-out split: per-sentence NLL and per-token perplexity "
        "(tokens: words and </s>) by annealed importance sampling per sentence from a Laplace approximation at "
        "its posterior mode (or plain importance sampling from it; the EBM prior's log Z by annealed importance "
        "sampling), how far to trust it (ESS, the estimate from a tenth of the draws), the prior chain's bias "
        "against an exact sampler, mutual information and active units (and, for a VAE run, KL(q||p)), "
        "reconstruction BLEU, and FPPL/RPPL of generated sentences under KenLM 5-grams. Writes "
        "RUN/evaluation-<split>.json (or --out FILE).")
    p.add_argument("--checkpoint", required=True, metavar="RUN", help="run folder")
    p.add_argument("--split", choices=("test", "valid"), default="test",
                   help="held-out split (default test); for a run on a single text file, valid is the last 5%% of "
                        "it, held out of training")
    add_data_dir_argument(p, of_a_run=True)
    p.add_argument("--max-sentences", type=int, metavar="N",
                   help="importance-sample the first N held-out sentences only (FPPL/RPPL use them all)")
    p.add_argument("--num-chains", type=int, default=DEFAULTS.num_chains, metavar="C",
                   help="tempered posterior chains per sentence; AIS starts from the mixture of their ends' Laplace "
                        f"Gaussians (--anneal-steps 0: the best end's) (default {DEFAULTS.num_chains})")
    p.add_argument("--posterior-steps", type=int, metavar="K",
                   help="Langevin steps of the proposal's posterior chains (default: the run's K1)")
    p.add_argument("--num-is-samples", type=int, metavar="S",
                   help=f"draws per sentence: AIS chains (default {AIS_CHAINS}; more to compare models within a "
                        f"tenth of a nat per sentence: docs/evaluate-command.md), or with --anneal-steps 0 (and for "
                        f"a VAE, from "
                        f"its q) importance samples (default {IS_DRAWS})")
    p.add_argument("--anneal-steps", type=int, default=DEFAULTS.anneal_steps, metavar="T",
                   help="anneal each draw from the Laplace Gaussians (their mixture) to the posterior through T "
                        "temperatures (annealed importance sampling; 0: plain importance sampling from the Laplace "
                        "proposal; "
                        f"default {DEFAULTS.anneal_steps})")
    p.add_argument("--curvature-directions", type=int, default=DEFAULTS.curvature_directions, metavar="K",
                   help="the mixture's Hessians: the best chain end's its own, each other end's the best's "
                        "re-measured along its K stiffest directions (K + 1 gradient rows instead of d + 1; "
                        f"K >= the latent size: every end its own) (default {DEFAULTS.curvature_directions})")
    p.add_argument("--path-precision", choices=PATH_PRECISIONS, default=DEFAULTS.path_precision,
                   help="the decoder's vocabulary projection at the AIS temperatures below 1 and in the search "
                        "for the reference (tempered chains, line search, mixture weights; at beta = 1 and in the "
                        "Hessians always fp32: the estimate is exact either way): auto is bf16 where the device "
                        f"does bf16 natively, about half the cost of each step (default {DEFAULTS.path_precision})")
    p.add_argument("--path-shortlist", type=int, default=DEFAULTS.path_shortlist, metavar="K",
                   help="the likelihood at the AIS temperatures below 1 on each sentence's shortlist: the K words of "
                        "each position with the largest logits near its posterior's mode, and one pseudo-word for "
                        "the rest (0: the whole vocabulary; the estimate is exact either way) "
                        f"(default {DEFAULTS.path_shortlist})")
    p.add_argument("--ais-chains", type=int, default=DEFAULTS.ais_chains, metavar="N",
                   help=f"annealed importance sampling chains for the EBM's log Z (default {DEFAULTS.ais_chains})")
    p.add_argument("--ais-steps", type=int, default=DEFAULTS.ais_steps, metavar="T",
                   help=f"their inverse temperatures; half as many check convergence (default {DEFAULTS.ais_steps})")
    p.add_argument("--partition-samples", type=int, default=DEFAULTS.partition_samples, metavar="N",
                   help=f"plain Monte Carlo draws of log Z, AIS's cross-check (default {DEFAULTS.partition_samples})")
    p.add_argument("--fppl-samples", type=int, default=DEFAULTS.fppl_samples, metavar="N",
                   help=f"generated sentences per decoding for FPPL/RPPL (default {DEFAULTS.fppl_samples}; 0: skip)")
    p.add_argument("--temperatures", type=float, nargs="+", default=list(TEMPERATURES), metavar="T",
                   help="sampling temperatures of the decoding sweep, besides greedy decoding "
                        f"(default {' '.join(map(str, TEMPERATURES))})")
    p.add_argument("--chunk", type=int, default=DEFAULTS.chunk, metavar="N",
                   help=f"sentences evaluated together (default {DEFAULTS.chunk})")
    p.add_argument("--max-rows", type=int, metavar="R",
                   help="decoder rows (sentence x draw) decoded at once: memory is about R x length x vocabulary "
                        "x 8 bytes (default: at most 512, fewer where that passes 1 GiB of logits)")
    p.add_argument("--seed", type=seed_type, default=0, metavar="S", help="random seed (default 0)")
    p.add_argument("--json", action="store_true", help="print exactly one JSON object on stdout")
    p.add_argument("--out", type=path_type, metavar="FILE",
                   help="write the JSON report to FILE (its figure beside it, FILE with .png) instead of "
                        "RUN/evaluation-<split>.json, which stays as it is (e.g. for a smoke test)")
    add_progress_argument(p)
    add_protocol_arguments(p, generates=True)
    add_chain_argument(p)
    add_precision_argument(p)
    add_device_argument(p)
    p.set_defaults(run=run)


def format_table(r: dict) -> str:
    isd, lz, gen = r["importance_sampling"], r["log_partition"], r["generation"]
    rows = [
        ("run / step", f"{r['run']} / {r['step']}"),
        ("corpus / split", f"{r['corpus']} / {r['evaluated_text']} ({r['num_sentences']} sentences, "
                           f"{r['num_tokens']} tokens); trained on {r['trained_on']}"),
        ("NLL per sentence (nats)", cell(r["nll_per_sentence"])),
        ("perplexity (per token, </s> counted)", cell(r["perplexity"])),
    ]
    notes = []
    if isd is None:
        rows.append(("likelihood", "exact (prior=none: a language model without latent)"))
    else:
        proposal = (("IS: proposal / draws per sentence", f"{isd['proposal']} / {isd['num_samples']}")
                    if "num_chains" not in isd else  # a VAE's q(z|x); else the Laplace proposal from chains
                    ("IS: Laplace proposal from chains x steps / draws per sentence",
                     f"{isd['num_chains']} x {isd['posterior_steps']} / {isd['num_samples']}")
                    if not isd.get("anneal_steps") else
                    ("AIS from the Laplace Gaussian: chains x temperatures per sentence",
                     f"{isd['num_samples']} x {isd['anneal_steps']}"
                     + (f" (path in {isd['path_precision']})" if isd.get("path_precision") else "")))
        rows += [
            ("ELBO-style mean log w per sentence", cell(r["elbo_per_sentence"])),
            ("log Z of the prior (stderr; method)", f"{lz['log_z']:.4f} ({lz['stderr']:.2g}; {lz['method']})"),
            proposal,
            ("IS: effective sample size mean / min (mean share)",
             f"{isd['ess_mean']:.1f} / {isd['ess_min']:.1f} ({isd['ess_share_mean']:.0%})"),
        ]
        rows += convergence_rows(isd)
        notes.append(f"estimator: {isd['estimator']}")
    vae = r.get("vae")
    if vae is not None:
        rows += [("VAE: KL(q(z|x) || p(z)) per sentence (free-bits floor)",
                  f"{cell(vae['kl_per_sentence'])} ({cell(vae['free_bits_floor_per_sentence'])}: "
                  f"{vae['kl_dims_above_floor']} of {r['latent_dim']} dimensions above {vae['free_bits']:g})"),
                 ("VAE: active units by Var E_q[z] > 0.01", f"{vae['active_units_mean_variance']} / {r['latent_dim']}"),
                 ("VAE: MI of the aggregate posterior (He et al. 2019)", cell(vae["mutual_information_aggregate"])),
                 ("VAE: -ELBO - NLL (what IS gains)", cell(vae["bound_gap_per_sentence"]))]
        if "ais" in lz:
            ais, mc = lz["ais"], lz["monte_carlo"]
            rows += [("  AIS: chains x temperatures, ESS, acceptance",
                      f"{ais['num_chains']} x {ais['steps']}, {ais['ess']:.0f}, {ais['acceptance']:.2f}"),
                     ("  AIS on half the schedule (difference)",
                      f"{ais['half_schedule_log_z']:.4f} ({ais['half_schedule_difference']:+.3f}; "
                      f"{'converged' if ais['converged'] else 'NOT converged: raise --ais-steps'})"),
                     ("  plain Monte Carlo (stderr, draws)",
                      f"{mc['log_z']:.4f} ({mc['stderr']:.2g}, {mc['num_samples']}"
                      f"{'' if lz['monte_carlo_agrees'] else '; disagrees with AIS beyond the error bars'})")]
    bias = r.get("prior_chain_bias")
    if bias:
        rows.append(("prior chain mean f / exact mean f (bias)",
                     f"{bias['prior_chain_mean_f']:.2f} / {bias['exact_mean_f']:.2f} ({bias['prior_chain_bias_f']:+.2f}"
                     f"{', flagged' if bias['prior_chain_biased'] else ''})"))
        rows.append(("prior chain mean |z| / exact mean |z|",
                     f"{bias['prior_chain_mean_norm']:.2f} / {bias['exact_mean_norm']:.2f}"))
    notes.append(f"samples: {r['samples_from']}")
    notes += [f"WARNING: {warning}" for warning in r.get("warnings", [])]
    usage = r["latent_usage"]
    if usage is not None:
        rows += [
            ("NLL/token with posterior z / prior z (gap)",
             f"{cell(usage['nll_posterior'])} / {cell(usage['nll_prior'])} ({usage['gap']:.3f})"),
            ("mutual information, E KL(p(z|x) || p(z)) (nats)", cell(usage["mutual_information"])),
            (f"active units (first {usage.get('active_units_sentences', min(r['num_sentences'], USAGE_AU_SENTENCES))}"
             " sentences)",
             f"{usage['active_units']} / {r['latent_dim']}"),
        ]
        notes.append(f"latent usage: {usage['estimators']['note']}")
        if r["num_sentences"] < FEW_FOR_UNITS:
            notes.append(f"active units: {r['num_sentences']} sentences are few for the test (a unit counts when its "
                         "effect passes 3 standard errors): a low count here may mean too few sentences, not an "
                         "unused latent")
    rec = r.get("reconstruction")
    if rec is not None:
        rows.append(("reconstruction BLEU / exact (prior-sample baseline)",
                     f"{rec['bleu']:.1f} / {rec['exact_match']:.1%} ({rec['baseline_bleu']:.1f} / "
                     f"{rec['baseline_exact_match']:.1%})"))
        notes.append(f"reconstruction: {rec['comparison']}")
    if gen is not None:
        rows.append((f"FPPL / RPPL / distinct-2 / self-BLEU ({gen['n']} samples each, {gen['order']}-gram)", ""))
        for row in gen["decodings"]:
            rows.append((f"  {row['decoding']}", f"{cell(row['forward_ppl'])} / {cell(row['reverse_ppl'])} / "
                                                 f"{cell(row['distinct_2'])} / {cell(row['self_bleu'])}"))
        ref = gen["real_reference"]
        rows.append((f"  real text (FPPL of held-out; RPPL of {ref['num_samples']} training lines)",
                     f"{cell(gen['real_lm_test_ppl'])} / {cell(ref['reverse_ppl'])} / {cell(ref['distinct_2'])} / "
                     f"{cell(ref['self_bleu'])}"))
        rows.append(("quality-diversity figure", r["figure"]))
    else:
        rows.append(("FPPL / RPPL", f"skipped: {r['generation_skipped']}"))
    rows += protocol_rows(r)
    rows.append(("seconds (CPU seconds)", f"{cell(r['seconds'])} ({cell(r['cpu_seconds'])})"))
    width = max(len(k) for k, _ in rows)
    lines = [f"{k:<{width}}  {v}" for k, v in rows] + notes
    lines.append(f"perplexity: {r['perplexity_convention']}")
    return "\n".join(lines)


FEW_FOR_UNITS = 30  # evaluated sentences below which the active-unit count gets a caveat


def convergence_rows(isd: dict) -> list[tuple[str, str]]:
    """How far the NLL moves with more work: AIS's two checks on the first sentences (half the
    temperatures, more chains), or plain importance sampling's first tenth of the draws."""
    rows = []
    if "half_schedule" in isd:
        half = isd["half_schedule"]
        rows.append((f"AIS check: NLL with half / all temperatures (s.e.; {half['sentences']} sentences)",
                     f"{cell(half['nll_per_sentence_half'])} / {cell(half['nll_per_sentence_full'])} "
                     f"({half['nll_change_stderr']:.3f})"))
    if "draws_check" in isd:
        more = isd["draws_check"]
        rows.append((f"AIS check: NLL with {more['num_samples']} / {more['more_samples']} chains (s.e.; "
                     f"{more['sentences']} sentences)",
                     f"{cell(more['nll_per_sentence_default'])} / {cell(more['nll_per_sentence_more'])} "
                     f"({more['nll_change_stderr']:.3f})"))
    if not isd.get("anneal_steps"):
        rows.append((f"IS: NLL per sentence from the first {isd['tenth_draws']} draws (change)",
                     f"{cell(isd['nll_per_sentence_tenth_draws'])} ({isd['nll_change_from_tenth']:+.3f})"))
    return rows


def options_from(args: argparse.Namespace) -> EvaluationOptions:
    from dataclasses import fields

    flags = {f.name: getattr(args, f.name) for f in fields(EvaluationOptions) if f.name != "protocol"}
    return EvaluationOptions(**flags, protocol=protocol_options(args))


def run(args: argparse.Namespace) -> int:
    import json

    from textebm.evaluation.reports import evaluate_run
    from textebm.progress import Progress

    result = evaluate_run(options_from(args), Progress.auto(args.progress), args.tf32, args.out)
    print(json.dumps(result, allow_nan=False) if args.json else format_table(result))
    return 0
