"""`evaluate`'s importance sampler: sentences per second of today's estimator (the Laplace proposal)
against evaluator version 2's (16 chains, diagonal Gaussian, defensive mixture), and against the
floor every estimator with the same draws must pay (the draws' likelihoods alone); then the two
estimators' error against the closed-form model (textebm/closed_form.py).

Target (issue 24): the new default costs no more CPU per sentence than the old one (speed-up >= 1),
and on the closed-form model its mean |error| is <= 0.1 nat per sentence with mean ESS >= 30% of draws.
"""

from __future__ import annotations

import torch

from bench import Row, build_model, interleave, median
from textebm.closed_form import closed_form_model
from textebm.likelihood import evaluate_sentences, importance_sampled_log_likelihood

FULL = dict(vocab=10_000, sizes=["embedding_dim=128", "hidden_dim=256", "latent_dim=32", "posterior_steps=10",
                                 "dropout=0.0"], sentences=8, length=22)
QUICK = dict(vocab=300, sizes=["embedding_dim=16", "hidden_dim=32", "latent_dim=4", "posterior_steps=3",
                               "dropout=0.0"], sentences=4, length=8)
DRAWS = 100
OLD = dict(num_chains=16, proposal="chains")  # evaluator version 2's defaults


def run(quick: bool, repeats: int) -> list[Row]:
    spec = QUICK if quick else FULL
    model, cfg = build_model(spec["sizes"], spec["vocab"], preset="cpu")
    model.eval()
    g = torch.Generator().manual_seed(0)
    n, length = spec["sentences"], spec["length"]
    tokens = torch.cat([torch.ones(n, 1, dtype=torch.long),
                        torch.randint(3, spec["vocab"], (n, length - 1), generator=g)], 1)
    draws = torch.randn(n * DRAWS, cfg.latent_dim, generator=g)

    def floor():
        with torch.no_grad():
            model.decoder.log_likelihood(draws, tokens.repeat_interleave(DRAWS, 0))

    seconds = interleave({
        "reference": lambda: importance_sampled_log_likelihood(model, tokens, 0.0, num_samples=DRAWS, generator=g,
                                                               **OLD),
        "candidate": lambda: importance_sampled_log_likelihood(model, tokens, 0.0, num_samples=DRAWS, generator=g),
        "floor": floor,
    }, repeats, warmup=0 if quick else 1)
    ref_rate, cand_rate, floor_rate = (n / median(seconds[k]) for k in ("reference", "candidate", "floor"))
    rows = [Row("likelihood", f"importance sampling, {n} sentences x {length} tokens, {DRAWS} draws, "
                f"K1={cfg.posterior_steps}", "sentences/s", ref_rate, cand_rate, cand_rate / ref_rate, "speed-up",
                ">= 1x", cand_rate / ref_rate >= 1.0,
                "reference: evaluator 2 (16 tempered chains, diagonal Gaussian + prior, defensive 0.5); candidate: "
                "1 chain, Hessian by differences, Newton step, 0.7 Gaussian + 0.3 Student-t; floor (the draws' "
                f"likelihoods alone): {floor_rate:.3g} sentences/s, candidate at {cand_rate / floor_rate:.0%} of it",
                seconds)]

    cf = closed_form_model(sentences=8 if quick else 16)
    exact = cf.exact_log_px()
    figures = {}
    for name, kwargs in (("reference", OLD), ("candidate", {})):
        res = evaluate_sentences(cf, cf.sentences(), 0, cf.exact_log_z(), num_samples=DRAWS,
                                 generator=torch.Generator().manual_seed(1),
                                 **{"num_chains": 1, **kwargs})
        figures[name] = (float((res.log_px.double() - exact).abs().mean()), float(res.ess.mean()))
    (ref_err, ref_ess), (cand_err, cand_ess) = figures["reference"], figures["candidate"]
    rows.append(Row("likelihood", f"closed-form model, d=32, {len(exact)} sentences, {DRAWS} draws",
                    "nats |error|/sentence", ref_err, cand_err, cand_err / ref_err, "error factor",
                    "<= 0.1 nat, ESS >= 30%", cand_err <= 0.1 and cand_ess >= 0.3 * DRAWS,
                    f"mean ESS: reference {ref_ess:.1f}, candidate {cand_ess:.1f} of {DRAWS}"))
    return rows
