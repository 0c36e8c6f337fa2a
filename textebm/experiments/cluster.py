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

submitit pickles each job into OUT/slurm/ for the node to read: a file the driver wrote itself, in
the user's own output folder (the checkpoints, which may come from anywhere, are never pickles).
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from textebm.errors import UserError
from textebm.experiments.grid import Grid, load_grid
from textebm.experiments.reproduce import Reproduction, plan

# Slurm options a grid gets unless its [slurm] table or --slurm says otherwise: one task, one CPU,
# an hour, and the warning 2 minutes before the limit (time to save and requeue).
SLURM_DEFAULTS = {"nodes": 1, "ntasks_per_node": 1, "cpus_per_task": 1, "time": 60, "signal_delay_s": 120}
POLL_SECONDS = 5.0


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
    """SLURM_DEFAULTS, then the grid's [slurm] table, then `--slurm KEY=VALUE` flags."""
    options = {**SLURM_DEFAULTS, **grid_options}
    for flag in flags:
        key, sep, value = flag.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--slurm {flag!r}: expected KEY=VALUE (e.g. partition=gpu, time=120, gpus_per_node=1)")
        options[key.strip()] = _number_or_text(value.strip())
    return options


def _number_or_text(value: str):
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def slurm_executor(folder: Path, options: dict):
    """A submitit executor for Slurm; a one-line UserError where there is no Slurm or an option is wrong."""
    if shutil.which("sbatch") is None:
        raise UserError("--executor slurm: no Slurm on this machine (sbatch is not on PATH); run on the cluster's "
                        "login node, or use --executor local")
    try:
        import submitit
    except ImportError:
        raise UserError("--executor slurm needs submitit: pip install 'textebm[slurm]'") from None
    try:
        executor = submitit.SlurmExecutor(folder=str(folder))
    except RuntimeError as err:  # e.g. sbatch without srun
        raise UserError(f"--executor slurm: {str(err).splitlines()[0]}") from None
    try:
        executor.update_parameters(**options)
    except (ValueError, TypeError) as err:
        raise UserError(f"Slurm options: {str(err).splitlines()[0]}") from None
    return executor


def submit_grid(grid: Grid, out: Path, executor, data_dir: str | None = None, device: str = "auto",
                train_only: bool = False, echo=print) -> list:
    """One job per run with something left to do and not held by another process now (`plan` says
    which; it also checks every run folder against the grid before anything starts): (name, job) pairs."""
    todo = []
    for step in plan(grid, out):
        if step.status in ("start", "resume", "to do") and not (train_only and step.what != "train"):
            if step.run not in todo:
                todo.append(step.run)
    jobs = []
    for spec in todo:
        job = executor.submit(GridRunJob(str(Path(grid.path).resolve()), str(Path(out).resolve()), spec.name,
                                         data_dir, device, train_only))
        echo(f"{spec.name}: submitted as job {job.job_id}")
        jobs.append((spec.name, job))
    return jobs


def wait_for(jobs: list, echo=print, poll: float = POLL_SECONDS) -> str:
    """Until every job has ended: done, or failed when one did not end done."""
    failed = False
    for name, job in jobs:
        while not job.done():
            time.sleep(poll)
        try:
            status = job.result()
        except Exception as err:  # noqa: BLE001 - submitit re-raises whatever ended the job, of any type
            status = f"failed: {str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__}"
        echo(f"{name}: job {job.job_id} ended {status} (its output: {job.paths.stdout})")
        failed |= status != "done"
    return "failed" if failed else "done"
