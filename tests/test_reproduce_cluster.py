"""`textebm reproduce --executor slurm`, its jobs run by submitit's local executor (CI has no Slurm): a
tiny grid completes, a job warned of its end saves, is requeued and resumes from its checkpoint, and
a machine without Slurm gets one line and exit 2."""

from __future__ import annotations

import json
import os
import re
import signal
import time
from pathlib import Path

import pytest
import submitit
from test_reproduce import EVALUATE
from test_reproduce import _grid as _local_grid

from textebm.experiments.cluster import slurm_options, submit_grid, wait_for
from textebm.experiments.grid import load_grid
from textebm.experiments.reproduce import BUDGET, TRAIN_MARKER, checkpoint_file, evaluation_marker

SLURM = '[slurm]\npartition = "cpu"\ntime = 30\n'


def _grid(tmp_path, corpus_folder, tiny_overrides, runs: str, extra_set=()) -> Path:
    """The tiny grid of tests/test_reproduce.py with a [slurm] table."""
    return Path(_local_grid(tmp_path, corpus_folder, tiny_overrides, runs + SLURM, extra_set))


def _executor(out: Path):
    executor = submitit.LocalExecutor(folder=str(out / "slurm"))
    executor.update_parameters(timeout_min=10)
    return executor


def test_a_tiny_grid_completes_as_jobs_and_a_local_driver_sees_it_done(cli, tmp_path, corpus_folder,
                                                                         tiny_overrides):
    grid_file = _grid(tmp_path, corpus_folder, tiny_overrides,
                      f'[[runs]]\nname = "a"\nmax_steps = 4\nevaluate = [{EVALUATE}]\n'
                      '[[runs]]\nname = "b"\nmax_steps = 3\n')
    grid, out = load_grid(str(grid_file)), tmp_path / "out"
    assert grid.slurm == {"partition": "cpu", "time": 30}
    said = []
    jobs = submit_grid(grid, out, _executor(out), device="cpu", echo=said.append)
    assert [name for name, _ in jobs] == ["a", "b"]
    assert wait_for(jobs, said.append, poll=0.2) == "done", said
    for name, steps in (("a", 4), ("b", 3)):
        assert json.loads((out / "runs" / name / TRAIN_MARKER).read_text())["step"] == steps
    assert (out / "runs" / "a" / evaluation_marker("test")).is_file()
    # the same markers: the local driver has nothing left to do, and submits nothing again
    status, stdout, err = cli("reproduce", str(grid_file), "--out", out, "--dry-run")
    assert status == 0 and "everything is done: nothing to start" in stdout, stdout + err
    assert submit_grid(grid, out, _executor(out), device="cpu", echo=said.append) == []


def test_a_job_warned_of_its_end_saves_and_resumes_when_requeued(tmp_path, corpus_folder, tiny_overrides):
    grid_file = _grid(tmp_path, corpus_folder, tiny_overrides, '[[runs]]\nname = "long"\nmax_minutes = 0.25\n',
                      extra_set=["checkpoint_every=5"])
    grid, out = load_grid(str(grid_file)), tmp_path / "out"
    folder = out / "runs" / "long"
    (name, job), = submit_grid(grid, out, _executor(out), device="cpu", echo=lambda text: None)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        ledger = json.loads((folder / BUDGET).read_text()) if (folder / BUDGET).is_file() else None
        if ledger and "pid" in ledger["segments"][-1] and checkpoint_file(folder) is not None:
            break
        time.sleep(0.05)
    else:
        pytest.fail("the training never reached its first checkpoint")
    # Slurm's warning before the time limit (or a preemption), as submitit's job process receives it:
    # the training process's parent is that job process
    status = Path(f"/proc/{ledger['segments'][-1]['pid']}/status").read_text()
    job_process = int(re.search(r"^PPid:\s+(\d+)", status, re.M).group(1))
    os.kill(job_process, signal.SIGUSR2)
    assert wait_for([(name, job)], lambda text: None, poll=0.2) == "done", job.stdout()
    log = (folder / "train.log").read_text()
    assert re.search(r"stopped at step \d+ \(interrupt\)", log)  # it saved when warned
    resumed = [int(n) for n in re.findall(r"resumed from step (\d+)", log)]
    final = [int(n) for n in re.findall(r"stopped at step (\d+) \(max_minutes\)", log)]
    assert len(resumed) == 1 and resumed[0] >= 5 and len(final) == 1 and final[0] > resumed[0]
    marker = json.loads((folder / TRAIN_MARKER).read_text())
    assert marker["segments"] == 2 and marker["step"] == final[0]
    assert "Requeued job" in (job.stdout() or "") + (job.stderr() or "")


def test_slurm_options_come_from_the_grid_then_the_flags(tmp_path):
    options = slurm_options({"partition": "cpu", "time": 30}, ["time=120", "gpus_per_node=1", "qos=low"])
    assert options["partition"] == "cpu" and options["time"] == 120 and options["gpus_per_node"] == 1
    assert options["qos"] == "low" and options["cpus_per_task"] == 1  # a default kept


def test_without_slurm_the_slurm_executor_says_so_in_one_line(cli, tmp_path, corpus_folder, tiny_overrides,
                                                              one_line_error, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "no-slurm-here"))
    grid_file = _grid(tmp_path, corpus_folder, tiny_overrides, '[[runs]]\nname = "a"\nmax_steps = 2\n')
    status, stdout, err = cli("reproduce", str(grid_file), "--out", tmp_path / "out", "--executor", "slurm")
    one_line_error(status, err, "reproduce", "no Slurm", "sbatch")
    assert not (tmp_path / "out").exists()  # nothing submitted, nothing written


def test_a_wrong_slurm_option_is_one_line(cli, tmp_path, corpus_folder, tiny_overrides, one_line_error, monkeypatch):
    monkeypatch.setattr("textebm.experiments.cluster.shutil.which", lambda name: f"/usr/bin/{name}")  # a login node
    grid_file = _grid(tmp_path, corpus_folder, tiny_overrides, '[[runs]]\nname = "a"\nmax_steps = 2\n')
    status, stdout, err = cli("reproduce", str(grid_file), "--out", tmp_path / "out", "--executor", "slurm",
                              "--slurm", "colour=red")
    one_line_error(status, err, "reproduce", "Slurm options", "colour")
    status, stdout, err = cli("reproduce", str(grid_file), "--out", tmp_path / "out", "--executor", "slurm",
                              "--slurm", "partition")
    one_line_error(status, err, "reproduce", "KEY=VALUE")
