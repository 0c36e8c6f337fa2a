"""Short-run Langevin: the posterior chain climbs log p(x, z); chains are batched, z-only, guarded."""

import math

import pytest
import torch

from textebm.config import step_schedule
from textebm.errors import NonFiniteError
from textebm.model.energy import EnergyPrior
from textebm.model.langevin import langevin, mala_step, posterior_chain, prior_chain, tempered_prior


@pytest.fixture
def z_sensitive_model(latent_model):
    """A model whose decoder depends strongly on z, so that p(z | x) is much narrower than the
    prior and the posterior chain has somewhere to go."""
    return latent_model(5.0)


def test_posterior_chain_raises_log_joint(z_sensitive_model):
    model, tokens = z_sensitive_model
    generator = torch.Generator().manual_seed(0)
    trajectory = []
    z = model.posterior_sample(tokens, steps=20, step_size=0.1, generator=generator, trajectory=trajectory)
    assert len(trajectory) == 21 and torch.equal(trajectory[-1], z)
    z0 = trajectory[0]
    with torch.no_grad():
        start, end = model.log_joint(tokens, z0), model.log_joint(tokens, z)
    rise = (end - start).mean().item()
    # measured: +5 to +7 nats per sentence (standard error ~0.6) for model seeds 0-2
    assert rise > 1.5, f"posterior chain raised log p(x, z) by only {rise:.3f} on average"
    assert (end > start).float().mean() > 0.6
    # and it climbs along the way: the last states beat the first ones
    with torch.no_grad():
        middle = model.log_joint(tokens, trajectory[10]).mean().item()
    assert end.mean().item() > start.mean().item() and middle > start.mean().item()


def test_posterior_chain_starts_from_the_reference_gaussian(z_sensitive_model):
    model, tokens = z_sensitive_model
    model.prior.sigma = 1.0
    trajectory = []
    g1 = torch.Generator().manual_seed(5)
    model.posterior_sample(tokens, steps=0, generator=g1, trajectory=trajectory)
    expected = torch.randn(tokens.shape[0], model.config.latent_dim, generator=torch.Generator().manual_seed(5))
    assert torch.equal(trajectory[0], expected)


def test_chains_leave_parameter_gradients_alone(z_sensitive_model):
    model, tokens = z_sensitive_model
    model.zero_grad(set_to_none=True)
    model.posterior_sample(tokens, steps=3)
    model.prior_sample(8, steps=3)
    assert all(p.grad is None for p in model.parameters())


def test_chains_are_reproducible_with_a_generator(z_sensitive_model):
    model, tokens = z_sensitive_model
    a = model.posterior_sample(tokens, steps=4, generator=torch.Generator().manual_seed(3))
    b = model.posterior_sample(tokens, steps=4, generator=torch.Generator().manual_seed(3))
    c = model.posterior_sample(tokens, steps=4, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def _gradient(log_density):
    """A per-row log density's gradient in z by autograd: what the library writes out by hand."""
    def grad(z):
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            return torch.autograd.grad(log_density(z).sum(), z)[0]
    return grad


def test_langevin_samples_a_known_gaussian():
    """Target N(mu, 0.5^2 I): after enough small steps the chain's mean and spread match it."""
    mu = torch.tensor([3.0, -2.0])

    def log_density(z):
        return -((z - mu) ** 2).sum(dim=-1) / (2 * 0.25)

    generator = torch.Generator().manual_seed(0)
    z = langevin(_gradient(log_density), torch.zeros(4000, 2), steps=300, step_size=0.1, generator=generator)
    assert torch.allclose(z.mean(dim=0), mu, atol=0.05)
    assert torch.allclose(z.std(dim=0), torch.full((2,), 0.5), atol=0.05)


def test_langevin_step_matches_the_update_rule():
    """One step: z + (s^2/2) grad log pi(z) + s * eps, with eps from the generator."""
    z0 = torch.tensor([[1.0, 2.0]])
    s = 0.3
    z1 = langevin(lambda z: -z, z0, steps=1, step_size=s, generator=torch.Generator().manual_seed(9))
    eps = torch.randn(1, 2, generator=torch.Generator().manual_seed(9))
    assert torch.allclose(z1, z0 + 0.5 * s**2 * (-z0) + s * eps)


def test_langevin_detects_non_finite():
    with pytest.raises(NonFiniteError):
        langevin(lambda z: z * float("nan"), torch.zeros(3, 2), steps=2, step_size=0.1)
    with pytest.raises(NonFiniteError):
        langevin(lambda z: 2e30 * z, torch.ones(3, 2), steps=5, step_size=1.0)


def test_prior_chain_of_untilted_ebm_stays_near_reference():
    """With f = 0 the tilted Gaussian is the reference itself: the chain must keep N(0, sigma^2)."""
    prior = EnergyPrior(2, 16, 2, sigma=1.0)
    with torch.no_grad():
        for p in prior.parameters():
            p.zero_()
    z = prior_chain(prior, 4000, steps=60, step_size=0.4, generator=torch.Generator().manual_seed(1))
    assert abs(z.std().item() - 1.0) < 0.1 and abs(z.mean().item()) < 0.1


def test_posterior_chain_function_matches_model_method(z_sensitive_model):
    model, tokens = z_sensitive_model
    a = posterior_chain(model.prior, model.decoder, tokens, 3, 0.1, torch.Generator().manual_seed(2),
                        noise_scale=model.config.posterior_noise)
    b = model.posterior_sample(tokens, steps=3, step_size=0.1, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a, b)
    assert math.isfinite(a.sum().item())


def _plain_langevin(log_density, z, sizes, generator):
    """The chain before noise scales and schedules existed, written out: the bit-for-bit reference."""
    for s in sizes:
        z = z.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(log_density(z).sum(), z)
        z = (z + 0.5 * s**2 * grad + s * torch.randn(z.shape, generator=generator)).detach()
    return z


def test_noise_scale_one_is_plain_langevin_bit_for_bit():
    def log_density(z):
        return -(z**4).sum(-1) / 4 + z[:, 0]

    z0 = torch.randn(64, 3, generator=torch.Generator().manual_seed(1))
    ours = langevin(_gradient(log_density), z0, 12, 0.3, generator=torch.Generator().manual_seed(2), noise_scale=1.0)
    plain = _plain_langevin(log_density, z0, [0.3] * 12, torch.Generator().manual_seed(2))
    assert torch.equal(ours, plain)


def test_noise_scale_zero_is_deterministic_gradient_ascent(z_sensitive_model):
    model, tokens = z_sensitive_model
    z0 = torch.randn(tokens.shape[0], 8, generator=torch.Generator().manual_seed(0))
    runs = [posterior_chain(model.prior, model.decoder, tokens, 6, 0.4, torch.Generator().manual_seed(seed),
                            z0=z0, noise_scale=0.0) for seed in (1, 2)]
    assert torch.equal(runs[0], runs[1])  # the generator is never drawn from
    # each step is exactly z + (s^2/2) grad log p(x, z)
    z = z0.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model.log_joint(tokens, z).sum(), z)
    one = posterior_chain(model.prior, model.decoder, tokens, 1, 0.4, z0=z0, noise_scale=0.0)
    assert torch.allclose(one, z0 + 0.5 * 0.4**2 * grad, atol=1e-6)
    with torch.no_grad():
        assert (model.log_joint(tokens, runs[0]) > model.log_joint(tokens, z0)).float().mean() > 0.9
    # a noisy chain from the same start depends on its generator
    noisy = [posterior_chain(model.prior, model.decoder, tokens, 6, 0.4, torch.Generator().manual_seed(seed),
                             z0=z0, noise_scale=0.1) for seed in (1, 2)]
    assert not torch.equal(noisy[0], noisy[1])


def test_schedule_is_applied_step_by_step():
    """Step k uses s_k: against the update rule written out with each step's own size and noise."""
    sizes = [0.8, 0.4, 0.2]
    z0 = torch.tensor([[1.0, -2.0]])

    def log_density(z):
        return -(z**2).sum(-1) / 2

    trajectory = []
    langevin(_gradient(log_density), z0, 3, sizes, generator=torch.Generator().manual_seed(4), trajectory=trajectory,
             noise_scale=0.5)
    eps = torch.randn(3, 1, 2, generator=torch.Generator().manual_seed(4))
    z = z0
    for k, s in enumerate(sizes):
        z = z + 0.5 * s**2 * (-z) + 0.5 * s * eps[k]
        assert torch.allclose(trajectory[k + 1], z, atol=1e-6)
    with pytest.raises(ValueError):
        langevin(_gradient(log_density), z0, 2, sizes)


def test_model_posterior_chain_follows_the_config(z_sensitive_model):
    """posterior_sample takes schedule and noise from the config (and refine steps share the schedule)."""
    model, tokens = z_sensitive_model
    cfg = model.config
    cfg.posterior_step_size, cfg.posterior_step_size_end, cfg.posterior_step_schedule = 0.8, 0.1, "geometric"
    cfg.posterior_noise = 0.0
    trajectory = []
    z = model.posterior_sample(tokens, steps=4, generator=torch.Generator().manual_seed(0), trajectory=trajectory)
    expected = posterior_chain(model.prior, model.decoder, tokens, 4, step_schedule(0.8, 0.1, 4, "geometric"),
                               z0=trajectory[0], noise_scale=0.0)
    assert torch.equal(z, expected)
    assert cfg.posterior_step_sizes(4) == pytest.approx([0.8, 0.4, 0.2, 0.1])


def test_mala_keeps_the_target_where_the_unadjusted_chain_widens_it(quadratic_tilt):
    """Target N(a/p, I/p), p = 4: at step 0.6 the unadjusted chain's variance is 1/(p (1 - p s^2/4)),
    1.56x the target's; the accept test brings it back to 1/p."""
    prior = quadratic_tilt(torch.full((4,), 2.0), 3.0)
    p, target = prior.precision, tempered_prior(prior, 1.0)
    generator = torch.Generator().manual_seed(0)
    z = torch.randn(4000, 4, generator=generator) / math.sqrt(p) + 2.0 / p  # start at the target
    unadjusted = langevin(prior.grad_log_density, z, 200, 0.6, generator)
    state, accepted = target(z), 0.0
    for _ in range(200):
        z, state, accept = mala_step(target, z, state, 0.6, generator)
        accepted += float(accept.float().mean()) / 200
    assert 0.5 < accepted < 0.99
    assert abs(float(z.var(0).mean()) * p - 1) < 0.05
    assert abs(float(unadjusted.var(0).mean()) * p - 1 / (1 - p * 0.36 / 4)) < 0.1
    torch.testing.assert_close(state[2], prior.energy(z))  # the carried f belongs to the state
    torch.testing.assert_close(z.mean(0), torch.full((4,), 2.0 / p), atol=0.02, rtol=0)
