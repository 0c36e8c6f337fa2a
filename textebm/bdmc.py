"""Bidirectional Monte Carlo (Grosse, Ghahramani & Adams 2015; Wu et al. 2017 for decoder models):
a sandwich around log p(x) on sentences sampled from the model itself.

Annealing runs along gamma_beta(z) = N(z; 0, sigma^2 I) exp(beta h(z)), h(z) = f(z) + log p(x | z),
beta from 0 to 1 (sigmoid schedule): gamma_0 is the normalised reference, gamma_1 = Z_alpha p(x, z),
so its normaliser is Z_alpha p(x). One Metropolis-adjusted Langevin step per temperature leaves
gamma_beta invariant.

- Forward AIS from reference draws gathers log w = sum_t (beta_t - beta_{t-1}) h(z_{t-1}); E[exp w] =
  Z_alpha p(x), so log p^ = logmeanexp(log w) - log Z is a stochastic lower bound on log p(x).
- Reverse AIS starts from an exact posterior sample and runs the schedule backwards: exp(-w) is an
  unbiased estimate of 1 / (Z_alpha p(x)), so -logmeanexp(-log w) - log Z is a stochastic upper bound.

An exact posterior sample is what a sentence drawn from the model comes with: z ~ p_alpha(z), then
x ~ p(x | z) makes z a draw from p(z | x) (`model_samples`). For the Gaussian prior z is exact; for
an EBM prior it is a draw from AIS's weighted final states (`annealed_log_partition`), resampled by
weight: exact as the number of AIS chains grows. The gap between the bounds bounds the error of any
estimate that lies between them, on such sentences. Both bounds take log Z as given: its error
shifts both alike.

Each chain adapts its own step size towards an acceptance rate of 0.65 (the narrow posterior at
beta = 1 needs a step tens of times smaller than the reference at beta = 0).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from textebm.likelihood import sigmoid_schedule

TARGET_ACCEPTANCE = 0.65
STEP_ADAPTATION = 0.1


def _h_and_grad(model, tokens: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """h(z) = f(z) + log p(x | z) and its gradient, per row."""
    with torch.enable_grad():
        rows = z.detach().requires_grad_(True)
        h = model.prior.energy(rows) + model.decoder(rows, tokens)
        (grad,) = torch.autograd.grad(h.sum(), rows)
    return h.detach(), grad


def _anneal(model, tokens: torch.Tensor, z: torch.Tensor, betas: list[float], step_size: float,
            generator: torch.Generator | None) -> torch.Tensor:
    """Run the chains `z` (rows matching `tokens`) through the temperatures `betas` (in the order given):
    before each move to beta_t the weight gathers (beta_t - beta_{t-1}) h(z), then one MALA step at
    beta_t. Returns the log weights (float64)."""
    sigma2 = model.prior.sigma ** 2
    steps = torch.full((z.shape[0], 1), step_size, dtype=z.dtype, device=z.device)
    log_w = torch.zeros(z.shape[0], dtype=torch.float64, device=z.device)
    h, grad_h = _h_and_grad(model, tokens, z)
    for previous, beta in zip(betas[:-1], betas[1:]):
        log_w += (beta - previous) * h.double()
        log_pi = beta * h - z.pow(2).sum(-1) / (2 * sigma2)
        grad = beta * grad_h - z / sigma2
        half = 0.5 * steps.pow(2)
        noise = torch.randn(z.shape, dtype=z.dtype, device=z.device, generator=generator)
        proposal = z + half * grad + steps * noise
        new_h, new_grad_h = _h_and_grad(model, tokens, proposal)
        new_log_pi = beta * new_h - proposal.pow(2).sum(-1) / (2 * sigma2)
        new_grad = beta * new_grad_h - proposal / sigma2
        forward = (proposal - z - half * grad).pow(2).sum(-1)
        backward = (z - proposal - half * new_grad).pow(2).sum(-1)
        log_ratio = new_log_pi - log_pi + (forward - backward) / (2 * steps.squeeze(1).pow(2))
        u = torch.rand(z.shape[0], device=z.device, generator=generator)
        accept = torch.log(u) < log_ratio
        z = torch.where(accept.unsqueeze(1), proposal, z)
        h = torch.where(accept, new_h, h)
        grad_h = torch.where(accept.unsqueeze(1), new_grad_h, grad_h)
        steps = steps * torch.exp(STEP_ADAPTATION * (accept.to(z.dtype) - TARGET_ACCEPTANCE)).unsqueeze(1)
    return log_w


@dataclass
class Sandwich:
    """Per sentence: the forward (lower) and reverse (upper) AIS estimates of log p(x), nats."""

    lower: torch.Tensor  # (B,)
    upper: torch.Tensor  # (B,)

    @property
    def gap(self) -> torch.Tensor:
        return self.upper - self.lower


def bdmc(model, tokens: torch.Tensor, codes: torch.Tensor, log_z: float, steps: int = 500, num_chains: int = 1,
         step_size: float = 0.5, generator: torch.Generator | None = None) -> Sandwich:
    """The sandwich of the module docstring for sentences `tokens` (B, T) whose exact posterior samples
    are `codes` (B, d): `num_chains` forward chains per sentence from the reference and `num_chains`
    reverse chains, all from the sentence's code (each one alone is an unbiased estimate of 1 / (Z p(x)),
    so is their mean)."""
    if steps < 1 or num_chains < 1:
        raise ValueError(f"bdmc needs at least 1 step and 1 chain, not {steps} and {num_chains}")
    b, d = codes.shape
    rows = tokens.repeat_interleave(num_chains, 0)
    betas = sigmoid_schedule(steps).tolist()
    start = model.prior.sigma * torch.randn(b * num_chains, d, device=codes.device, generator=generator)
    forward = _anneal(model, rows, start, betas, step_size, generator).view(b, num_chains)
    reverse = _anneal(model, rows, codes.repeat_interleave(num_chains, 0), betas[::-1], step_size,
                      generator).view(b, num_chains)
    # forward weights estimate Z p(x); reverse ones (gathered with beta falling, so with the sign flipped) 1 / (Z p(x))
    lower = torch.logsumexp(forward, 1) - math.log(num_chains) - log_z
    upper = -(torch.logsumexp(reverse, 1) - math.log(num_chains)) - log_z
    return Sandwich(lower.float(), upper.float())


def model_samples(model, n: int, max_length: int = 40, generator: torch.Generator | None = None,
                  ais=None) -> tuple[torch.Tensor, torch.Tensor]:
    """n sentences from the model with their codes: (tokens `<s> ... </s> <pad>...` (n, T), z (n, d)).
    z is an exact prior draw for the Gaussian prior; for an EBM a draw from `ais` (an `AnnealedEstimate`)
    resampled by its weights. A sentence cut at `max_length` tokens has no `</s>`: its likelihood is
    then that of the prefix, of which z is still an exact posterior draw."""
    from textebm.decoding import decode

    prior = model.prior
    if prior.is_ebm:
        if ais is None:
            raise ValueError("an EBM prior needs AIS's final states (annealed_log_partition) to draw codes")
        index = torch.multinomial(torch.softmax(ais.log_weights, 0).float(), n, replacement=True, generator=generator)
        z = ais.samples[index].to(model.device)
    else:
        z = prior.sigma * torch.randn(n, prior.latent_dim, device=model.device, generator=generator)
    with torch.no_grad():
        ids = decode(model.decoder, z, model.bos_id, model.eos_id, max_length, generator=generator)
    ended = (ids == model.eos_id).cumsum(1) > 0
    after = ended.cumsum(1) > 1  # positions after the first </s>
    body = torch.where(after, torch.full_like(ids, model.pad_id), ids)
    tokens = torch.cat([torch.full((n, 1), model.bos_id, dtype=ids.dtype, device=ids.device), body], 1)
    return tokens, z
