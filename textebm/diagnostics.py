"""Latent-space diagnostics of a trained run, from the per-sentence posterior fits of `textebm.likelihood`.

The posterior approximation is q(z | x) = N(m, diag(s^2)), m and s the mean and std of the
sentence's C posterior-chain samples (s at least 0.05), not the widened importance proposal.

- Active units (Burda et al. 2016): dimensions whose posterior mean E[z_i | x] varies across
  sentences, Var_x(E[z_i | x]) > 0.01. A dimension the decoder ignores has a posterior equal to
  the prior for every x, so its mean does not move. m is a C-sample average, so Var_x(m_i)
  carries Monte Carlo noise E_x[s_i^2] / C, which is subtracted (with C = 4 chains started from
  N(0, 1) it alone would be about 0.25: every unit would look active).
- KL(q(z | x) || p_alpha(z)): E_q[log q(z | x) - log p_alpha(z)] by Monte Carlo draws from q (the
  prior normalised by the Monte Carlo log Z), averaged over sentences.
- Mutual information I(x; z) under the aggregate posterior (Hoffman & Johnson 2016; the estimator
  of He et al. 2019's `calc_mi`): E_x E_{z ~ q(z|x)}[log q(z | x) - log q(z)] with
  q(z) = (1/N) sum_j q(z | x_j) the mixture of the N evaluated sentences' Gaussians. It lies in
  [0, log N]: 0 when every sentence has the same posterior, log N when they do not overlap.
"""

from __future__ import annotations

import math

import torch

from textebm.likelihood import LOG_2PI


def active_units(posterior_means: torch.Tensor, threshold: float = 0.01,
                 noise_var: torch.Tensor | None = None) -> int:
    """Number of dimensions of (N, d) posterior means whose variance across sentences exceeds
    `threshold`; `noise_var` (N, d), the variance of each mean estimate, is subtracted first."""
    if posterior_means.shape[0] < 2:
        return 0
    spread = posterior_means.var(0, correction=1)
    if noise_var is not None:
        spread = spread - noise_var.mean(0)
    return int((spread > threshold).sum())


def kl_to_prior(log_q: torch.Tensor, log_prior: torch.Tensor) -> torch.Tensor:
    """Per-sentence KL estimate from draws z_s ~ q(z | x): mean_s(log q - log p_alpha), shape (B,)."""
    return (log_q - log_prior).mean(-1)


def gaussian_entropy(std: torch.Tensor) -> torch.Tensor:
    """Entropy of diagonal Gaussians (..., d) in nats, shape (...)."""
    return (0.5 * (1 + LOG_2PI) + std.log()).sum(-1)


def mutual_information(mean: torch.Tensor, std: torch.Tensor, z: torch.Tensor, chunk: int = 256) -> float:
    """I(x; z) with diagonal-Gaussian posteriors (mean, std: (N, d)) and draws z (N, S, d) from them.

    E_x E_z[log q(z|x) - log q(z)], q(z) the mixture over the N sentences (computed in chunks of
    draws against all N components). log q(z|x) is evaluated at the draws rather than replaced by
    the analytic -H(q(z|x)): then every term is at most log N, and so is the estimate."""
    n, d = mean.shape
    own = (-0.5 * ((z - mean.unsqueeze(1)) / std.unsqueeze(1)).pow(2)).sum(-1) - std.log().sum(-1, keepdim=True)
    flat = z.reshape(-1, d)
    log_std_sum = std.log().sum(-1)  # (N,)
    log_agg = []
    for start in range(0, flat.shape[0], chunk):
        zc = flat[start:start + chunk].unsqueeze(1)  # (c, 1, d)
        log_comp = (-0.5 * ((zc - mean) / std).pow(2)).sum(-1) - log_std_sum - 0.5 * d * LOG_2PI  # (c, N)
        log_agg.append(torch.logsumexp(log_comp, 1) - math.log(n))
    log_own = own - 0.5 * d * LOG_2PI  # (N, S): log q(z_s | x_n)
    return float(log_own.mean() - torch.cat(log_agg).mean())


def posterior_diagnostics(prior, chain_mean: torch.Tensor, chain_std: torch.Tensor, num_chains: int,
                          log_z: float, num_samples: int = 10, generator: torch.Generator | None = None,
                          min_std: float = 0.05) -> dict:
    """Active units, mean KL(q(z|x) || p_alpha) and I(x; z) from the chains' per-sentence mean and std."""
    from textebm.likelihood import diag_gaussian_log_density, prior_log_density

    with torch.no_grad():
        std = chain_std.clamp_min(min_std)
        eps = torch.randn(chain_mean.shape[0], num_samples, chain_mean.shape[1], device=chain_mean.device,
                          generator=generator)
        z = chain_mean.unsqueeze(1) + std.unsqueeze(1) * eps
        log_q = diag_gaussian_log_density(z, chain_mean.unsqueeze(1), std.unsqueeze(1))
        kl = kl_to_prior(log_q, prior_log_density(prior, z, log_z))
        return {
            "active_units": active_units(chain_mean, noise_var=chain_std.pow(2) / num_chains),
            "active_units_uncorrected": active_units(chain_mean),
            "kl_to_prior": float(kl.double().mean()),
            "mutual_information": mutual_information(chain_mean, std, z),
            "mutual_information_bound": math.log(chain_mean.shape[0]),
            "num_samples": num_samples,
        }
