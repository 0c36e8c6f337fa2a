"""Seeded random streams that each own a block of rows of one batch.

The server decodes several requests as one batch, yet each request's sentences must depend on its
seed alone. A `RowStreams` gives every block of rows its own `torch.Generator` and draws each block's
numbers from it in the same order and shape as a lone call would, so a request's sentences are the
same alone or batched. The chains (`langevin.gaussian_noise`) and the decoder (`decoding.uniform_rows`)
accept it wherever they accept a generator.
"""

from __future__ import annotations

import hashlib

import torch

from textebm.config import MAX_SEED


def batch_seed(seed: int, index: int) -> int:
    """The seed of batch `index` of a call seeded `seed`: `seed` itself for the first batch (a call of one batch
    draws from `seed`), a hash of both for the others, so that no batch's draws depend on how many numbers the
    batches before it used (decoding stops early, at another point for another --max-length)."""
    if index == 0:
        return seed
    digest = hashlib.blake2b(f"{seed}/{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") % (MAX_SEED + 1)


class RowStreams:
    def __init__(self, seeds: list[int], sizes: list[int], device=None):
        self.sizes = list(sizes)
        self.generators = [torch.Generator(device=device).manual_seed(seed) for seed in seeds]

    @property
    def rows(self) -> int:
        return sum(self.sizes)

    def normal(self, dim: int, device=None) -> torch.Tensor:
        return torch.cat([torch.randn(k, dim, device=device, generator=g) for g, k in zip(self.generators, self.sizes)])

    def uniform(self, device=None) -> torch.Tensor:
        """One float64 uniform number per row, shape (rows, 1)."""
        return torch.cat([torch.rand(k, 1, device=device, dtype=torch.float64, generator=g)
                          for g, k in zip(self.generators, self.sizes)])
