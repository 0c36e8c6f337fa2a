"""`textebm reproduce`: train and evaluate every run of a grid (textebm.experiments.grid), `jobs` at a time with
one torch thread each; resume what was interrupted and skip what is done.

    OUT/runs/NAME/                          the run folder (`textebm train --out`), with its
                                            evaluation-<split>.json and figures (textebm.evaluation.reports)
    OUT/runs/NAME/reproduce-budget.json     training time spent so far, segment by segment
    OUT/runs/NAME/reproduce-train.json      training's completion marker (written atomically at its end)
    OUT/runs/NAME/reproduce-evaluate-SPLIT.json   an evaluation's completion marker
    OUT/logs/NAME.train.log, NAME.evaluate-SPLIT.log   what each process printed
    OUT/locks/NAME.lock                     held while a process works on the run
    OUT/results.json, results.md, figures   (textebm.experiments.results)

Training runs as a `textebm train` subprocess, evaluation as a process calling textebm.evaluation.reports;
each in its own session, so that a stop request reaches it exactly once (as SIGTERM: training
saves a checkpoint and exits). A training process keeps its run's lock even when the driver is
killed, so a second driver never trains the same folder at once.

The CPU-time budget (`max_cpu_minutes`) is counted by training itself, over every resume (the
checkpoint carries it): a run resumed with the same budget goes on to the same total number of
steps whatever the load. The wall-clock budget (`max_minutes`) is the run's total too: a resumed run
gets the budget less the time already spent, where an interrupted segment counts from its start to
the last checkpoint it wrote (the time after that checkpoint was lost with the process, and is spent
again). `--train-only` trains and leaves the evaluations for a later call.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from textebm.devices import cpu_description
from textebm.errors import UserError
from textebm.experiments.grid import Evaluation, Grid, RunSpec
from textebm.io import atomic_write_text, read_json
from textebm.training.training_log import validation_records

TRAIN_MARKER = "reproduce-train.json"
BUDGET = "reproduce-budget.json"
# textebm.model.checkpoints' TRAINING_STATE (written last at every save) and LEGACY (older runs' one file);
# not imported: planning needs no torch
CHECKPOINT_FILES = ("training_state.pt", "checkpoint.pt")
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # besides --threads 1: native libraries' pools
MIN_MINUTES = 1e-3  # what a resumed run whose budget is spent gets: it stops at once, validates and saves


def checkpoint_file(folder: Path) -> Path | None:
    """The file of the run's last checkpoint (its mtime is when it was saved), None before the first."""
    return next((folder / name for name in CHECKPOINT_FILES if (folder / name).is_file()), None)


def evaluation_marker(split: str) -> str:
    return f"reproduce-evaluate-{split}.json"


def write_json(path: Path, data: dict) -> None:
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")


def budget_of(spec: RunSpec) -> dict:
    budget = {"max_minutes": spec.max_minutes, "max_steps": spec.max_steps}
    if spec.max_cpu_minutes is not None or spec.keep_at:  # (markers written before CPU budgets stay valid)
        budget.update(max_cpu_minutes=spec.max_cpu_minutes, keep_at=list(spec.keep_at))
    return budget


# ---- the budget ledger ------------------------------------------------------------------------

def spent_seconds(folder: Path) -> float:
    """Training time already spent on the run, its last (open) segment closed at its last checkpoint."""
    return _closed_ledger(folder)["spent_seconds"]


def _closed_ledger(folder: Path) -> dict:
    ledger = read_json(folder / BUDGET) or {"spent_seconds": 0.0, "segments": []}
    segments = ledger["segments"]
    if segments and segments[-1].get("counted_seconds") is None:
        started = segments[-1]["started"]
        checkpoint = checkpoint_file(folder)
        saved = checkpoint.stat().st_mtime if checkpoint is not None else 0.0
        counted = max(0.0, saved - started)  # 0 when the segment never saved: its time was lost
        segments[-1] = {**segments[-1], "counted_seconds": counted}
        ledger["spent_seconds"] += counted
    return ledger


def _open_segment(folder: Path, given_minutes: float | None, resumed_from: int | None) -> None:
    ledger = _closed_ledger(folder)
    ledger["segments"].append({"started": time.time(), "given_minutes": given_minutes, "resumed_from": resumed_from,
                               "counted_seconds": None, "commit": code_commit()})
    write_json(folder / BUDGET, ledger)


def _note_pid(folder: Path, pid: int) -> None:
    """Which process trains the open segment (for a user, and a test, that looks)."""
    ledger = read_json(folder / BUDGET)
    ledger["segments"][-1]["pid"] = pid
    write_json(folder / BUDGET, ledger)


def _close_segment(folder: Path) -> float:
    ledger = _closed_ledger(folder)
    write_json(folder / BUDGET, ledger)
    return ledger["spent_seconds"]


# ---- what is done -----------------------------------------------------------------------------

@dataclass
class TrainState:
    action: str  # done | resume | start
    step: int | None = None  # done: the final step; resume: the checkpoint's
    spent_minutes: float = 0.0
    marker: dict | None = None
    cpu_minutes: float = 0.0  # resume: training CPU time so far (the checkpoint's clock)


def checkpoint_clock(folder: Path) -> tuple[int, dict]:
    """The checkpoint's step and its clocks (textebm.training.training_log.Clock.state; empty for older runs)."""
    from textebm.model.checkpoints import load_checkpoint

    checkpoint = load_checkpoint(folder)
    return int(checkpoint["step"]), dict(checkpoint.get("extra", {}).get("clock", {}))


def code_commit() -> str | None:
    """The git commit of the code that runs (with '+' when the work tree differs), or None outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True, timeout=30).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+" if dirty else "")


def check_config(spec: RunSpec, folder: Path) -> None:
    """A run folder that exists must hold this very run (else the grid changed under it)."""
    from textebm.config import resolve_config
    from textebm.model.runs import is_run, load_config

    if not is_run(folder):
        return
    saved = load_config(folder).to_dict()
    wanted = resolve_config(spec.preset, spec.corpus, spec.config_overrides()).to_dict()
    differ = sorted(k for k in wanted if saved.get(k) != wanted[k])
    if differ:
        raise UserError(f"{folder} holds a run with another config than the grid's {spec.name} (differs in "
                        f"{', '.join(differ)}): remove that folder, or reproduce into another --out")


def train_state(spec: RunSpec, folder: Path) -> TrainState:
    """Done (its marker says so, for this budget), resume (from its checkpoint) or start; a folder
    holding another config is an error. A done run whose budget grew in the grid resumes."""
    check_config(spec, folder)
    marker = read_json(folder / TRAIN_MARKER)
    if marker is not None and marker.get("budget") == budget_of(spec):
        return TrainState("done", marker["step"], marker["train_minutes"], marker)
    if checkpoint_file(folder) is not None:
        step, clock = checkpoint_clock(folder)
        state = TrainState("resume", step, spent_seconds(folder) / 60, cpu_minutes=clock.get("cpu_seconds", 0.0) / 60)
        _check_not_past(spec, folder, state, (marker or {}).get("budget") or {})
        return state
    return TrainState("start")


def _check_not_past(spec: RunSpec, folder: Path, state: TrainState, finished_under: dict) -> None:
    """A UserError where the run already trained past the grid's budget (the grid gave it less since):
    resuming would stop at once and file the longer training under the shorter budget. A step count
    is exact; a clock only tells where a finished run's budget (`finished_under`, its marker's) shrank
    in that clock (a run may end a little past its own budget, an interrupted one just short of it)."""
    past = []
    if spec.max_steps is not None and state.step > spec.max_steps:
        past.append(f"{state.step} steps > max_steps {spec.max_steps}")
    for key, value, what in (("max_cpu_minutes", state.cpu_minutes, "CPU minutes"),
                             ("max_minutes", state.spent_minutes, "minutes")):
        limit = getattr(spec, key)
        if finished_under and limit is not None and limit < value and limit < (finished_under.get(key) or math.inf):
            past.append(f"{value:.4g} {what} > {key} {limit:g}")
    if past:
        raise UserError(f"{folder} trained past the grid's budget for {spec.name} ({'; '.join(past)}): remove "
                        "that folder to train it again with the smaller budget, or reproduce into another --out")


def evaluation_done(folder: Path, evaluation: Evaluation, step: int | None) -> bool:
    """Its marker names these options, this checkpoint's step and today's evaluator: an evaluation made
    by an older estimator (textebm.evaluation.held_out.EVALUATOR_VERSION) is done again."""
    from textebm.evaluation.held_out import EVALUATOR_VERSION

    marker = read_json(folder / evaluation_marker(evaluation.split))
    return (marker is not None and marker.get("options") == evaluation.options and marker.get("step") == step
            and marker.get("evaluator", 1) == EVALUATOR_VERSION
            and (folder / f"evaluation-{evaluation.split}.json").is_file())


def kept_marks(spec: RunSpec, folder: Path) -> list[tuple[float, Path, dict]]:
    """The run's kept marks (textebm train --keep-at): (CPU minutes, folder, mark.json), in order."""
    from textebm.training.train import mark_folder

    found = []
    for minutes in spec.keep_at:
        mark = mark_folder(folder, minutes)
        record = read_json(mark / "mark.json")
        if record is not None:
            found.append((minutes, mark, record))
    return found


def marks_to_evaluate(spec: RunSpec, folder: Path) -> list[tuple[Path, int]]:
    """The kept marks whose evaluation (the grid's `evaluate_marks`) is not done: (folder, step)."""
    if spec.mark_evaluation is None:
        return []
    return [(mark, record["step"]) for _, mark, record in kept_marks(spec, folder)
            if not evaluation_done(mark, spec.mark_evaluation, record["step"])]


# ---- one process per run at a time --------------------------------------------------------------

class RunLock:
    """An exclusive flock on OUT/locks/NAME.lock; a training subprocess inherits it (pass_fds)."""

    def __init__(self, out: Path, name: str):
        self.path = Path(out) / "locks" / f"{name}.lock"
        self.fd: int | None = None

    def acquire(self) -> bool:
        import fcntl

        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            self.fd = None
            return False
        return True

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def held_elsewhere(self) -> bool:
        """Whether another process holds it now (creates nothing)."""
        if not self.path.is_file():
            return False
        if not self.acquire():
            return True
        self.release()
        return False


# ---- the plan -----------------------------------------------------------------------------------

@dataclass
class Step:
    run: RunSpec
    what: str  # train | evaluate SPLIT
    status: str  # done | start | resume | to do | busy
    detail: str
    minutes_left: float | None = None  # of a wall-clock budget, for a training to start or resume
    cpu_minutes_left: float | None = None  # of a CPU-time budget, likewise


def _describe(spec: RunSpec) -> str:
    parts = [spec.corpus_name, f"trained on {spec.train_split}", f"preset {spec.preset}"]
    parts += [f"--set {s}" for s in spec.overrides]
    parts.append(f"seed {spec.seed}")
    if spec.max_cpu_minutes is not None:
        parts.append(f"{spec.max_cpu_minutes:g} CPU min")
    if spec.max_minutes is not None:
        parts.append(f"{spec.max_minutes:g} min")
    if spec.max_steps is not None:
        parts.append(f"{spec.max_steps} steps")
    return ", ".join(parts)


def _options_text(evaluation: Evaluation) -> str:
    return " ".join(f"{k}={v}" for k, v in evaluation.options.items()) or "the defaults of textebm evaluate"


def plan(grid: Grid, out: Path) -> list[Step]:
    """What `reproduce` would do now, run by run; reads state only (never starts or writes anything)."""
    steps = []
    for spec in grid.runs:
        folder = run_folder(out, spec)
        if RunLock(out, spec.name).held_elsewhere():
            steps.append(Step(spec, "train", "busy", "another process works on this run now"))
            continue
        state = train_state(spec, folder)
        if state.action == "done":
            steps.append(Step(spec, "train", "done", f"{state.step} steps, {state.spent_minutes:.1f} min"))
        elif state.action == "resume":
            left = "" if spec.max_minutes is None else f", {max(0.0, spec.max_minutes - state.spent_minutes):.1f} " \
                                                      f"of {spec.max_minutes:g} min left"
            cpu_left = None if spec.max_cpu_minutes is None else max(0.0, spec.max_cpu_minutes - state.cpu_minutes)
            if cpu_left is not None:
                left += f", {cpu_left:.1f} of {spec.max_cpu_minutes:g} CPU min left"
            steps.append(Step(spec, "train", "resume", f"from step {state.step}{left} ({_describe(spec)})",
                              None if spec.max_minutes is None else max(0.0, spec.max_minutes - state.spent_minutes),
                              cpu_left))
        else:
            steps.append(Step(spec, "train", "start", _describe(spec), spec.max_minutes, spec.max_cpu_minutes))
        for evaluation in spec.evaluations:
            done = state.action == "done" and evaluation_done(folder, evaluation, state.step)
            steps.append(Step(spec, f"evaluate {evaluation.split}", "done" if done else "to do",
                              _options_text(evaluation)))
        if spec.mark_evaluation is not None:
            kept = len(kept_marks(spec, folder))
            left = len(marks_to_evaluate(spec, folder))
            done = state.action == "done" and kept == len(spec.keep_at) and not left
            steps.append(Step(spec, "evaluate marks", "done" if done else "to do",
                              f"{kept - left} of {len(spec.keep_at)} marks evaluated "
                              f"({_options_text(spec.mark_evaluation)})"))
    return steps


def format_plan(grid: Grid, out: Path, steps: list[Step], jobs: int | None) -> str:
    """The plan as text; `jobs` processes at a time, or None: each run a Slurm job of its own."""
    width = max(len(s.run.name) for s in steps)
    lines = [f"grid {grid.title} ({grid.path}): {len(grid.runs)} runs into {out}"]
    previous = None
    for s in steps:
        name = s.run.name if s.run.name != previous else ""
        previous = s.run.name
        lines.append(f"  {name:<{width}}  {s.what:<14} {s.status:<6}  {s.detail}")
    trains = [s for s in steps if s.what == "train"]
    evals = [s for s in steps if s.what != "train"]
    to_train = sum(s.status in ("start", "resume") for s in trains)
    to_eval = sum(s.status == "to do" for s in evals)
    lines.append(f"done: {sum(s.status == 'done' for s in trains)} of {len(trains)} trainings, "
                 f"{sum(s.status == 'done' for s in evals)} of {len(evals)} evaluations")
    if to_train or to_eval:
        at_once = "each run a Slurm job of its own" if jobs is None else f"{jobs} at a time"
        lines.append(f"to do: {to_train} trainings ({sum(s.status == 'resume' for s in trains)} resumed) and "
                     f"{to_eval} evaluations, {at_once} with one thread each")
        minutes = sum(s.minutes_left for s in trains if s.minutes_left)
        if minutes:
            at_jobs = "" if jobs is None else f" (about {minutes / jobs:.0f} min at --jobs {jobs})"
            lines.append(f"training budget left: {minutes:.0f} core-minutes{at_jobs}, besides steps-only budgets "
                         "and the evaluations")
        cpu = sum(s.cpu_minutes_left for s in trains if s.cpu_minutes_left and not s.minutes_left)
        if cpu:
            at_jobs = "" if jobs is None else f" (at least {cpu / jobs:.0f} min at --jobs {jobs})"
            lines.append(f"training CPU time left: {cpu:.0f} core-minutes{at_jobs}, besides validations, steps-only "
                         "budgets and the evaluations")
    else:
        busy = sum(s.status == "busy" for s in trains)
        lines.append("everything is done: nothing to start" if not busy else f"{busy} runs busy elsewhere")
    return "\n".join(lines)


def run_folder(out: Path, spec: RunSpec) -> Path:
    return Path(out) / "runs" / spec.name


# ---- running it ---------------------------------------------------------------------------------

def _stopped_by(folder: Path) -> str | None:
    """Why training stopped, from the last line of RUN/train.log that says so."""
    log = folder / "train.log"
    if not log.is_file():
        return None
    found = re.findall(r"stopped at step \d+ \((\w+)\)", log.read_text(encoding="utf-8", errors="replace"))
    return found[-1] if found else None


def _end_with_parent() -> None:
    """End this process when the driver that started it dies. An evaluation, unlike a training, does not
    hold its run's lock (a spawned process inherits no descriptor): left running, it would evaluate the
    run beside the one a new driver starts. What it has saved (per chunk) the next evaluation resumes."""
    parent = os.getppid()

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="end-with-parent").start()


def _evaluation_job(options: dict, marker: dict, log: str) -> None:
    """An evaluation in its own process (spawned): its output to `log`, its marker at the end."""
    os.setsid()  # stop requests come from the driver only, once
    _end_with_parent()
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = os.fdopen(1, "w", buffering=1, closefd=False)
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    os.environ.update(ONE_THREAD)  # before torch is imported
    from textebm.evaluation.held_out import EvaluationOptions
    from textebm.evaluation.reports import evaluate_run

    started = time.time()
    try:
        result = evaluate_run(EvaluationOptions(**options))
    except UserError as err:
        print(f"textebm evaluate: error: {err}", file=sys.stderr)
        sys.exit(2)
    write_json(Path(options["checkpoint"]) / evaluation_marker(options["split"]),
               {**marker, "evaluated_step": result["step"], "seconds": round(time.time() - started, 1),
                "finished": time.strftime("%Y-%m-%d %H:%M:%S")})


class Reproduction:
    """Runs a grid's plan: one worker thread per job, each driving one run's processes in turn."""

    def __init__(self, grid: Grid, out: Path, jobs: int = 1, data_dir: str | None = None, device: str = "auto",
                 echo=print, train_only: bool = False):
        if jobs < 1:
            raise UserError(f"--jobs must be at least 1, not {jobs}")
        self.grid, self.out, self.jobs, self.data_dir, self.device = grid, Path(out), jobs, data_dir, device
        self.train_only = train_only
        self._echo, self._echo_lock = echo, threading.Lock()
        self.stop = threading.Event()
        self.children: dict[int, str] = {}  # pid -> run name
        self.failures: list[str] = []
        self.busy: list[str] = []
        self._futures: list = []

    def echo(self, text: str) -> None:
        with self._echo_lock:
            try:
                self._echo(f"{time.strftime('%H:%M:%S')} {text}")
            except OSError:  # a terminal hung up: the runs' own logs and markers still say everything
                pass

    def run(self) -> str:
        """Every run to the end; returns done | failed | interrupted."""
        told = []

        def ignore(signum, frame):  # stopping already: a second request (scancel sends two TERMs, an impatient
            if not told:            # Ctrl-C) must not abandon the wait for the processes to save; said once,
                told.append(True)   # with a raw write (a print here could re-enter one under way)
                with contextlib.suppress(OSError):
                    os.write(2, b"already stopping: waiting for each process to save (a few seconds)\n")

        def stop_request(signum, frame):
            for sig in previous:
                signal.signal(sig, ignore)
            raise KeyboardInterrupt

        # SIGHUP too: a closed terminal or a dropped ssh session stops the runs in order, as Ctrl-C does
        # (unless it is ignored: under nohup the runs go on)
        stops = [signal.SIGTERM] + [sig for sig in (signal.SIGINT, signal.SIGHUP)
                                    if signal.getsignal(sig) not in (signal.SIG_IGN, None)]
        previous = {sig: signal.getsignal(sig) or signal.SIG_DFL for sig in stops}
        for sig in stops:
            signal.signal(sig, stop_request)
        pool = ThreadPoolExecutor(self.jobs)
        try:
            self._futures = futures = [pool.submit(self._run_one, spec) for spec in self.grid.runs]
            for future in futures:
                while not future.done():  # a timed wait: the main thread stays responsive to signals
                    time.sleep(0.2)
                future.result()
        except BaseException as err:  # a stop request (Ctrl-C, SIGTERM), or a bug in a worker
            self.stop.set()
            for sig in previous:
                signal.signal(sig, ignore)
            if isinstance(err, KeyboardInterrupt):
                self.echo("stopping: each process saves what it has; the same command resumes")
            for pid in list(self.children):
                _signal(pid, signal.SIGTERM)
            pool.shutdown(wait=True, cancel_futures=True)
            if not isinstance(err, KeyboardInterrupt):
                raise
            return "interrupted"
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        pool.shutdown(wait=True)
        return "failed" if self.failures or self.busy else "done"

    def halt(self) -> None:
        """Stop every process (each saves) and wait until the workers have ended: called from a signal
        handler of the main thread while `run` waits there (a Slurm job about to be requeued)."""
        from concurrent.futures import wait

        self.stop.set()
        for pid in list(self.children):
            _signal(pid, signal.SIGTERM)
        wait(self._futures)

    def _run_one(self, spec: RunSpec) -> None:
        if self.stop.is_set():
            return
        lock = RunLock(self.out, spec.name)
        if not lock.acquire():
            self.busy.append(spec.name)
            self.echo(f"{spec.name}: another process works on this run now: skipped")
            return
        try:
            folder = run_folder(self.out, spec)
            state = train_state(spec, folder)
            if state.action != "done":
                state = self._train(spec, folder, state, lock)
                if state is None:
                    return
            for evaluation in () if self.train_only else spec.evaluations:
                if self.stop.is_set():
                    return
                if not evaluation_done(folder, evaluation, state.step):
                    self._evaluate(spec, folder, evaluation, state.step)
            for mark, step in [] if self.train_only else marks_to_evaluate(spec, folder):
                if self.stop.is_set():
                    return
                self._evaluate(spec, mark, spec.mark_evaluation, step, what=f"evaluate-{mark.name}")
        except UserError as err:
            self.failures.append(spec.name)
            self.echo(f"{spec.name}: {err}")
        finally:
            lock.release()

    def _log(self, spec: RunSpec, what: str) -> Path:
        path = self.out / "logs" / f"{spec.name}.{what}.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _train(self, spec: RunSpec, folder: Path, state: TrainState, lock: RunLock) -> TrainState | None:
        resume = state.action == "resume"
        if not resume and folder.exists():  # a start that never reached its first checkpoint: begin again
            if folder.resolve().parent != (self.out / "runs").resolve():  # (grid names cannot do this)
                raise UserError(f"{folder} is not a run folder of {self.out / 'runs'}: not removed")
            shutil.rmtree(folder)
        folder.mkdir(parents=True, exist_ok=True)
        given = None
        if spec.max_minutes is not None:
            given = max(MIN_MINUTES, spec.max_minutes - spent_seconds(folder) / 60)
        command = [sys.executable, "-P", "-m", "textebm", "train", "--corpus", spec.corpus, "--out", str(folder),
                   "--device", self.device, "--threads", "1", "--no-progress"]
        if self.data_dir:
            command += ["--data-dir", self.data_dir]
        if resume:
            command.append("--resume")
        else:
            command += ["--preset", spec.preset, "--train-split", spec.train_split, "--seed", str(spec.seed)]
            for item in spec.overrides:
                command += ["--set", item]
        if spec.max_steps is not None:
            command += ["--max-steps", str(spec.max_steps)]
        if spec.max_cpu_minutes is not None:  # counted by training over every resume: passed whole
            command += ["--max-cpu-minutes", f"{spec.max_cpu_minutes:g}"]
        if spec.keep_at:
            command += ["--keep-at", ",".join(f"{m:g}" for m in spec.keep_at)]
        if given is not None:
            command += ["--max-minutes", f"{given:.4f}"]
        self.echo(f"{spec.name}: train, " + (f"resumed from step {state.step}" if resume else "started") +
                  (f", {given:.1f} min" if given is not None else ""))
        _open_segment(folder, given, state.step if resume else None)
        status = self._child(spec, command, self._log(spec, "train"), lock.fd, lambda pid: _note_pid(folder, pid))
        if status != 0:
            self._ended(spec, "train", status)
            return None
        spent = _close_segment(folder)
        step, clock = checkpoint_clock(folder)
        segments = read_json(folder / BUDGET)["segments"]
        marker = {"budget": budget_of(spec), "step": step, "stopped_by": _stopped_by(folder),
                  "train_minutes": round(spent / 60, 3),
                  "train_cpu_minutes": round(clock.get("cpu_seconds", 0.0) / 60, 3),
                  "commit": segments[-1].get("commit") or code_commit(),  # the code that trained last
                  "segment_commits": [segment.get("commit") for segment in segments],  # None: kept since 2026-12-03
                  "segments": len(segments), "machine": cpu_description(),
                  "finished": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_json(folder / TRAIN_MARKER, marker)
        self.echo(f"{spec.name}: trained, {step} steps in {spent / 60:.1f} min ({marker['stopped_by']})")
        return TrainState("done", step, spent / 60, marker)

    def _evaluate(self, spec: RunSpec, folder: Path, evaluation: Evaluation, step: int,
                  what: str | None = None) -> None:
        """One evaluation of the run (or of one of its marks: `folder`) in a process of its own."""
        import multiprocessing

        what = what or f"evaluate-{evaluation.split}"
        options = {"checkpoint": str(folder), "data_dir": self.data_dir, "device": self.device, "threads": 1,
                   "split": evaluation.split, **evaluation.options}
        self.echo(f"{spec.name}: {what.replace('-', ' ', 1)} ({_options_text(evaluation)})")
        started = time.time()
        from textebm.evaluation.held_out import EVALUATOR_VERSION

        marker = {"options": evaluation.options, "step": step, "evaluator": EVALUATOR_VERSION, "commit": code_commit()}
        process = multiprocessing.get_context("spawn").Process(
            target=_evaluation_job, args=(options, marker, str(self._log(spec, what))))
        process.start()
        self._started(process.pid, spec)
        try:
            process.join()
        finally:
            self.children.pop(process.pid, None)
        if process.exitcode != 0:
            self._ended(spec, what, process.exitcode)
        else:
            self.echo(f"{spec.name}: {what.replace('evaluate-', 'evaluated ', 1)} in "
                      f"{(time.time() - started) / 60:.1f} min")

    def _child(self, spec: RunSpec, command: list[str], log: Path, lock_fd: int, on_start) -> int:
        # The textebm this driver runs (whose commit the markers record), not one in the cwd: `-P` keeps the
        # cwd off the child's path, and the folder this textebm was imported from goes first on it.
        source = str(Path(__file__).resolve().parents[2])
        path = os.pathsep.join(p for p in (source, os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, **ONE_THREAD, "PYTHONUNBUFFERED": "1", "PYTHONPATH": path}
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(command)}\n")
            handle.flush()
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                                       env=env, start_new_session=True,
                                       pass_fds=(lock_fd,))
            self._started(process.pid, spec)
            on_start(process.pid)
            try:
                return process.wait()
            finally:
                self.children.pop(process.pid, None)

    def _started(self, pid: int, spec: RunSpec) -> None:
        self.children[pid] = spec.name
        if self.stop.is_set():  # started as the stop came: it gets the request too
            _signal(pid, signal.SIGTERM)

    def _ended(self, spec: RunSpec, what: str, status: int) -> None:
        log = self._log(spec, what)
        if self.stop.is_set():
            self.echo(f"{spec.name}: {what} stopped (saved; the same command resumes it)")
            return
        how = f"was killed by signal {-status}" if status < 0 else f"failed with status {status}"
        tail = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
        self.failures.append(spec.name)
        self.echo(f"{spec.name}: {what} {how}: {tail[-1] if tail else ''} (log: {log}); "
                  "the same command resumes it")


def _signal(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# ---- the whole command ----------------------------------------------------------------------------

def last_validation(folder: Path) -> dict | None:
    """The run's last validation record in RUN/metrics.jsonl (its final one, for a finished run)."""
    records = validation_records(folder)
    return records[-1] if records else None


def gather(grid: Grid, out: Path) -> list[tuple[RunSpec, dict | None, dict]]:
    """Per run: its training marker (None until trained; with the run's last validation record added as
    `validation`) and its completed evaluation reports by split."""
    from textebm.evaluation.reports import load_evaluation

    gathered = []
    for spec in grid.runs:
        folder = run_folder(out, spec)
        marker = read_json(folder / TRAIN_MARKER)
        if marker is not None and marker.get("budget") != budget_of(spec):
            marker = None
        if marker is not None:
            marker = {**marker, "validation": last_validation(folder)}
        reports = {e.split: load_evaluation(folder, e.split)
                   if marker is not None and evaluation_done(folder, e, marker["step"]) else None
                   for e in spec.evaluations}
        gathered.append((spec, marker, reports))
    return gathered


def gather_marks(grid: Grid, out: Path) -> list[dict]:
    """Every kept mark evaluated as its run's `evaluate_marks` says: run, group label, corpus, seed, CPU
    minutes, step and the report (the points of the time-to-quality curves)."""
    from textebm.evaluation.reports import load_evaluation

    points = []
    for spec in grid.runs:
        if spec.mark_evaluation is None:
            continue
        for minutes, mark, record in kept_marks(spec, run_folder(out, spec)):
            if evaluation_done(mark, spec.mark_evaluation, record["step"]):
                points.append({"run": spec.name, "label": spec.label, "corpus": spec.corpus_name, "seed": spec.seed,
                               "cpu_minutes": minutes, "step": record["step"],
                               "report": load_evaluation(mark, spec.mark_evaluation.split)})
    return points


def gather_energy_gaps(grid: Grid, out: Path) -> list[dict]:
    """Every trained EBM-prior run's label (with its seed where the model has several), corpus, name and
    training records (metrics.jsonl): the energy-gap curves of the results page."""
    from textebm.evaluation.plots import read_metrics
    from textebm.model.runs import load_config

    runs = []
    for spec, marker, _ in gather(grid, out):
        folder = run_folder(out, spec)
        if marker is None:
            continue
        config = load_config(folder)
        if config.model != "latent_ebm" or config.prior != "ebm":
            continue
        runs.append({"label": _seeded_label(grid, spec), "corpus": spec.corpus_name, "run": spec.name,
                     "records": [r for r in read_metrics(folder) if r.get("kind") == "train"]})
    return runs


def _seeded_label(grid: Grid, spec: RunSpec) -> str:
    seeds = sum(other.group() == spec.group() for other in grid.runs)
    return spec.label if seeds == 1 else f"{spec.label}, seed {spec.seed}"


def write_grid_results(grid: Grid, out: Path, command: str) -> list[Path]:
    from textebm.experiments.results import results_data, write_results

    gathered = gather(grid, out)
    curves: dict[tuple[str, str], list] = {}
    for spec, _, reports in gathered:
        for split, report in reports.items():
            if report is not None:
                curves.setdefault((spec.corpus_name, split), []).append((_seeded_label(grid, spec), report))
    return write_results(out, results_data(grid, gathered, command), curves, gather_marks(grid, out),
                         gather_energy_gaps(grid, out))


def check_corpora(grid: Grid, data_dir: str | None, train_only: bool = False) -> None:
    """The splits each run of a known corpus trains on and is evaluated on, checked against what its folder
    holds before anything trains: a split the corpus lacks fails now, not after hours of training. (A file
    corpus's splits are checked as the grid is read; a corpus not there yet is fetched, or explained,
    when its first run starts.)"""
    from textebm.data.corpora import KNOWN, Corpus, check_evaluation_split, check_named_data_dir, splits_in
    from textebm.data.corpora import data_dir as corpora_folder

    for spec in grid.runs:
        corpus_folder = corpora_folder(data_dir) / spec.corpus
        files = splits_in(corpus_folder) if spec.corpus in KNOWN else {}
        if not files:
            if spec.corpus in KNOWN:  # every run would start and fail (under Slurm, each after its wait)
                check_named_data_dir(data_dir, spec.corpus)
            continue
        corpus = Corpus(spec.corpus, files)
        evaluations = [] if train_only else [*spec.evaluations, *filter(None, [spec.mark_evaluation])]
        try:
            if not corpus.has(spec.train_split):
                raise UserError(f"{corpus_folder} has no {spec.train_split} split to train on (have: "
                                f"{', '.join(files)})")
            for evaluation in evaluations:
                check_evaluation_split(corpus, spec.train_split, evaluation.split)
        except UserError as err:
            raise UserError(f"{spec.name}: {err}") from None


def reproduce(grid: Grid, out: Path, jobs: int = 1, data_dir: str | None = None, device: str = "auto",
              command: str = "textebm reproduce", echo=print, train_only: bool = False) -> str:
    """Train and evaluate what is not done (`train_only`: train only), then write the results; returns
    done | failed | interrupted."""
    out = Path(out)
    check_corpora(grid, data_dir, train_only)
    steps = plan(grid, out)  # checks every run folder against the grid before anything starts
    echo(format_plan(grid, out, steps, jobs))
    status = Reproduction(grid, out, jobs, data_dir, device, echo, train_only).run()
    if status != "interrupted":
        for path in write_grid_results(grid, out, command):
            echo(f"wrote {path}")
    return status
