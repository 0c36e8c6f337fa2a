"""The prior p_alpha(z) ∝ exp(f_alpha(z)) N(0, sigma^2 I): an exponentially tilted Gaussian.

f_alpha is a small MLP (z -> 200 -> 200 -> 1 with GELU by default). With `kind="gaussian"` the
tilt is switched off (f = 0), which gives the fixed Gaussian prior of the ablation; `kind="none"`
goes with a zero-dimensional latent (the plain language-model baseline).
"""

from __future__ import annotations

import torch
from torch import nn


class EnergyPrior(nn.Module):
    def __init__(self, latent_dim: int, hidden: int = 200, layers: int = 2, sigma: float = 1.0, kind: str = "ebm"):
        super().__init__()
        self.latent_dim, self.sigma, self.kind = latent_dim, sigma, kind
        self.f = None
        if kind == "ebm":
            blocks, width = [], latent_dim
            for _ in range(layers):
                blocks += [nn.Linear(width, hidden), nn.GELU()]
                width = hidden
            self.f = nn.Sequential(*blocks, nn.Linear(width, 1))

    @property
    def is_ebm(self) -> bool:
        return self.f is not None

    def energy(self, z: torch.Tensor) -> torch.Tensor:
        """f_alpha(z), shape (batch,); zero for the Gaussian prior. (Higher f = more probable.)"""
        if self.f is None:
            return z.new_zeros(z.shape[0])
        return self.f(z).squeeze(-1)

    def log_density(self, z: torch.Tensor) -> torch.Tensor:
        """Unnormalised log p_alpha(z) = f_alpha(z) - |z|^2 / (2 sigma^2)."""
        return self.energy(z) - z.pow(2).sum(dim=-1) / (2 * self.sigma**2)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """f_alpha(z): the call that data-parallel training wraps."""
        return self.energy(z)
