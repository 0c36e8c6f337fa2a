"""A job already running on the model stops within one step when nobody awaits its answer: every
client it serves has left, or the server is stopping (textebm/cancellation.py, server/batcher.py).

The long jobs here are real ones (a prior chain of many steps, posterior chains of many steps), and
every Langevin step is counted by wrapping the prior's gradient (both chains call it once a step):
the proofs are counts of steps, never wall-clock bounds."""

from __future__ import annotations

import asyncio
import collections
import json
import socket
import threading
import time
from urllib.parse import urlsplit

import pytest
from server_fixtures import client, live_server, train_tiny_run

from server.app import create_app
from server.batcher import Batcher, ShuttingDown
from server.launch import _server
from textebm import cancellation
from textebm.generation.sampling import SamplingOptions, generate_text
from textebm.model.runs import load_run

LONG_PRIOR = 40_000  # prior steps of the long generation: about 10 s of one core on the tiny run
LONG_POSTERIOR = 6_000  # posterior steps of the long latent jobs: about 10 s likewise


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("cancel") / "tiny")


class Steps:
    """Counts the Langevin steps of the jobs on `run` by rows (the chains a step moves), and those taken
    once the job was asked to stop; `hold(rows)` holds the first step of that many rows until released."""

    def __init__(self, run):
        self.real = run.model.prior.grad_log_density
        self.by_rows: collections.Counter = collections.Counter()
        self.after_stop = 0
        self.started = threading.Event()
        self.holds: dict[int, tuple[threading.Event, threading.Event]] = {}
        run.model.prior.grad_log_density = self  # an instance attribute: the chains look it up every step

    def hold(self, rows: int) -> tuple[threading.Event, threading.Event]:
        """(held: set when a step of `rows` rows is held, release: set it to go on)."""
        self.holds[rows] = (threading.Event(), threading.Event())
        return self.holds[rows]

    def __call__(self, z):
        rows = z.shape[0]
        self.by_rows[rows] += 1
        self.after_stop += cancellation.requested()
        self.started.set()
        held, release = self.holds.get(rows, (None, None))
        if held is not None and not held.is_set():
            held.set()
            assert release.wait(30)
        return self.real(z)

    @property
    def total(self) -> int:
        return sum(self.by_rows.values())


def post_then_leave(base: str, path: str, body: dict) -> socket.socket:
    """Sends the request over a raw socket and returns it: closing it is the client leaving."""
    url = urlsplit(base)
    sock = socket.create_connection((url.hostname, url.port))
    payload = json.dumps(body).encode()
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {url.netloc}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


def left_count(c, endpoint: str) -> float:
    """How many requests to `endpoint` the metrics count as 499 (the client left)."""
    for line in c.get("/metrics").text.splitlines():
        if (line.startswith("textebm_requests_total{") and 'code="499"' in line
                and f'endpoint="{endpoint}"' in line):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def wait_until(predicate, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.02)


def test_a_generation_whose_client_leaves_stops_and_frees_the_worker(tiny_run):
    run = load_run(tiny_run, "cpu")
    steps = Steps(run)
    app = create_app(tiny_run, preloaded=run, max_prior_steps=LONG_PRIOR)
    with live_server(app) as url, client(url) as c:
        leaving = post_then_leave(url, "/generate", {"n": 3, "seed": 1, "prior_steps": LONG_PRIOR})
        assert steps.started.wait(20)
        leaving.close()
        wait_until(lambda: left_count(c, "/generate") == 1, "the server saw the client leave")
        r = c.post("/generate", json={"n": 1, "seed": 2, "prior_steps": 0})  # no steps: all counted are the long job's
        assert r.status_code == 200
        assert c.get("/health").json()["busy"] is False
    assert steps.total < LONG_PRIOR, "the next request waited for the abandoned job to end"
    assert steps.after_stop <= 1


@pytest.mark.parametrize("path, body", [
    ("/score", {"sentences": ["the cat saw a dog"], "num_chains": 1, "seed": 1}),
    ("/reconstruct", {"sentences": ["the cat saw a dog"], "chains": 1, "seed": 1}),
    ("/interpolate", {"from": "the cat", "to": "a big dog", "chains": 1, "seed": 1}),
])
def test_a_latent_job_whose_client_leaves_stops_and_frees_the_worker(tiny_run, path, body):
    run = load_run(tiny_run, "cpu")
    run.model.config.posterior_steps = LONG_POSTERIOR
    steps = Steps(run)
    with live_server(create_app(tiny_run, preloaded=run)) as url, client(url) as c:
        leaving = post_then_leave(url, path, body)
        assert steps.started.wait(20)
        leaving.close()
        wait_until(lambda: left_count(c, path) == 1, "the server saw the client leave")
        assert c.post("/generate", json={"n": 1, "seed": 2, "prior_steps": 0}).status_code == 200
    assert steps.total < LONG_POSTERIOR, "the next request waited for the abandoned job to end"
    assert steps.after_stop <= 1


def test_at_shutdown_the_running_job_stops_and_its_client_gets_503(tiny_run):
    run = load_run(tiny_run, "cpu")
    steps = Steps(run)
    app = create_app(tiny_run, preloaded=run, max_prior_steps=LONG_PRIOR)
    holder, answers = {}, []

    def make_server(config):
        holder["server"] = _server(config, app)
        return holder["server"]

    with live_server(app, make_server=make_server) as url:
        def call():
            with client(url) as c:
                r = c.post("/generate", json={"n": 2, "seed": 1, "prior_steps": LONG_PRIOR})
                answers.append((r.status_code, r.json()["detail"]))

        caller = threading.Thread(target=call)
        caller.start()
        assert steps.started.wait(20)
        holder["server"].should_exit = True  # what SIGTERM sets
        caller.join(20)
        assert not caller.is_alive()
    assert answers and answers[0][0] == 503 and answers[0][1].startswith("server shutting down"), answers
    assert steps.total < LONG_PRIOR, "shutdown waited for the running job"
    assert steps.after_stop <= 1


def test_a_batch_keeps_running_for_the_clients_still_there(tiny_run):
    """Two requests decoded in one batch, one client leaves while it runs: the other gets the sentences
    it would have got alone, from a batch run to its end."""
    run = load_run(tiny_run, "cpu")
    steps = Steps(run)
    first_held, first_release = steps.hold(4)  # the first request holds the worker while two others queue
    batch_held, batch_release = steps.hold(3)  # those two as one batch: 1 + 2 sentences
    with live_server(create_app(tiny_run, preloaded=run)) as url, client(url) as c:
        answers: dict = {}

        def call(name, body):
            with client(url) as c1:
                answers[name] = c1.post("/generate", json=body).json()

        first = threading.Thread(target=call, args=("first", {"n": 4, "seed": 3, "temperature": 0.5}))
        first.start()
        assert first_held.wait(20)
        leaving = post_then_leave(url, "/generate", {"n": 1, "seed": 7, "temperature": 0.9})
        staying = threading.Thread(target=call, args=("staying", {"n": 2, "seed": 8, "temperature": 0.9}))
        staying.start()
        wait_until(lambda: c.get("/health").json()["queued"] == 2, "both requests queued")
        first_release.set()
        assert batch_held.wait(20)
        leaving.close()
        wait_until(lambda: left_count(c, "/generate") == 1, "the server saw the client leave")
        batch_release.set()
        for thread in (first, staying):
            thread.join(30)
    assert steps.by_rows[3] == run.config.prior_steps, "the batch was stopped though a client still waited"
    assert steps.after_stop == 0
    answer = answers["staying"]
    assert answer["batch_requests"] == 2
    options = SamplingOptions(max_length=answer["request"]["max_length"], temperature=0.9)
    assert answer["sentences"] == generate_text(run.model, run.vocab, 2, options, 8)
    assert len(answers["first"]["sentences"]) == 4


BOUND = 5_000  # steps of the job slow by construction: about 5 s


def slow_job(counts: list) -> str:
    """Slow by construction: BOUND steps of 1 ms, each noting whether the stop was asked before it."""
    for _ in range(BOUND):
        cancellation.check()
        counts.append(cancellation.requested())
        time.sleep(0.001)
    return "done"


async def started_job(batcher: Batcher) -> tuple[asyncio.Future, list]:
    counts: list = []
    job = asyncio.ensure_future(batcher.call(slow_job, counts))
    while not counts:
        await asyncio.sleep(0.005)
    return job, counts


def test_the_batcher_stops_a_running_job_whose_caller_left():
    async def scenario():
        batcher = Batcher(model=None, queue_size=4, max_batch_sentences=4)
        batcher.start()
        job, counts = await started_job(batcher)
        job.cancel()  # what for_the_model does when the client leaves
        assert await batcher.call(lambda: "next") == "next"
        await batcher.stop()
        return counts

    counts = asyncio.run(scenario())
    assert len(counts) < BOUND, "the next job waited for the abandoned one to end"
    assert sum(counts) <= 1  # at most the step under way when the stop was asked


def test_the_batcher_stops_its_running_job_at_close():
    async def scenario():
        batcher = Batcher(model=None, queue_size=4, max_batch_sentences=4)
        batcher.start()
        job, counts = await started_job(batcher)
        batcher.close()
        with pytest.raises(ShuttingDown):
            await job
        await batcher.stop()
        return counts

    counts = asyncio.run(scenario())
    assert len(counts) < BOUND, "close waited for the running job to end"
    assert sum(counts) <= 1
