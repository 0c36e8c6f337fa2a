"""`textebm serve` / `python -m server` as a real process: starts, serves, stops; bad runs exit 2."""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from server_fixtures import train_tiny_run

from server import launch
from textebm.cli import serve

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def cli_run(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("cli") / "tiny")


def _env():
    return dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


def test_defaults_bind_loopback_without_cors_or_key():
    parser = argparse.ArgumentParser()
    serve.add_parser(parser.add_subparsers())
    args = parser.parse_args(["serve", "--checkpoint", "RUN"])
    assert (args.host, args.port, args.api_key, args.cors_origin) == ("127.0.0.1", 8000, None, [])
    assert args.threads == 1 and args.run is launch.serve


def test_serve_process_answers_and_stops_cleanly(cli_run):
    proc = subprocess.Popen([sys.executable, "-m", "server", "--checkpoint", str(cli_run), "--port", "0",
                             "--device", "cpu", "--api-key", "k", "--precision", "bf16"],
                            cwd=ROOT, env=_env(), stderr=subprocess.PIPE, text=True)
    try:
        base, deadline = None, time.monotonic() + 90
        while base is None and time.monotonic() < deadline:
            line = proc.stderr.readline()
            if not line and proc.poll() is not None:
                pytest.fail(f"server exited with {proc.returncode}")
            match = re.search(r"Uvicorn running on (http://127\.0\.0\.1:\d+)", line)
            base = match.group(1) if match else None
        assert base, "no 'Uvicorn running on' line"
        assert httpx.get(base + "/health").json()["status"] == "ok"
        assert httpx.post(base + "/generate", json={"n": 2}).status_code == 401
        r = httpx.post(base + "/generate", json={"n": 2, "seed": 5}, headers={"X-API-Key": "k"}, timeout=60)
        assert r.status_code == 200 and len(r.json()["sentences"]) == 2
        assert httpx.get(base + "/info", headers={"X-API-Key": "k"}).json()["precision"] == "bf16"  # --precision
    finally:
        proc.send_signal(signal.SIGTERM)
        rest = proc.communicate(timeout=30)[1]
    # uvicorn shuts down gracefully (lifespan shutdown runs), then re-raises SIGTERM as its exit status
    assert "Application shutdown complete" in rest, rest
    assert proc.returncode in (0, -signal.SIGTERM)


@pytest.mark.parametrize("damage", ["missing", "not_a_run", "corrupt"])
def test_bad_run_folders_exit_2_with_one_line(cli_run, tmp_path, damage):
    folder = tmp_path / "run"
    if damage == "not_a_run":
        folder.mkdir()
    elif damage == "corrupt":
        shutil.copytree(cli_run, folder)
        (folder / "model.safetensors").write_bytes(b"\0" * 10)
    result = subprocess.run([sys.executable, "-m", "server", "--checkpoint", str(folder), "--port", "0",
                             "--device", "cpu"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=90)
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("textebm serve: error: ")
    assert {"missing": "does not exist", "not_a_run": "not a textebm run", "corrupt": "corrupt"}[damage] in last


def test_bad_options_exit_2(cli_run):
    for extra, message in [(["--port", "70000"], "--port"),
                           (["--max-n", "0"], "--max-n must be a positive integer, not 0"),
                           (["--max-length", "2001"], "--max-length must be at most 2000, not 2001"),
                           (["--max-batch", "10"], "--max-batch (10) must be at least --max-n (64)"),
                           (["--api-key", " "], "--api-key must not be empty"),
                           (["--api-key", "clé"], "--api-key must be printable ASCII")]:
        result = subprocess.run([sys.executable, "-m", "server", "--checkpoint", str(cli_run), *extra],
                                cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=90)
        assert result.returncode == 2 and message in result.stderr, (extra, result.stderr)


def test_a_port_in_use_is_one_line(cli_run):
    # it was uvicorn's start-up log, its error and then ours: 7 lines
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "server", "--checkpoint", str(cli_run), "--port", str(port),
                                 "--device", "cpu"], cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=90)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"textebm serve: error: cannot listen on 127.0.0.1:{port}: Address already in use"]


LONG_NAME = "a" * 64 + ".invalid"  # a DNS label is at most 63 characters


@pytest.mark.parametrize("host, reason", [
    ("fe80::1%no-such-interface", "--host fe80::1%no-such-interface: "),  # refused by the resolver: no DNS query
    (LONG_NAME, f"--host {LONG_NAME}: not a valid host name"),  # refused before any resolver is asked
    ("a..b", "--host a..b: not a valid host name"),  # an empty label: the same
])  # (an address that cannot be bound: test_a_port_in_use_is_one_line; another's address binds where
#     net.ipv4.ip_nonlocal_bind is set)
def test_a_host_that_cannot_be_resolved_is_one_line(cli_run, host, reason):
    # --api-key: a host other than loopback without one would add a warning line
    result = subprocess.run([sys.executable, "-m", "server", "--checkpoint", str(cli_run), "--host", host,
                             "--port", "0", "--api-key", "k", "--device", "cpu"],
                            cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=90)
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"textebm serve: error: {reason}") and not line.endswith(": "), line
