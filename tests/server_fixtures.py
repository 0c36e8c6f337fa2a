"""Helpers for the server tests: a tiny trained run and a real uvicorn server on a free loopback port.

Kept out of tests/conftest.py (another helper owns it); test modules import from here.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import httpx
import uvicorn

WORDS = ("the cat dog bird man woman child saw liked found ate ran jumped a big small red old new "
         "house tree car park river market city quickly slowly today yesterday").split()


def write_corpus(path: Path, lines: int = 300, seed: int = 0) -> Path:
    """Short random sentences over a small vocabulary: enough for a 20-step training run."""
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(lines):
            f.write(" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9))) + "\n")
    return path


def train_tiny_run(folder: Path) -> Path:
    """A real (tiny) run folder with a checkpoint, trained by the `textebm train` CLI."""
    from textebm.cli import main

    corpus = write_corpus(folder.parent / f"{folder.name}-corpus.txt")
    code = main(["train", "--corpus", str(corpus), "--out", str(folder), "--preset", "cpu",
                 "--set", "embedding_dim=16", "--set", "hidden_dim=32", "--set", "latent_dim=8",
                 "--set", "posterior_steps=3", "--set", "posterior_init=noise", "--set", "prior_steps=5",
                 "--max-steps", "20", "--no-progress"])
    assert code == 0, f"training the tiny run failed with exit status {code}"
    assert (folder / "model.safetensors").is_file()
    return folder


@contextmanager
def live_server(app, startup_timeout: float = 60.0, make_server=uvicorn.Server, **options):
    """Serve `app` with uvicorn in a thread on a free 127.0.0.1 port; yields the base URL. `options` go to
    uvicorn's Config.

    The socket is bound here (port 0) and handed to uvicorn, so there is no race for the port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    settings = {"log_level": "warning", "lifespan": "on", "timeout_graceful_shutdown": 5, **options}
    config = uvicorn.Config(app, **settings)
    server = make_server(config)

    def serve():
        try:
            server.run(sockets=[sock])
        except SystemExit:  # uvicorn's way of reporting a failed start-up; the caller sees `started`
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + startup_timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn exited during start-up (see the log above)")
        if time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start in time")
        time.sleep(0.02)
    try:
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def client(base: str, **kwargs) -> httpx.Client:
    return httpx.Client(base_url=base, timeout=60.0, **kwargs)


def answers_while_held(url: str, started: threading.Event, done: threading.Event, what: str) -> None:
    """/health and /info answer, many times over, while a job is held on the worker thread (`started` set,
    `done` not yet): the event loop never waits for the model. (A loop that did would answer only once the
    hold ends, when the job is no longer busy, or not within the client's timeout.)"""
    assert started.wait(10)
    with client(url) as c:
        for _ in range(10):
            r = c.get("/health")
            assert r.status_code == 200 and r.json()["busy"] is True and r.json()["queued"] == 0
            assert c.get("/info").status_code == 200
    assert not done.is_set(), f"the {what} ended while it was held"
