"""An amortized initializer for the posterior chain (an option; the paper starts chains from noise).

A cheap guess of z from x (mean and max of word embeddings, then an MLP), trained to regress the
posterior chain's output; a few Langevin steps from that guess replace the long chain from noise
during training (as in Pang et al.'s ICML 2021 follow-up). The chain, not the encoder, has the last
word, so the learning rule stays maximum likelihood with Langevin posterior samples.
"""

from __future__ import annotations

import torch
from torch import nn


class InitEncoder(nn.Module):
    def __init__(self, vocab_size: int, dim: int, latent_dim: int, pad_id: int = 0):
        super().__init__()
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, dim, padding_idx=pad_id)
        self.mlp = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU(), nn.Linear(dim, latent_dim))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != self.pad_id).unsqueeze(-1)
        emb = self.embed(tokens)
        mean = (emb * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
        peak = emb.masked_fill(~mask, float("-inf")).amax(dim=1)
        return self.mlp(torch.cat([mean, peak], dim=-1))
