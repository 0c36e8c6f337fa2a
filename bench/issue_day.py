"""`evaluate`'s likelihood estimator as it was on the day issue 24 was filed, run from that day's own code.

Issue 24 bounds the new estimator's cost by "today's defaults" (about 2 CPU s per PTB sentence on one
thread then). Evaluator 2's settings run on today's code are no such bound: they share every speed-up
made since (the chains' projection pass, block projections without autograd): on 32 trained-run PTB
sentences they cost 0.74 of what that day's code did (docs/evaluate-command.md, evaluator 12). So the
bound is measured on the code of that day: commit `ISSUE_DAY`, extracted from this repository's
history with `git archive` into a temporary folder and run in a worker process with the same model
sizes, sentences and thread count, called in turn with today's estimator (`bench.interleave`) so that
load from a neighbour hits both alike.

The worker speaks that commit's API (`textebm.likelihood`, its `bench.build_model`), nothing of today's.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ISSUE_DAY = "c2e344c72f4bbf402ae3f528688e77cf63eb7fae"  # 2026-12-03 11:33, the last commit before issue 24's work
REPOSITORY = Path(__file__).resolve().parents[1]

# Reads the spec from argv, then runs that day's default estimator (16 tempered chains, diagonal Gaussian
# + prior, 100 draws: importance_sampled_log_likelihood's defaults, which its evaluate passed) once per line.
WORKER = """
import json, sys
import torch
from bench import build_model
from textebm.likelihood import importance_sampled_log_likelihood
spec = json.loads(sys.argv[1])
torch.set_num_threads(spec["threads"])
model, _ = build_model(spec["sizes"], spec["vocab"], preset="cpu")
model.eval()
tokens = torch.tensor(spec["tokens"])
generator = torch.Generator().manual_seed(0)
print("ready", flush=True)
for _ in sys.stdin:
    importance_sampled_log_likelihood(model, tokens, 0.0, generator=generator)
    print("done", flush=True)
"""


class Unavailable(Exception):
    """The issue's day cannot be run here (no git, or a clone without that commit)."""


class IssueDayEstimator:
    """A worker process running `ISSUE_DAY`'s default estimator on `tokens` with a model of `sizes`
    (`bench.build_model`'s overrides) and `vocab` words; each call runs it once. A context manager:
    the worker and its folder are gone on exit. Raises `Unavailable` where the commit cannot be had."""

    def __init__(self, sizes: list[str], vocab: int, tokens, threads: int):
        self.threads = threads
        self.spec = json.dumps({"sizes": sizes, "vocab": vocab, "tokens": tokens.tolist(), "threads": threads})

    def __enter__(self) -> IssueDayEstimator:
        try:
            archive = subprocess.run(["git", "-C", str(REPOSITORY), "archive", "--format=tar", ISSUE_DAY,
                                      "textebm", "bench"], capture_output=True, check=True).stdout
        except (OSError, subprocess.CalledProcessError) as err:
            raise Unavailable(f"commit {ISSUE_DAY[:7]} is not in this checkout's history ({type(err).__name__})") \
                from None
        self.folder = tempfile.TemporaryDirectory(prefix="textebm-issue-day-")
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            tar.extractall(self.folder.name, filter="data")
        path = os.pathsep.join(filter(None, [self.folder.name, os.environ.get("PYTHONPATH")]))  # its textebm first
        env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": str(self.threads)}
        self.worker = subprocess.Popen([sys.executable, "-c", WORKER, self.spec], cwd=self.folder.name, env=env,
                                       stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            self._expect("ready")
        except RuntimeError:
            self.__exit__()
            raise
        return self

    def __call__(self) -> None:
        self.worker.stdin.write("run\n")
        self.worker.stdin.flush()
        self._expect("done")

    def _expect(self, word: str) -> None:
        line = self.worker.stdout.readline().strip()
        if line != word:
            raise RuntimeError(f"the issue-day worker ({ISSUE_DAY[:7]}) said {line!r} instead of {word!r}")

    def __exit__(self, *exc) -> None:
        self.worker.stdin.close()
        try:
            self.worker.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.worker.kill()
        self.folder.cleanup()
