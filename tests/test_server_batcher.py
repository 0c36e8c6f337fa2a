"""The batcher's turn-taking, with generation replaced by a fake: which requests share a decode, and what
each is answered (tests/test_server.py shows batching on a real model; test_server_cancel.py stopping)."""

from __future__ import annotations

import asyncio

from server import batcher as batcher_module
from server.batcher import Batcher
from textebm.errors import NonFiniteError
from textebm.generation.sampling import SamplingOptions

DIVERGES = 13  # the seed whose prior chain the fake makes diverge


def test_a_batch_whose_chain_diverges_is_decoded_again_one_request_at_a_time(monkeypatch):
    # one request's diverging chain failed its whole batch: a neighbour that succeeds alone got a 500
    decodes: list[list[int]] = []

    def fake_generation(model, parts, options):
        decodes.append([part.seed for part in parts])
        if any(part.seed == DIVERGES for part in parts):
            raise NonFiniteError("the prior chain diverged at step 3")
        return [[[part.seed]] * part.n for part in parts]

    monkeypatch.setattr(batcher_module, "generate_for_requests", fake_generation)

    async def scenario():
        batcher = Batcher(model=None, queue_size=8, max_batch_sentences=8)
        jobs = [asyncio.ensure_future(batcher.submit(SamplingOptions(), 1, seed)) for seed in (1, DIVERGES, 2)]
        await asyncio.sleep(0)  # all three wait before the worker starts: one batch
        batcher.start()
        results = await asyncio.gather(*jobs, return_exceptions=True)
        later = await batcher.submit(SamplingOptions(), 2, 3)  # after the failure, decoding goes on as before
        await batcher.stop()
        return results, later

    (first, diverged, second), later = asyncio.run(scenario())
    assert decodes == [[1, DIVERGES, 2], [1], [DIVERGES], [2], [3]]
    assert first.ids == [[1]] and second.ids == [[2]] and first.batch_requests == 1
    assert isinstance(diverged, NonFiniteError)
    assert later.ids == [[3], [3]]


def test_retry_after_counts_the_running_job_before_any_has_ended():
    # the first overload always said "Retry-After: 1": no job had ended to time
    import time
    from types import SimpleNamespace

    from server.errors import queue_full

    busy = SimpleNamespace(last_compute_s=0.0, running_since=time.perf_counter() - 3.0, pending=4)
    assert queue_full(busy).headers["Retry-After"] in ("6", "7")  # twice the 3 s it has run so far
    idle = SimpleNamespace(last_compute_s=2.0, running_since=None, pending=4)
    assert queue_full(idle).headers["Retry-After"] == "4"
