"""An evaluation's report on disk: RUN/evaluation-<split>.json written atomically with its figure (an
earlier report made with other options kept aside, not replaced), and read back by `compare` and
`reproduce`."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from textebm.errors import UserError
from textebm.evaluation.held_out import EvaluationOptions, evaluate, protocol_record
from textebm.progress import QUIET, Progress


def evaluation_path(folder: Path, split: str) -> Path:
    return Path(folder) / f"evaluation-{split}.json"


def _as_now(options):
    """A report's options as they are recorded now: before 2026-12-08 the protocol's options were recorded
    whether or not wKL or the neural rPPL was asked for, and with the folder its reverse LM was kept in."""
    protocol = options.get("protocol") if isinstance(options, dict) else None
    return {**options, "protocol": protocol_record(protocol)} if isinstance(protocol, dict) else options


def keep_earlier_report(folder: Path, split: str, options: dict) -> Path | None:
    """Move RUN/evaluation-<split>.json (and the figure it names) to `evaluation-<split>.earlier-<its time>.json`
    when it was made with other `options` (or before reports recorded theirs): a smoke test must not
    silently replace a long evaluation. Returns where it went; None when there was none, or it had these options."""
    from textebm.io import atomic_write_text

    path = evaluation_path(folder, split)
    if not path.is_file():
        return None
    try:
        earlier = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        earlier = None
    if isinstance(earlier, dict) and _as_now(earlier.get("options")) == options:
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(path.stat().st_mtime))  # when it was made
    label, n = f"earlier-{stamp}", 1
    while path.with_name(f"evaluation-{split}.{label}.json").exists():
        n += 1
        label = f"earlier-{stamp}-{n}"
    target = path.with_name(f"evaluation-{split}.{label}.json")
    figure = Path(folder) / f"quality_diversity-{split}.png"
    if isinstance(earlier, dict) and Path(str(earlier.get("figure"))).name == figure.name and figure.is_file():
        # the figure it names goes with it, renamed alike
        earlier["figure"] = str(figure.replace(figure.with_name(f"quality_diversity-{split}.{label}.png")))
        atomic_write_text(target, json.dumps(earlier, indent=2) + "\n")
        path.unlink()
    else:
        path.replace(target)
    return target


def evaluate_run(options: EvaluationOptions, progress: Progress = QUIET, tf32: bool = True,
                 out: Path | None = None) -> dict:
    """Evaluate, draw the quality-diversity figure into the run folder, and write the report there
    (RUN/evaluation-<split>.json, atomically; an earlier one made with other options is kept, and a line on
    stderr says where: `keep_earlier_report`). `out`: the report goes there instead, its figure and an
    interrupted evaluation's stages beside it (`out` with .png, .partial.pt), and the run's own report and
    stages stay as they are. Returns the report as written."""
    from textebm.evaluation.partial_evaluation import partial_path
    from textebm.evaluation.plots import plot_quality_diversity
    from textebm.io import atomic_write_text, check_writable, json_safe
    from textebm.model.runs import is_run

    folder = Path(options.checkpoint)
    if out is not None and Path(out).resolve() == evaluation_path(folder, options.split).resolve():
        out = None  # the run's own report, named: kept aside as ever when its options differ
    if out is None:
        report, figure = evaluation_path(folder, options.split), folder / f"quality_diversity-{options.split}.png"
        stages = partial_path(folder, options.split)
    else:
        report, figure, stages = Path(out), Path(out).with_suffix(".png"), Path(out).with_suffix(".partial.pt")
        if report == figure:
            raise UserError(f"--out {out}: name the JSON report (its figure goes beside it as {figure.stem}.png)")
    if out is not None or is_run(folder):  # (when it is not a run, `evaluate` says why) where results go, first
        check_writable(report)
        check_writable(figure)
    result = evaluate(options, progress, tf32, resume_file=stages)
    kept = keep_earlier_report(folder, options.split, result["options"]) if out is None else None
    if kept is not None:
        print(f"the earlier {report.name} was made with other options: kept as {kept}", file=sys.stderr)
    if result["generation"] is not None:
        result["figure"] = str(plot_quality_diversity([(folder.name, result)], figure))
    result = json_safe(result)
    atomic_write_text(report, json.dumps(result, indent=2, allow_nan=False) + "\n")
    stages.unlink(missing_ok=True)  # done: nothing left to resume
    return result


def load_evaluation(folder: Path, split: str) -> dict:
    """A run's report as `evaluate_run` wrote it; a clear UserError when it is missing or too old."""
    path = evaluation_path(folder, split)
    if not path.is_file():
        raise UserError(f"{path} not found: run `textebm evaluate --checkpoint {folder} --split {split}` first")
    try:
        evaluation = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise UserError(f"{path} is not JSON") from None
    if not isinstance(evaluation, dict):
        raise UserError(f"{path} holds no report (a JSON object): rerun textebm evaluate on {folder}")
    generation = evaluation.get("generation")
    if generation is not None and "decodings" not in generation:
        raise UserError(f"{path} was written before decoding sweeps: rerun textebm evaluate on {folder}")
    return evaluation
