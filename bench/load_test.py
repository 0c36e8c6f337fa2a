"""Load test of the HTTP server on loopback: C concurrent clients POST /generate for D seconds.

Reports requests, sentences/s, p50/p99/max latency, mean requests per decoded batch, and the
count of 5xx answers; exits 1 if there was any 5xx (or no successful request at all).

    python bench/load_test.py --checkpoint RUN                     # starts its own server
    python bench/load_test.py --url http://127.0.0.1:8000          # an already running server
    python bench/load_test.py --checkpoint RUN --no-coalesce       # the server decodes one request at a time

Bounded on purpose: at most 256 clients and 600 seconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from textebm.io import atomic_write_text

MAX_CLIENTS, MAX_DURATION = 256, 600.0


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python bench/load_test.py", description=__doc__.split("\n\n")[0])
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--checkpoint", help="run folder: start a server for it on a free loopback port")
    target.add_argument("--url", help="base URL of a running server (loopback)")
    p.add_argument("--clients", type=int, default=32, help=f"concurrent clients (default 32, at most {MAX_CLIENTS})")
    p.add_argument("--duration", type=float, default=30.0,
                   help=f"seconds of load (default 30, at most {MAX_DURATION:g})")
    p.add_argument("--n", type=int, default=4, help="sentences per request (default 4)")
    p.add_argument("--max-length", type=int, default=30, help="max_length per request (default 30)")
    p.add_argument("--api-key", help="key to send (and to start the server with, with --checkpoint)")
    p.add_argument("--no-coalesce", action="store_true", help="start the server with --no-coalesce")
    p.add_argument("--threads", type=int, help="torch threads for the started server")
    p.add_argument("--json", help="also write the report to this file")
    args = p.parse_args(argv)
    if not 1 <= args.clients <= MAX_CLIENTS:
        p.error(f"--clients must be in 1..{MAX_CLIENTS}")
    if not 0 < args.duration <= MAX_DURATION:
        p.error(f"--duration must be in (0, {MAX_DURATION:g}]")
    if args.url and httpx.URL(args.url).host not in ("127.0.0.1", "localhost", "::1"):
        p.error("--url must be a loopback address: this is a load test")
    return args


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args) -> tuple[subprocess.Popen, str]:
    """`python -m server` in a child process (its own interpreter, as in production)."""
    port = free_port()
    root = Path(__file__).resolve().parent.parent
    cmd = [sys.executable, "-m", "server", "--checkpoint", args.checkpoint, "--port", str(port),
           "--log-level", "warning", "--device", "cpu", "--max-n", str(max(args.n, 64)),
           "--max-length", str(max(args.max_length, 100))]
    if args.api_key:
        cmd += ["--api-key", args.api_key]
    if args.no_coalesce:
        cmd.append("--no-coalesce")
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    env = dict(os.environ, PYTHONPATH=str(root) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen(cmd, cwd=root, env=env)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with status {proc.returncode} before answering")
        try:
            if httpx.get(base + "/health", timeout=1).status_code == 200:
                return proc, base
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise SystemExit("the server did not answer /health within 120 s")


async def client_loop(http: httpx.AsyncClient, deadline: float, body: dict, rng: random.Random, out: dict) -> None:
    while time.monotonic() < deadline:
        payload = dict(body, seed=rng.randrange(2**31))
        t0 = time.perf_counter()
        try:
            r = await http.post("/generate", json=payload)
        except httpx.HTTPError as err:
            out["errors"].append(type(err).__name__)
            continue
        elapsed = time.perf_counter() - t0
        out["status"][r.status_code] = out["status"].get(r.status_code, 0) + 1
        if r.status_code == 200:
            data = r.json()
            out["latencies"].append(elapsed)
            out["sentences"] += len(data["sentences"])
            out["tokens"] += sum(len(s.split()) for s in data["sentences"])
            out["batch_requests"].append(data["batch_requests"])


async def run_load(base: str, args) -> dict:
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    body = {"n": args.n, "max_length": args.max_length}
    out = {"latencies": [], "status": {}, "errors": [], "sentences": 0, "tokens": 0, "batch_requests": []}
    limits = httpx.Limits(max_connections=args.clients, max_keepalive_connections=args.clients)
    async with httpx.AsyncClient(base_url=base, headers=headers, limits=limits, timeout=120) as http:
        # one warm-up request, not counted
        await http.post("/generate", json=dict(body, seed=0))
        started = time.monotonic()
        deadline = started + args.duration
        await asyncio.gather(*(client_loop(http, deadline, body, random.Random(i), out)
                               for i in range(args.clients)))
        wall = time.monotonic() - started
    lat = sorted(out["latencies"])

    def pct(q):
        return round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 1) if lat else None

    fivexx = sum(count for code, count in out["status"].items() if code >= 500)
    return {
        "clients": args.clients, "duration_s": round(wall, 1), "n": args.n, "max_length": args.max_length,
        "requests_ok": len(lat), "status": {str(k): v for k, v in sorted(out["status"].items())},
        "transport_errors": len(out["errors"]), "5xx": fivexx,
        "sentences_per_s": round(out["sentences"] / wall, 1), "requests_per_s": round(len(lat) / wall, 2),
        "p50_ms": pct(0.50), "p95_ms": pct(0.95), "p99_ms": pct(0.99),
        "max_ms": round(lat[-1] * 1000, 1) if lat else None,
        "mean_sentence_tokens": round(out["tokens"] / out["sentences"], 1) if out["sentences"] else None,
        "mean_batch_requests": round(sum(out["batch_requests"]) / len(lat), 2) if lat else None,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    proc = None
    if args.checkpoint:
        proc, base = start_server(args)
    else:
        base = args.url.rstrip("/")
    try:
        report = asyncio.run(run_load(base, args))
        report["server"] = "started here" + (" (--no-coalesce)" if args.no_coalesce else "") if proc else base
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(json.dumps(report, indent=2))
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(report, indent=2) + "\n")
    ok = report["5xx"] == 0 and report["requests_ok"] > 0 and report["transport_errors"] == 0
    print("PASS: zero 5xx" if ok else "FAIL: 5xx answers, transport errors or no successful request", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
