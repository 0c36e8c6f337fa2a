"""Quality per CPU-minute (issue 17): train each variant and the plain language model for the same
wall-clock, one thread each, keep a checkpoint at fixed times, evaluate every checkpoint on the
same validation sentences, and draw NLL against training minutes, one curve per variant.

    python -m bench.time_to_quality --minutes 5 10 20 30 --variants default bf16 amortized k5-geometric \\
        --out ~/textebm-runs/ttq --jobs 2

    OUT/runs/NAME/            the variant's run folder while it trains (`textebm train --out`)
    OUT/marks/NAME-Mmin/      that folder after M minutes of training, and its evaluation-valid.json
    OUT/logs/                 what each process printed
    OUT/results.json, results.md, nll_per_minute.png

A variant trains `--minutes M1` first, is kept as a mark, then a copy resumes (`textebm train --resume
--max-minutes M2-M1`) and so on: each mark continues the previous one, so a 30-minute curve costs
30 minutes, not the sum of its marks. The minutes are training's own budget (its loop's
wall-clock, one thread); the table also gives the CPU time each mark's processes used. A mark
that exists is done, and an evaluation whose options are unchanged is done: the same command
resumes where it stopped (an interrupted segment starts again from the previous mark). The plain
language model (prior=none) always runs: it is what each variant is held against.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path

from textebm.errors import UserError
from textebm.io import atomic_write_text, read_json
from textebm.plots import save_figure

LM = "lm"
VARIANTS = {  # name -> `--set` overrides of the cpu preset
    LM: ["prior=none"],
    "default": [],
    "bf16": ["chain_precision=bf16"],
    "amortized": ["posterior_init=encoder", "refine_steps=2"],
    "k5-geometric": ["posterior_steps=5", "posterior_step_schedule=geometric"],
}
EVALUATION = {"max_sentences": 200, "temperatures": [1.0]}  # besides `textebm evaluate`'s own defaults
MARK = "ttq-mark.json"  # in a mark folder: what its training cost
EVALUATED = "ttq-evaluated.json"  # in a mark folder: the options its evaluation-valid.json was made with
ONE_THREAD = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[str, ...]


def parse_variant(text: str) -> Variant:
    """`NAME` (one of VARIANTS) or `NAME:key=value,key=value` (a variant of your own)."""
    name, sep, settings = text.partition(":")
    name = name.strip()
    if not sep:
        if name not in VARIANTS:
            raise UserError(f"unknown variant {name!r}: choose from {', '.join(VARIANTS)} or write NAME:key=value,...")
        return Variant(name, tuple(VARIANTS[name]))
    if not name or not name.replace("-", "").replace("_", "").isalnum():
        raise UserError(f"variant name {name!r}: use letters, digits, - and _")
    return Variant(name, tuple(s.strip() for s in settings.split(",") if s.strip()))


def evaluation_options(items: list[str]) -> dict:
    """`key=value` options of textebm.evaluation.EvaluationOptions over EVALUATION (split is valid)."""
    from textebm.evaluation import EvaluationOptions

    kinds = {f.name: f.type for f in fields(EvaluationOptions)}
    options = dict(EVALUATION)
    for item in items:
        key, sep, raw = (s.strip() for s in item.partition("="))
        if not sep or key not in kinds or key in ("checkpoint", "split", "data_dir", "device", "threads"):
            raise UserError(f"--eval {item!r}: expected key=value with a key of textebm evaluate's options")
        try:
            if key in ("temperatures", "chain"):
                options[key] = [float(v) for v in raw.split(",")] if key == "temperatures" else raw.split(",")
            elif kinds[key] in ("int", "int | None"):
                options[key] = int(raw)
            elif kinds[key] == "float":
                options[key] = float(raw)
            else:
                options[key] = raw
        except ValueError:
            raise UserError(f"--eval {key}: cannot read {raw!r}") from None
    EvaluationOptions(checkpoint="", **options).check()
    return options


def evaluate_flags(options: dict) -> list[str]:
    """The `textebm evaluate` flags of `options`."""
    flags = []
    for key, value in options.items():
        flag = "--" + key.replace("_", "-")
        if key == "chain":
            for item in value:
                flags += ["--set", item]
        elif isinstance(value, list):
            flags += [flag, *map(str, value)]
        else:
            flags += [flag, str(value)]
    return flags


class Study:
    """The variants' trainings and evaluations, each variant's in turn on one worker thread."""

    def __init__(self, args, variants: list[Variant], options: dict, echo=print):
        self.args, self.variants, self.options, self.echo = args, variants, options, echo
        self.out = Path(args.out)
        self.failures: list[str] = []

    def mark_folder(self, variant: Variant, minutes: float) -> Path:
        return self.out / "marks" / f"{variant.name}-{minutes:g}min"

    def run(self) -> None:
        with ThreadPoolExecutor(self.args.jobs) as pool:
            for future in [pool.submit(self.variant, v) for v in self.variants]:
                future.result()

    def variant(self, variant: Variant) -> None:
        try:
            previous = None
            for minutes in self.args.minutes:
                folder = self.mark_folder(variant, minutes)
                if not (folder / MARK).is_file():
                    self.train_segment(variant, minutes, previous)
                previous = (minutes, folder)
            for minutes in self.args.minutes:
                self.evaluate(variant, self.mark_folder(variant, minutes))
        except UserError as err:
            self.failures.append(variant.name)
            self.echo(f"{variant.name}: {err}")

    def _process(self, command: list[str], log: Path) -> tuple[int, float]:
        """Run `command` (one thread, output appended to `log`): its exit status and CPU seconds."""
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a", encoding="utf-8") as handle:
            handle.write(f"== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(command)}\n")
            handle.flush()
            process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=handle, stderr=subprocess.STDOUT,
                                       env={**os.environ, **ONE_THREAD})
            _, status, usage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
        return process.returncode, usage.ru_utime + usage.ru_stime

    def train_segment(self, variant: Variant, minutes: float, previous: tuple[float, Path] | None) -> None:
        """Train from the previous mark (or from scratch) up to `minutes`, then copy the run to its mark."""
        args, live = self.args, self.out / "runs" / variant.name
        if live.exists():  # an interrupted segment: it starts again from the previous mark
            shutil.rmtree(live)
        command = [sys.executable, "-m", "textebm", "train", "--corpus", args.corpus, "--out", str(live),
                   "--device", "cpu", "--threads", "1", "--no-progress"]
        if args.data_dir:
            command += ["--data-dir", args.data_dir]
        spent_before, cpu_before = 0.0, 0.0
        if previous is None:
            command += ["--preset", args.preset, "--seed", str(args.seed)]
            for item in [*args.overrides, *variant.overrides]:
                command += ["--set", item]
        else:
            spent_before, before = previous
            shutil.copytree(before, live, ignore=shutil.ignore_patterns("evaluation-*", "quality_diversity-*",
                                                                        "ttq-*"))
            cpu_before = read_json(before / MARK)["cpu_seconds"]
            command.append("--resume")
        command += ["--max-minutes", f"{minutes - spent_before:g}"]
        self.echo(f"{variant.name}: train to {minutes:g} min" + (f" from the {spent_before:g}-minute mark"
                                                                 if previous else ""))
        status, cpu = self._process(command, self.out / "logs" / f"{variant.name}.train.log")
        if status != 0:
            raise UserError(f"training stopped with status {status} (log: {self.out / 'logs'}); "
                            "the same command starts this segment again")
        from textebm.runs import load_checkpoint

        step = int(load_checkpoint(live)["step"])
        atomic_write_text(live / MARK, json.dumps({"minutes": minutes, "step": step, "overrides": list(
            variant.overrides), "cpu_seconds": round(cpu_before + cpu, 1)}, indent=2) + "\n")
        folder = self.mark_folder(variant, minutes)
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(folder, ignore_errors=True)
        live.rename(folder)  # the mark appears whole or not at all; the next segment starts from a copy
        self.echo(f"{variant.name}: {minutes:g}-minute mark at step {step}")

    def evaluate(self, variant: Variant, folder: Path) -> None:
        done = read_json(folder / EVALUATED)
        if done is not None and done.get("options") == self.options and (folder / "evaluation-valid.json").is_file():
            return
        command = [sys.executable, "-m", "textebm", "evaluate", "--checkpoint", str(folder), "--split", "valid",
                   "--device", "cpu", "--threads", "1", "--json", *evaluate_flags(self.options)]
        if self.args.data_dir:
            command += ["--data-dir", self.args.data_dir]
        self.echo(f"{variant.name}: evaluate {folder.name}")
        status, cpu = self._process(command, self.out / "logs" / f"{folder.name}.evaluate.log")
        if status != 0:
            raise UserError(f"evaluating {folder.name} stopped with status {status} (log: {self.out / 'logs'})")
        atomic_write_text(folder / EVALUATED, json.dumps({"options": self.options, "cpu_seconds": round(cpu, 1)},
                                                         indent=2) + "\n")


def table_rows(out: Path, variants: list[Variant], marks: list[float], options: dict) -> list[dict]:
    """One row per variant and mark that is trained (its figures once evaluated): minutes, steps,
    NLL, the latent's gap, FPPL/RPPL at the first temperature, NLL relative to the LM's at that mark."""
    rows = []
    for variant in variants:
        for minutes in marks:
            folder = out / "marks" / f"{variant.name}-{minutes:g}min"
            mark = read_json(folder / MARK)
            if mark is None:
                continue
            row = {"variant": variant.name, "overrides": list(variant.overrides), "minutes": minutes,
                   "step": mark["step"], "cpu_minutes": round(mark["cpu_seconds"] / 60, 2)}
            evaluated = read_json(folder / EVALUATED)
            report = read_json(folder / "evaluation-valid.json")
            if evaluated is not None and evaluated.get("options") == options and report is not None:
                usage = report.get("latent_usage") or {}
                sampled = [d for d in (report.get("generation") or {}).get("decodings", []) if not d["greedy"]]
                row.update(nll_per_sentence=report["nll_per_sentence"], perplexity=report["perplexity"],
                           exact=report["exact_likelihood"], gap=usage.get("gap"),
                           fppl=sampled[0]["forward_ppl"] if sampled else None,
                           rppl=sampled[0]["reverse_ppl"] if sampled else None,
                           temperature=sampled[0]["temperature"] if sampled else None)
            rows.append(row)
    lm = {r["minutes"]: r.get("nll_per_sentence") for r in rows if r["variant"] == LM}
    for row in rows:
        reference, nll = lm.get(row["minutes"]), row.get("nll_per_sentence")
        row["nll_over_lm"] = None if reference is None or nll is None else nll / reference - 1
    return rows


def _cell(value, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "—"
    return f"{value:,.{digits}f}" if isinstance(value, float) else str(value)


def markdown(rows: list[dict], command: str, options: dict) -> str:
    lines = [f"Quality per training minute (`{command}`), {time.strftime('%Y-%m-%d %H:%M')}; validation NLL on the "
             f"first {options['max_sentences']} sentences (exact for the LM, importance-sampled for latent runs), "
             f"FPPL/RPPL at temperature {options['temperatures'][0]:g}. Load average now: "
             f"{', '.join(f'{x:.1f}' for x in os.getloadavg())}.",
             "",
             "| variant | minutes | steps | CPU min | NLL/sentence | vs LM | perplexity | gap (nats/token) "
             "| FPPL | RPPL |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        versus = "—" if r.get("nll_over_lm") is None else f"{r['nll_over_lm']:+.1%}"
        name = r["variant"] + (f" (`{' '.join(r['overrides'])}`)" if r["overrides"] else "")
        lines.append(f"| {name} | {r['minutes']:g} | {r['step']} | {_cell(r['cpu_minutes'])} | "
                     f"{_cell(r.get('nll_per_sentence'))} | {versus} | {_cell(r.get('perplexity'))} | "
                     f"{_cell(r.get('gap'), 3)} | {_cell(r.get('fppl'))} | {_cell(r.get('rppl'))} |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], out: Path) -> Path:
    """NLL per sentence against training minutes, one curve per variant (the LM dashed in black)."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5))
    names = list(dict.fromkeys(r["variant"] for r in rows))
    for color, name in enumerate(names):
        points = [(r["minutes"], r["nll_per_sentence"]) for r in rows
                  if r["variant"] == name and r.get("nll_per_sentence") is not None]
        if points:
            style = dict(color="black", ls="--") if name == LM else dict(color=f"C{color}", ls="-")
            ax.plot(*zip(*points), marker="o", label="plain LM (prior=none), exact" if name == LM else name, **style)
    ax.set(xlabel="training minutes (one CPU thread, wall-clock budget)", ylabel="validation NLL per sentence (nats)",
           title="quality per CPU-minute")
    if ax.get_lines():
        ax.legend(fontsize=8)
    return save_figure(fig, out)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.time_to_quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, nargs="+", default=[5, 10, 20, 30], help="the marks (default 5 10 20 30)")
    p.add_argument("--variants", nargs="+", default=["default"], metavar="V",
                   help=f"built-in ({', '.join(v for v in VARIANTS if v != LM)}) or NAME:key=value,... "
                        "(the plain LM always runs too)")
    p.add_argument("--out", required=True, help="the study's folder (the same command resumes it)")
    p.add_argument("--jobs", type=int, default=1, help="variants trained at once, one thread each")
    p.add_argument("--corpus", default="ptb", help="ptb (default), or a corpus textebm train takes")
    p.add_argument("--data-dir", help="folder of the corpora (default: $TEXTEBM_DATA_DIR, else data/)")
    p.add_argument("--preset", default="cpu", help="config preset of every run (default cpu)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override of every run, before the variant's own (repeatable)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eval", dest="evaluation", action="append", default=[], metavar="KEY=VALUE",
                   help="an option of textebm evaluate, e.g. --eval num_chains=8 (default: max_sentences=200, "
                        "temperatures=1.0, the rest evaluate's own)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        minutes = args.minutes
        if not all(math.isfinite(m) and m > 0 for m in minutes) or minutes != sorted(set(minutes)):
            raise UserError("--minutes must be positive and increasing, e.g. 5 10 20 30")
        if args.jobs < 1:
            raise UserError("--jobs must be at least 1")
        variants = [Variant(LM, tuple(VARIANTS[LM]))] + [parse_variant(v) for v in args.variants
                                                          if v.partition(":")[0] != LM]
        if len({v.name for v in variants}) != len(variants):
            raise UserError("two variants have the same name")
        from textebm.config import resolve_config

        for v in variants:  # a bad setting fails now, not after an hour of the others' training
            resolve_config(args.preset, "ptb", [*args.overrides, *v.overrides])
        options = evaluation_options(args.evaluation)
        study = Study(args, variants, options, echo=lambda text: print(f"{time.strftime('%H:%M:%S')} {text}",
                                                                       flush=True))
        study.run()
    except UserError as err:
        print(f"time_to_quality: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("time_to_quality: interrupted; the same command resumes from the last mark", file=sys.stderr)
        return 130
    out = Path(args.out)
    rows = table_rows(out, variants, minutes, options)
    command = "python -m bench.time_to_quality " + shlex.join(argv if argv is not None else sys.argv[1:])
    atomic_write_text(out / "results.json", json.dumps({"command": command, "evaluation": options, "rows": rows},
                                                       indent=1) + "\n")
    table = markdown(rows, command, options)
    atomic_write_text(out / "results.md", table)
    print(table)
    print(f"figure: {plot(rows, out / 'nll_per_minute.png')}")
    return 1 if study.failures else 0


if __name__ == "__main__":
    sys.exit(main())
