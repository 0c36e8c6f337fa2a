"""Active units, KL to the prior and mutual information on synthetic posteriors with known answers."""

from __future__ import annotations

import math

import torch

from textebm.diagnostics import (
    active_units,
    gaussian_entropy,
    kl_to_prior,
    mutual_information,
)
from textebm.likelihood import diag_gaussian_log_density


def test_active_units_counts_dimensions_whose_mean_varies():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(300, 6, generator=g) * torch.tensor([1.0, 0.5, 0.2, 0.05, 0.01, 0.0])
    assert active_units(means) == 3  # variances 1, 0.25, 0.04 > 0.01 > 0.0025, 1e-4, 0
    assert active_units(means, threshold=0.001) == 4
    assert active_units(means[:1]) == 0


def test_active_units_discounts_the_noise_of_sampled_means():
    # Means of C = 4 draws from an x-independent N(0, 1) posterior vary by 1/4 across sentences:
    # all units look active unless that Monte Carlo variance is subtracted.
    g = torch.Generator().manual_seed(0)
    draws = torch.randn(20_000, 4, 8, generator=g)
    draws[:, :, :2] += 3 * torch.randn(20_000, 1, 2, generator=g)  # two units depend on x
    means, var = draws.mean(1), draws.var(1, correction=1)
    assert active_units(means) == 8
    assert active_units(means, noise_var=var / 4) == 2


def test_kl_estimate_matches_the_closed_form_for_gaussians():
    g = torch.Generator().manual_seed(0)
    mean, std = torch.tensor([[0.5, -1.0]]), torch.tensor([[0.3, 2.0]])
    z = mean.unsqueeze(1) + std.unsqueeze(1) * torch.randn(1, 200_000, 2, generator=g)
    log_q = diag_gaussian_log_density(z, mean.unsqueeze(1), std.unsqueeze(1))
    log_p = diag_gaussian_log_density(z, torch.zeros(2), torch.ones(2))
    exact = (-std.log() + (std**2 + mean**2) / 2 - 0.5).sum()
    assert abs(kl_to_prior(log_q, log_p).item() - exact.item()) < 0.02
    assert kl_to_prior(log_p, log_p).abs().max() == 0


def _draws(mean, std, s, seed=0):
    g = torch.Generator().manual_seed(seed)
    return mean.unsqueeze(1) + std.unsqueeze(1) * torch.randn(mean.shape[0], s, mean.shape[1], generator=g)


def test_mutual_information_is_zero_when_posteriors_do_not_depend_on_x():
    mean, std = torch.zeros(50, 4), torch.ones(50, 4)
    assert abs(mutual_information(mean, std, _draws(mean, std, 5))) < 1e-5


def test_mutual_information_reaches_log_n_for_separated_posteriors():
    n = 40
    mean = torch.arange(n, dtype=torch.float).unsqueeze(1) * 10.0
    std = torch.full((n, 1), 0.1)
    assert abs(mutual_information(mean, std, _draws(mean, std, 5)) - math.log(n)) < 1e-3


def test_mutual_information_lies_between_zero_and_log_n_and_grows_with_separation():
    g = torch.Generator().manual_seed(1)
    base = torch.randn(100, 3, generator=g)
    std = torch.full((100, 3), 0.5)
    values = [mutual_information(base * k, std, _draws(base * k, std, 10, seed=2), chunk=37) for k in (0.1, 1.0, 5.0)]
    assert all(0 <= v <= math.log(100) for v in values)
    assert values[0] < values[1] < values[2]


def test_gaussian_entropy():
    assert abs(gaussian_entropy(torch.ones(1, 2)).item() - (1 + math.log(2 * math.pi))) < 1e-6
