"""The prior p_alpha(z) ∝ exp(f_alpha(z)) N(0, sigma^2 I): an exponentially tilted Gaussian.

f_alpha is a small MLP (z -> 200 -> 200 -> 1 with GELU by default). With `kind="gaussian"` the
tilt is switched off (f = 0), which gives the fixed Gaussian prior of the ablation; `kind="none"`
goes with a zero-dimensional latent (the plain language-model baseline).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def gelu_derivative(x: torch.Tensor) -> torch.Tensor:
    """d/dx [x Phi(x)] = Phi(x) + x phi(x), for the exact (erf) GELU."""
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0))) + x * torch.exp(-0.5 * x * x) / math.sqrt(2.0 * math.pi)


def mlp_value_and_grad(z: torch.Tensor, weights: list[torch.Tensor], biases: list[torch.Tensor]):
    """(f(z), grad_z f(z)) of the GELU MLP with these layers' weights, forward then backward written out.
    A chain runs it once per step; `compile=true` compiles it (textebm/training/compiling.py)."""
    pre_activations, h = [], z
    for weight, bias in zip(weights[:-1], biases[:-1]):
        a = F.linear(h, weight, bias)
        pre_activations.append(a)
        h = F.gelu(a)
    f = F.linear(h, weights[-1], biases[-1]).squeeze(-1)
    g = weights[-1].expand(z.shape[0], -1)  # df/dh of the last hidden layer
    for weight, a in zip(reversed(weights[:-1]), reversed(pre_activations)):
        g = (g * gelu_derivative(a)) @ weight
    return f, g


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
        self.gradient_pass = mlp_value_and_grad  # compiled in place by `compile=true` (textebm/training/compiling.py)

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

    def energy_and_grad(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f(z), grad_z f(z)), shapes (batch,) and z.shape, in one pass without autograd: f's backward
        pass written out. Chains need only the gradient with respect to z, never the parameters';
        for this small MLP autograd's bookkeeping costs more than the arithmetic, so the written-out
        pass is several times faster at small batches (K0 = 60 steps per iteration and per batch)."""
        if self.f is None:
            return z.new_zeros(z.shape[0]), torch.zeros_like(z)
        layers = [m for m in self.f if isinstance(m, nn.Linear)]
        return self.gradient_pass(z, [layer.weight for layer in layers], [layer.bias for layer in layers])

    def grad_log_density(self, z: torch.Tensor) -> torch.Tensor:
        """grad_z log p_alpha(z) = grad f(z) - z / sigma^2, shape z.shape, without autograd."""
        return self.energy_and_grad(z)[1] - z / self.sigma**2

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """f_alpha(z): the call that data-parallel training wraps."""
        return self.energy(z)
