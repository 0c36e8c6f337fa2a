"""Data-parallel training: 2 processes under torchrun (gloo, CPU) give the results of 1 process at
equal global batch, and only rank 0 writes the run's files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from textebm.langevin import Shard
from textebm.parallel import Parallel


def test_shards_cover_a_batch_once():
    for world in (1, 2, 3):
        shards = [Parallel(rank, world).shard(8) for rank in range(world)]
        rows = [r for s in shards for r in range(s.start, s.stop)]
        assert rows == list(range(8))
        assert all(s.total == 8 for s in shards)
    assert Parallel(1, 2).shard(7) == Shard(3, 7, 7)


# A fresh interpreter: the default group is started after textebm.parallel is imported, as in training,
# then wrapped by DDP, which imports torch.distributed.nn lazily.
_RELEASE = """
import json, os, torch, torch.distributed as dist
from textebm import parallel

def gloo_threads():
    names = (open(f"/proc/self/task/{task}/comm").read().strip() for task in os.listdir("/proc/self/task"))
    return [name for name in names if "gloo" in name]

def train():  # the DDP module ends with its function, as the training's does before shutdown
    model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(4, 4))
    model(torch.ones(2, 4)).sum().backward()

dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
train()
before = gloo_threads()
parallel.shutdown()
import time
deadline = time.monotonic() + 10  # the threads end asynchronously after the group is destroyed;
while gloo_threads() and time.monotonic() < deadline:  # a leaked group keeps them to exit
    time.sleep(0.05)
print(json.dumps({"before": before, "after": gloo_threads()}))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="thread names are read from /proc (Linux)")
def test_shutdown_releases_gloo_after_ddp():
    """destroy_process_group ends gloo's threads and connections: they are not left to interpreter exit."""
    result = subprocess.run([sys.executable, "-c", _RELEASE], capture_output=True, text=True, timeout=120,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr
    threads = json.loads(result.stdout.splitlines()[-1])
    assert threads["before"], "no gloo threads while the group was up: nothing to check"
    assert threads["after"] == []


def _train_records(folder: Path) -> list[dict]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if '"train"' in line]


def _launch_report(result: subprocess.CompletedProcess, logs: Path) -> str:
    """All that torchrun and every rank printed, so that a failing rank's own error is in the message."""
    parts = [f"torchrun exit status {result.returncode}", "torchrun stderr:", result.stderr]
    for log in sorted(logs.rglob("*.log")):
        parts += [f"{log.relative_to(logs)}:", log.read_text(errors="replace")]
    return "\n".join(parts)


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path, valid_lines):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(valid_lines[:200]) + "\n")
    common = ["train", "--corpus", str(corpus), "--preset", "cpu",
              "--set", "embedding_dim=16", "--set", "hidden_dim=32",
              "--set", "latent_dim=8", "--set", "posterior_steps=3", "--set", "prior_steps=5", "--set", "dropout=0",
              "--set", "batch_size=8", "--set", "log_every=1", "--set", "checkpoint_every=2", "--max-steps", "4",
              "--no-progress", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "textebm", *common, "--out", str(tmp_path / "one")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr
    logs = tmp_path / "rank-logs"  # each rank's own stdout and stderr, whole, for a failure to name its cause
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "--log-dir", str(logs), "--tee", "3", "-m", "textebm", *common,
                          "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert ddp.returncode == 0, _launch_report(ddp, logs)
    assert "data parallel: 2 processes, global batch 8" in ddp.stdout + ddp.stderr
    one, two = _train_records(tmp_path / "one"), _train_records(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        assert a["nll_token"] == pytest.approx(b["nll_token"], rel=1e-5)
        assert a["energy_gap"] == pytest.approx(b["energy_gap"], rel=1e-3, abs=1e-6)
    # rank 0 alone writes: one stop line in the log, one checkpoint
    log = (tmp_path / "two" / "train.log").read_text()
    assert log.count("stopped at step 4") == 1
    assert (tmp_path / "two" / "checkpoint.pt").is_file()
