"""`textebm reproduce --executor slurm`: each grid run as a job of its own, through submitit.

A job does on its node what a worker of the local driver does (textebm.experiments.reproduce.Reproduction, one
run): it takes the run's lock (OUT/locks/NAME.lock), trains or resumes from the run's checkpoint
(a `textebm train` child), evaluates, and writes the same completion markers. So a grid can mix
local and Slurm runs, a job finds a run already done (or held by another process) and leaves it,
and a later `textebm reproduce` (either executor) gathers what every job wrote.

Requeue: when Slurm warns of the time limit or a preemption (USR2, `signal_delay_s` ahead), submitit
calls the job's `checkpoint`: training is asked to stop (SIGTERM: it saves), the job waits until it
has, and submitit requeues a fresh copy, which resumes from that checkpoint. The job's own state is
only the grid file's path, the output folder and the run's name.

Each run's last job is recorded in OUT/slurm/jobs.json: a run whose job Slurm still holds (pending,
running, requeued) is waited for, not submitted again, so the same command gathers a `--no-wait` grid.
The driver waits until squeue no longer lists a job, not for its first result (a job Slurm requeues
after a preemption wrote one already), and reports the job's own error where it failed.

submitit pickles each job into OUT/slurm/ for the node to read: a file the driver wrote itself, in
the user's own output folder (the checkpoints, which may come from anywhere, are never pickles).
"""

from __future__ import annotations

import getpass
import json
import math
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from textebm.errors import UserError
from textebm.experiments.grid import Grid, load_grid
from textebm.experiments.reproduce import Reproduction, Step, plan
from textebm.io import atomic_write_text, read_json

# Slurm options a grid gets unless its [slurm] table or --slurm says otherwise: one task, one CPU,
# an hour, and the warning 2 minutes before the limit (time to save and requeue).
SLURM_DEFAULTS = {"nodes": 1, "ntasks_per_node": 1, "cpus_per_task": 1, "time": 60, "signal_delay_s": 120}
POLL_SECONDS = 5.0
# Requeues of a job warned of its time limit: a run goes on over that many jobs of `time` minutes each
# (submitit's own cap, 3, ended a run of more than 4 x `time` as "failed").
MAX_REQUEUES = 100
# submitit's options that take a list or a table: the grid's [slurm] table gives them, not --slurm.
STRUCTURED_KEYS = ("setup", "additional_parameters", "srun_args")
JOBS = "jobs.json"  # in OUT/slurm/: each run's last job id
RESULT_WAIT_S = 15  # how long an ended job's result may take to appear on a shared file system
_SLURM_TIME = re.compile(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?")


@dataclass
class GridRunJob:
    """One run of a grid, as a submitit job (callable on the node; `checkpoint` on a requeue signal)."""

    grid: str  # the grid file (read again on the node: the job carries no run state of its own)
    out: str
    name: str
    data_dir: str | None = None
    device: str = "auto"
    train_only: bool = False

    def __post_init__(self):
        self._reproduction: Reproduction | None = None

    def __call__(self) -> str:
        grid = load_grid(self.grid)
        runs = tuple(spec for spec in grid.runs if spec.name == self.name)
        if not runs:
            raise UserError(f"{self.grid} holds no run named {self.name} any more")
        self._reproduction = Reproduction(Grid(grid.path, grid.title, runs), Path(self.out), 1, self.data_dir,
                                          self.device, lambda text: print(text, flush=True), self.train_only)
        return self._reproduction.run()

    def checkpoint(self):
        """Stop the run's processes (they save) and hand submitit a fresh job to requeue."""
        from submitit.helpers import DelayedSubmission

        if self._reproduction is not None:
            self._reproduction.halt()
        return DelayedSubmission(GridRunJob(self.grid, self.out, self.name, self.data_dir, self.device,
                                            self.train_only))

    def __getstate__(self):  # what submitit pickles: the arguments, never a live driver
        return {k: v for k, v in self.__dict__.items() if k != "_reproduction"}

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._reproduction = None


def slurm_options(grid_options: dict, flags: list[str]) -> dict:
    """SLURM_DEFAULTS, then the grid's [slurm] table, then `--slurm KEY=VALUE` flags; `time` in minutes
    (Slurm's [D-]HH:MM[:SS] read too: submitit computes with minutes), booleans as booleans."""
    options = {**SLURM_DEFAULTS, **grid_options}
    for flag in flags:
        key, sep, value = flag.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"--slurm {flag!r}: expected KEY=VALUE (e.g. partition=gpu, time=120, gpus_per_node=1)")
        if key in STRUCTURED_KEYS:
            raise UserError(f"--slurm {key}: a list or table: give it in the grid's [slurm] table")
        options[key] = _scalar(key, value.strip())
    for key in ("setup", "srun_args"):
        if key in options and not (isinstance(options[key], list) and all(isinstance(v, str) for v in options[key])):
            raise UserError(f"Slurm option {key} must be a list of strings in the grid's [slurm] table, e.g. "
                            f'{key} = ["..."], not {options[key]!r}')
    if "additional_parameters" in options and not isinstance(options["additional_parameters"], dict):
        raise UserError("Slurm option additional_parameters must be a table in the grid's [slurm] table")
    options["time"] = _minutes(options["time"])
    delay = options["signal_delay_s"]
    if isinstance(delay, bool) or not isinstance(delay, int) or delay < 0:
        raise UserError(f"Slurm option signal_delay_s must be whole seconds (0 or more), not {delay!r}")
    return options


BOOLEAN_KEYS = ("use_srun", "exclusive")  # submitit's switches: "false" must not read as the text "false"


def _scalar(key: str, value: str):
    """A --slurm value: true/false for submitit's switches, an integer, a number, or text."""
    if key in BOOLEAN_KEYS and value.lower() in ("true", "false"):
        return value.lower() == "true"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def _minutes(value) -> int:
    """A Slurm time limit in whole minutes: a number of minutes, or Slurm's MM:SS, HH:MM:SS, D-HH[:MM[:SS]]."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0:
        return math.ceil(value)
    match = _SLURM_TIME.fullmatch(str(value)) if isinstance(value, str) else None
    if match is None:
        raise UserError(f"Slurm time {value!r}: minutes (120), or Slurm's [D-]HH:MM:SS (2:00:00, 1-12:00:00)")
    days, first, second, third = match.groups()
    if days is not None:  # D-HH, D-HH:MM, D-HH:MM:SS
        seconds = ((int(days) * 24 + int(first)) * 60 + int(second or 0)) * 60 + int(third or 0)
    elif third is not None:  # HH:MM:SS
        seconds = (int(first) * 60 + int(second)) * 60 + int(third)
    else:  # MM or MM:SS
        seconds = int(first) * 60 + int(second or 0)
    if seconds <= 0:
        raise UserError(f"Slurm time {value!r} is no time at all")
    return math.ceil(seconds / 60)


def slurm_executor(folder: Path, options: dict):
    """A submitit executor for Slurm; a one-line UserError where there is no Slurm or an option is wrong.

    Its jobs run the driver's own textebm: `-P` keeps the submission folder off their path (the job is
    `python -m submitit...` in the driver's working folder, whose textebm, if any, it imported), and
    this textebm's source folder goes first on PYTHONPATH, as for the local driver's children."""
    if shutil.which("sbatch") is None:
        raise UserError("--executor slurm: no Slurm on this machine (sbatch is not on PATH); run on the cluster's "
                        "login node, or use --executor local")
    try:
        import submitit
    except ImportError:
        raise UserError("--executor slurm needs submitit: pip install 'textebm[slurm]'") from None
    source = str(Path(__file__).resolve().parents[2])
    options = dict(options)
    options["setup"] = [*options.get("setup", []),
                        f"export PYTHONPATH={shlex.quote(source)}${{PYTHONPATH:+:$PYTHONPATH}}"]
    try:
        executor = submitit.SlurmExecutor(folder=str(folder), max_num_timeout=MAX_REQUEUES,
                                          python=f"{shlex.quote(sys.executable)} -P")
    except RuntimeError as err:  # e.g. sbatch without srun
        raise UserError(f"--executor slurm: {str(err).splitlines()[0]}") from None
    try:
        executor.update_parameters(**options)
    except (ValueError, TypeError) as err:
        raise UserError(f"Slurm options: {str(err).splitlines()[0]}") from None
    return executor


def slurm_queue() -> set[str] | None:
    """The ids of this user's jobs that Slurm still holds (pending, running, requeued, completing), by
    squeue; None when squeue fails (the controller busy): the driver then submits nothing and asks again at
    its next poll."""
    try:
        listed = subprocess.run(["squeue", "--noheader", "--format=%i", f"--user={getpass.getuser()}"],
                                capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if listed.returncode != 0:
        return None
    return {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}


def submit_grid(grid: Grid, out: Path, executor, data_dir: str | None = None, device: str = "auto",
                train_only: bool = False, echo=print, steps: list[Step] | None = None, queued=None):
    """One job per run with something left to do (`steps`, the plan: `plan(grid, out)` when not given);
    a run whose last job Slurm still holds (`queued()`: the ids squeue lists; None: none checked) is waited
    for, not submitted again. Returns the (name, job) pairs to wait for and the names of runs that another
    process works on now (none of this driver's jobs)."""
    held = queued() if queued is not None else None
    recorded = _recorded_jobs(out)
    if queued is not None and held is None and recorded:
        raise UserError("squeue did not answer: which of this grid's jobs still wait cannot be told, so none is "
                        "submitted (a pending one would run twice); run the command again")
    jobs, busy = [], []
    for spec, statuses in _runs_of(steps if steps is not None else plan(grid, out), train_only):
        job_id = recorded.get(spec.name)
        if held is not None and job_id in held:
            echo(f"{spec.name}: job {job_id} is still queued or running: waited for, not submitted again")
            jobs.append((spec.name, executor.job_class(folder=executor.folder, job_id=job_id)))
        elif "busy" in statuses:
            echo(f"{spec.name}: another process works on this run now: skipped")
            busy.append(spec.name)
        elif statuses & {"start", "resume", "to do"}:
            job = _submit(executor, GridRunJob(str(Path(grid.path).resolve()), str(Path(out).resolve()), spec.name,
                                               data_dir, device, train_only), spec.name, jobs)
            recorded[spec.name] = job.job_id
            atomic_write_text(Path(out) / "slurm" / JOBS, json.dumps(recorded, indent=1) + "\n")
            echo(f"{spec.name}: submitted as job {job.job_id}")
            jobs.append((spec.name, job))
    return jobs, busy


def _runs_of(steps: list[Step], train_only: bool) -> list[tuple]:
    """Each run of the plan with the statuses of its steps (evaluations left out with `train_only`)."""
    runs: dict = {}
    for step in steps:
        if not (train_only and step.what != "train"):
            runs.setdefault(step.run.name, (step.run, set()))[1].add(step.status)
    return list(runs.values())


def _recorded_jobs(out: Path) -> dict[str, str]:
    """Each run's last submitted job id, from OUT/slurm/jobs.json (none where it is missing or unreadable)."""
    record = read_json(Path(out) / "slurm" / JOBS) or {}
    return {name: str(job_id) for name, job_id in record.items() if isinstance(job_id, (str, int))}


def _submit(executor, job: GridRunJob, name: str, submitted: list):
    """`executor.submit(job)`; a failed sbatch (it refused an option, or answered without a job id) is one
    line naming the jobs already submitted, which run on (the same command waits for them)."""
    from submitit.core.utils import FailedJobError, FailedSubmissionError

    try:
        return executor.submit(job)
    except (FailedJobError, FailedSubmissionError) as err:
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        reason = next((line for line in lines if "error" in line.lower()), lines[-1] if lines else type(err).__name__)
        already = ", ".join(f"{n} as job {j.job_id}" for n, j in submitted)
        raise UserError(f"sbatch did not take the job of {name}: {reason[:300]}"
                        + (f" (submitted already: {already}; the same command waits for them)" if already else "")
                        ) from None


def wait_for(jobs: list, echo=print, poll: float = POLL_SECONDS, queued=None) -> str:
    """Until every job has ended, each reported as it ends: done, or failed when one did not end done.

    With `queued` (squeue's ids: `slurm_queue`) a job has ended once Slurm no longer holds it: a job
    requeued after a preemption goes on, and one that died without a word (no result, accounting off)
    ends too. Without it (submitit's local executor), once submitit says it is done."""
    failed, waiting = False, list(jobs)
    while waiting:
        held = queued() if queued is not None else None
        still = []
        for name, job in waiting:
            if queued is not None and held is None:  # squeue did not answer: ask again at the next poll
                still.append((name, job))
                continue
            if (str(job.job_id) in held) if held is not None else not job.done():
                still.append((name, job))
                continue
            status = _outcome(job)
            echo(f"{name}: job {job.job_id} ended {status} (its output: {job.paths.stdout})")
            failed |= status != "done"
        waiting = still
        if waiting:
            time.sleep(poll)
    return "failed" if failed else "done"


def _outcome(job) -> str:
    """What an ended job returned (done, failed, interrupted), or why it failed: its own error's last line,
    or, where it left no result at all, Slurm's state for it."""
    deadline = time.monotonic() + RESULT_WAIT_S  # a shared file system may show the job's result a little late
    while not job.paths.result_pickle.exists() and time.monotonic() < deadline:
        time.sleep(1)
    if not job.paths.result_pickle.exists():
        state = job.state  # sacct's word (UNKNOWN where accounting is off)
        return f"failed: no result (Slurm state {state}; see {job.paths.stderr})"
    try:
        return job.result()
    except Exception as err:  # noqa: BLE001 - submitit re-raises whatever ended the job, of any type
        return f"failed: {_reason(str(err)) or type(err).__name__}"


def _reason(text: str) -> str:
    """The telling line of submitit's report of a failed job: the last line of the job's own traceback (not
    the paths submitit lists after it)."""
    own = text.split("You can check full logs", 1)[0]
    lines = [line.strip() for line in own.splitlines() if line.strip() and not set(line.strip()) <= {"-"}]
    return lines[-1][:300] if lines else ""
