"""A cheaper stand-in for log p(x | z) on AIS's path below beta = 1: each sentence's shortlist of the
vocabulary, and one pseudo-word for the rest.

AIS allows any intermediate densities, so long as each is a fixed function of z, each move leaves its
own invariant and beta = 1 is exact (Neal 2001); the weights then keep their mean whatever the path
(`textebm.inference.annealing`). Most of a chain step's cost is the decoder's projection onto the whole
vocabulary (10,000 PTB words, for some 20 tokens of a sentence), while at any position of a sentence
near its posterior a few hundred words hold almost all of the softmax's mass. So, for a sentence x and
a code z* near its posterior's mode (the heaviest Laplace component's mean), with h*_t the decoder's
hidden state at position t under z*:

- the shortlist S is the union over positions of the `k` words with the largest logits at h*_t, and
  the sentence's own words;
- the rest R = V \\ S becomes one pseudo-word per position whose logit is the first-order expansion of
  log sum_{v in R} exp(w_v . h + b_v) around h*_t: log m_t + lse*_t + mu_t . (h - h*_t), with m_t the
  rest's share of the softmax at h*_t, lse*_t its log normaliser and mu_t the rest's softmax-weighted
  mean output embedding there;
- log p~(x | z) = sum_t [w_{x_t} . h_t + b_{x_t} - log(sum_{v in S} exp(w_v . h_t + b_v) + exp(rest_t(h_t)))],
  exact at h*_t, and exact whenever the rest's mass is nil.

Per token the projection then costs |S| x hidden instead of |V| x hidden: with k = 128 on PTB, S holds
about 5% of the vocabulary (477 of 10,002 words on average; docs/evaluate-command.md, evaluator 12).
How far log p~ strays from log p at the chains' states only adds variance to the weights' last factor.
"""

from __future__ import annotations

import torch

from textebm.modes import autograd_ready, gradients_anywhere


class Shortlist:
    """The stand-in for one batch of sentences (module docstring), built at `z_star` (B, d) for `tokens`
    (B, L, `<s> ... </s> <pad>...`), its products on bf16 operands when `low` (fp32 sums). Rows are
    scored by `value_and_grad`, whole sentences of `rows_per_sentence` consecutive rows (its chains) at a time."""

    def __init__(self, decoder, tokens: torch.Tensor, z_star: torch.Tensor, k: int, rows_per_sentence: int,
                 low: bool = False):
        if k < 1:
            raise ValueError(f"a shortlist needs at least one word per position, not {k}")
        self.rows_per_sentence = rows_per_sentence
        weight, bias = decoder.out.weight.detach(), decoder.out.bias.detach()
        targets = tokens[:, 1:]
        self.mask = targets != decoder.pad_id
        words, sizes, means, offsets = zip(*(_build(decoder, weight, bias, tokens[i:i + n], z_star[i:i + n], k)
                                             for i, n in _groups(tokens.shape, weight.shape[0])))
        width = max(ids.shape[1] for ids in words)  # the longest shortlist; shorter ones padded with -inf
        words = torch.cat([torch.nn.functional.pad(ids, (0, width - ids.shape[1])) for ids in words])
        self.sizes = torch.cat(sizes)
        kept = torch.arange(width, device=tokens.device) < self.sizes.unsqueeze(1)
        self.low = low
        self.weight = weight[words].to(torch.bfloat16 if low else torch.float32)  # (B, S, H)
        self.bias = bias[words].masked_fill(~kept, float("-inf"))  # (B, S); padding columns weigh nothing
        self.rest_mean = torch.cat(means)  # mu_t (B, T, H)
        self.rest_offset = torch.cat(offsets)  # rest_t(h) = offset_t + mu_t . h
        self.target_weight, self.target_bias = weight[targets], bias[targets]  # (B, T, H), (B, T)

    def value_and_grad(self, decoder, z: torch.Tensor, tokens: torch.Tensor,
                       first: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(log p~(x | z) per row, its gradient in z) for rows `z` (R, d) of sentences first, first + 1, ...
        (R / (their number) consecutive rows each, `tokens` their rows' tokens): `Decoder.log_likelihood_and_grad`'s
        contract on the stand-in."""
        rows, length = z.shape[0], tokens.shape[1] - 1
        n = rows // self.rows_per_sentence
        if rows % self.rows_per_sentence or first + n > self.mask.shape[0]:
            raise ValueError(f"{rows} rows from sentence {first} are not whole sentences of {self.rows_per_sentence} "
                             f"rows each among {self.mask.shape[0]}")
        sentences = slice(first, first + n)
        with gradients_anywhere():
            z, tokens = autograd_ready(z).detach().requires_grad_(True), autograd_ready(tokens)
            hidden = decoder.hidden_states(z, tokens[:, :-1])  # (R, T, H)
            h = hidden.detach().float().view(n, -1, length, hidden.shape[-1])  # (n, C, T, H)
            flat = h.reshape(n, -1, h.shape[-1])  # (n, C T, H)
            operand = flat.to(torch.bfloat16) if self.low else flat
            logits = torch.bmm(operand, self.weight[sentences].transpose(1, 2)).float()  # (n, C T, S)
            logits = logits.view(n, -1, length, logits.shape[-1]).add_(self.bias[sentences, None, None])
            rest = self.rest_offset[sentences, None] + (h * self.rest_mean[sentences, None]).sum(-1)  # (n, C, T)
            normaliser = torch.logaddexp(torch.logsumexp(logits, -1), rest)
            target = (h * self.target_weight[sentences, None]).sum(-1) + self.target_bias[sentences, None]
            mask = self.mask[sentences, None]
            values = ((target - normaliser) * mask).sum(-1).reshape(-1)
            probs = torch.exp(logits - normaliser.unsqueeze(-1)).view(n, -1, logits.shape[-1])  # (n, C T, S)
            weights = self.weight[sentences]
            expected = torch.bmm(probs.to(weights.dtype), weights).float().view_as(h)
            expected += torch.exp(rest - normaliser).unsqueeze(-1) * self.rest_mean[sentences, None]
            hidden_grad = (self.target_weight[sentences, None] - expected) * mask.unsqueeze(-1)
            (grad,) = torch.autograd.grad(hidden, z, hidden_grad.view_as(hidden).to(hidden.dtype))
        return values, grad


def _build(decoder, weight, bias, tokens, z_star, k: int):
    """(shortlist ids (n, S_max), sizes (n,), mu (n, T, H), offset (n, T)) for a few sentences."""
    targets = tokens[:, 1:]
    mask = targets != decoder.pad_id
    with torch.no_grad():
        hidden = decoder.hidden_states(z_star, tokens[:, :-1]).float()  # (n, T, H)
        logits = hidden @ weight.t() + bias  # (n, T, V): once per sentence, not per chain step
        top = logits.topk(min(k, weight.shape[0]), -1).indices
        top = torch.where(mask.unsqueeze(-1), top, targets[:, :1, None])  # padding adds no words
        chosen = torch.zeros(tokens.shape[0], weight.shape[0], dtype=torch.bool, device=tokens.device)
        chosen.scatter_(1, top.flatten(1), True).scatter_(1, torch.where(mask, targets, targets[:, :1]), True)
        sizes = chosen.sum(1)
        words = chosen.to(torch.uint8).argsort(dim=1, descending=True, stable=True)[:, :int(sizes.max())]
        lse = torch.logsumexp(logits, -1)
        rest = torch.softmax(logits, -1).masked_fill_(chosen.unsqueeze(1), 0.0)
        mass = rest.sum(-1).clamp_min(torch.finfo(torch.float32).tiny)
        mean = (rest @ weight) / mass.unsqueeze(-1)
        return words, sizes, mean, mass.log() + lse - (mean * hidden).sum(-1)


def _groups(shape: torch.Size, vocabulary: int, budget: int = 1 << 24):
    """(first sentence, count) for building shortlists a few sentences at a time: at most `budget` logits."""
    count = max(1, budget // (shape[1] * vocabulary))
    return [(i, min(count, shape[0] - i)) for i in range(0, shape[0], count)]
