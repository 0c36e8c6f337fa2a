"""Short-run Langevin chains in z-space: the prior chain and the posterior chain.

Step k: z <- z + (s_k^2 / 2) * grad_z log pi(z) + c * s_k * eps, eps ~ N(0, I).

- s_k, the step size, may change from step to step (`textebm.config.step_schedule`: constant, or linear /
  geometric from a large first step to a small last one).
- c, the noise scale ("noise temperature"), multiplies the noise term: c = 1 is plain Langevin
  (the paper's chains), c = 0 is gradient ascent on log pi, deterministic given the start. Run to
  equilibrium with a small constant step, the chain targets pi(z)^(1/c^2): a colder, more peaked
  posterior. Text needs c well below 1 for the posterior chain (docs/inference.md).

Chains start from the prior's reference N(0, sigma^2 I) (or, for the amortized option, from an
encoder's guess). They run batched over the whole minibatch; gradients are taken with respect to
z only (the parameters' .grad is never touched).

Noise can be drawn for a whole global batch and sliced to this process's rows (`Shard`): then an
example's chain sees the same noise however the batch is split across data-parallel processes.

A chain checks once, at its end, that it stayed finite (one host sync); inside `deferred_checks`
it hands that flag to its caller instead, who checks it together with its own (a training step
makes one such check for its chains and updates together).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch

from textebm import cancellation
from textebm.errors import NonFiniteError
from textebm.randomness import RowStreams

Gradient = Callable[[torch.Tensor], torch.Tensor]
@dataclass(frozen=True)
class Shard:
    """Rows [start, stop) of a global batch of `total` rows."""

    start: int
    stop: int
    total: int


_DEFERRED: ContextVar[list | None] = ContextVar("textebm_deferred_chain_checks", default=None)


@contextmanager
def deferred_checks() -> Iterator[list[torch.Tensor]]:
    """Chains run inside raise no NonFiniteError themselves: each appends to the yielded list a boolean
    tensor on its device, True when it stayed finite, and the caller checks them (no host sync here)."""
    flags: list[torch.Tensor] = []
    token = _DEFERRED.set(flags)
    try:
        yield flags
    finally:
        _DEFERRED.reset(token)


def gaussian_noise(rows: int, dim: int, device=None, generator: torch.Generator | RowStreams | None = None,
                   shard: Shard | None = None) -> torch.Tensor:
    if isinstance(generator, RowStreams):
        return generator.normal(dim, device)
    if shard is None:
        return torch.randn(rows, dim, device=device, generator=generator)
    return torch.randn(shard.total, dim, device=device, generator=generator)[shard.start:shard.stop]


def langevin(grad_log_density: Gradient, z: torch.Tensor, steps: int, step_size: float | Sequence[float],
             generator: torch.Generator | None = None, trajectory: list | None = None,
             shard: Shard | None = None, noise_scale: float = 1.0) -> torch.Tensor:
    """Run `steps` Langevin steps on a log density given by its gradient in z (per row, shape (batch, d);
    written out by the prior and the decoder, so no autograd graph is built).

    `step_size` is one size for every step or a list of `steps` sizes; `noise_scale` is c above
    (at 0 no noise is drawn). If `trajectory` is a list, the chain's states (z_0 ... z_K, detached) are
    appended to it. Raises NonFiniteError when the chain leaves the finite numbers (inside
    `deferred_checks`, hands its flag over instead)."""
    sizes = [step_size] * steps if isinstance(step_size, (int, float)) else list(step_size)
    if len(sizes) != steps:
        raise ValueError(f"{len(sizes)} step sizes for {steps} steps")
    z = z.detach()
    finite = torch.ones((), dtype=torch.bool, device=z.device)  # checked once at the end: no sync per step
    if trajectory is not None:
        trajectory.append(z)
    with torch.no_grad():
        for size in sizes:
            cancellation.check()  # a server job whose clients left stops here (textebm/cancellation.py)
            grad = grad_log_density(z)
            finite &= torch.isfinite(grad).all()
            z = z + 0.5 * size**2 * grad
            if noise_scale != 0:
                z = z + (noise_scale * size) * gaussian_noise(z.shape[0], z.shape[1], z.device, generator, shard)
            if trajectory is not None:
                trajectory.append(z)
    finite = finite & torch.isfinite(z).all()
    deferred = _DEFERRED.get()
    if deferred is not None:
        deferred.append(finite)
        return z
    if not bool(finite):
        first, last = (sizes[0], sizes[-1]) if sizes else (0, 0)
        raise NonFiniteError(f"Langevin chain met a non-finite z or log density ({steps} steps of size "
                             f"{first:g}..{last:g}, noise scale {noise_scale:g})")
    return z


DensityAndGradient = Callable[[torch.Tensor], tuple[torch.Tensor, ...]]


def mala_step(density_and_grad: DensityAndGradient, z: torch.Tensor, state: tuple, step_size: float | torch.Tensor,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, tuple, torch.Tensor]:
    """One Metropolis-adjusted Langevin step per row: the Langevin proposal
    z' = z + (s^2 / 2) grad log pi(z) + s eps, accepted with probability
    min(1, pi(z') q(z | z') / (pi(z) q(z' | z))), q the proposal's Gaussian. The accept test makes
    pi itself the chain's stationary law at any step size (the unadjusted chain's law is wider the
    larger the step).

    `density_and_grad(z)` gives a tuple (log pi(z) up to a constant, its gradient, then any
    per-row values to carry along, e.g. f(z)); `state` is that tuple at `z`. Returns z, the tuple
    after the step (the proposal's values where it was accepted), and the acceptance mask."""
    log_pi, grad = state[0], state[1]
    half = 0.5 * step_size**2
    proposal = z + half * grad + step_size * torch.randn(z.shape, device=z.device, generator=generator)
    new = density_and_grad(proposal)
    forward = (proposal - z - half * grad).pow(2).sum(-1)
    backward = (z - proposal - half * new[1]).pow(2).sum(-1)
    log_ratio = new[0] - log_pi + (forward - backward) / (2 * step_size**2)
    u = torch.rand(z.shape[0], device=z.device, generator=generator)
    accept = torch.log(u) < log_ratio  # a NaN proposal is refused
    rows = accept.unsqueeze(-1)
    merged = tuple(torch.where(rows if old.dim() == 2 else accept, fresh, old) for old, fresh in zip(state, new))
    return torch.where(rows, proposal, z), merged, accept


def tempered_prior(prior, beta: float) -> DensityAndGradient:
    """z -> (log pi_beta(z), its gradient, f(z), grad f(z)) for pi_beta(z) ∝ exp(beta f(z)) N(0, sigma^2 I):
    beta = 1 is the prior, beta = 0 its Gaussian reference (annealed importance sampling walks
    from one to the other)."""

    def density_and_grad(z):
        f, grad_f = prior.energy_and_grad(z)
        return beta * f - z.pow(2).sum(-1) / (2 * prior.sigma**2), beta * grad_f - z / prior.sigma**2, f, grad_f

    return density_and_grad


def prior_chain(prior, n: int, steps: int, step_size: float, device=None,
                generator: torch.Generator | None = None, trajectory: list | None = None,
                shard: Shard | None = None, noise_scale: float = 1.0) -> torch.Tensor:
    """z ~ p_alpha(z) by short-run Langevin on f(z) - |z|^2/(2 sigma^2), from N(0, sigma^2 I),
    with the prior's written-out gradient (no autograd)."""
    z0 = prior.sigma * gaussian_noise(n, prior.latent_dim, device, generator, shard)
    return langevin(prior.grad_log_density, z0, steps, step_size, generator, trajectory, shard, noise_scale)


def posterior_chain(prior, decoder, tokens: torch.Tensor, steps: int, step_size: float | Sequence[float],
                    generator: torch.Generator | None = None, trajectory: list | None = None,
                    shard: Shard | None = None, z0: torch.Tensor | None = None,
                    noise_scale: float = 1.0, projection: str = "fp32") -> torch.Tensor:
    """z ~ p(z | x) by short-run Langevin on log p_alpha(z) + log p_beta(x | z).

    Starts from N(0, sigma^2 I) (the paper's short-run chain) unless `z0` is given. `projection`
    is the precision of the likelihood's vocabulary projection in the chain's steps (fp32 or bf16:
    textebm/model/decoder.py). The gradient in z only, the decoder's part by
    `decoder.log_likelihood_and_grad` (the weights' gradients are never formed)."""

    def grad_log_joint(z):
        return prior.grad_log_density(z) + decoder.log_likelihood_and_grad(z, tokens, projection)[1]

    if z0 is None:
        z0 = prior.sigma * gaussian_noise(tokens.shape[0], prior.latent_dim, tokens.device, generator, shard)
    return langevin(grad_log_joint, z0, steps, step_size, generator, trajectory, shard, noise_scale)
