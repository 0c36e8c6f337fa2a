"""The one place inference happens: a worker task that drains a bounded queue into batches.

Why one worker: the model is a single torch module on a 2-core machine; running two generations
at once only splits the same cores. Why a queue: the event loop stays free for /health and for
accepting requests while a batch runs in the worker thread, and a bounded queue turns overload
into a quick 503 instead of unbounded memory and latency. Why batches: decoding is a Python loop
over time steps whose per-step cost grows slowly with the batch, so requests that wait together
are decoded together (`generate_for_requests` keeps each request's sentences the same as if
it had run alone). The latent-space requests (reconstruct, interpolate, score) run on the same
thread, in turn with the batches (`call`), and count against the same queue bound.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from textebm.generation.sampling import Request, SamplingOptions, batch_key, generate_for_requests


class QueueFull(Exception):
    """The request queue is at its bound; the caller answers 503 with Retry-After."""


@dataclass
class Job:
    options: SamplingOptions
    n: int
    seed: int
    future: asyncio.Future
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class Result:
    ids: list[list[int]]
    batch_requests: int  # requests decoded in the same batch (1: alone)
    batch_sentences: int
    queued_ms: float
    compute_ms: float


class Batcher:
    """Queue + worker. `submit` is called from request handlers; `run` is the worker task."""

    def __init__(self, model, queue_size: int, max_batch_sentences: int, coalesce: bool = True,
                 on_batch=None):
        self.model = model
        self.on_batch = on_batch  # called with (requests, sentences, seconds) after each decoded batch
        self.queue: asyncio.Queue[Job] = asyncio.Queue()  # bounded by `submit`, held jobs included
        self.queue_size = queue_size
        self.max_batch_sentences = max_batch_sentences
        self.coalesce = coalesce
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="textebm-generate")
        self.busy = False
        self.last_compute_s = 0.0
        self.batches = 0
        self.requests = 0
        self._held: list[Job] = []  # drained but left for the next batch (other options or no room)
        self._calls: set[Future] = set()  # `call` jobs on the worker thread's queue or running
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="textebm-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for job in self._held + _drain(self.queue):
            if not job.future.done():
                job.future.set_exception(RuntimeError("server shutting down"))
        self.executor.shutdown(wait=True, cancel_futures=True)

    @property
    def pending(self) -> int:
        waiting_calls = sum(1 for f in self._calls if not (f.running() or f.done()))
        return self.queue.qsize() + len(self._held) + waiting_calls

    async def call(self, fn, *args):
        """`fn(*args)` on the model's worker thread, after what is already there (one model, one thread)."""
        if self.pending >= self.queue_size:
            raise QueueFull()
        future = self.executor.submit(self._on_worker, fn, *args)
        self._calls.add(future)
        try:
            return await asyncio.wrap_future(future)  # a cancelled wait cancels a job not yet started
        finally:
            self._calls.discard(future)
            self.requests += 1

    def _on_worker(self, fn, *args):
        """Run on the worker thread, `busy` while it runs."""
        self.busy = True
        try:
            return fn(*args)
        finally:
            self.busy = False

    async def submit(self, options: SamplingOptions, n: int, seed: int) -> Result:
        if self.pending >= self.queue_size:
            raise QueueFull()
        job = Job(options, n, seed, asyncio.get_running_loop().create_future())
        self.queue.put_nowait(job)
        return await job.future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if self._held:
                first = self._held.pop(0)
            else:
                first = await self.queue.get()
            batch = self._take_batch(first)
            batch = [job for job in batch if not job.future.done()]  # clients that went away
            if not batch:
                continue
            started = time.perf_counter()
            try:
                parts = [Request(job.n, job.seed, job.options.max_length) for job in batch]
                outcome = await loop.run_in_executor(
                    self.executor, self._on_worker, generate_for_requests, self.model, parts, batch[0].options)
            except Exception as err:  # noqa: BLE001 - handed to each waiting request, never lost
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            compute_ms = (time.perf_counter() - started) * 1000
            self.last_compute_s = compute_ms / 1000
            self.batches += 1
            self.requests += len(batch)
            sentences = sum(job.n for job in batch)
            if self.on_batch is not None:
                self.on_batch(len(batch), sentences, self.last_compute_s)
            for job, ids in zip(batch, outcome):
                if not job.future.done():
                    job.future.set_result(Result(ids, len(batch), sentences,
                                                 (started - job.enqueued) * 1000, compute_ms))

    def _take_batch(self, first: Job) -> list[Job]:
        """`first` plus every waiting job with the same options, up to max_batch_sentences rows.

        Jobs with other options wait in `_held`, in arrival order, for a later batch."""
        if not self.coalesce:
            return [first]
        self._held.extend(_drain(self.queue))
        key = batch_key(first.options)
        batch, rows, rest = [first], first.n, []
        for job in self._held:
            if batch_key(job.options) == key and rows + job.n <= self.max_batch_sentences:
                batch.append(job)
                rows += job.n
            else:
                rest.append(job)
        self._held = rest
        return batch


def _drain(queue: asyncio.Queue) -> list[Job]:
    jobs = []
    while True:
        try:
            jobs.append(queue.get_nowait())
        except asyncio.QueueEmpty:
            return jobs
