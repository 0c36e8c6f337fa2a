"""Data-parallel training: 2 processes under torchrun (gloo, CPU) give the results of 1 process at
equal global batch, and only rank 0 writes the run's files; the launch order (the group's backend
from --device, a group and DDP with one process too, rank 0 deciding about the run folder), and an
error in one process ending the launch promptly, with the group released."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from textebm.errors import UserError
from textebm.model.checkpoints import load_checkpoint
from textebm.model.langevin import Shard
from textebm.training.parallel import Parallel


def test_shards_cover_a_batch_once():
    for world in (1, 2, 3):
        shards = [Parallel(rank, world).shard(8) for rank in range(world)]
        rows = [r for s in shards for r in range(s.start, s.stop)]
        assert rows == list(range(8))
        assert all(s.total == 8 for s in shards)
    assert Parallel(1, 2).shard(7) == Shard(3, 7, 7)


def test_no_process_is_left_without_rows_by_an_epochs_partial_batch():
    # 9 lines in batches of 4: the partial batch of 1 gave a second process no rows (pad([]) raised mid-run)
    from textebm.training.train import EpochOrder

    lengths = list(range(3, 12))
    for world, per_epoch in ((1, 3), (2, 2), (4, 2)):
        order = EpochOrder(lengths, 4, seed=0, least=world)
        assert order.per_epoch == per_epoch
        for step in range(4 * per_epoch):  # four epochs
            shards = [Parallel(rank, world).shard(len(order.batch(step))) for rank in range(world)]
            assert all(shard.stop > shard.start for shard in shards)
    assert sorted(i for step in range(3) for i in EpochOrder(lengths, 4, 0).batch(step)) == list(range(9))
    with pytest.raises(UserError, match="3 lines: fewer than the 4 data-parallel processes"):
        EpochOrder([5, 6, 7], 8, seed=0, least=4)
    with pytest.raises(UserError, match="batch_size 1 is below the 2 data-parallel processes"):  # an IndexError
        EpochOrder(lengths, 1, seed=0, least=2)


def test_the_backend_follows_the_device_not_the_host(monkeypatch):
    import torch

    from textebm.training.parallel import backend

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU host
    monkeypatch.delenv("TEXTEBM_DIST_BACKEND", raising=False)
    assert backend(torch.device("cpu")) == "gloo" and backend(torch.device("cuda", 0)) == "nccl"
    monkeypatch.setenv("TEXTEBM_DIST_BACKEND", "gloo")  # two processes sharing one GPU
    assert backend(torch.device("cuda", 0)) == "gloo"
    monkeypatch.setenv("TEXTEBM_DIST_BACKEND", "nccl")
    with pytest.raises(UserError, match="needs --device cuda"):
        backend(torch.device("cpu"))
    monkeypatch.setenv("TEXTEBM_DIST_BACKEND", "mpi")
    with pytest.raises(UserError, match="gloo or nccl"):
        backend(torch.device("cpu"))


# A fresh interpreter: the default group is started after textebm.training.parallel is imported, as in training,
# then wrapped by DDP, which imports torch.distributed.nn lazily.
_RELEASE = """
import json, os, torch, torch.distributed as dist
from textebm.training import parallel

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
    if not threads["before"]:  # torch 2.4.1 leaves gloo's threads unnamed
        pytest.skip(f"torch {torch.__version__} names no thread gloo: whether they end cannot be seen")
    assert threads["after"] == []


# torchrun's environment for one process, set by hand; `textebm train` then fails at its first checkpoint.
_ONE_PROCESS_ERROR = """
import gc, json, os, sys, time
# port 0: the one process's store binds a free port itself (no port chosen here and freed for another to take)
os.environ.update(RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1", MASTER_PORT="0")
import torch.distributed as dist
import textebm.training.parallel, textebm.training.train
from torch.nn.parallel import DistributedDataParallel
from textebm.cli import main
from textebm.errors import UserError
from textebm.model.checkpoints import load_checkpoint

def gloo_threads():
    names = (open(f"/proc/self/task/{task}/comm").read().strip() for task in os.listdir("/proc/self/task"))
    return [name for name in names if "gloo" in name]

during = {}
def ddp_objects():
    return sum(isinstance(o, DistributedDataParallel) for o in gc.get_objects())

def fail(*args, **kwargs):
    during.update(group=dist.is_initialized(), threads=gloo_threads(), ddp=ddp_objects())
    raise UserError("cannot write the checkpoint (injected)")

leave = textebm.training.parallel.shutdown
def shutdown():  # what still holds the group when it is left
    during["ddp_at_shutdown"] = ddp_objects()
    leave()

textebm.training.train.save_checkpoint = fail
textebm.training.parallel.shutdown = shutdown
status = main(sys.argv[1:])
deadline = time.monotonic() + 10  # gloo's threads end asynchronously after the group is destroyed
while gloo_threads() and time.monotonic() < deadline:
    time.sleep(0.05)
print(json.dumps({"status": status, "during": during, "after": gloo_threads()}))
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="thread names are read from /proc (Linux)")
def test_one_process_under_torchrun_has_a_group_and_ddp_and_an_error_releases_them(tmp_path, small_corpus,
                                                                                   tiny_overrides):
    """With one process, torchrun's environment still starts a (gloo) group and DDP wrappers, so a
    one-GPU launch exercises them; an error raised deep in training (its traceback holding the
    wrappers) releases the wrappers before the group is left, and ends with exit status 2 and the
    group's threads gone."""
    argv = ["train", "--corpus", str(small_corpus), "--preset", "cpu", "--out", str(tmp_path / "run"),
            *[arg for item in tiny_overrides for arg in ("--set", item)], "--set", "checkpoint_every=2",
            "--max-steps", "3", "--device", "cpu", "--threads", "1", "--no-progress"]
    result = subprocess.run([sys.executable, "-c", _ONE_PROCESS_ERROR, *argv], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1", "TEXTEBM_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.splitlines()[-1])
    assert "data parallel: 1 process, global batch 16" in result.stdout + result.stderr
    assert report["during"]["group"] and report["during"]["ddp"] == 2
    assert report["during"]["ddp_at_shutdown"] == 0  # the traceback's frames no longer hold the wrappers
    assert report["status"] == 2 and "cannot write the checkpoint (injected)" in result.stderr
    if not report["during"]["threads"]:  # torch 2.4.1 leaves gloo's threads unnamed
        pytest.skip(f"torch {torch.__version__} names no thread gloo: whether they end cannot be seen")
    assert report["after"] == []


def _train_records(folder: Path) -> list[dict]:
    lines = (folder / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines if '"train"' in line]


def _launch_report(result: subprocess.CompletedProcess, logs: Path) -> str:
    """All that torchrun and every rank printed, so that a failing rank's own error is in the message."""
    parts = [f"torchrun exit status {result.returncode}", "torchrun stderr:", result.stderr]
    for log in sorted(logs.rglob("*.log")):
        parts += [f"{log.relative_to(logs)}:", log.read_text(errors="replace")]
    return "\n".join(parts)


# `textebm train` under torchrun with a fault injected by TEXTEBM_TEST_FAULT:
# late_check - every rank but 0 asks whether the run folder holds a run only once rank 0 has created it
#              (the race a lagging rank can lose; ranks must follow rank 0's answer, not ask themselves);
# checkpoint - rank 0 cannot write its first checkpoint (an error in one rank only);
# final_stop - a SIGTERM reaches rank 0 alone while it runs the final validation (`kill` of its pid), the
#              others waiting for it at its barrier; final_stop_all - every rank gets one (a cluster's
#              preemption), the others while they wait, then rank 0 while it validates.
_FAULTY_TRAIN = """
import os, signal, sys, threading, time
import textebm.model.runs, textebm.training.train
from textebm.cli import main
from textebm.errors import UserError
from textebm.model.checkpoints import load_checkpoint

fault, rank = os.environ["TEXTEBM_TEST_FAULT"], int(os.environ["RANK"])
if fault.startswith("final_stop"):
    Validation = textebm.training.train._Validation
    report, run = Validation._report, Validation.run
    def stopped_report(self, kind, step, per_epoch):
        if kind == "final":
            time.sleep(1.0)
            os.kill(os.getpid(), signal.SIGTERM)
        return report(self, kind, step, per_epoch)
    def stopped_run(self, kind, *args):
        if kind == "final" and rank != 0 and fault == "final_stop_all":  # while this process waits at the barrier
            threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGTERM)).start()
        return run(self, kind, *args)
    Validation._report, Validation.run = stopped_report, stopped_run
if fault == "late_check" and rank != 0:
    real = textebm.model.runs.is_run
    def late(folder):
        deadline = time.monotonic() + 60
        while not real(folder) and time.monotonic() < deadline:
            time.sleep(0.05)
        return real(folder)
    textebm.model.runs.is_run = late
if fault == "checkpoint":
    def fail(*args, **kwargs):
        raise UserError("cannot write the checkpoint (injected)")
    textebm.training.train.save_checkpoint = fail
sys.exit(main(sys.argv[1:]))
"""


def _torchrun(tmp_path: Path, fault: str, argv: list[str], env: dict) -> subprocess.CompletedProcess:
    script = tmp_path / "faulty_train.py"
    script.write_text(_FAULTY_TRAIN)
    logs = tmp_path / f"rank-logs-{fault}"  # each rank's own stdout and stderr, for a failure to name its cause
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "--log-dir", str(logs), "--tee", "3", str(script), *argv],
                            capture_output=True, text=True, env={**env, "TEXTEBM_TEST_FAULT": fault}, timeout=300)
    result.logs = logs
    return result


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
    ddp = _torchrun(tmp_path, "late_check", [*common, "--out", str(tmp_path / "two")], env)
    assert ddp.returncode == 0, _launch_report(ddp, ddp.logs)
    assert "data parallel: 2 processes, global batch 8" in ddp.stdout + ddp.stderr
    one, two = _train_records(tmp_path / "one"), _train_records(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == [1, 2, 3, 4]
    for a, b in zip(one, two):
        assert a["nll_token"] == pytest.approx(b["nll_token"], rel=1e-5)
        assert a["energy_gap"] == pytest.approx(b["energy_gap"], rel=1e-3, abs=1e-6)
    # each process draws its own dropout masks: their streams differ (they were copies of one stream)
    ranks = load_checkpoint(tmp_path / "two")["extra"]["rng_ranks"]
    assert len(ranks) == 2 and not torch.equal(ranks[0]["torch"], ranks[1]["torch"])
    # rank 0 alone writes: one stop line in the log, one checkpoint
    log = (tmp_path / "two" / "train.log").read_text()
    assert log.count("stopped at step 4") == 1
    assert (tmp_path / "two" / "model.safetensors").is_file()


@pytest.mark.slow
def test_an_error_in_one_process_ends_the_launch(tmp_path, small_corpus, tiny_overrides):
    """Rank 0 fails at its first checkpoint while rank 1 goes on into the next step's collective: the
    launch ends (within the subprocess timeout, not NCCL/gloo's ten minutes), rank 0 with its one-line
    error and exit status 2, no abort."""
    argv = ["train", "--corpus", str(small_corpus), "--preset", "cpu", "--out", str(tmp_path / "run"),
            *[arg for item in tiny_overrides for arg in ("--set", item)], "--set", "checkpoint_every=2",
            "--max-steps", "6", "--device", "cpu", "--threads", "1", "--no-progress"]
    result = _torchrun(tmp_path, "checkpoint", argv, {**os.environ, "OMP_NUM_THREADS": "1", "TEXTEBM_OFFLINE": "1"})
    report = _launch_report(result, result.logs)
    assert result.returncode != 0, report
    rank0 = "".join(log.read_text(errors="replace") for log in result.logs.rglob("*.log") if "/0/" in str(log))
    assert "textebm train: error: cannot write the checkpoint (injected)" in rank0, report
    assert "Traceback" not in rank0 and "terminate called" not in rank0, report
    assert "Signal 6" not in result.stderr and "SIGABRT" not in result.stderr, report


@pytest.mark.slow
@pytest.mark.parametrize("fault", ["final_stop", "final_stop_all"])
def test_a_stop_during_the_final_validation_ends_every_process_as_interrupted(tmp_path, small_corpus, tiny_overrides,
                                                                              fault):
    """A SIGTERM while rank 0 validates, to it alone or to every rank: each ends as interrupted (exit 130)
    with the weights saved, the figure drawn and no traceback. Rank 0 alone used to leave its validation
    for the exit while rank 1 waited at the barrier: rank 1 then died on the closed connection."""
    folder = tmp_path / "run"
    argv = ["train", "--corpus", str(small_corpus), "--preset", "cpu", "--out", str(folder),
            *[arg for item in tiny_overrides for arg in ("--set", item)], "--max-steps", "3", "--device", "cpu",
            "--threads", "1", "--no-progress"]
    result = _torchrun(tmp_path, fault, argv, {**os.environ, "OMP_NUM_THREADS": "1", "TEXTEBM_OFFLINE": "1"})
    report = _launch_report(result, result.logs)
    # The first rank to exit 130 makes torchrun SIGTERM the other, which may still be closing its process
    # group (-15 then): what counts is that every rank did its part and none raised.
    assert "exitcode  : 130" in result.stderr and "exitcode  : 1 " not in result.stderr, report
    ranks = "".join(log.read_text(errors="replace") for log in result.logs.rglob("*.log"))
    assert "Traceback" not in ranks and f"interrupted: resume with  textebm train --resume --out {folder}" in ranks, \
        report
    log = (folder / "train.log").read_text()
    assert "stop requested after step 3: its checkpoint is saved" in log and "stopped at step 3 (interrupt)" in log
    assert (folder / "learning_curves.png").is_file()
    assert load_checkpoint(folder)["step"] == 3


def test_a_batch_too_small_for_the_processes_is_refused_before_the_run_folder_is_written(tmp_path, small_corpus):
    # it failed inside training, after the folder was written: a retry with the same --out was "already a run"
    from textebm.config import resolve_config
    from textebm.training.setup import new_run

    config = resolve_config("cpu", str(small_corpus), ["batch_size=1"])
    with pytest.raises(UserError, match="batch_size 1 is below the 2 data-parallel processes"):
        new_run(tmp_path / "run", config, parallel=Parallel(0, 2))
    assert not (tmp_path / "run").exists()
