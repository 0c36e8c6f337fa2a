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

import textebm
from textebm.errors import UserError
from textebm.experiments.cluster import JOBS, slurm_executor, slurm_options, submit_grid, wait_for
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
    jobs, busy = submit_grid(grid, out, _executor(out), device="cpu", echo=said.append)
    assert [name for name, _ in jobs] == ["a", "b"] and busy == []
    assert wait_for(jobs, said.append, poll=0.2) == "done", said
    for name, steps in (("a", 4), ("b", 3)):
        assert json.loads((out / "runs" / name / TRAIN_MARKER).read_text())["step"] == steps
    assert (out / "runs" / "a" / evaluation_marker("test")).is_file()
    # the same markers: the local driver has nothing left to do, and submits nothing again
    status, stdout, err = cli("reproduce", str(grid_file), "--out", out, "--dry-run")
    assert status == 0 and "everything is done: nothing to start" in stdout, stdout + err
    assert submit_grid(grid, out, _executor(out), device="cpu", echo=said.append) == ([], [])


def test_a_job_warned_of_its_end_saves_and_resumes_when_requeued(tmp_path, corpus_folder, tiny_overrides):
    grid_file = _grid(tmp_path, corpus_folder, tiny_overrides, '[[runs]]\nname = "long"\nmax_minutes = 0.25\n',
                      extra_set=["checkpoint_every=5"])
    grid, out = load_grid(str(grid_file)), tmp_path / "out"
    folder = out / "runs" / "long"
    ((name, job),), _ = submit_grid(grid, out, _executor(out), device="cpu", echo=lambda text: None)
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


@pytest.mark.parametrize("given, minutes", [("90", 90), ("1.5", 2), ("1:00:00", 60), ("30:30", 31), ("1-12", 2160),
                                            ("1-00:30", 1470), ("0-0:0:1", 1)])
def test_a_slurm_time_is_whole_minutes_in_any_of_slurms_forms(given, minutes):
    # "1:00:00" went to sbatch as text, and submitit's requeue computed "1:00:00" * 60 and failed
    assert slurm_options({}, [f"time={given}"])["time"] == minutes


@pytest.mark.parametrize("flag, fragment", [("time=2h", "Slurm time '2h'"), ("time=0", "Slurm time 0"),
                                            ("time=", "Slurm time ''"),
                                            ("signal_delay_s=abc", "signal_delay_s must be whole seconds"),
                                            ("setup=module load x", "give it in the grid's [slurm] table"),
                                            ("srun_args=--cpu-bind=none", "give it in the grid's [slurm] table")])
def test_slurm_options_sbatch_would_refuse_are_one_line_first(flag, fragment):
    # they reached sbatch, whose refusal came back as a 40-line traceback (srun_args split into characters)
    with pytest.raises(UserError, match=re.escape(fragment)):
        slurm_options({}, [flag])


def test_slurm_booleans_are_booleans():
    options = slurm_options({}, ["use_srun=false", "exclusive=True", "partition=true"])  # "false" was true text
    assert options["use_srun"] is False and options["exclusive"] is True and options["partition"] == "true"


@pytest.mark.parametrize("table, fragment", [({"setup": "module load cuda"}, "setup must be a list of strings"),
                                             ({"srun_args": [1]}, "srun_args must be a list of strings"),
                                             ({"additional_parameters": "x"}, "additional_parameters must be a table")])
def test_a_grid_slurm_table_of_the_wrong_shape_is_one_line(table, fragment):
    # a string setup became one script line per character
    with pytest.raises(UserError, match=fragment):
        slurm_options(table, [])


def test_when_squeue_does_not_answer_nothing_is_submitted_and_the_wait_goes_on(tmp_path, corpus_folder,
                                                                               tiny_overrides):
    grid_file = _grid(tmp_path, corpus_folder, tiny_overrides, '[[runs]]\nname = "a"\nmax_steps = 2\n')
    grid, out = load_grid(str(grid_file)), tmp_path / "out"
    (out / "slurm").mkdir(parents=True)
    (out / "slurm" / JOBS).write_text(json.dumps({"a": "4242"}))
    with pytest.raises(UserError, match="squeue did not answer"):  # a pending job would have run twice
        submit_grid(grid, out, _executor(out), device="cpu", echo=lambda text: None, queued=lambda: None)
    answers = iter([None, None, set()])  # squeue fails twice, then no longer lists the job
    ended = _Ended(tmp_path, "4242", outcome="done")
    assert wait_for([("a", ended)], lambda text: None, poll=0.01, queued=lambda: next(answers)) == "done"


def test_a_slurm_job_runs_the_drivers_own_textebm(tmp_path, monkeypatch):
    # the job was `python -m submitit...` in the driver's folder: another checkout there trained the runs
    for tool in ("sbatch", "srun"):
        (tmp_path / tool).write_text("#!/bin/sh\nexit 1\n")
        (tmp_path / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    executor = slurm_executor(tmp_path / "slurm", slurm_options({"setup": ["module load cuda"]}, []))
    source = str(Path(textebm.__file__).resolve().parents[1])
    assert executor.python.endswith(" -P")
    export = f"export PYTHONPATH={source}${{PYTHONPATH:+:$PYTHONPATH}}"
    assert executor.parameters["setup"] == ["module load cuda", export]


class _Queue:
    """squeue as the driver sees it: the ids it lists now (set by the test)."""

    def __init__(self, *ids):
        self.ids = set(ids)

    def __call__(self):
        return set(self.ids)


def test_a_run_whose_job_is_queued_is_waited_for_not_submitted_again(tmp_path, corpus_folder, tiny_overrides):
    # `--no-wait` then the same command while the jobs queued submitted every run again
    grid_file = _grid(tmp_path, corpus_folder, tiny_overrides, '[[runs]]\nname = "a"\nmax_steps = 2\n')
    grid, out = load_grid(str(grid_file)), tmp_path / "out"

    class Refusing(submitit.LocalExecutor):
        def submit(self, *args, **kwargs):
            raise AssertionError("submitted again")

    (out / "slurm").mkdir(parents=True)
    (out / "slurm" / JOBS).write_text(json.dumps({"a": "4242"}))
    said = []
    jobs, busy = submit_grid(grid, out, Refusing(folder=str(out / "slurm")), device="cpu", echo=said.append,
                             queued=_Queue("4242", "77"))
    assert [(name, job.job_id) for name, job in jobs] == [("a", "4242")] and busy == []
    assert said == ["a: job 4242 is still queued or running: waited for, not submitted again"]
    # once Slurm no longer holds it, the run's state decides: here it has not trained, so it goes again
    jobs, _ = submit_grid(grid, out, _executor(out), device="cpu", echo=said.append, queued=_Queue("77"))
    assert json.loads((out / "slurm" / JOBS).read_text()) == {"a": jobs[0][1].job_id} != {"a": "4242"}
    assert wait_for(jobs, said.append, poll=0.2) == "done"


class _Ended:
    """A job as wait_for sees it: an id, its paths, and what it returned (or raised)."""

    def __init__(self, folder: Path, job_id: str, outcome=None, error: Exception | None = None, state="FAILED"):
        self.job_id, self.state, self._outcome, self._error = job_id, state, outcome, error
        self.paths = submitit.core.utils.JobPaths(folder, job_id, 0)
        if outcome is not None or error is not None:
            self.paths.result_pickle.parent.mkdir(parents=True, exist_ok=True)
            self.paths.result_pickle.write_bytes(b"stands for a result")

    def done(self):
        raise AssertionError("with squeue's list, submitit's own view is not asked")

    def result(self):
        if self._error is not None:
            raise self._error
        return self._outcome


def test_a_job_slurm_still_holds_is_waited_for_and_each_is_reported_as_it_ends(tmp_path, monkeypatch):
    # a job requeued after a preemption had written "interrupted": the driver reported it ended and left
    monkeypatch.setattr("textebm.experiments.cluster.RESULT_WAIT_S", 0)
    queue = _Queue("1", "2")
    requeued = _Ended(tmp_path, "1", outcome="interrupted")
    failed = _Ended(tmp_path, "2", error=submitit.core.utils.FailedJobError(
        "Job (task=0) failed during processing with trace:\n----------------------\nTraceback (most recent call "
        "last):\n  File x\nUserError: grid.toml holds no run named a any more\n----------------------\n"
        "You can check full logs with 'job.stderr(0)' and 'job.stdout(0)'or at paths:\n  - /x/2_0_log.err\n"
        "  - /x/2_0_log.out"))
    gone = _Ended(tmp_path, "3", state="NODE_FAIL")  # died without a result; sacct may not even know it
    said = []

    def echo(text):
        said.append(text)
        if len(said) == 1:  # job 2 and 3 reported; job 1, requeued, still queued ...
            queue.ids = set()  # ... until Slurm lets it go

    queue.ids = {"1"}
    assert wait_for([("a", requeued), ("b", failed), ("c", gone)], echo, poll=0.01, queued=queue) == "failed"
    assert [line.split(" (its output")[0] for line in said] == [
        "b: job 2 ended failed: UserError: grid.toml holds no run named a any more",
        "c: job 3 ended failed: no result (Slurm state NODE_FAIL; see " + str(gone.paths.stderr) + ")",
        "a: job 1 ended interrupted"]


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


def test_a_job_sbatch_refuses_is_one_line_naming_the_jobs_already_submitted(tmp_path, corpus_folder,
                                                                            tiny_overrides):
    # a refused sbatch was a 40-line traceback, and the jobs submitted before it ran on unwatched
    grid_file = _grid(tmp_path, corpus_folder, tiny_overrides,
                      '[[runs]]\nname = "a"\nmax_steps = 2\n[[runs]]\nname = "b"\nmax_steps = 2\n')
    grid, out = load_grid(str(grid_file)), tmp_path / "out"

    class SecondRefused(submitit.LocalExecutor):
        def submit(self, job):
            if job.name == "b":
                raise submitit.core.utils.FailedJobError(
                    "sbatch: error: Batch job submission failed: Invalid account or account/partition combination")
            return self.job_class(folder=self.folder, job_id="900")

    with pytest.raises(UserError) as info:
        submit_grid(grid, out, SecondRefused(folder=str(out / "slurm")), device="cpu", echo=lambda text: None)
    assert str(info.value) == ("sbatch did not take the job of b: sbatch: error: Batch job submission failed: Invalid "
                               "account or account/partition combination (submitted already: a as job 900; the same "
                               "command waits for them)")
    assert json.loads((out / "slurm" / JOBS).read_text()) == {"a": "900"}  # what the next call waits for
