"""Batched generation of several requests keeps each request's sentences: the same as a lone `generate_ids` call."""

from __future__ import annotations

import random

import pytest
import torch

from textebm.config import SAMPLE_BATCH_SIZE, Config
from textebm.generation.sampling import Request, SamplingOptions, batch_key, generate_for_requests, generate_ids
from textebm.model.latent_ebm import LatentEBMTextModel


def _cut(rows, eos):
    return [r[:r.index(eos)] if eos in r else r for r in rows]


@pytest.fixture(scope="module", params=["lstm", "gru"])
def model(request):
    torch.manual_seed(0)
    config = Config(embedding_dim=24, hidden_dim=48, latent_dim=8, prior_steps=6, cell=request.param,
                    num_layers=2 if request.param == "gru" else 1)
    m = LatentEBMTextModel(config, 60, 0, 1, 2).eval()
    with torch.no_grad():
        m.decoder.out.bias[2] += 3.0  # sentences end at varied lengths
    return m


@pytest.mark.parametrize("options", [
    SamplingOptions(max_length=20),
    SamplingOptions(max_length=20, temperature=0.7, top_k=8, top_p=0.9),
    SamplingOptions(max_length=12, greedy=True),
    SamplingOptions(max_length=15, prior_steps=0),
])
def test_each_part_matches_its_lone_generation(model, options):
    rng = random.Random(7)
    for _ in range(5):
        parts = [Request(rng.randint(1, 6), rng.randint(0, 2**40), rng.choice([3, 8, options.max_length]))
                 for _ in range(rng.randint(2, 7))]
        got = generate_for_requests(model, parts, options)
        assert [len(g) for g in got] == [p.n for p in parts]
        for part, rows in zip(parts, got):
            lone = SamplingOptions(part.max_length, options.greedy, options.temperature, options.top_k,
                                   options.top_p, options.prior_steps)
            assert rows == _cut(generate_ids(model, part.n, lone, part.seed), model.eos_id)
            assert all(len(r) <= part.max_length for r in rows)


def test_a_part_does_not_depend_on_its_neighbours(model):
    options = SamplingOptions(max_length=20)
    target = Request(3, 99, 20)
    alone = generate_for_requests(model, [target], options)[0]
    with_others = generate_for_requests(model, [Request(5, 1, 20), target, Request(2, 2, 5)], options)[1]
    assert with_others == alone
    assert generate_for_requests(model, [Request(3, 100, 20)], options)[0] != alone


def test_batch_key_separates_what_changes_the_math():
    base = SamplingOptions(max_length=10)
    assert batch_key(base) == batch_key(SamplingOptions(max_length=30))
    for other in (SamplingOptions(temperature=0.5), SamplingOptions(top_k=3), SamplingOptions(top_p=0.5),
                  SamplingOptions(greedy=True), SamplingOptions(prior_steps=2)):
        assert batch_key(other) != batch_key(base)


def test_batches_are_reported_as_they_finish_and_change_no_sentence(model):
    options, done = SamplingOptions(max_length=10), []
    with_reports = generate_ids(model, 7, options, seed=5, batch_size=3, on_batch=done.append)
    assert done == [3, 3, 1] and with_reports == generate_ids(model, 7, options, seed=5, batch_size=3)


def test_a_batch_is_the_same_whatever_the_batches_before_it_drew(model):
    # one generator ran through every batch: batch 2 changed with --max-length (decoding stops early) and a
    # larger -n changed nothing before it only by luck of the order; each batch now has its own seed
    options = SamplingOptions(max_length=20)
    full = generate_ids(model, 9, options, seed=5, batch_size=3)
    short = generate_ids(model, 9, SamplingOptions(max_length=2), seed=5, batch_size=3)
    assert [r[:2] for r in full] == short
    assert generate_ids(model, 6, options, seed=5, batch_size=3) == full[:6]  # a larger n extends a smaller one
    assert full[3:6] != full[:3]  # the batches draw different numbers


def test_a_request_larger_than_a_batch_matches_its_lone_generation(model):
    options = SamplingOptions(max_length=6)
    request = Request(SAMPLE_BATCH_SIZE + 5, 11, 6)
    got = generate_for_requests(model, [Request(2, 3, 6), request], options)[1]
    assert got == _cut(generate_ids(model, request.n, options, request.seed), model.eos_id)
