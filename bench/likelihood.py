"""`evaluate`'s likelihood estimator: sentences per second of today's default (per-sentence AIS from
the mixture of Laplace Gaussians at the tempered chains' ends, `EvaluationOptions`' chains and
temperatures) against the default of the day issue 24 was filed, run from that day's code
(`bench.issue_day`: evaluator version 2, 16 chains, diagonal Gaussian, defensive mixture, 100 draws);
against evaluator 2's settings on today's code (which share every later speed-up); and against the
floor of plain importance sampling with 100 draws (their likelihoods alone); then the two estimators'
error against the closed-form model (textebm/inference/closed_form.py).

Target (issue 24): the new default costs no more CPU per sentence than the issue's day's default
(speed-up >= 1 in the first row), and on the closed-form model its mean |error| is <= 0.1 nat per
sentence with mean ESS >= 30% of draws.
"""

from __future__ import annotations

import torch

from bench import Row, build_model, interleave, median
from bench.issue_day import ISSUE_DAY, IssueDayEstimator, Unavailable
from textebm.devices import resolve_chain_precision
from textebm.evaluation.held_out import EvaluationOptions
from textebm.inference.closed_form import closed_form_model
from textebm.inference.likelihood import evaluate_sentences, importance_sampled_log_likelihood

_DEFAULTS = EvaluationOptions(checkpoint="").check()
# The full row times one of evaluate's chunks (`--chunk`, 32 sentences of one length), the batch both
# estimators run in there: a smaller batch leaves AIS's chains few decoder rows per call.
FULL = dict(vocab=10_000, sizes=["embedding_dim=128", "hidden_dim=256", "latent_dim=32", "posterior_steps=10",
                                 "dropout=0.0"], sentences=_DEFAULTS.chunk, length=22)
QUICK = dict(vocab=300, sizes=["embedding_dim=16", "hidden_dim=32", "latent_dim=4", "posterior_steps=3",
                               "dropout=0.0"], sentences=4, length=8)
DRAWS = 100
OLD = dict(num_chains=16, proposal="chains", num_samples=DRAWS)  # evaluator version 2's defaults
NEW = dict(num_chains=_DEFAULTS.num_chains, num_samples=_DEFAULTS.num_is_samples,
           anneal_steps=_DEFAULTS.anneal_steps, curvature_directions=_DEFAULTS.curvature_directions,
           path_projection=resolve_chain_precision(_DEFAULTS.path_precision, torch.device("cpu")),
           path_shortlist=_DEFAULTS.path_shortlist)  # evaluate's


def run(quick: bool, repeats: int) -> list[Row]:
    spec = QUICK if quick else FULL
    model, cfg = build_model(spec["sizes"], spec["vocab"], preset="cpu")
    model.eval()
    g = torch.Generator().manual_seed(0)
    n, length = spec["sentences"], spec["length"]
    tokens = torch.cat([torch.ones(n, 1, dtype=torch.long),
                        torch.randint(3, spec["vocab"], (n, length - 1), generator=g)], 1)
    draws = torch.randn(n * DRAWS, cfg.latent_dim, generator=g)

    chunk, repeated = model.decoder.rows_per_chunk(length), tokens.repeat_interleave(DRAWS, 0)

    def floor():  # in the estimators' chunks of decoder rows (memory: rows x length x vocabulary logits)
        with torch.no_grad():
            for start in range(0, n * DRAWS, chunk):
                model.decoder.log_likelihood(draws[start:start + chunk], repeated[start:start + chunk])

    contenders = {
        "reference": lambda: importance_sampled_log_likelihood(model, tokens, 0.0, generator=g, **OLD),
        "candidate": lambda: importance_sampled_log_likelihood(model, tokens, 0.0, generator=g, **NEW),
        "floor": floor,
    }
    warmup = 0 if quick else 1
    try:
        with IssueDayEstimator(spec["sizes"], spec["vocab"], tokens, torch.get_num_threads()) as issue_day:
            seconds = interleave({"issue_day": issue_day, **contenders}, repeats, warmup=warmup)
        missing = None
    except Unavailable as err:
        seconds, missing = interleave(contenders, repeats, warmup=warmup), str(err)
    ref_rate, cand_rate, floor_rate = (n / median(seconds[k]) for k in ("reference", "candidate", "floor"))
    chains, steps = NEW["num_samples"], NEW["anneal_steps"]
    k = NEW["curvature_directions"]
    hessians = ("each end's Hessian by differences" if k is None else
                f"the best end's Hessian by differences, re-measured at each other end along its {k} stiffest "
                "directions")
    candidate = (f"evaluate's default ({NEW['num_chains']} tempered chains, {hessians}, a Newton step each, then "
                 f"{chains} AIS chains x {steps} temperatures in equal steps from the mixture of their Laplace "
                 f"Gaussians, the path below beta = 1 on each sentence's shortlist of {NEW['path_shortlist']} words "
                 f"per position, the tempered chains, the line search and the mixture's weights in "
                 f"{NEW['path_projection']})")
    case = f"{n} sentences x {length} tokens, K1={cfg.posterior_steps}"
    if missing is None:
        day_rate = n / median(seconds["issue_day"])
        bound = Row("likelihood", f"log p(x) estimator against issue 24's day, {case}", "sentences/s", day_rate,
                    cand_rate, cand_rate / day_rate, "speed-up", ">= 1x", cand_rate >= day_rate,
                    f"reference: the default of commit {ISSUE_DAY[:7]} (evaluator 2: 16 tempered chains, diagonal "
                    f"Gaussian + prior, defensive 0.5, {DRAWS} draws), run from that commit's own code "
                    f"(bench.issue_day); candidate: {candidate}", {"issue_day": seconds["issue_day"],
                                                                   "candidate": seconds["candidate"]})
    else:
        bound = Row("likelihood", f"log p(x) estimator against issue 24's day, {case}", "sentences/s",
                    candidate=cand_rate, target=">= 1x", note=f"not measured: {missing}")
    rows = [bound, Row("likelihood", f"the same against evaluator 2's settings on today's code, {case}",
                       "sentences/s", ref_rate, cand_rate, cand_rate / ref_rate, "speed-up", "",
                       None, f"reference: evaluator 2's settings run by today's code, which shares every later "
                       f"speed-up of the chains and the likelihood; floor ({DRAWS} draws' likelihoods alone, "
                       f"plain importance sampling's): {floor_rate:.3g} sentences/s, candidate at "
                       f"{cand_rate / floor_rate:.0%} of it",
                       {name: seconds[name] for name in contenders})]

    cf = closed_form_model(sentences=8 if quick else 16)
    exact = cf.exact_log_px()
    figures = {}
    for name, kwargs in (("reference", OLD), ("candidate", NEW)):
        res = evaluate_sentences(cf, cf.sentences(), 0, cf.exact_log_z(), generator=torch.Generator().manual_seed(1),
                                 **kwargs)
        share = float(res.ess.mean()) / kwargs["num_samples"]
        figures[name] = (float((res.log_px.double() - exact).abs().mean()), share)
    (ref_err, ref_ess), (cand_err, cand_ess) = figures["reference"], figures["candidate"]
    rows.append(Row("likelihood", f"closed-form model, d=32, {len(exact)} sentences, the two estimators' defaults",
                    "nats |error|/sentence", ref_err, cand_err, cand_err / ref_err, "error factor",
                    "<= 0.1 nat, ESS >= 30%", cand_err <= 0.1 and cand_ess >= 0.3,
                    f"mean ESS as a share of the draws: reference {ref_ess:.0%}, candidate {cand_ess:.0%}"))
    return rows
