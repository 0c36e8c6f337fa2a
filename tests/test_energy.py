"""The tilted-Gaussian prior, and its learning rule on a 2-D toy whose target is known."""

import pytest
import torch

from textebm.config import resolve_config
from textebm.model.energy import EnergyPrior
from textebm.model.langevin import prior_chain
from textebm.model.latent_ebm import LatentEBMTextModel
from textebm.training.learner import Learner

MODES = torch.tensor([[2.0, 2.0], [2.0, -2.0], [-2.0, 2.0], [-2.0, -2.0]])


def near_mode_share(z: torch.Tensor, radius: float = 0.75) -> float:
    return (torch.cdist(z, MODES).min(dim=1).values < radius).float().mean().item()


def test_log_density_is_energy_minus_quadratic():
    torch.manual_seed(0)
    prior = EnergyPrior(3, 8, 2, sigma=2.0)
    z = torch.randn(5, 3)
    assert torch.allclose(prior.log_density(z), prior.energy(z) - (z**2).sum(-1) / 8.0)
    assert prior.energy(z).shape == (5,)
    assert prior.is_ebm and sum(p.numel() for p in prior.parameters()) == 3 * 8 + 8 + 8 * 8 + 8 + 8 + 1



@pytest.mark.parametrize("kind, layers", [("ebm", 0), ("ebm", 1), ("ebm", 2), ("ebm", 3), ("gaussian", 2)])
def test_written_out_gradient_equals_autograd(kind, layers):
    torch.manual_seed(layers)
    prior = EnergyPrior(5, 16, layers, sigma=1.3, kind=kind)
    z = (2 * torch.randn(40, 5)).requires_grad_(True)
    (expected,) = torch.autograd.grad(prior.log_density(z).sum(), z)
    torch.testing.assert_close(prior.grad_log_density(z.detach()), expected, rtol=1e-5, atol=1e-6)
    f, _ = prior.energy_and_grad(z.detach())  # the same pass gives f itself
    torch.testing.assert_close(f, prior.energy(z.detach()), rtol=1e-6, atol=1e-6)


def test_gaussian_prior_has_no_energy():
    prior = EnergyPrior(4, kind="gaussian", sigma=1.5)
    assert not prior.is_ebm and list(prior.parameters()) == []
    z = torch.randn(6, 4)
    assert torch.equal(prior.energy(z), torch.zeros(6))
    assert torch.allclose(prior.log_density(z), -(z**2).sum(-1) / (2 * 1.5**2))
    draws = prior_chain(prior, 20000, 60, 0.4, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (20000, 4) and abs(draws.std().item() - 1.5) < 0.03


class ToyLearner:
    """The library's learning iteration with z+ supplied by the test: the model's posterior chain is
    replaced by draws from the known target, so that only the prior's update rule is at work."""

    def __init__(self, overrides, seed=0):
        cfg = resolve_config("cpu", "toy", [
            "latent_dim=2", "energy_hidden=64", "energy_layers=2", "prior_sigma=1.0", "prior=ebm",
            "energy_lr=1e-3", "adam_beta1=0.5", "energy_clip=1.0", "prior_steps=40", "prior_step_size=0.4",
            "embedding_dim=2", "hidden_dim=2", "dropout=0.0", f"seed={seed}", *overrides])
        torch.manual_seed(seed)
        self.model = LatentEBMTextModel(cfg, vocab_size=4, pad_id=0, bos_id=1, eos_id=2)
        self.z_pos = None
        self.model.posterior_sample = lambda tokens, *args, **kwargs: self.z_pos
        self._step = Learner(self.model, cfg, "cpu").step

    @property
    def prior(self):
        return self.model.prior

    def step(self, z_pos):
        self.z_pos = z_pos
        tokens = torch.tensor([[1, 2]]).expand(z_pos.shape[0], 2).contiguous()
        return self._step(tokens)


def test_energy_update_raises_f_on_positives_and_lowers_it_on_negatives():
    learner = ToyLearner(["energy_lr=1e-2", "prior_steps=0"])
    prior = learner.prior
    z_pos, z_neg = torch.full((64, 2), 1.5), torch.randn(64, 2)
    gap_before = (prior.energy(z_pos) - prior.energy(z_neg)).mean().item()
    for _ in range(20):
        learner.step(z_pos)
    gap_after = (prior.energy(z_pos) - prior.energy(z_neg)).mean().item()
    assert gap_after > gap_before + 0.5


def test_ebm_prior_learns_the_modes_of_a_2d_mixture():
    """Target: 4 Gaussians at (+-2, +-2), std 0.3, fed to the learning iteration as z+; the prior
    chain's samples are z-. The update moves the chain's mass to the modes.
    Measured (seeds 0-2, EnergyPrior(2, 64, 2, 1.0), Adam 1e-3 (0.5, 0.999), 40 steps of 0.4,
    batch 128): ~3% of chain samples within 0.75 of a mode before; 37-49% after 150 updates and
    54-62% after 200 (the lead measured 54% after 400 updates with 60-step chains)."""
    learner = ToyLearner([])
    prior = learner.prior
    check = torch.Generator().manual_seed(123)
    before = near_mode_share(prior_chain(prior, 1000, 40, 0.4, generator=check))
    data = torch.Generator().manual_seed(7)
    for _ in range(160):
        z_pos = MODES[torch.randint(0, 4, (128,), generator=data)] + 0.3 * torch.randn(128, 2, generator=data)
        learner.step(z_pos)
    z = prior_chain(prior, 1000, 40, 0.4, generator=check)
    after = near_mode_share(z)
    assert before < 0.1
    assert after > 0.3, f"share near the modes went from {before:.3f} only to {after:.3f}"
    # every mode gets some of the mass (not a collapse onto one)
    nearest = torch.cdist(z, MODES).argmin(dim=1)
    assert all((nearest == k).float().mean() > 0.1 for k in range(4))
