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


def _train_records(folder: Path) -> list[dict]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if '"train"' in line]


@pytest.mark.slow
def test_two_gloo_processes_match_one_process(tmp_path):
    corpus = tmp_path / "corpus.txt"
    data_dir = Path(os.environ["TEXTEBM_DATA_DIR"])
    corpus.write_text("".join((data_dir / "ptb" / "valid.txt").read_text().splitlines(keepends=True)[:200]))
    common = ["train", "--corpus", str(corpus), "--preset", "cpu",
              "--set", "embedding_dim=16", "--set", "hidden_dim=32",
              "--set", "latent_dim=8", "--set", "posterior_steps=3", "--set", "prior_steps=5", "--set", "dropout=0",
              "--set", "batch_size=8", "--set", "log_every=1", "--set", "checkpoint_every=2", "--max-steps", "4",
              "--no-progress", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "textebm", *common, "--out", str(tmp_path / "one")],
                            capture_output=True, text=True, env=env, timeout=300)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "textebm", *common,
                          "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-2000:]
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
