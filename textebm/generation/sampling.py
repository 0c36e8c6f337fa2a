"""Sentences from a trained run, in batches: shared by `textebm sample`, the HTTP server and `evaluate`'s
decoding sweep and protocol sentences."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import dataclass

import torch

from textebm.arguments import check_count, check_seed, check_steps
from textebm.config import MAX_DECODE_LENGTH, MAX_SAMPLES, SAMPLE_BATCH_SIZE
from textebm.errors import UserError
from textebm.randomness import RowStreams, batch_seed


@dataclass
class SamplingOptions:
    max_length: int = 40
    greedy: bool = False
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    prior_steps: int | None = None  # None: the run's K0

    def validate(self) -> SamplingOptions:
        """Each option checked, its type too (a top_k of 1.5 or a greedy of "no" is one UserError), with the
        bounds of the command line."""
        check_count("max_length", self.max_length, most=MAX_DECODE_LENGTH)
        if not isinstance(self.greedy, bool):
            raise UserError(f"greedy must be True or False, not {self.greedy!r}")
        if not (_real(self.temperature) and math.isfinite(self.temperature) and self.temperature > 0):
            raise UserError(f"temperature must be a positive number, not {self.temperature!r}")
        check_count("top_k (0: off)", self.top_k, least=0)
        if not (_real(self.top_p) and 0.0 < self.top_p <= 1.0):
            raise UserError(f"top_p must be a number in (0, 1], not {self.top_p!r}")
        check_steps("prior_steps", self.prior_steps)
        return self


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def generate_ids(model, n: int, options: SamplingOptions, seed: int, batch_size: int = SAMPLE_BATCH_SIZE,
                 on_batch: Callable[[int], object] | None = None) -> list[list[int]]:
    """`n` sentences as id lists (end-of-sentence cut off), reproducible for a seed and batch size: each batch
    draws from its own seed (`batch_seed`), so batch b is the same for every n that reaches it and every
    max_length; `on_batch(sentences)` after each batch (a progress bar's update)."""
    options.validate()  # temperature -1 sampled the least likely words: the command line refused it, and so here
    n, seed = check_count("n", n, least=0, most=MAX_SAMPLES), check_seed(seed)
    batch_size = check_count("batch_size", batch_size)
    out: list[list[int]] = []
    for index, start in enumerate(range(0, n, batch_size)):
        generator = torch.Generator(device=model.device).manual_seed(batch_seed(seed, index))
        ids = model.generate(min(batch_size, n - start), options.max_length, options.greedy, options.temperature,
                             options.top_k, options.top_p, options.prior_steps, generator)
        out += [_until_eos(row, model.eos_id) for row in ids.tolist()]
        if on_batch is not None:
            on_batch(len(ids))
    return out


def _until_eos(row: list[int], eos_id: int) -> list[int]:
    return row[:row.index(eos_id)] if eos_id in row else row


def generate_text(model, vocab, n: int, options: SamplingOptions, seed: int, batch_size: int = SAMPLE_BATCH_SIZE,
                  on_batch: Callable[[int], object] | None = None) -> list[str]:
    return [vocab.decode(row) for row in generate_ids(model, n, options, seed, batch_size, on_batch)]


@dataclass(frozen=True)
class Request:
    """One caller's share of a batch: how many sentences, from which seed, up to which length."""

    n: int
    seed: int
    max_length: int


def batch_key(options: SamplingOptions) -> tuple:
    """Requests may share a batch when everything but n, seed and max_length is the same."""
    return (options.greedy, options.temperature, options.top_k, options.top_p, options.prior_steps)


def generate_for_requests(model, requests: list[Request], options: SamplingOptions) -> list[list[list[int]]]:
    """Several requests decoded as one batch; each request's sentences (id lists, end-of-sentence
    cut off) are those of a lone `generate_ids(model, n, options, seed)` with its own max_length.

    Each block of SAMPLE_BATCH_SIZE rows of a request draws from its own seeded stream (`RowStreams`), seeded
    as the lone call seeds its batches; the batch is decoded to the longest max_length and every request is cut at
    its own (a token never depends on later ones)."""
    seeds, sizes = [], []
    for request in requests:
        for index, start in enumerate(range(0, request.n, SAMPLE_BATCH_SIZE)):
            seeds.append(batch_seed(request.seed, index))
            sizes.append(min(SAMPLE_BATCH_SIZE, request.n - start))
    streams = RowStreams(seeds, sizes, model.device)
    ids = model.generate(streams.rows, max(r.max_length for r in requests), options.greedy, options.temperature,
                         options.top_k, options.top_p, options.prior_steps, streams).tolist()
    results, start = [], 0
    for request in requests:
        results.append([_until_eos(row[:request.max_length], model.eos_id) for row in ids[start:start + request.n]])
        start += request.n
    return results
