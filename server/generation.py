"""Batched decoding of several requests at once, each with its own seeded random stream.

`textebm.sampling.generate_ids` drives one `torch.Generator` through the prior chain and the
decoder, so two requests decoded as one batch would share a stream and each one's sentences would
depend on the other. Here every request (a `Part`) keeps its own generator, and every random draw
is taken from it in the same order and shape as a lone `generate_ids(model, n, options, seed)`
call: the chain's start and per-step noise, then one uniform number per sentence at each decoding
step, used as `textebm.decoding.choose_tokens` uses it (inverse CDF). Only the draws are per part;
the arithmetic runs once over the whole batch, which is where batching saves time. A request's sentences are therefore the same whether it ran alone or
in a batch, and the same as `textebm sample --seed S -n N` (N up to that command's batch size).
tests/test_server_generation.py checks this against `generate_ids`, so a change to the library's
sampling that this module does not follow fails there.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from textebm.decoding import filter_logits
from textebm.errors import NonFiniteError
from textebm.sampling import SamplingOptions


@dataclass(frozen=True)
class Part:
    """One request's share of a batch: how many sentences, from which seed, up to which length."""

    n: int
    seed: int
    max_length: int


def batch_key(options: SamplingOptions) -> tuple:
    """Requests may share a batch when everything but n, seed and max_length is the same."""
    return (options.greedy, options.temperature, options.top_k, options.top_p, options.prior_steps)


def _normal(generators, sizes, dim, device) -> torch.Tensor:
    return torch.cat([torch.randn(k, dim, device=device, generator=g) for g, k in zip(generators, sizes)])


def prior_sample_parts(model, generators, sizes, steps: int | None) -> torch.Tensor:
    """z for every row, as `model.prior_sample` (short-run Langevin from N(0, sigma^2 I)) per part."""
    prior, cfg, device = model.prior, model.config, model.device
    steps = cfg.prior_steps if steps is None else steps
    step_size = cfg.prior_step_size
    z = prior.sigma * _normal(generators, sizes, prior.latent_dim, device)
    if not prior.is_ebm:
        return z
    with torch.enable_grad():
        for _ in range(steps):
            z.requires_grad_(True)
            (grad,) = torch.autograd.grad(prior.log_density(z).sum(), z)
            noise = _normal(generators, sizes, prior.latent_dim, device)
            z = (z + 0.5 * step_size**2 * grad + step_size * noise).detach()
    if not torch.isfinite(z).all():
        raise NonFiniteError(f"Langevin chain produced non-finite z ({steps} steps of size {step_size})")
    return z


def generate_parts(model, parts: list[Part], options: SamplingOptions) -> list[list[list[int]]]:
    """Token ids for each part (a list of sentences, each a list of ids, end-of-sentence cut off).

    `options.max_length` is ignored: the batch decodes to the longest part's max_length and each
    part is cut at its own (a token never depends on later ones, so the cut is exact)."""
    was_training = model.training
    model.eval()
    try:
        generators = [torch.Generator(device=model.device).manual_seed(p.seed) for p in parts]
        sizes = [p.n for p in parts]
        z = prior_sample_parts(model, generators, sizes, options.prior_steps)
        ids = _decode_parts(model, z, generators, sizes, max(p.max_length for p in parts), options)
    finally:
        model.train(was_training)
    results, start = [], 0
    for p in parts:
        rows = []
        for row in ids[start:start + p.n]:
            row = row[:p.max_length]
            if model.eos_id in row:
                row = row[:row.index(model.eos_id)]
            rows.append(row)
        results.append(rows)
        start += p.n
    return results


@torch.inference_mode()
def _decode_parts(model, z, generators, sizes, max_length: int, options: SamplingOptions) -> list[list[int]]:
    """`textebm.decoding.decode` for the whole batch, drawing each part's tokens from its generator."""
    batch = z.shape[0]
    token = torch.full((batch,), model.bos_id, dtype=torch.long, device=z.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=z.device)
    z_gates, state = model.decoder.start_decoding(z)
    out = []
    for _ in range(max_length):
        logits, state = model.decoder.step(token, z_gates, state)
        token = _choose_tokens(logits, options, generators, sizes)
        token = token.masked_fill(finished, model.eos_id)
        out.append(token)
        finished |= token == model.eos_id
        if bool(finished.all()):
            break
    return torch.stack(out, dim=1).tolist() if out else [[] for _ in range(batch)]


def _choose_tokens(logits: torch.Tensor, options: SamplingOptions, generators, sizes) -> torch.Tensor:
    """`textebm.decoding.choose_tokens` over the whole batch, with each part's uniforms from its own
    generator (every step below is row-wise, so a row's token does not depend on its neighbours)."""
    if options.greedy:
        return logits.argmax(dim=-1)
    logits = filter_logits(logits.float() / options.temperature, options.top_k, options.top_p)
    weights = (logits - logits.amax(dim=-1, keepdim=True)).exp_().double().cumsum_(dim=-1)
    uniform = torch.cat([torch.rand(k, 1, device=logits.device, dtype=torch.float64, generator=g)
                         for g, k in zip(generators, sizes)])
    picks = torch.searchsorted(weights, uniform * weights[:, -1:], right=True)[:, 0]
    return picks.clamp_(max=logits.shape[-1] - 1)
