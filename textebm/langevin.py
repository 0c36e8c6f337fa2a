"""Short-run Langevin chains in z-space: the prior chain and the posterior chain.

One step: z <- z + (s^2 / 2) * grad_z log pi(z) + s * eps, eps ~ N(0, I), always started from
the prior's reference N(0, sigma^2 I). Chains run batched over the whole minibatch; gradients
are taken with respect to z only (the parameters' .grad is never touched).
"""

from __future__ import annotations

from typing import Callable

import torch

from textebm.errors import NonFiniteError

LogDensity = Callable[[torch.Tensor], torch.Tensor]


def langevin(log_density: LogDensity, z: torch.Tensor, steps: int, step_size: float,
             generator: torch.Generator | None = None, trajectory: list | None = None) -> torch.Tensor:
    """Run `steps` Langevin steps on log_density (a per-example log density, shape (batch,)).

    If `trajectory` is a list, the chain's states (z_0 ... z_K, detached) are appended to it.
    Raises NonFiniteError when the chain leaves the finite numbers."""
    z = z.detach()
    if trajectory is not None:
        trajectory.append(z)
    with torch.enable_grad():
        for _ in range(steps):
            z.requires_grad_(True)
            (grad,) = torch.autograd.grad(log_density(z).sum(), z)
            noise = torch.randn(z.shape, device=z.device, dtype=z.dtype, generator=generator)
            z = (z + 0.5 * step_size**2 * grad + step_size * noise).detach()
            if trajectory is not None:
                trajectory.append(z)
    if not torch.isfinite(z).all():
        raise NonFiniteError(f"Langevin chain produced non-finite z ({steps} steps of size {step_size})")
    return z


def prior_chain(prior, n: int, steps: int, step_size: float, device=None,
                generator: torch.Generator | None = None, trajectory: list | None = None) -> torch.Tensor:
    """z ~ p_alpha(z) by short-run Langevin on f(z) - |z|^2/(2 sigma^2).

    The Gaussian prior needs no chain: its samples are exact."""
    z0 = prior.base_sample(n, device=device, generator=generator)
    return langevin(prior.log_density, z0, steps if prior.is_ebm else 0, step_size, generator, trajectory)


def posterior_chain(prior, decoder, tokens: torch.Tensor, steps: int, step_size: float,
                    generator: torch.Generator | None = None, trajectory: list | None = None) -> torch.Tensor:
    """z ~ p(z | x) by short-run Langevin on log p_alpha(z) + log p_beta(x | z)."""

    def log_joint(z):
        return prior.log_density(z) + decoder.log_likelihood(z, tokens)

    z0 = prior.base_sample(tokens.shape[0], device=tokens.device, generator=generator)
    return langevin(log_joint, z0, steps, step_size, generator, trajectory)
