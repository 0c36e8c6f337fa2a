"""Where training's numbers go: one logger, several sinks, and the clocks every record carries.

    RUN/metrics.jsonl        one JSON object per logged step or validation (always)
    RUN/train.log            the messages, timestamped; they are also printed
    RUN/tensorboard/         TensorBoard event files of the same scalars (when `tensorboard` is
                             installed: `pip install 'textebm[tensorboard]'`)

Every record carries three clocks, each counted over the whole run (a resumed run continues them
from its checkpoint): `time` (seconds since the epoch, when it was written), `elapsed` (wall-clock
seconds of the run so far, validation included) and `cpu_seconds` (the process CPU seconds of
training work: the steps, without validation and checkpoints; with one torch thread these are
compute seconds, the same under any machine load, so budgets and curves against CPU minutes compare
across runs). `process_cpu_seconds` counts every CPU second of the process (validation included).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from textebm.errors import UserError
from textebm.io import atomic_write_text

METRICS = "metrics.jsonl"
TENSORBOARD = "tensorboard"
VALIDATIONS = ("valid", "epoch", "final")  # the kinds of record a validation writes


class Clock:
    """The run's wall-clock and CPU seconds, continued across resumes; `training()` counts training work."""

    def __init__(self, elapsed: float = 0.0, cpu_seconds: float = 0.0, process_cpu_seconds: float = 0.0):
        self._wall0 = time.monotonic() - elapsed
        self._process0 = time.process_time() - process_cpu_seconds
        self.cpu_seconds = cpu_seconds

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._wall0

    @property
    def process_cpu_seconds(self) -> float:
        return time.process_time() - self._process0

    def training(self) -> _TrainingWork:
        return _TrainingWork(self)

    def state(self) -> dict:
        """What a checkpoint keeps, so that a resumed run's clocks go on from here."""
        return {"elapsed": self.elapsed, "cpu_seconds": self.cpu_seconds,
                "process_cpu_seconds": self.process_cpu_seconds}

    @classmethod
    def from_state(cls, state: dict | None) -> Clock:
        state = state or {}
        return cls(float(state.get("elapsed", 0.0)), float(state.get("cpu_seconds", 0.0)),
                   float(state.get("process_cpu_seconds", 0.0)))

    def stamp(self) -> dict:
        return {"time": round(time.time(), 3), "elapsed": round(self.elapsed, 3),
                "cpu_seconds": round(self.cpu_seconds, 3), "process_cpu_seconds": round(self.process_cpu_seconds, 3)}


class _TrainingWork:
    def __init__(self, clock: Clock):
        self.clock = clock

    def __enter__(self):
        self.start = time.process_time()

    def __exit__(self, *exc):
        self.clock.cpu_seconds += time.process_time() - self.start


class JsonLinesSink:
    def __init__(self, folder: Path):
        self.path = Path(folder) / METRICS

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def figure(self, tag: str, png: Path, step: int) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardSink:
    """Every numeric field of a record as the scalar `<kind>/<field>` at its step (kind: train, valid,
    epoch, final). On resume, events at or after the checkpoint's step are dropped (`purge_step`), as
    metrics.jsonl drops its records: they are written again."""

    def __init__(self, folder: Path, purge_step: int | None):
        from torch.utils.tensorboard import SummaryWriter

        self.folder = Path(folder) / TENSORBOARD
        self.writer = SummaryWriter(str(self.folder), purge_step=purge_step)

    def write(self, record: dict) -> None:
        kind, step = record.get("kind", "train"), int(record["step"])
        for key, value in record.items():
            if key not in ("step", "kind", "time") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(f"{kind}/{key}", value, step, walltime=record.get("time"))
        self.writer.flush()

    def figure(self, tag: str, png: Path, step: int) -> None:
        import matplotlib.image

        self.writer.add_image(tag, matplotlib.image.imread(png)[..., :3], step, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def tensorboard_available() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True


class TrainingLog:
    """Records go to every sink (JSON lines; TensorBoard when installed), messages to RUN/train.log and
    the console. Only the main process of a data-parallel run writes (`enabled`)."""

    def __init__(self, folder: Path, echo, clock: Clock, enabled: bool = True, resumed_at: int | None = None,
                 tensorboard: bool = True):
        self.folder, self.echo, self.clock, self.enabled = Path(folder), echo, clock, enabled
        self.sinks = []
        if enabled:
            if resumed_at is not None:
                truncate_metrics(self.folder, resumed_at)
            self.sinks.append(JsonLinesSink(self.folder))
            if tensorboard and tensorboard_available():
                self.sinks.append(TensorBoardSink(self.folder, None if resumed_at is None else resumed_at + 1))

    @property
    def tensorboard_folder(self) -> Path | None:
        return next((sink.folder for sink in self.sinks if isinstance(sink, TensorBoardSink)), None)

    def metrics(self, record: dict) -> None:
        record = {**record, **self.clock.stamp()}
        for sink in self.sinks:
            sink.write(record)

    def figure(self, tag: str, png: Path, step: int) -> None:
        for sink in self.sinks:
            sink.figure(tag, png, step)

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        with open(self.folder / "train.log", "a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
        self.echo(text)

    def close(self) -> None:
        for sink in self.sinks:
            sink.close()


def add_figure(folder: Path, tag: str, png: Path, step: int) -> bool:
    """A finished figure (the learning curves) into the run's TensorBoard events, when they are kept."""
    folder = Path(folder)
    if not (folder / TENSORBOARD).is_dir() or not tensorboard_available():
        return False
    sink = TensorBoardSink(folder, purge_step=None)
    sink.figure(tag, png, step)
    sink.close()
    return True


# Keys renamed since runs began writing them: older runs' records are read under today's names.
RENAMED_KEYS = {"valid_mutual_information": "valid_rough_mi"}  # an indicator, not the MI (2026-12-07)


def read_records(folder: Path) -> list[dict]:
    """RUN/metrics.jsonl's records, in order ([] when there is none yet), with today's key names."""
    return [{RENAMED_KEYS.get(key, key): value for key, value in record.items()}
            for _, record in _record_lines(Path(folder) / METRICS)]


def _record_lines(path: Path) -> list[tuple[str, dict]]:
    """Each line of a metrics file with its record. Training appends a line at a time, so a run killed
    while writing one leaves its last line cut short: that line is skipped (a resume drops it and writes
    the record again). A line elsewhere that is not a record means a damaged file: a UserError naming it,
    rather than a record lost without a word."""
    if not path.is_file():
        return []
    lines = path.read_text(encoding="utf-8").splitlines()
    found = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            if number == len(lines):  # cut short by a kill
                break
            raise UserError(f"{path}: line {number} is not a JSON record (a damaged file: mend or delete that line)")
        found.append((line, record))
    return found


def validation_records(folder: Path) -> list[dict]:
    """RUN/metrics.jsonl's validation records (valid, epoch, final), in order."""
    return [record for record in read_records(folder) if record.get("kind") in VALIDATIONS]


def validation_at(folder: Path, step: int) -> dict | None:
    """The validation record RUN/metrics.jsonl holds for `step`, if any."""
    return next((r for r in reversed(validation_records(folder)) if r.get("step") == step), None)


def truncate_metrics(folder: Path, step: int) -> None:
    """On resume, forget records written after the checkpoint: they will be written again."""
    path = Path(folder) / METRICS
    if path.is_file():
        kept = [line for line, record in _record_lines(path) if record.get("step", 0) <= step]
        atomic_write_text(path, "".join(line + "\n" for line in kept))
