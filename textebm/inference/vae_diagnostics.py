"""Is the VAE's latent used? Its own figures, from the encoder's q(z|x): the closed-form KL per
sentence and dimension against the free-bits floor, the VAE papers' active units (Burda et al. 2016)
and mutual information of the aggregate posterior (He et al. 2019). Training logs them at each
validation and `evaluate` reports them beside the model-agnostic figures of `diagnostics`."""

from __future__ import annotations

import math

import torch

from textebm.model.vae import gaussian_kl


def posterior_kl(model, sentences: list[list[int]], batch_size: int = 64) -> torch.Tensor:
    """KL(q(z | x) || p(z)) per sentence and dimension over id lists: (len(sentences), latent)."""
    from textebm.data.batches import pad

    rows = []
    with torch.no_grad():
        for start in range(0, len(sentences), batch_size):
            tokens = pad(sentences[start:start + batch_size], model.pad_id).to(model.device)
            mean, std = model.variational_posterior(tokens)
            rows.append(gaussian_kl(mean, std, model.prior.sigma))
    return torch.cat(rows)


def kl_figures(kl: torch.Tensor, floor: float) -> dict:
    """From per-sentence, per-dimension KLs (sentences, latent): the mean KL per sentence, per
    dimension, and how many dimensions carry more than the free-bits floor on average."""
    per_dim = kl.double().mean(0)
    return {"kl_per_sentence": float(per_dim.sum()), "kl_per_dimension": [round(float(v), 4) for v in per_dim],
            "kl_dims_above_floor": int((per_dim > floor).sum()), "free_bits": floor,
            "free_bits_floor_per_sentence": floor * kl.shape[1]}


AU_VARIANCE = 0.01  # Burda et al. 2016: a unit is active when Var_x E_q[z_i] exceeds this


def mean_variance_active_units(means: torch.Tensor) -> int:
    """The VAE papers' active units: dimensions whose posterior mean varies across sentences
    (variance > AU_VARIANCE), from q's means (sentences, latent)."""
    if means.shape[0] < 2:
        return 0
    return int((means.double().var(0, correction=1) > AU_VARIANCE).sum())


def aggregate_posterior_information(mu: torch.Tensor, std: torch.Tensor,
                                    generator: torch.Generator | None = None) -> float:
    """The mutual information the VAE papers report (He et al. 2019): I_q(x; z) under the encoder's
    joint q(x, z) = p_data(x) q(z|x) over the given sentences, E_x[-H(q(z|x))] - E_{q(z)}[-log q(z)],
    with the aggregate posterior q(z) = mean_j q(z|x_j) over the same sentences and one draw z_i ~
    q(z|x_i) per sentence. The quantity lies in [0, log N] for N sentences: 0 when q ignores x, log N when
    the sentences' posteriors do not overlap; its one-draw estimate can leave that range for small N.
    A different quantity from the model's own E_x KL(p(z|x) || p(z)) (`diagnostics.posterior_information`),
    so the two are reported apart.
    mu, std: (N, d) q's means and standard deviations."""
    n, d = mu.shape
    mu, std = mu.double(), std.double()
    z = mu + std * torch.randn(mu.shape, dtype=mu.dtype, device=mu.device, generator=generator)
    log_norm = -std.log().sum(-1) - 0.5 * d * math.log(2 * math.pi)  # (N,) of each q(z|x_j)
    log_aggregate = torch.cat([  # log q(z_i) = logmeanexp_j log q(z_i|x_j), in row blocks: (N,)
        torch.logsumexp(log_norm - 0.5 * ((block.unsqueeze(1) - mu) / std).pow(2).sum(-1), 1) - math.log(n)
        for block in z.split(256)])
    neg_entropy = (log_norm - 0.5 * d).mean()  # E_x E_q(z|x) log q(z|x), in closed form
    return float(neg_entropy - log_aggregate.mean())

