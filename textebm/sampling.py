"""Sentences from a trained run, in batches: shared by `textebm sample` and the HTTP server."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from textebm.errors import UserError


@dataclass
class SamplingOptions:
    max_length: int = 40
    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    prior_steps: int | None = None  # None: the run's K0

    def validate(self) -> "SamplingOptions":
        if self.max_length < 1:
            raise UserError(f"max_length must be at least 1, not {self.max_length}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise UserError(f"temperature must be a positive number, not {self.temperature}")
        if self.top_k < 0:
            raise UserError(f"top_k must be 0 (off) or positive, not {self.top_k}")
        if not (0.0 < self.top_p <= 1.0):
            raise UserError(f"top_p must be in (0, 1], not {self.top_p}")
        if self.prior_steps is not None and self.prior_steps < 0:
            raise UserError(f"prior_steps must not be negative, not {self.prior_steps}")
        return self


def generate_ids(model, n: int, options: SamplingOptions, seed: int, batch_size: int = 256) -> list[list[int]]:
    """`n` sentences as id lists (end-of-sentence cut off), reproducible for a seed and batch size."""
    generator = torch.Generator(device=model.device).manual_seed(seed)
    out: list[list[int]] = []
    for start in range(0, n, batch_size):
        ids = model.generate(min(batch_size, n - start), options.max_length, options.greedy, options.temperature,
                             options.top_k, options.top_p, options.prior_steps, generator)
        out += ids.tolist()
    return out


def generate_text(model, vocab, n: int, options: SamplingOptions, seed: int, batch_size: int = 256) -> list[str]:
    return [vocab.decode(row) for row in generate_ids(model, n, options, seed, batch_size)]
