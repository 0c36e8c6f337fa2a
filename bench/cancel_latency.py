"""How soon the server's model worker is free once nobody awaits its running job: seconds from a
client's disconnect (or from the start of shutdown) to the worker being free, on loopback.

Each case starts a long job (a prior chain of --prior-steps steps for /generate, posterior chains of
--posterior-steps steps for /score), lets it run --running seconds, then closes the client's
connection (or begins shutdown, as SIGTERM does) and times until /health says the worker is idle
(or until the server has stopped). Before the running job could be stopped, this was the rest of
the job; now it is about one step.

    python bench/cancel_latency.py --checkpoint RUN
    python bench/cancel_latency.py --checkpoint RUN --prior-steps 40000 --posterior-steps 6000
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/cancel_latency.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="run folder to serve")
    p.add_argument("--prior-steps", type=int, default=40_000, help="prior steps of the long /generate (default 40000)")
    p.add_argument("--posterior-steps", type=int, default=6_000,
                   help="posterior steps of the long /score (the run's posterior_steps, overridden; default 6000)")
    p.add_argument("--running", type=float, default=1.0, help="seconds the job runs before it is abandoned (default 1)")
    return p.parse_args(argv)


class Served:
    """`textebm serve`'s server (uvicorn with the batcher closed at shutdown) in a thread, on a free port."""

    def __init__(self, app):
        import uvicorn

        from server.launch import _server

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.base = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = _server(uvicorn.Config(app, log_level="critical", lifespan="on",
                                             timeout_graceful_shutdown=30), app)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        while not self.server.started:
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join()
        self.sock.close()


def post_raw(base: str, path: str, body: dict) -> socket.socket:
    url = httpx.URL(base)
    sock = socket.create_connection((url.host, url.port))
    payload = json.dumps(body).encode()
    sock.sendall(f"POST {path} HTTP/1.1\r\nHost: {url.host}:{url.port}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(payload)}\r\n\r\n".encode() + payload)
    return sock


def wait_busy(c: httpx.Client, value: bool) -> None:
    while c.get("/health").json()["busy"] is not value:
        time.sleep(0.002)


def case(args, path: str, body: dict, shutdown: bool = False) -> float:
    from server.app import create_app
    from textebm.model.runs import load_run

    run = load_run(args.checkpoint, "cpu")
    run.model.config.posterior_steps = args.posterior_steps
    served = Served(create_app(args.checkpoint, preloaded=run, max_prior_steps=max(args.prior_steps, 1)))
    with httpx.Client(base_url=served.base) as c:
        sock = post_raw(served.base, path, body)
        wait_busy(c, True)
        time.sleep(args.running)
        started = time.perf_counter()
        if shutdown:
            served.stop()
        else:
            sock.close()
            wait_busy(c, False)
        took = time.perf_counter() - started
    sock.close()
    if not shutdown:
        served.stop()
    return took


def main(argv=None) -> int:
    import torch

    args = parse_args(argv)
    torch.set_num_threads(1)
    generate = {"n": 3, "seed": 1, "prior_steps": args.prior_steps}
    score = {"sentences": ["the cat saw a dog"], "num_chains": 1, "seed": 1}
    rows = [
        (f"client leaves /generate (n=3, {args.prior_steps} prior steps)", case(args, "/generate", generate)),
        (f"client leaves /score (1 chain, {args.posterior_steps} posterior steps)", case(args, "/score", score)),
        (f"shutdown during /generate (n=3, {args.prior_steps} prior steps)",
         case(args, "/generate", generate, shutdown=True)),
    ]
    print(f"{'case':<60} seconds until the worker is free (server stopped, for shutdown)")
    for name, seconds in rows:
        print(f"{name:<60} {seconds:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
