"""Turning latent codes into sentences: greedy decoding, or sampling with temperature, top-k and top-p.

Decoding is batched over sentences; the only Python loop runs over time steps, and it stops as
soon as every sentence has ended.
"""

from __future__ import annotations

import torch

from textebm import cancellation
from textebm.randomness import RowStreams


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Keep the k most probable tokens and/or the smallest set whose probability reaches p; mask the rest."""
    if top_k and top_k < logits.shape[-1]:  # by index, not by the k-th value: bf16 logits tie often
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, logits.topk(top_k, dim=-1).indices, True)
        logits = logits.masked_fill(~keep, float("-inf"))
    if top_p < 1.0:  # the whole row sorted: a top-256 first would not pay (PTB's nuclei at p = 0.9 mostly hold more)
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        drop = cumulative - sorted_logits.softmax(dim=-1) >= top_p  # keep the token that crosses p
        drop[..., 0] = False  # and the most probable, whatever p (a p below float32's least rounds to 0)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def choose_tokens(logits: torch.Tensor, greedy: bool, temperature: float, top_k: int, top_p: float,
                  generator: torch.Generator | None) -> torch.Tensor:
    """The argmax, or one draw per row from softmax(logits / temperature) after top-k/top-p.

    Draws use the inverse CDF: one uniform number per row against the cumulative (unnormalised)
    probabilities, summed in float64. That is one random number per sentence instead of one per
    vocabulary entry (Gumbel-max), which makes it the cheapest exact sampler here."""
    if greedy:
        return logits.argmax(dim=-1)
    # The maximum first, then the temperature (in float64, where any positive float is non-zero): a tiny
    # temperature sends the others to -inf, greedy's limit, instead of every logit to inf (inf - inf = NaN).
    shifted = logits.double() - logits.double().amax(dim=-1, keepdim=True)
    logits = filter_logits((shifted / temperature).float(), top_k, top_p)
    weights = (logits - logits.amax(dim=-1, keepdim=True)).exp_().double().cumsum_(dim=-1)
    uniform = uniform_rows(logits.shape[0], logits.device, generator)
    picks = torch.searchsorted(weights, uniform * weights[:, -1:], right=True)[:, 0]
    return picks.clamp_(max=logits.shape[-1] - 1)


def uniform_rows(rows: int, device, generator: torch.Generator | RowStreams | None) -> torch.Tensor:
    if isinstance(generator, RowStreams):
        return generator.uniform(device)
    return torch.rand(rows, 1, device=device, dtype=torch.float64, generator=generator)


@torch.inference_mode()
def decode(decoder, z: torch.Tensor, bos_id: int, eos_id: int, max_length: int, greedy: bool = False,
           temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
           generator: torch.Generator | None = None, products=None) -> torch.Tensor:
    """Token ids (batch, <= max_length); each row ends at its first `eos_id` (the rest is eos).
    `products`: the step's matrix products at a reduced precision (`textebm.generation.precision`); fp32 if None."""
    batch = z.shape[0]
    token = torch.full((batch,), bos_id, dtype=torch.long, device=z.device)
    finished = torch.zeros(batch, dtype=torch.bool, device=z.device)
    z_gates, state = decoder.start_decoding(z)
    if products is None:
        from textebm.generation.precision import StepProducts

        products = StepProducts(decoder)
    # never a target in training, so never taught to be unlikely: not words (an index on the device, made once:
    # a Python list as the index is a host-to-device copy per token on a GPU)
    never = torch.tensor([decoder.pad_id, bos_id], device=z.device)
    out = []
    for _ in range(max_length):
        cancellation.check()
        logits, state = decoder.step(token, z_gates, state, products)
        logits.index_fill_(1, never, float("-inf"))
        token = choose_tokens(logits, greedy, temperature, top_k, top_p, generator)
        token = token.masked_fill(finished, eos_id)
        out.append(token)
        finished |= token == eos_id
        if bool(finished.all()):
            break
    return torch.stack(out, dim=1) if out else token.new_zeros(batch, 0)
