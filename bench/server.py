"""The server row: runs the server helper's `bench/load_test.py` if it is there, else says so.

Targets (issue 5): p50 latency of /generate under 50 ms for n=1 and under 300 ms for n=32;
throughput with 16 concurrent clients at least 3x the sequential one.
"""

from __future__ import annotations

import importlib
import importlib.util

from bench import Row

NAME = "server"
TARGETS = "p50 n=1 < 50 ms; p50 n=32 < 300 ms; 16 clients >= 3x sequential"


def not_measured(why: str) -> list[Row]:
    return [Row(NAME, "/generate latency and throughput", target=TARGETS, note=f"not measured: {why}")]


def run(quick: bool, repeats: int) -> list[Row]:
    if importlib.util.find_spec("bench.load_test") is None:
        return not_measured("bench/load_test.py not available")
    load_test = importlib.import_module("bench.load_test")
    entry = getattr(load_test, "bench_rows", None)
    if entry is None:
        return not_measured("bench/load_test.py has no bench_rows(quick, repeats) entry point yet")
    return [Row(NAME, **row) if isinstance(row, dict) else row for row in entry(quick=quick, repeats=repeats)]
