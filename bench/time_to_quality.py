"""Quality per CPU-minute: each variant and the plain language model trained for the same training
CPU time (one thread each), kept at fixed CPU minutes, every mark evaluated on the same validation
sentences; NLL against training CPU minutes, one curve per variant.

    python -m bench.time_to_quality --minutes 5 10 20 30 --variants default bf16 amortized k5-geometric \\
        --out ~/textebm-runs/ttq --jobs 2

The study is an experiment grid (textebm.experiments.grid): one run per variant with `max_cpu_minutes` the last
mark, `keep_at` the marks and `evaluate_marks` the evaluation, written to OUT/grid.toml and run by
`textebm reproduce` (OUT/runs/NAME/marks/cpu-<M>min/ are the marks). It resumes and skips what is done
as reproduce does; OUT/results.md holds the table and OUT/time_to_quality-<corpus>.png the figure. The
plain language model (prior=none) always runs: it is what each variant is held against. The results
grid (`textebm reproduce results`) measures the same way on its PTB runs.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import tempfile
import time
from dataclasses import dataclass, fields
from pathlib import Path

from textebm.errors import UserError
from textebm.io import atomic_write_text

LM = "lm"
# name -> `--set` overrides of the cpu preset; "default" is the chain from noise, the preset's until 2026-12-06
VARIANTS = {
    LM: ["prior=none"],
    "default": ["posterior_init=noise"],
    "bf16": ["posterior_init=noise", "chain_precision=bf16"],
    "amortized": ["posterior_init=encoder", "refine_steps=2"],
    "k5-geometric": ["posterior_init=noise", "posterior_steps=5", "posterior_step_schedule=geometric"],
}
EVALUATION = {"split": "valid", "max_sentences": 200, "temperatures": [1.0]}  # besides evaluate's own defaults


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[str, ...]

    @property
    def label(self) -> str:
        if self.name == LM:
            return "plain LM (prior=none)"
        return self.name + (f" ({' '.join(self.overrides)})" if self.overrides else "")


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
    """`key=value` options of textebm evaluate over EVALUATION, as a grid's evaluation table takes them
    (chain settings as `set`)."""
    from textebm.evaluation.held_out import EvaluationOptions

    kinds = {f.name: f.type for f in fields(EvaluationOptions)}
    options = dict(EVALUATION)
    for item in items:
        key, sep, raw = (s.strip() for s in item.partition("="))
        if not sep or key not in kinds or key in ("checkpoint", "split", "data_dir", "device", "threads"):
            raise UserError(f"--eval {item!r}: expected key=value with a key of textebm evaluate's options")
        try:
            if key == "temperatures":
                options[key] = [float(v) for v in raw.split(",")]
            elif key == "chain":
                options["set"] = raw.split(",")
            elif kinds[key] in ("int", "int | None"):
                options[key] = int(raw)
            elif kinds[key] == "float":
                options[key] = float(raw)
            else:
                options[key] = raw
        except ValueError:
            raise UserError(f"--eval {key}: cannot read {raw!r}") from None
    return options


def _toml(value) -> str:
    """A TOML value of plain data: numbers, strings (JSON's escapes are TOML's), lists, inline tables."""
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {_toml(v)}" for key, v in value.items()) + " }"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)


def grid_text(args, variants: list[Variant], options: dict) -> str:
    """The study as a grid file: one run per variant, trained to the last mark, kept at every mark."""
    corpus = args.corpus if args.corpus in ("ptb", "snli", "yahoo") else str(Path(args.corpus).resolve())
    lines = [f"# written by: python -m bench.time_to_quality {shlex.join(args.argv)}",
             f"title = {_toml('Time to quality: ' + ', '.join(v.name for v in variants))}", ""]
    for variant in variants:
        lines += ["[[runs]]", f"name = {_toml(variant.name)}", f"label = {_toml(variant.label)}",
                  f"corpus = {_toml(corpus)}", f"preset = {_toml(args.preset)}",
                  f"set = {_toml([*args.overrides, *variant.overrides])}", f"seed = {args.seed}",
                  f"max_cpu_minutes = {args.minutes[-1]:g}", f"keep_at = {_toml(args.minutes)}",
                  f"evaluate_marks = {_toml(options)}", ""]
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench.time_to_quality", description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, nargs="+", default=[5, 10, 20, 30],
                   help="the marks in training CPU minutes (default 5 10 20 30)")
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
    args = p.parse_args(argv)
    args.argv = list(argv if argv is not None else sys.argv[1:])
    return args


def main(argv=None) -> int:
    from textebm.experiments.grid import load_grid
    from textebm.experiments.reproduce import reproduce

    args = parse_args(argv)
    try:
        if not all(math.isfinite(m) and m > 0 for m in args.minutes) or args.minutes != sorted(set(args.minutes)):
            raise UserError("--minutes must be positive and increasing, e.g. 5 10 20 30")
        if args.jobs < 1:
            raise UserError("--jobs must be at least 1")
        variants = [Variant(LM, tuple(VARIANTS[LM]))] + [parse_variant(v) for v in args.variants
                                                          if v.partition(":")[0] != LM]
        if len({v.name for v in variants}) != len(variants):
            raise UserError("two variants have the same name")
        out = Path(args.out).expanduser()
        text = grid_text(args, variants, evaluation_options(args.evaluation))
        with tempfile.TemporaryDirectory() as staging:  # checked in full before the study's folder exists
            atomic_write_text(Path(staging) / "grid.toml", text)
            load_grid(str(Path(staging) / "grid.toml"))
        atomic_write_text(out / "grid.toml", text)
        grid = load_grid(str(out / "grid.toml"))
        status = reproduce(grid, out, args.jobs, args.data_dir, "cpu", "python -m bench.time_to_quality " +
                           shlex.join(args.argv), echo=lambda text: print(f"{time.strftime('%H:%M:%S')} {text}",
                                                                           flush=True))
    except UserError as err:
        print(f"time_to_quality: error: {err}", file=sys.stderr)
        return 2
    if status == "interrupted":
        print("time_to_quality: interrupted; the same command resumes", file=sys.stderr)
        return 130
    print(f"table: {out / 'results.md'}")
    return 0 if status == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
