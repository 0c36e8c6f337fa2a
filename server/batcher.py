"""The one place inference happens: a worker task that takes the waiting requests in turn.

Why one worker: the model is a single torch module on a 2-core machine; running two generations
at once only splits the same cores. Why a bounded wait list: the event loop stays free for /health
and for accepting requests while a batch runs in the worker thread, and the bound turns overload
into a quick 503 instead of unbounded memory and latency. Why batches: decoding is a Python loop
over time steps whose per-step cost grows slowly with the batch, so generation requests that wait
together are decoded together (`generate_for_requests` keeps each request's sentences the same as
if it had run alone). The latent-space requests (reconstruct, interpolate, score) wait in the same
list and run alone (`call`).

A request whose client left (its future cancelled) gives up its place before it reaches the model.
A job already running stops within one step (one Langevin step, one decoding step) once nobody
awaits its answer: each job runs inside `textebm.cancellation.cancellable`, whose event is set when
every future of the job is done (all its clients left) and at shutdown; the loops' `check()` then
raises `Cancelled`, which the worker drops. A batch some of whose clients are still there runs to its
end, so their sentences are those they would have got had nobody left. At shutdown (`close`) every
request, waiting or running, is answered at once (`ShuttingDown`: 503), and the running job stops.
A batch whose prior chain diverges (one chain of one request is enough) is run again one request at
a time, so that only the requests whose own chains diverge get the error.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from textebm.cancellation import Cancelled, cancellable
from textebm.errors import NonFiniteError
from textebm.generation.sampling import Request, SamplingOptions, batch_key, generate_for_requests


class QueueFull(Exception):
    """The wait list is at its bound; the caller answers 503 with Retry-After."""


class ShuttingDown(Exception):
    """The server is stopping: requests still waiting are answered 503, new ones refused."""


@dataclass
class Job:
    """A generation request (`options`, `n`, `seed`) or a latent-space call (`fn(*args)`)."""

    future: asyncio.Future
    options: SamplingOptions | None = None
    n: int = 0
    seed: int = 0
    fn: Callable | None = None
    args: tuple = ()
    enqueued: float = field(default_factory=time.perf_counter)
    alone: bool = False  # decoded without others (its batch diverged: whose chain was it?)


@dataclass
class Result:
    ids: list[list[int]]
    batch_requests: int  # requests decoded in the same batch (1: alone)
    batch_sentences: int
    queued_ms: float
    compute_ms: float


class Batcher:
    """Wait list + worker. `submit` and `call` are awaited by request handlers; `run` is the worker task."""

    def __init__(self, model, queue_size: int, max_batch_sentences: int, coalesce: bool = True,
                 on_batch=None):
        self.model = model
        self.on_batch = on_batch  # called with (requests, sentences, seconds) after each decoded batch
        self.queue_size = queue_size
        self.max_batch_sentences = max_batch_sentences
        self.coalesce = coalesce
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="textebm-generate")
        self.busy = False
        self.closing = False
        self.last_compute_s = 0.0
        self.running_since: float | None = None  # perf_counter of the running job's start
        self.batches = 0
        self.requests = 0
        self._waiting: list[Job] = []  # in arrival order
        self._running: list[Job] = []  # the jobs of the batch (or latent call) on the worker thread
        self._arrived = asyncio.Event()
        self._task: asyncio.Task | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self.run(), name="textebm-batcher")

    def close(self) -> None:
        """Shutdown has begun: answer every waiting and running request (ShuttingDown), which stops the
        running job at its next step (`_watch`), and refuse new requests."""
        self.closing = True
        for job in self._waiting + self._running:
            if not job.future.done():
                job.future.set_exception(ShuttingDown())
        self._waiting.clear()

    async def stop(self) -> None:
        """Close, end the worker task and wait, off the event loop, for the model's running job (one
        step at most: `close` asked it to stop)."""
        self.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        await asyncio.to_thread(self.executor.shutdown, wait=True, cancel_futures=True)

    @property
    def pending(self) -> int:
        """Requests waiting for the model (not those whose client left)."""
        return sum(1 for job in self._waiting if not job.future.done())

    async def submit(self, options: SamplingOptions, n: int, seed: int) -> Result:
        return await self._wait(Job(self._admit(), options, n, seed))

    async def call(self, fn, *args):
        """`fn(*args)` on the model's worker thread, in turn with the batches (one model, one thread)."""
        return await self._wait(Job(self._admit(), fn=fn, args=args))

    def _admit(self) -> asyncio.Future:
        if self.closing:
            raise ShuttingDown()
        if self.pending >= self.queue_size:
            raise QueueFull()
        return asyncio.get_running_loop().create_future()

    async def _wait(self, job: Job):
        self._waiting.append(job)
        self._arrived.set()
        return await job.future  # cancelled (the client left): the worker skips the job

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._waiting = [job for job in self._waiting if not job.future.done()]
            if not self._waiting:
                self._arrived.clear()
                await self._arrived.wait()
                continue
            batch = self._take_batch()
            stop = self._watch(batch)
            started = self.running_since = time.perf_counter()
            try:
                if batch[0].fn is not None:
                    outcome = [await loop.run_in_executor(self.executor, self._on_worker, stop, batch[0].fn,
                                                          *batch[0].args)]
                else:
                    parts = [Request(job.n, job.seed, job.options.max_length) for job in batch]
                    outcome = await loop.run_in_executor(self.executor, self._on_worker, stop,
                                                         generate_for_requests, self.model, parts,
                                                         batch[0].options)
            except Cancelled:  # nobody awaits the answer (every client left, or close answered them)
                continue
            except Exception as err:  # noqa: BLE001 - handed to each waiting request, never lost
                if isinstance(err, NonFiniteError) and len(batch) > 1:
                    # each request again alone, first in line: only those whose own chains diverge get the error
                    for job in batch:
                        job.alone = True
                    self._waiting[:0] = batch
                    continue
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(err)
                continue
            finally:
                self._running = []
                self.running_since = None
            compute_ms = (time.perf_counter() - started) * 1000
            self.last_compute_s = compute_ms / 1000
            self.requests += len(batch)
            if batch[0].fn is not None:
                if not batch[0].future.done():
                    batch[0].future.set_result(outcome[0])
                continue
            self.batches += 1
            sentences = sum(job.n for job in batch)
            if self.on_batch is not None:
                self.on_batch(len(batch), sentences, self.last_compute_s)
            for job, ids in zip(batch, outcome):
                if not job.future.done():
                    job.future.set_result(Result(ids, len(batch), sentences,
                                                 (started - job.enqueued) * 1000, compute_ms))

    def _watch(self, batch: list[Job]) -> threading.Event:
        """The running job's stop event, set once every future of `batch` is done: all its clients
        left (cancelled) or `close` answered them. A future done before this call counts too (its
        callback is scheduled at once); one answered with the job's result sets it too, harmlessly."""
        self._running, stop = batch, threading.Event()

        def on_done(_future) -> None:
            if all(job.future.done() for job in batch):
                stop.set()

        for job in batch:
            job.future.add_done_callback(on_done)
        return stop

    def _on_worker(self, stop: threading.Event, fn, *args):
        """Run on the worker thread, `busy` while it runs; stops at its next step once `stop` is set."""
        self.busy = True
        try:
            with cancellable(stop):
                return fn(*args)
        finally:
            self.busy = False

    def _take_batch(self) -> list[Job]:
        """The first waiting job, with every later generation job of the same options up to
        max_batch_sentences rows when it is a generation job; they leave the wait list."""
        first = self._waiting[0]
        batch = [first]
        if first.fn is None and self.coalesce and not first.alone:
            key, rows = batch_key(first.options), first.n
            for job in self._waiting[1:]:
                if (job.fn is None and not job.alone and batch_key(job.options) == key
                        and rows + job.n <= self.max_batch_sentences):
                    batch.append(job)
                    rows += job.n
        taken = set(map(id, batch))
        self._waiting = [job for job in self._waiting if id(job) not in taken]
        return batch
