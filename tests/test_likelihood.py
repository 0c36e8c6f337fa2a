"""Importance-sampled log p(x) and the prior's log Z against exact values (1-D latent: quadrature)."""

from __future__ import annotations

import math

import pytest
import torch

from textebm.config import Config
from textebm.inference.annealing import GaussianReference, annealed_log_likelihood
from textebm.inference.bdmc import bdmc, model_samples
from textebm.inference.closed_form import NarrowBump, closed_form_model
from textebm.inference.diagnostics import posterior_information
from textebm.inference.laplace import LaplaceProposal, log_joint_grad, negative_hessian
from textebm.inference.likelihood import (
    annealed_log_partition,
    evaluate_sentences,
    importance_sampled_log_likelihood,
    jackknife_log_mean_exp,
    log_mean_exp,
    log_partition,
    partition_function,
)
from textebm.model.decoder import MAX_ROWS, Decoder, chunk_rows
from textebm.model.energy import EnergyPrior
from textebm.model.latent_ebm import LatentEBMTextModel


def test_log_partition_of_a_linear_energy_is_exact_within_its_stderr():
    # f(z) = a z_1 (an MLP without hidden layers): Z = E[exp(a z_1)] = exp(a^2 sigma^2 / 2).
    a, sigma = 0.8, 1.5
    prior = EnergyPrior(3, layers=0, sigma=sigma)
    with torch.no_grad():
        prior.f[0].weight.copy_(torch.tensor([[a, 0.0, 0.0]]))
        prior.f[0].bias.zero_()
    exact = a**2 * sigma**2 / 2
    log_z, se = log_partition(prior, 200_000, generator=torch.Generator().manual_seed(1))
    assert 0 < se < 0.01
    assert abs(log_z - exact) < 4 * se
    # The stderr is honest: estimates with independent seeds spread about as it says.
    small = [log_partition(prior, 2_000, generator=torch.Generator().manual_seed(s)) for s in range(30)]
    spread = torch.tensor([v for v, _ in small]).std().item()
    assert 0.5 < spread / (sum(s for _, s in small) / len(small)) < 2.0


def test_log_partition_of_the_gaussian_prior_is_zero():
    assert log_partition(EnergyPrior(4, kind="gaussian"), 10) == (0.0, 0.0)


def _tiny_model(prior: str) -> LatentEBMTextModel:
    torch.manual_seed(0)
    config = Config(embedding_dim=8, hidden_dim=16, latent_dim=1, energy_hidden=8, dropout=0.0, prior=prior,
                    posterior_steps=20, posterior_step_size=0.2)
    model = LatentEBMTextModel(config, 12, 0, 1, 2).eval()
    with torch.no_grad():  # make x depend on z strongly, and the EBM prior clearly non-Gaussian
        model.decoder.z_to_state.weight.mul_(6.0)
        model.decoder.rnn.weight_ih_l0[:, 8:].mul_(6.0)
        if model.prior.is_ebm:
            model.prior.f[-1].weight.mul_(8.0)
    return model


def _exact(model, tokens):
    """log p(x) and log Z by quadrature on a fine grid over [-8 sigma, 8 sigma] (1-D z)."""
    sigma = model.prior.sigma
    grid = torch.linspace(-8 * sigma, 8 * sigma, 4001).unsqueeze(1)
    dz = (grid[1] - grid[0]).item()
    with torch.no_grad():
        log_ref = -grid[:, 0] ** 2 / (2 * sigma**2) - 0.5 * math.log(2 * math.pi * sigma**2)
        log_prior_unnorm = model.prior.energy(grid) + log_ref
        log_z = torch.logsumexp(log_prior_unnorm, 0).item() + math.log(dz)
        out = []
        for row in tokens:
            ll = model.decoder.log_likelihood(grid, row.expand(grid.shape[0], -1))
            out.append(torch.logsumexp(ll + log_prior_unnorm, 0).item() + math.log(dz) - log_z)
    return torch.tensor(out), log_z


@pytest.mark.parametrize("prior, proposal, defensive", [("ebm", "laplace", 0.5), ("gaussian", "laplace", 0.5),
                                                       ("ebm", "chains", 0.5), ("ebm", "chains", 0.0)])
def test_importance_sampling_matches_quadrature_in_one_dimension(prior, proposal, defensive):
    model = _tiny_model(prior)
    tokens = torch.tensor([[1, 5, 6, 7, 2, 0], [1, 3, 2, 0, 0, 0], [1, 9, 9, 4, 11, 2]])
    exact, exact_log_z = _exact(model, tokens)
    g = torch.Generator().manual_seed(0)
    log_z, se = log_partition(model.prior, 100_000, generator=g)
    assert abs(log_z - exact_log_z) < 4 * se + 1e-3  # + quadrature error (float32 grid)
    res = importance_sampled_log_likelihood(model, tokens, log_z, num_chains=16, num_samples=2000, generator=g,
                                            defensive=defensive, proposal=proposal)
    assert torch.allclose(res.log_px, exact, atol=0.05), (res.log_px, exact)
    # ELBO-style bound: the mean log weight lies below log p(x) (Jensen), and the ESS is in [1, S].
    assert (res.log_w.mean(1) < exact).all()
    assert ((res.ess >= 1) & (res.ess <= 2000)).all()
    assert res.log_w.shape == (3, 2000) and res.chain_mean.shape == (3, 1)


def test_ais_on_a_bf16_path_keeps_the_exact_log_likelihood():
    """The temperatures below 1 on the bf16 projection, beta = 1 on fp32: the weights still estimate the exact
    p(x) (quadrature), the path did run in bf16 (other weights than fp32's from the same draws), and the final
    states' log p(x | z) are fp32's own values."""
    model = _tiny_model("ebm")
    with torch.no_grad():  # logits large enough for bf16's rounding to show
        model.decoder.out.weight.mul_(8.0)
    tokens = torch.tensor([[1, 5, 6, 7, 2, 0], [1, 3, 2, 0, 0, 0], [1, 9, 9, 4, 11, 2]])
    exact, log_z = _exact(model, tokens)
    runs = {precision: importance_sampled_log_likelihood(model, tokens, log_z, num_chains=2, num_samples=200,
                                                         generator=torch.Generator().manual_seed(0), anneal_steps=20,
                                                         path_projection=precision)
            for precision in ("fp32", "bf16")}
    bf16 = runs["bf16"]
    assert torch.allclose(bf16.log_px, exact, atol=0.05), (bf16.log_px, exact)
    assert not torch.equal(bf16.log_w, runs["fp32"].log_w)
    assert (bf16.log_w - runs["fp32"].log_w).abs().max() < 1.0  # the same draws, nearly the same path
    reference = GaussianReference.prior(model.prior.sigma, 3, 1)
    _, chains = annealed_log_likelihood(model, tokens, reference, log_z, 4, 10,
                                        generator=torch.Generator().manual_seed(0), schedule="sigmoid",
                                        path_projection="bf16")
    with torch.no_grad():
        fp32 = model.decoder.log_likelihood(chains.z, tokens.repeat_interleave(4, 0))
    torch.testing.assert_close(chains.log_lik, fp32, rtol=0, atol=1e-5)


def test_ais_on_a_shortlist_path_keeps_the_exact_log_likelihood():
    """The temperatures below 1 on a two-word shortlist per position (a poor stand-in), beta = 1 exact: the
    weights still estimate the exact p(x) (quadrature), and the path was the stand-in's (other weights)."""
    model = _tiny_model("ebm")
    tokens = torch.tensor([[1, 5, 6, 7, 2, 0], [1, 3, 2, 0, 0, 0], [1, 9, 9, 4, 11, 2]])
    exact, log_z = _exact(model, tokens)
    runs = {k: importance_sampled_log_likelihood(model, tokens, log_z, num_chains=2, num_samples=200,
                                                 generator=torch.Generator().manual_seed(0), anneal_steps=20,
                                                 path_shortlist=k)
            for k in (0, 2)}
    assert torch.allclose(runs[2].log_px, exact, atol=0.05), (runs[2].log_px, exact)
    assert (runs[2].log_w - runs[0].log_w).abs().max() > 1e-3
    with pytest.raises(ValueError, match="path_shortlist"):
        annealed_log_likelihood(model, tokens, GaussianReference.prior(model.prior.sigma, 3, 1), log_z, 2, 5,
                                path_shortlist=-1)


@pytest.mark.parametrize("path", ["fp32", "bf16"])
def test_the_path_precision_reaches_the_search_but_never_the_hessian_or_beta_one(monkeypatch, path):
    """Evaluator 11: the tempered chains, the best end, the line search and the mixture's weights take the
    path's projection (bf16: only rank or weigh); the Hessians' gradient rows stay fp32, and so does
    log p(x | z) at beta = 1. The run's own chain precision no longer applies to them."""
    import textebm.inference.laplace as laplace

    model = _tiny_model("ebm")
    calls = {"chains": [], "forward": [], "hessian": [], "gradient": []}
    in_hessian = []
    chains, hessian_rows = model.posterior_chains, laplace.log_joint_grad
    forward, with_grad = model.decoder.log_likelihood, model.decoder.log_likelihood_and_grad

    def chains_spy(tokens, num_chains, steps=None, generator=None, projection=None):
        calls["chains"].append(projection)
        return chains(tokens, num_chains, steps, generator, projection)

    def forward_spy(z, tokens, projection="fp32"):
        calls["forward"].append(projection)
        return forward(z, tokens, projection)

    def gradient_spy(z, tokens, projection="fp32"):
        calls["hessian" if in_hessian else "gradient"].append(projection)
        return with_grad(z, tokens, projection)

    def hessian_spy(*args, **kwargs):
        in_hessian.append(True)
        try:
            return hessian_rows(*args, **kwargs)
        finally:
            in_hessian.pop()

    monkeypatch.setattr(model, "posterior_chains", chains_spy)
    monkeypatch.setattr(model.decoder, "log_likelihood", forward_spy)
    monkeypatch.setattr(model.decoder, "log_likelihood_and_grad", gradient_spy)
    monkeypatch.setattr(laplace, "log_joint_grad", hessian_spy)
    tokens = torch.tensor([[1, 5, 6, 7, 2, 0], [1, 3, 2, 0, 0, 0]])
    importance_sampled_log_likelihood(model, tokens, 0.0, num_chains=3, num_samples=2, anneal_steps=4,
                                      generator=torch.Generator().manual_seed(0), path_projection=path)
    assert calls["chains"] == [path]
    assert calls["forward"] and set(calls["forward"]) == {path}  # best end, line search, evidence
    assert calls["hessian"] and set(calls["hessian"]) == {"fp32"}
    assert set(calls["gradient"]) == {path, "fp32"}  # {"fp32"} when the path is fp32
    assert calls["gradient"][-1] == "fp32"  # the move at beta = 1


def test_the_jackknife_is_the_leave_one_out_formula_even_when_one_weight_dominates():
    log_w = torch.tensor([[0.0, -1.0, -2.5, 0.3], [50.0, -900.0, -1000.0, 0.0], [-3.0, -3.0, -3.0, -3.0]],
                         dtype=torch.float64)
    s = log_w.shape[1]
    loo = torch.stack([log_mean_exp(torch.cat([log_w[:, :i], log_w[:, i + 1:]], 1)) for i in range(s)], 1)
    expected = s * log_mean_exp(log_w) - (s - 1) * loo.mean(1)
    assert torch.allclose(jackknife_log_mean_exp(log_w), expected, atol=1e-9)
    assert jackknife_log_mean_exp(log_w)[2] == pytest.approx(-3.0)  # equal weights: the plain estimate, exactly
    assert torch.equal(jackknife_log_mean_exp(log_w[:, :1]), log_w[:, 0])  # one draw: itself
    assert (jackknife_log_mean_exp(log_w) >= log_mean_exp(log_w) - 1e-12).all()  # never below the plain bound


def test_the_jackknife_removes_most_of_logmeanexps_bias_on_lognormal_weights():
    # log w ~ N(-v/2, v): E[w] = 1, so log E[w] = 0; logmeanexp of S draws falls short by about (e^v - 1) / (2 S)
    g = torch.Generator().manual_seed(0)
    v, s = 1.5, 8
    log_w = (-v / 2 + math.sqrt(v) * torch.randn(40_000, s, generator=g, dtype=torch.float64))
    plain, jack = log_mean_exp(log_w).mean(), jackknife_log_mean_exp(log_w).mean()
    assert -0.35 < plain < -0.15  # the bias (e^1.5 - 1) / 16 = 0.22, and the jackknife ...
    assert abs(jack) < 0.3 * abs(plain)  # ... leaves less than a third of it
    assert abs(jack) < 0.08


def test_a_wrong_log_z_shifts_log_px_by_exactly_that_much():
    model = _tiny_model("ebm")
    tokens = torch.tensor([[1, 5, 6, 2]])
    a = importance_sampled_log_likelihood(model, tokens, 0.0, 4, 50, torch.Generator().manual_seed(3))
    b = importance_sampled_log_likelihood(model, tokens, 1.5, 4, 50, torch.Generator().manual_seed(3))
    assert torch.allclose(a.log_px - b.log_px, torch.tensor([1.5]), atol=1e-4)


def test_evaluate_sentences_returns_results_in_input_order():
    model = _tiny_model("gaussian")
    lengths = [9, 2, 14, 5, 1, 11, 3]
    sentences = [[1, *([5] * n), 2] for n in lengths]
    res = evaluate_sentences(model, sentences, 0, 0.0, num_chains=2, num_samples=20,
                             generator=torch.Generator().manual_seed(0), chunk=3)
    assert res.log_px.shape == (7,) and res.chain_mean.shape == (7, 1)
    # Longer sentences of the same word are less probable: the order must follow the input's lengths.
    assert torch.argsort(-res.log_px).tolist() == sorted(range(7), key=lambda i: lengths[i])


def test_chunks_keep_their_logits_within_the_budget():
    assert chunk_rows(40, 10_002) == MAX_ROWS  # PTB: 512 rows are 0.8 GiB of logits
    assert chunk_rows(200, 20_000) == 67  # Yahoo: 67 rows are 1 GiB; 512 would be 8 GiB
    assert chunk_rows(200, 20_000, budget=10) == 1
    assert Decoder(20_000, 8, 16, 1).rows_per_chunk(200) == 67  # what likelihood and diagnostics ask


@pytest.mark.parametrize("anneal_steps", [0, 3])
def test_no_decoder_call_decodes_more_rows_than_max_rows(monkeypatch, anneal_steps):
    model = _tiny_model("ebm")
    seen = []
    decode = model.decoder.log_likelihood  # what forward calls too

    def counting(z, tokens, *args, **kwargs):
        seen.append(tokens.shape[0])
        return decode(z, tokens, *args, **kwargs)

    monkeypatch.setattr(model.decoder, "log_likelihood", counting)
    with_grad = model.decoder.log_likelihood_and_grad  # the chains', AIS's and the Hessian's call

    def counting_with_grad(z, tokens, *args, **kwargs):
        seen.append(tokens.shape[0])
        return with_grad(z, tokens, *args, **kwargs)

    monkeypatch.setattr(model.decoder, "log_likelihood_and_grad", counting_with_grad)
    sentences = [[1, *([5] * n), 2] for n in (3, 1, 4, 2)]
    res = evaluate_sentences(model, sentences, 0, 0.0, num_chains=2, num_samples=6,
                             generator=torch.Generator().manual_seed(0), anneal_steps=anneal_steps, max_rows=5)
    assert torch.isfinite(res.log_px).all() and seen and max(seen) <= 5
    assert sum(seen) >= 4 * 6  # every sentence's draws were decoded


def test_gaussian_prior_samples_are_exact_draws_without_a_chain():
    model = _tiny_model("gaussian")
    trajectory = []
    z = model.prior_sample(5000, generator=torch.Generator().manual_seed(0), trajectory=trajectory)
    assert len(trajectory) == 1  # no chain: exact draws from N(0, sigma^2 I)
    assert abs(z.std().item() - model.prior.sigma) < 0.05


def test_a_model_without_latent_is_a_language_model_with_exact_likelihood():
    """prior=none: no latent, no chains, and importance sampling returns the exact log p(x)."""
    torch.manual_seed(0)
    config = Config(embedding_dim=8, hidden_dim=16, dropout=0.0, prior="none")
    model = LatentEBMTextModel(config, 12, 0, 1, 2).eval()
    assert not model.has_latent and model.decoder.z_to_state is None
    assert model.decoder.rnn.input_size == 8 and not list(model.prior.parameters())
    tokens = torch.tensor([[1, 5, 6, 7, 2], [1, 9, 2, 0, 0]])
    trajectory = []
    z = model.posterior_sample(tokens, trajectory=trajectory)
    assert z.shape == (2, 0) and len(trajectory) == 1  # an empty chain
    assert model.prior_sample(3).shape == (3, 0)
    with torch.no_grad():  # the plain LM: a zero initial state, next-token softmax over the inputs
        hidden, _ = model.decoder.rnn(model.decoder.embed(tokens[:, :-1]))
        log_probs = model.decoder.out(hidden).log_softmax(-1).gather(-1, tokens[:, 1:, None])[..., 0]
        exact = (log_probs * (tokens[:, 1:] != 0)).sum(1)
    result = importance_sampled_log_likelihood(model, tokens, 0.0, num_chains=2, num_samples=3)
    torch.testing.assert_close(result.log_px, exact)
    ids = model.generate(4, max_length=6, generator=torch.Generator().manual_seed(0))
    assert ids.shape[0] == 4 and 1 <= ids.shape[1] <= 6



def test_ais_and_monte_carlo_agree_with_the_closed_form_on_a_mild_tilt(quadratic_tilt):
    a = torch.zeros(8)
    a[0] = 0.5
    prior = quadratic_tilt(a, 0.2)
    exact = prior.exact_log_z()
    ais = annealed_log_partition(prior, 500, 200, generator=torch.Generator().manual_seed(0))
    mc, mc_se = log_partition(prior, 50_000, generator=torch.Generator().manual_seed(1))
    assert abs(ais.log_z - exact) < max(4 * ais.stderr, 0.02), (ais.log_z, exact)
    assert abs(mc - exact) < 4 * mc_se
    assert 0.3 < ais.acceptance < 0.95 and ais.ess > 250


def test_ais_is_right_where_plain_monte_carlo_misses_a_sharp_tilt_far_from_the_origin(quadratic_tilt):
    """The prior's mass near a/p, |a/p| = 6 in 32 dimensions: N(0, I) draws almost never land there."""
    a = torch.zeros(32)
    a[:4] = 12.0
    prior = quadratic_tilt(a, 3.0)
    exact = prior.exact_log_z()  # 49.82
    mc, mc_se = log_partition(prior, 20_000, generator=torch.Generator().manual_seed(1))
    report, ais = partition_function(prior, num_chains=1000, steps=1000, monte_carlo_samples=20_000,
                                     generator=torch.Generator().manual_seed(0))
    assert exact - mc > 5 and mc_se < 2  # plain Monte Carlo: far too low, with a small error bar
    assert abs(report["log_z"] - exact) < 0.15, (report["log_z"], exact)
    assert report["method"] == "annealed importance sampling" and report["ais"]["converged"]
    assert not report["monte_carlo_agrees"]  # the JSON says the cross-check disagrees
    # the weighted final states are samples of the prior: its mean energy in closed form
    p = prior.precision
    mean_f = float(a @ a) / p - 0.5 * prior.b * (float(a @ a) / p**2 + 32 / p)
    estimate, stderr = ais.weighted_mean(ais.energies)
    assert abs(estimate - mean_f) < max(4 * stderr, 0.2)


def test_partition_function_of_the_gaussian_prior_is_exact():
    report, ais = partition_function(EnergyPrior(4, kind="gaussian"))
    assert report["log_z"] == 0.0 and ais is None and "exact" in report["method"]


def _defaults():
    from textebm.evaluation.held_out import EvaluationOptions

    options = EvaluationOptions(checkpoint="").check()
    return options.num_chains, options.num_is_samples, options.anneal_steps


def test_the_default_estimator_meets_the_closed_form_where_the_old_proposal_did_not():
    """d = 32, a correlated posterior (std 0.05 along its narrowest direction), an EBM tilt with exact log Z,
    through evaluate's own call with evaluate's defaults."""
    model = closed_form_model()
    exact = model.exact_log_px()
    num_chains, num_samples, anneal_steps = _defaults()
    assert anneal_steps > 0  # the default is per-sentence AIS from the Laplace Gaussian
    report, _ = partition_function(model.prior, num_chains=500, steps=500, monte_carlo_samples=10_000,
                                   generator=torch.Generator().manual_seed(0))
    assert abs(report["log_z"] - model.exact_log_z()) < 0.05
    for steps, draws in ((anneal_steps, num_samples), (0, 100)):  # the default; plain importance sampling
        res = evaluate_sentences(model, model.sentences(), 0, report["log_z"], num_chains, draws,
                                 torch.Generator().manual_seed(1), anneal_steps=steps)
        error = (res.log_px.double() - exact).abs().mean()
        assert error <= 0.1, (steps, error)
        assert res.ess.mean() >= 0.3 * draws
        assert abs((res.log_px - res.tenth()).mean()) < 0.2  # the convergence check agrees (mean over sentences)
    old = evaluate_sentences(model, model.sentences(), 0, report["log_z"], 16, 100,
                             torch.Generator().manual_seed(1), proposal="chains")
    assert (old.log_px.double() - exact).mean() < -1.0 and old.ess.mean() < 5  # the check can fail


def test_annealed_draws_from_the_laplace_gaussian_meet_the_closed_form_likelihood_and_information():
    """AIS's weights and final states through the same call as plain importance sampling: log p(x) within
    0.1 nat, the mutual information (from the weighted final states) within 10%."""
    model = closed_form_model(latent_dim=16, sentences=6)
    res = evaluate_sentences(model, model.sentences(), 0, model.exact_log_z(), 1, 8,
                             torch.Generator().manual_seed(0), anneal_steps=10)
    assert res.log_w.shape == (6, 8) and res.log_lik.shape == (6, 8)
    assert (res.log_px.double() - model.exact_log_px()).abs().mean() < 0.1
    exact = model.exact_mutual_information()
    assert ((posterior_information(res) - exact).abs() <= 0.1 * exact).all()
    assert res.ess.mean() > 0.5 * 8


def test_the_hessian_by_differences_is_the_closed_form_posterior_precision():
    model = closed_form_model(latent_dim=8, sentences=3)
    tokens = model.tokens()
    z = torch.randn(3, 8, generator=torch.Generator().manual_seed(0))
    precision, grad = negative_hessian(model, tokens, z)
    w = model.decoder.weight
    exact = model.prior.precision * torch.eye(8) + w.T @ w / model.decoder.noise**2
    torch.testing.assert_close(precision, exact.expand(3, -1, -1), rtol=1e-3, atol=2e-2)
    torch.testing.assert_close(grad, log_joint_grad(model, tokens, z), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("nu, heavy_share", [(3.0, 1.0), (5.0, 0.3), (math.inf, 1.0)])
def test_the_laplace_proposal_is_a_normalised_density_of_its_own_draws(nu, heavy_share):
    g = torch.Generator().manual_seed(0)
    vectors, _ = torch.linalg.qr(torch.randn(2, 3, 3, generator=g))
    proposal = LaplaceProposal(torch.randn(2, 3, generator=g), vectors, torch.tensor([[1.0, 4.0, 9.0]] * 2), nu,
                               heavy_share)
    z = proposal.sample(4000, g)
    covariance = vectors @ torch.diag_embed(1 / proposal.precisions) @ vectors.transpose(1, 2)
    if math.isinf(nu):
        exact = torch.distributions.MultivariateNormal(proposal.mean.unsqueeze(1), covariance.unsqueeze(1))
        torch.testing.assert_close(proposal.log_density(z), exact.log_prob(z), rtol=1e-4, atol=1e-4)
    elif heavy_share == 1:  # a t's scale matrix times nu / (nu - 2) is its covariance (nu = 3: 3 x)
        sample_cov = torch.stack([torch.cov(z[i].T) for i in range(2)])
        assert torch.allclose(sample_cov.diagonal(dim1=1, dim2=2) / (3 * covariance.diagonal(dim1=1, dim2=2)),
                              torch.ones(2, 3), atol=0.35)
    # normalised: E_q[p / q] = 1 for p a fixed Gaussian, by importance sampling from q itself
    target = torch.distributions.MultivariateNormal(proposal.mean.unsqueeze(1), covariance.unsqueeze(1))
    ratio = (target.log_prob(z) - proposal.log_density(z)).exp().mean(1)
    assert torch.allclose(ratio, torch.ones(2), atol=0.05), ratio


def test_mutual_information_from_the_weights_is_within_ten_percent_of_the_closed_form():
    """The reported figure is the mean over sentences: within 10% (measured 2026-12-06: within 4.3% for
    seeds 0-4). A sentence's own figure averages log p(x | z) over the default's 2 weighted draws, so
    it carries their spread (up to 19% for those seeds); a proposal biased towards the mode would
    shift every sentence alike."""
    model = closed_form_model(sentences=16)
    num_chains, num_samples, anneal_steps = _defaults()
    res = evaluate_sentences(model, model.sentences(), 0, model.exact_log_z(), num_chains, num_samples,
                             torch.Generator().manual_seed(2), anneal_steps=anneal_steps)
    estimate = posterior_information(res).double()
    exact = model.exact_mutual_information()
    assert abs(float(estimate.mean() / exact.mean()) - 1) <= 0.1, (estimate, exact)
    assert ((estimate - exact).abs() <= 0.3 * exact).all(), (estimate, exact)


def test_bdmc_sandwiches_the_exact_log_likelihood_of_sentences_sampled_from_the_model():
    model = _tiny_model("gaussian")
    g = torch.Generator().manual_seed(0)
    tokens, codes = model_samples(model, 6, max_length=8, generator=g)
    exact, _ = _exact(model, tokens)
    sandwich = bdmc(model, tokens, codes, 0.0, steps=300, num_chains=4, generator=g)
    assert (sandwich.lower <= exact + 0.05).all() and (exact <= sandwich.upper + 0.05).all(), (sandwich, exact)
    assert sandwich.gap.mean() < 0.3
    estimate = importance_sampled_log_likelihood(model, tokens, 0.0, num_samples=200, generator=g).log_px
    error = (estimate - exact).abs()  # 200 draws: a few hundredths per sentence, now and then 0.1
    assert error.mean() < 0.05 and (error < 0.15).all(), error


def test_ais_cannot_see_a_narrow_mode_holding_most_of_the_mass_and_its_checks_do_not_warn():
    """The limit stated in docs/evaluate-command.md: a bump of width 0.1 at distance 2 holding 90% of the
    prior's mass. AIS's chains never find it, so log Z reads log(1 / 10) = 2.3 nats low, while the ESS is
    high and the half schedule agrees: no self-check of AIS can see mass that no chain visited."""
    mu = torch.zeros(8)
    mu[0] = 2.0
    prior = NarrowBump.with_share(mu, 0.1, 0.9)
    exact = prior.exact_log_z()
    assert exact == pytest.approx(math.log(10), abs=1e-9)
    report, ais = partition_function(prior, num_chains=500, steps=300, monte_carlo_samples=20_000,
                                     generator=torch.Generator().manual_seed(0))
    assert exact - report["log_z"] > 1.5  # blind
    assert report["ais"]["converged"] and report["ais"]["ess"] > 250  # and the checks say all is well
    # a mild bump (width 1, the reference's own scale) is found: the limit is the narrow one
    mild = NarrowBump.with_share(mu, 1.0, 0.9)
    seen, _ = partition_function(mild, num_chains=500, steps=300, monte_carlo_samples=20_000,
                                 generator=torch.Generator().manual_seed(0))
    assert abs(seen["log_z"] - mild.exact_log_z()) < 0.1
