"""Bidirectional Monte Carlo (Grosse, Ghahramani & Adams 2015; Wu et al. 2017 for decoder models):
a sandwich around log p(x) on sentences sampled from the model itself.

The path is `textebm.inference.annealing`'s, from a Gaussian reference (the prior's N(0, sigma^2 I) by default, or
a Laplace approximation of the posterior) to p(z | x), one Metropolis-adjusted Langevin step per
temperature.

- Forward AIS from reference draws: each chain's exp(weight) has mean Z_alpha p(x), so
  log p^ = logmeanexp(log w) - log Z is a stochastic lower bound on log p(x).
- Reverse AIS starts from an exact posterior sample and runs the schedule backwards: exp(-w) is an
  unbiased estimate of 1 / (Z_alpha p(x)), so -logmeanexp(-log w) - log Z is a stochastic upper bound.

An exact posterior sample is what a sentence drawn from the model comes with: z ~ p_alpha(z), then
x ~ p(x | z) makes z a draw from p(z | x) (`model_samples`). For the Gaussian prior z is exact; for
an EBM prior it is a draw from AIS's weighted final states (`annealed_log_partition`), resampled by
weight: exact as the number of AIS chains grows. The gap between the bounds bounds the error of any
estimate that lies between them, on such sentences. Both bounds take log Z as given: its error
shifts both alike.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from textebm.inference.annealing import GaussianReference, anneal, sigmoid_schedule
from textebm.model.decoder import MAX_ROWS


@dataclass
class Sandwich:
    """Per sentence: the forward (lower) and reverse (upper) AIS estimates of log p(x), nats."""

    lower: torch.Tensor  # (B,)
    upper: torch.Tensor  # (B,)

    @property
    def gap(self) -> torch.Tensor:
        return self.upper - self.lower


def bdmc(model, tokens: torch.Tensor, codes: torch.Tensor, log_z: float, steps: int = 500, num_chains: int = 8,
         step_size: float = 0.5, generator: torch.Generator | None = None, reference: GaussianReference | None = None,
         max_rows: int = MAX_ROWS) -> Sandwich:
    """The sandwich of the module docstring for sentences `tokens` (B, T) whose exact posterior samples
    are `codes` (B, d): `num_chains` forward chains per sentence from the reference and `num_chains`
    reverse chains, all from the sentence's code (each one alone is an unbiased estimate of 1 / (Z p(x)),
    so is their mean). `reference`: the annealing's Gaussian reference per sentence (default the
    prior's N(0, sigma^2 I); a Laplace approximation of the posterior makes the path short).

    The bounds assume fixed kernels, so the step sizes are fixed before the weighed chains run: a pilot
    forward run from other reference draws steers each sentence's step size by its chains' acceptances
    (`annealing`'s module docstring), and both directions then move with the sizes it used, the reverse
    in reverse order. The pilot's weights are not used: it costs half again the forward and reverse runs."""
    if steps < 1 or num_chains < 1:
        raise ValueError(f"bdmc needs at least 1 step and 1 chain, not {steps} and {num_chains}")
    b, d = codes.shape
    if reference is None:
        reference = GaussianReference.prior(model.prior.sigma, b, d, codes.device)
    rows, references = tokens.repeat_interleave(num_chains, 0), reference.repeat(num_chains)
    betas = sigmoid_schedule(steps).tolist()
    pilot = torch.randn(b * num_chains, d, device=codes.device, generator=generator)
    sizes = anneal(model, rows, references, pilot, betas, step_size, generator, max_rows, num_chains).step_sizes
    start = torch.randn(b * num_chains, d, device=codes.device, generator=generator)
    forward = anneal(model, rows, references, start, betas, step_size, generator, max_rows, num_chains,
                     step_schedule=sizes).log_w.view(b, num_chains)
    exact = references.to_u(codes.repeat_interleave(num_chains, 0))
    reverse = anneal(model, rows, references, exact, betas[::-1], step_size, generator, max_rows, num_chains,
                     step_schedule=sizes.flip(0)).log_w.view(b, num_chains)
    # forward weights estimate Z p(x); reverse ones (gathered with beta falling, so with the sign flipped) 1 / (Z p(x))
    lower = torch.logsumexp(forward, 1) - math.log(num_chains) - log_z
    upper = -(torch.logsumexp(reverse, 1) - math.log(num_chains)) - log_z
    return Sandwich(lower.float(), upper.float())


def model_samples(model, n: int, max_length: int = 40, generator: torch.Generator | None = None,
                  ais=None) -> tuple[torch.Tensor, torch.Tensor]:
    """n sentences from the model with their codes: (tokens `<s> ... </s> <pad>...` (n, T), z (n, d)).
    z is an exact prior draw for the Gaussian prior; for an EBM a draw from `ais` (an `AnnealedEstimate`)
    resampled by its weights. A sentence cut at `max_length` tokens has no `</s>`: its likelihood is
    then that of the prefix, of which z is still an exact posterior draw. Decoding never emits `<pad>` or
    `<s>` (`textebm.generation.decoding`): x is drawn from p(x|z) given that it holds neither, off p(x|z) by
    their probability, which training pushes down (a `<pad>` drawn would not have been scored either)."""
    from textebm.generation.decoding import decode

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
