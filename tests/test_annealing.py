"""Per-sentence annealed importance sampling (textebm/inference/annealing.py), held against the closed-form model."""

from __future__ import annotations

import math

import pytest
import torch

from textebm.inference.annealing import (
    GaussianReference,
    MixtureReference,
    RowMixture,
    _log_ratio_and_grad,
    anneal,
    annealed_log_likelihood,
    linear_schedule,
    sigmoid_schedule,
    transition_variances,
)
from textebm.inference.bdmc import bdmc
from textebm.inference.closed_form import bimodal_closed_form_model, closed_form_model
from textebm.inference.laplace import laplace_mixture, remeasured_precision


def test_sigmoid_schedule_rises_from_zero_to_one():
    betas = sigmoid_schedule(50)
    assert betas[0] == 0 and betas[-1] == 1 and (betas.diff() > 0).all()


def test_linear_schedule_takes_equal_steps():
    betas = linear_schedule(4)
    assert betas.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("near", [True, False])
def test_the_schedule_that_suits_the_reference_gives_the_smaller_log_weight_variance(near):
    """Equal steps suit a reference near the posterior (a Laplace approximation: here one posterior std
    off and 1.3 times too wide), the sigmoid's dense ends one as far as the prior: each gives the other's
    log weights about 0.7 (near) and 0.35 (far) times their variance over 64 chains."""
    model = closed_form_model(latent_dim=16, sentences=6)
    if near:
        reference, steps, suited, other = _posterior_reference(model, shift=1.0, widen=1.3), 20, "linear", "sigmoid"
    else:
        reference, steps, suited, other = GaussianReference.prior(model.prior.sigma, 6, 16), 50, "sigmoid", "linear"
    variance = {}
    for schedule in (suited, other):
        _, chains = annealed_log_likelihood(model, model.tokens(), reference, model.exact_log_z(), 64, steps,
                                            generator=torch.Generator().manual_seed(0), schedule=schedule)
        variance[schedule] = float(chains.log_w.view(6, 64).var(1).mean())
    assert variance[suited] < 0.85 * variance[other], variance


def test_an_unknown_schedule_is_refused():
    model = closed_form_model(latent_dim=4, sentences=2)
    with pytest.raises(ValueError, match="schedule must be one of"):
        annealed_log_likelihood(model, model.tokens(), _posterior_reference(model), 0.0, 2, 5, schedule="cosine")


def test_step_groups_split_a_sentences_chains_into_runs_that_steer_their_own_step_size(monkeypatch):
    import textebm.inference.annealing as annealing

    model = closed_form_model(latent_dim=4, sentences=2)
    reference = _posterior_reference(model, shift=0.5)
    with pytest.raises(ValueError, match="do not split into step groups of 3"):
        annealed_log_likelihood(model, model.tokens(), reference, 0.0, 4, 5, step_group=3)
    groups = []
    real = annealing.anneal
    monkeypatch.setattr(annealing, "anneal", lambda *a, **k: groups.append(k["group"]) or real(*a, **k))
    for step_group in (None, 2, 1):
        log_px, chains = annealed_log_likelihood(model, model.tokens(), reference, model.exact_log_z(), 4, 40,
                                                 generator=torch.Generator().manual_seed(0), step_group=step_group)
        assert chains.log_w.shape == (8,) and torch.allclose(log_px.double(), model.exact_log_px(), atol=0.3)
    assert groups == [4, 2, 1]  # default: all of a sentence's chains share one step size


def test_a_step_schedule_is_followed_as_given_and_a_steered_run_reports_the_sizes_it_used():
    model = closed_form_model(latent_dim=4, sentences=2)
    reference = _posterior_reference(model, shift=1.0).repeat(3)
    betas = sigmoid_schedule(5).tolist()  # 5 moves
    u = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    steered = anneal(model, model.tokens().repeat_interleave(3, 0), reference, u, betas, 1.0,
                     torch.Generator().manual_seed(1), group=3, trace=True)
    assert steered.step_sizes.shape == (5, 2) and torch.all(steered.step_sizes[0] == 1.0)
    assert not torch.all(steered.step_sizes == 1.0)  # steered by the acceptances after every move
    assert torch.allclose(steered.trace["step"], steered.step_sizes.mean(1))
    schedule = torch.tensor([[0.3, 0.5], [0.2, 0.4], [0.1, 0.6], [0.3, 0.3], [0.2, 0.2]])
    fixed = anneal(model, model.tokens().repeat_interleave(3, 0), reference, u, betas, 1.0,
                   torch.Generator().manual_seed(1), group=3, step_schedule=schedule)
    assert torch.equal(fixed.step_sizes, schedule)
    with pytest.raises(ValueError, match="step_schedule must be"):
        anneal(model, model.tokens().repeat_interleave(3, 0), reference, u, betas, 1.0, group=3,
               step_schedule=schedule[:4])


def _posterior_reference(model, shift: float = 0.0, widen: float = 1.0) -> GaussianReference:
    """The exact posterior as a reference, its mean moved `shift` posterior stds (along the whitened
    diagonal) and its spread `widen` times wider."""
    means, covariance = model._posterior()
    root = torch.linalg.cholesky(covariance).float()
    b, d = means.shape
    mean = means.float() + shift * root @ torch.full((d,), 1 / math.sqrt(d))
    return GaussianReference(mean, widen * root.expand(b, -1, -1).clone())


def test_whitened_coordinates_round_trip_and_the_log_determinant_is_the_matrix_s():
    model = closed_form_model(latent_dim=6, sentences=3)
    reference = _posterior_reference(model, widen=2.0)
    u = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(reference.to_u(reference.to_z(u)), u, atol=1e-4)
    expected = torch.linalg.cholesky(model._posterior()[1]).diagonal().log().sum() + 6 * math.log(2.0)
    assert torch.allclose(reference.log_det, torch.full((3,), float(expected)), atol=1e-4)
    assert reference.repeat(4).mean.shape == (12, 6)


def test_ais_from_the_exact_posterior_gives_equal_weights_and_the_exact_log_likelihood():
    model = closed_form_model(latent_dim=8, sentences=4)
    log_px, chains = annealed_log_likelihood(model, model.tokens(), _posterior_reference(model), model.exact_log_z(),
                                             num_chains=4, steps=5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(log_px.double(), model.exact_log_px(), atol=1e-3)
    assert float(chains.log_w.view(4, 4).std(1).max()) < 1e-3


def test_the_trace_follows_each_move_and_sees_l_vary_only_off_the_posterior():
    """From the exact posterior l is constant: no variance at any temperature; from a misplaced reference
    l varies most at beta = 0 (the reference's own draws) and the chains' steps adapt."""
    model = closed_form_model(latent_dim=8, sentences=4)
    exact = _posterior_reference(model)
    _, plain = annealed_log_likelihood(model, model.tokens(), exact, 0.0, 4, 10)
    assert plain.trace is None
    _, chains = annealed_log_likelihood(model, model.tokens(), exact, 0.0, 4, 10,
                                        generator=torch.Generator().manual_seed(0), trace=True)
    trace = chains.trace
    assert all(len(v) == 10 for v in trace.values()) and trace["beta"][-1] == 1.0
    assert float(trace["ell_variance"].abs().max()) < 1e-6 and float(trace["acceptance"].min()) > 0.5
    assert transition_variances(linear_schedule(10), trace["ell_variance"])[0] < 1e-6
    _, off = annealed_log_likelihood(model, model.tokens(), _posterior_reference(model, shift=2.0, widen=1.5), 0.0, 16,
                                     20, generator=torch.Generator().manual_seed(0), trace=True)
    variance = off.trace["ell_variance"]
    assert float(variance[0]) > 2 * float(variance[-5:].mean()) > 0, variance
    assert len(set(off.trace["step"].tolist())) > 1  # the step size adapts from move to move
    _, single = annealed_log_likelihood(model, model.tokens(), exact, 0.0, 1, 3, trace=True)
    assert single.trace["ell_variance"].isnan().all()  # one chain per sentence: no spread to measure


def test_transition_variances_are_the_sum_of_squared_steps_times_the_variance_and_its_least():
    """Constant Var(l) = 4 over 8 equal steps: 4 / 8 on the schedule and at best; Var(l) that falls
    from 100 to 1 gives the equal steps more than the best spacing, and the best is (int sqrt V)^2 / T."""
    betas = linear_schedule(8)
    assert transition_variances(betas, torch.full((8,), 4.0)) == pytest.approx((0.5, 0.5))
    falling = torch.tensor([100.0, 1, 1, 1, 1, 1, 1, 1])
    on_schedule, least = transition_variances(betas, falling)
    assert on_schedule == pytest.approx((100 + 7) / 64)
    assert least == pytest.approx((10 + 7) ** 2 / 64 / 8) and least < on_schedule


def test_ais_corrects_a_misplaced_reference_that_plain_importance_sampling_cannot():
    """A reference two stds off the posterior's mean and 1.5 times too wide in 16 dimensions: its draws
    alone (1 step: plain importance sampling) are more than a nat off; 100 temperatures bring AIS within
    0.3 nat."""
    model = closed_form_model(latent_dim=16, sentences=6)
    reference, exact = _posterior_reference(model, shift=2.0, widen=1.5), model.exact_log_px()
    g = torch.Generator().manual_seed(0)
    plain, _ = annealed_log_likelihood(model, model.tokens(), reference, model.exact_log_z(), 16, 1, generator=g)
    annealed, chains = annealed_log_likelihood(model, model.tokens(), reference, model.exact_log_z(), 16, 100,
                                               generator=g)
    assert (exact - plain.double()).mean() > 1.0
    assert (annealed.double() - exact).abs().mean() < 0.3, (annealed, exact)
    assert 0.4 < float(chains.acceptance.mean()) < 0.9  # each chain's step size found its target


def test_ais_from_the_prior_reaches_the_closed_form_log_likelihood_and_its_final_states_the_posterior():
    model = closed_form_model(latent_dim=8, sentences=4, largest=5.0)  # posterior std down to 0.2
    b, d = 4, 8
    reference = GaussianReference.prior(model.prior.sigma, b, d)
    log_px, chains = annealed_log_likelihood(model, model.tokens(), reference, model.exact_log_z(), 16, 300,
                                             generator=torch.Generator().manual_seed(1), schedule="sigmoid")
    assert (log_px.double() - model.exact_log_px()).abs().mean() < 0.25
    weights = torch.softmax(chains.log_w.view(b, 16), 1).unsqueeze(-1)
    mean = (weights * chains.z.view(b, 16, d)).sum(1)
    means, covariance = model._posterior()
    assert ((mean.double() - means).abs() < 3 * covariance.diagonal().sqrt() / math.sqrt(4)).float().mean() > 0.9


def test_bdmc_from_a_misplaced_reference_sandwiches_the_exact_log_likelihood():
    model = closed_form_model(latent_dim=8, sentences=4)
    means, covariance = model._posterior()
    g = torch.Generator().manual_seed(3)
    exact_draws = means + torch.randn(4, 8, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(covariance).T
    sandwich = bdmc(model, model.tokens(), exact_draws.float(), model.exact_log_z(), steps=100, num_chains=8,
                    step_size=1.0, generator=g, reference=_posterior_reference(model, shift=2.0, widen=1.5))
    exact = model.exact_log_px()
    # each bound holds in expectation; a sentence's pair carries noise of about 0.2 nat at these settings
    assert float((sandwich.lower.double() - exact).mean()) < 0.2
    assert float((sandwich.upper.double() - exact).mean()) > -0.2
    assert float(sandwich.gap.abs().mean()) < 0.3, sandwich


def test_bdmc_weighs_chains_of_step_sizes_fixed_by_a_pilot_run(monkeypatch):
    import textebm.inference.bdmc as bdmc_module

    calls, real = [], bdmc_module.anneal
    monkeypatch.setattr(bdmc_module, "anneal", lambda *a, **k: calls.append(k.get("step_schedule")) or real(*a, **k))
    model = closed_form_model(latent_dim=4, sentences=2)
    codes = model._posterior()[0].float()
    bdmc(model, model.tokens(), codes, model.exact_log_z(), steps=10, num_chains=3,
         generator=torch.Generator().manual_seed(0))
    pilot, forward, reverse = calls
    assert pilot is None and forward.shape == (10, 2) and torch.equal(reverse, forward.flip(0))


def _mode_gaussians(model) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The bimodal model's exact posterior per sentence as its two Gaussians: means (B, 2, d), square
    roots of the covariances (B, 2, d, d), log shares (B, 2)."""
    w, c, s2 = model.decoder.weight.double(), model.decoder.offset.double(), model.decoder.noise**2
    y = model.decoder.observations.double()
    _, prior_means, variances = model.prior.components()
    d = w.shape[1]
    means, roots = [], []
    for j in range(2):
        covariance = torch.linalg.inv(torch.eye(d, dtype=torch.float64) / variances[j] + w.T @ w / s2)
        means.append((prior_means[j] / variances[j] + (y - c) @ w / s2) @ covariance)
        roots.append(torch.linalg.cholesky(covariance).expand(y.shape[0], d, d))
    shares = torch.log_softmax(model.exact_component_log_px(), 1)
    return torch.stack(means, 1).float(), torch.stack(roots, 1).float(), shares


def test_a_one_component_mixture_has_the_single_gaussians_log_ratio():
    model = closed_form_model(latent_dim=6, sentences=3)
    reference = _posterior_reference(model, shift=1.0, widen=1.5)
    u = torch.randn(3, 6, generator=torch.Generator().manual_seed(0))
    mixture = MixtureReference(reference.mean.unsqueeze(1), reference.matrix.unsqueeze(1), torch.zeros(3, 1))
    single = _log_ratio_and_grad(model, model.tokens(), reference, reference.log_det, u, 8)
    mixed = _log_ratio_and_grad(model, model.tokens(), reference, reference.log_det, u, 8, RowMixture.of(mixture))
    for a, b in zip(single, mixed):
        assert torch.allclose(a, b, atol=1e-4)


def test_ais_from_a_mixture_on_both_modes_reaches_the_mass_that_one_modes_gaussian_misses():
    """A posterior of two Gaussians (a broad mode and a narrow one `distance` 3 away): chains that start
    in the broad mode's Gaussian never reach the other, and the estimate falls short by log of the
    broad mode's share; from the two-component mixture with the exact shares every weight is equal."""
    model = bimodal_closed_form_model()
    means, roots, shares = _mode_gaussians(model)
    exact, g = model.exact_log_px(), torch.Generator().manual_seed(0)
    broad, _ = annealed_log_likelihood(model, model.tokens(), GaussianReference(means[:, 0], roots[:, 0]),
                                       model.exact_log_z(), 8, 10, generator=g)
    assert torch.allclose(broad.double() - exact, shares[:, 0], atol=0.05)
    mixed, chains = annealed_log_likelihood(model, model.tokens(), MixtureReference(means, roots, shares),
                                            model.exact_log_z(), 8, 10, generator=g)
    assert (mixed.double() - exact).abs().max() < 0.01
    assert float(chains.log_w.view(8, 8).std(1).max()) < 0.01


def test_laplace_mixture_finds_each_mode_and_weighs_it_by_its_mass():
    model = bimodal_closed_form_model()
    means, _, shares = _mode_gaussians(model)
    g = torch.Generator().manual_seed(0)
    codes = means.repeat_interleave(2, 1) + 0.05 * torch.randn(8, 4, 8, generator=g)  # two ends near each mode
    mixture = laplace_mixture(model, model.tokens(), codes, evidence_share=0.5)
    assert torch.allclose(mixture.means, means.repeat_interleave(2, 1), atol=1e-3)
    found = mixture.log_weights.exp().float().view(8, 2, 2).sum(2)  # each mode's two components together
    expected = 0.5 * shares.exp() + 0.5 * 2 / 4  # half by the evidence, half evenly over the 4 ends
    assert torch.allclose(found, expected.float(), atol=0.01), (found, expected)


def test_remeasuring_the_stiffest_directions_corrects_them_and_keeps_the_rest():
    """Linear-Gaussian model (constant Hessian P): from P's own eigenvectors with every eigenvalue
    doubled, the 2 stiffest directions come back exact and the other 4 stay doubled."""
    model = closed_form_model(latent_dim=6, sentences=3)
    means, covariance = model._posterior()
    exact, vectors = torch.linalg.eigh(torch.linalg.inv(covariance))
    values, _, grad = remeasured_precision(model, model.tokens(), means.float(), vectors.expand(3, 6, 6),
                                           2 * exact.expand(3, 6), directions=2)
    expected = torch.cat([2 * exact[:4], exact[4:]]).sort().values
    assert torch.allclose(values, expected.expand(3, 6), rtol=1e-3), (values, expected)
    assert float(grad.abs().max()) < 1e-3  # the gradient at the mode


def test_laplace_mixture_ends_that_remeasure_the_best_ends_hessian_reach_the_posterior():
    """Linear-Gaussian model: the best end's Hessian is every end's, so re-measured or not, each end's
    Newton step lands on the mode and its component has the exact covariance."""
    model = closed_form_model(latent_dim=6, sentences=3)
    means, covariance = model._posterior()
    codes = means.float().unsqueeze(1) + 0.3 * torch.randn(3, 4, 6, generator=torch.Generator().manual_seed(0))
    mixture = laplace_mixture(model, model.tokens(), codes, directions=2)
    assert torch.allclose(mixture.means, means.float().unsqueeze(1).expand(3, 4, 6), atol=1e-3)
    shapes = mixture.matrices @ mixture.matrices.transpose(-1, -2)
    assert float((shapes - covariance.float()).abs().max()) < 1e-3  # one covariance for every sentence


def test_laplace_mixture_with_remeasured_hessians_keeps_a_component_on_each_mode():
    """Bimodal model (a narrow and a broad mode): ends on the other mode than the best end's start from
    the wrong curvature, yet re-measured and Newton-stepped they land on their own mode."""
    model = bimodal_closed_form_model()
    means, _, _ = _mode_gaussians(model)
    g = torch.Generator().manual_seed(0)
    codes = means.repeat_interleave(2, 1) + 0.05 * torch.randn(8, 4, 8, generator=g)
    mixture = laplace_mixture(model, model.tokens(), codes, directions=4)
    nearest = (mixture.means.unsqueeze(2) - means.unsqueeze(1)).norm(dim=-1)  # (B, 4 components, 2 modes)
    assert float(nearest.amin(2).max()) < 0.3  # each component on a mode (the modes are 3 apart)
    assert (nearest.argmin(2).sum(1) == 2).all()  # two components on each
    for wrong in (0, -1):
        with pytest.raises(ValueError, match="directions"):
            laplace_mixture(model, model.tokens(), codes, directions=wrong)
