"""A latent model whose log p(x), posterior and mutual information are known exactly: the yardstick
for the likelihood estimators (tests and bench run it through the same functions `evaluate` calls).

- The prior is `QuadraticTilt`: f(z) = a.z - b |z|^2 / 2, so exp(f) N(0, sigma^2 I) is the Gaussian
  N(a / p, I / p) with p = 1 / sigma^2 + b and log Z = -(d/2) log(sigma^2 p) + |a|^2 / (2 p).
- The decoder is linear-Gaussian, p(x | z) = N(y_x; A z + c, s^2 I): "sentence" x is the token
  sequence `<s> k </s>`, and y_x = observations[k - FIRST_ID] a vector. With A of spread singular
  values in random directions the posterior is narrow (std down to about s / max singular value)
  and correlated.

Everything is Gaussian, so log p(x) = log N(y; A a/p + c, A A^T / p + s^2 I), the posterior is
N(P^{-1}(a + A^T (y - c) / s^2), P^{-1}) with P = p I + A^T A / s^2, and the mutual information of
a sentence is KL(posterior || prior) in closed form.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from textebm.config import Config
from textebm.model.decoder import MAX_ROWS
from textebm.model.energy import EnergyPrior
from textebm.model.latent_ebm import LatentEBMTextModel

FIRST_ID = 3  # token ids 0, 1, 2 are <pad>, <s>, </s>; sentence k is `<s> FIRST_ID + k </s>`


class QuadraticTilt(EnergyPrior):
    """f(z) = a.z - b |z|^2 / 2: exp(f) N(0, sigma^2 I) = N(a / p, I / p), p = 1 / sigma^2 + b."""

    def __init__(self, a: torch.Tensor, b: float, sigma: float = 1.0):
        super().__init__(a.numel(), sigma=sigma, kind="ebm")
        self.a, self.b = a, b

    @property
    def precision(self) -> float:
        return 1 / self.sigma**2 + self.b

    def exact_log_z(self) -> float:
        return -0.5 * self.a.numel() * math.log(self.sigma**2 * self.precision) + float(self.a @ self.a) / (
            2 * self.precision)

    def energy(self, z: torch.Tensor) -> torch.Tensor:
        return z @ self.a.to(z) - 0.5 * self.b * z.pow(2).sum(-1)

    def energy_and_grad(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.energy(z), self.a.to(z) - self.b * z

    def components(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The normalised prior as a Gaussian mixture (log weights (J,), means (J, d), isotropic
        variances (J,)), float64: here the one Gaussian N(a / p, I / p)."""
        a = self.a.double()
        return torch.zeros(1, dtype=torch.float64), (a / self.precision).unsqueeze(0), torch.tensor(
            [1 / self.precision], dtype=torch.float64)


class LinearGaussianDecoder(nn.Module):
    """p(x | z) = N(y_x; A z + c, s^2 I), with the decoder's call signature (z, tokens, projection)."""

    def __init__(self, weight: torch.Tensor, offset: torch.Tensor, noise: float, observations: torch.Tensor):
        super().__init__()
        self.weight, self.offset, self.noise = weight, offset, noise
        self.observations = observations

    def _residual(self, z: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """y - A z - c per row, y the sentence's observation."""
        return self.observations[tokens[:, 1] - FIRST_ID].to(z) - z @ self.weight.to(z).T - self.offset.to(z)

    def _log_density(self, residual: torch.Tensor) -> torch.Tensor:
        m = residual.shape[-1]
        return (-0.5 * residual.pow(2).sum(-1) / self.noise**2 - m * math.log(self.noise)
                - 0.5 * m * math.log(2 * math.pi))

    def log_likelihood(self, z: torch.Tensor, tokens: torch.Tensor, projection: str = "fp32") -> torch.Tensor:
        """The decoder's interface (`projection` changes nothing here)."""
        return self._log_density(self._residual(z, tokens))

    def forward(self, z: torch.Tensor, tokens: torch.Tensor, projection: str = "fp32") -> torch.Tensor:
        return self.log_likelihood(z, tokens, projection)

    def log_likelihood_and_grad(self, z: torch.Tensor, tokens: torch.Tensor,
                                projection: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
        """The decoder's interface: (log p(x | z), its gradient A^T (y - A z - c) / s^2), in closed form."""
        residual = self._residual(z, tokens)
        return self._log_density(residual), residual @ self.weight.to(z) / self.noise**2

    def rows_per_chunk(self, length: int) -> int:
        """No vocabulary logits to bound: the decoder's most."""
        return MAX_ROWS


class ClosedFormModel(LatentEBMTextModel):
    """The toolkit's model object with the closed-form prior and decoder in place of the MLP and LSTM."""

    def __init__(self, config: Config, prior: EnergyPrior, decoder: LinearGaussianDecoder):
        super().__init__(config, FIRST_ID + decoder.observations.shape[0], 0, 1, 2)
        self.prior, self.decoder = prior, decoder
        self._device_anchor = nn.Parameter(torch.zeros(0), requires_grad=False)

    @property
    def device(self) -> torch.device:
        return self._device_anchor.device

    def tokens(self) -> torch.Tensor:
        """Every sentence of the model, `<s> k </s>`, as a (n, 3) batch."""
        n = self.decoder.observations.shape[0]
        ids = torch.arange(FIRST_ID, FIRST_ID + n)
        return torch.stack([torch.ones(n, dtype=torch.long), ids, torch.full((n,), 2)], 1)

    def sentences(self) -> list[list[int]]:
        return self.tokens().tolist()

    def exact_log_z(self) -> float:
        return self.prior.exact_log_z()

    def _posterior(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(means (n, d), covariance (d, d)) of p(z | x) for every sentence, float64."""
        a, w, c = self.prior.a.double(), self.decoder.weight.double(), self.decoder.offset.double()
        s2, d = self.decoder.noise**2, a.numel()
        precision = self.prior.precision * torch.eye(d, dtype=torch.float64) + w.T @ w / s2
        covariance = torch.linalg.inv(precision)
        y = self.decoder.observations.double()
        means = (a + (y - c) @ w / s2) @ covariance
        return means, covariance

    def exact_log_px(self) -> torch.Tensor:
        """log p(x) of every sentence, float64 (n,): the prior's Gaussian components (`components`) each
        give a Gaussian marginal of y."""
        return torch.logsumexp(self.exact_component_log_px(), 1)

    def exact_component_log_px(self) -> torch.Tensor:
        """log [pi_j p(x | prior component j)] (n, J): softmax over j gives the posterior's share of each
        component (the modes' masses of a bimodal posterior)."""
        w, c = self.decoder.weight.double(), self.decoder.offset.double()
        log_weights, means, variances = self.prior.components()
        m, y = w.shape[0], self.decoder.observations.double()
        parts = [log_weights[j] + torch.distributions.MultivariateNormal(
            means[j] @ w.T + c, variances[j] * w @ w.T + self.decoder.noise**2 * torch.eye(m, dtype=torch.float64)
        ).log_prob(y) for j in range(len(log_weights))]
        return torch.stack(parts, 1)

    def exact_mutual_information(self) -> torch.Tensor:
        """KL(p(z | x) || p_alpha(z)) of every sentence, float64 (n,)."""
        means, covariance = self._posterior()
        p, d = self.prior.precision, means.shape[1]
        prior_mean = self.prior.a.double() / p
        _, log_det = torch.linalg.slogdet(covariance)
        return 0.5 * (p * torch.trace(covariance) + p * (means - prior_mean).pow(2).sum(1) - d
                      - log_det - d * math.log(p))


def closed_form_model(latent_dim: int = 32, sentences: int = 16, noise: float = 1.0, largest: float = 20.0,
                      smallest: float = 0.5, tilt: float = 0.5, seed: int = 0, config: Config | None = None
                      ) -> ClosedFormModel:
    """A linear-Gaussian stand-in with a correlated, narrow posterior: A = U diag(singular values) V^T,
    singular values spread geometrically from `largest` to `smallest`, U and V random rotations;
    the prior a quadratic tilt with b = `tilt` and a random a. The sentences' observations are drawn
    from the model itself (z from the prior, y = A z + c + s eps). `config` sets the posterior
    chain (default: the text defaults, 20 steps of 0.05, noise 0.1: the tempered chain the toolkit
    runs, with a step small enough for the narrowest direction)."""
    g = torch.Generator().manual_seed(seed)
    d = latent_dim
    u, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=torch.float64))
    singular = torch.logspace(math.log10(largest), math.log10(smallest), d, dtype=torch.float64)
    weight = (u * singular) @ v.T
    offset = 0.5 * torch.randn(d, generator=g, dtype=torch.float64)
    a = 0.5 * torch.randn(d, generator=g, dtype=torch.float64)
    prior = QuadraticTilt(a.float(), tilt)
    p = prior.precision
    z = a / p + torch.randn(sentences, d, generator=g, dtype=torch.float64) / math.sqrt(p)
    y = z @ weight.T + offset + noise * torch.randn(sentences, d, generator=g, dtype=torch.float64)
    decoder = LinearGaussianDecoder(weight.float(), offset.float(), noise, y.float())
    if config is None:
        config = Config(latent_dim=d, embedding_dim=4, hidden_dim=4, energy_hidden=4, dropout=0.0,
                        posterior_steps=20, posterior_step_size=0.05, posterior_noise=0.1)
    return ClosedFormModel(config, prior, decoder).eval()


class NarrowBump(EnergyPrior):
    """f(z) = log(1 + c exp(-|z - mu|^2 / (2 tau^2))): the reference N(0, sigma^2 I) plus a narrow bump at mu.
    Z = 1 + c k with k = (tau^2 / (tau^2 + sigma^2))^(d/2) exp(-|mu|^2 / (2 (tau^2 + sigma^2))), so the bump
    holds the share c k / (1 + c k) of the prior's mass; `with_share` picks c for a given share."""

    def __init__(self, mu: torch.Tensor, tau: float, c: float, sigma: float = 1.0):
        super().__init__(mu.numel(), sigma=sigma, kind="ebm")
        self.mu, self.tau, self.log_c = mu, tau, math.log(c)

    @classmethod
    def with_share(cls, mu: torch.Tensor, tau: float, share: float, sigma: float = 1.0) -> NarrowBump:
        return cls(mu, tau, share / (1 - share) / cls._overlap(mu, tau, sigma), sigma)

    @staticmethod
    def _overlap(mu: torch.Tensor, tau: float, sigma: float) -> float:
        t2, s2 = tau**2, sigma**2
        return (t2 / (t2 + s2)) ** (mu.numel() / 2) * math.exp(-float(mu @ mu) / (2 * (t2 + s2)))

    def exact_log_z(self) -> float:
        return math.log1p(math.exp(self.log_c) * self._overlap(self.mu, self.tau, self.sigma))

    def components(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The normalised prior as a Gaussian mixture (`QuadraticTilt.components`): the reference
        N(0, sigma^2 I), and the bump times the reference, N(mu s2 / (t2 + s2), t2 s2 / (t2 + s2) I)."""
        t2, s2, mu = self.tau**2, self.sigma**2, self.mu.double()
        bump = self.log_c + math.log(self._overlap(self.mu, self.tau, self.sigma))
        log_weights = torch.tensor([0.0, bump], dtype=torch.float64) - self.exact_log_z()
        means = torch.stack([torch.zeros_like(mu), mu * s2 / (t2 + s2)])
        return log_weights, means, torch.tensor([s2, t2 * s2 / (t2 + s2)], dtype=torch.float64)

    def energy(self, z: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.softplus(self.log_c - (z - self.mu.to(z)).pow(2).sum(-1) / (2 * self.tau**2))

    def energy_and_grad(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inner = self.log_c - (z - self.mu.to(z)).pow(2).sum(-1) / (2 * self.tau**2)
        grad = -torch.sigmoid(inner).unsqueeze(-1) * (z - self.mu.to(z)) / self.tau**2
        return torch.nn.functional.softplus(inner), grad


def bimodal_closed_form_model(latent_dim: int = 8, sentences: int = 8, share: float = 0.5, distance: float = 3.0,
                              tau: float = 0.3, seed: int = 0) -> ClosedFormModel:
    """`closed_form_model`'s decoder (singular values 0.25 to 1: weak, so the posterior keeps the prior's
    shape) under a `NarrowBump` prior holding `share` of the prior's mass `distance` from the origin:
    the posterior of a sentence is a mixture of two Gaussians, a broad mode and a narrow one, with
    log p(x) and each mode's mass known exactly (`exact_component_log_px`). The sentences are drawn
    from the model itself, each code from the mixture."""
    g = torch.Generator().manual_seed(seed + 1)
    base = closed_form_model(latent_dim, sentences, largest=1.0, smallest=0.25, seed=seed)
    mu = torch.randn(latent_dim, generator=g, dtype=torch.float64)
    prior = NarrowBump.with_share((distance * mu / mu.norm()).float(), tau, share)
    log_weights, means, variances = prior.components()
    which = torch.multinomial(log_weights.exp(), sentences, replacement=True, generator=g)
    z = means[which] + variances[which].sqrt().unsqueeze(1) * torch.randn(sentences, latent_dim, generator=g,
                                                                          dtype=torch.float64)
    weight, offset, noise = base.decoder.weight.double(), base.decoder.offset.double(), base.decoder.noise
    y = z @ weight.T + offset + noise * torch.randn(sentences, latent_dim, generator=g, dtype=torch.float64)
    decoder = LinearGaussianDecoder(base.decoder.weight, base.decoder.offset, noise, y.float())
    return ClosedFormModel(base.config, prior, decoder).eval()
