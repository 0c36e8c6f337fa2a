"""An experiment grid: a TOML file naming training runs and the evaluations of each, read and
checked in full before anything starts (`textebm reproduce`).

    [defaults]                       # any run key; a run's own value replaces it
    preset = "cpu"

    [[runs]]
    name = "ptb-ebm"                 # the run folder's name ([A-Za-z0-9._-])
    label = "latent EBM prior"       # how tables and figures call it (default: the name)
    corpus = "ptb"                   # ptb, snli, yahoo, or a path (relative to the grid file)
    train_split = "train"            # e.g. "valid" for Yahoo without its train split
    set = ["prior=ebm"]              # `textebm train --set` overrides
    max_cpu_minutes = 30             # training CPU-time budget (steps only, counted over resumes; one thread)
    max_minutes = 30                 # and/or wall-clock (resumed runs count time already spent)
    max_steps = 5000                 # and/or a step budget
    keep_at = [5, 10, 20, 30]        # CPU minutes at which the run is copied to RUN/marks/cpu-<M>min/
    evaluate_marks = { split = "valid", max_sentences = 200 }   # each mark's evaluation (time to quality)
    seeds = [0, 1]                   # one run per seed, named ptb-ebm-seed0, ...; or `seed = 0`
    evaluate = [{ split = "test", max_sentences = 300, num_chains = 16 }]   # `textebm evaluate` options

    [slurm]                          # submitit's Slurm options for `--executor slurm` (docs/reproduce.md)
    partition = "gpu"
    time = 120                       # minutes per job; a job warned of its limit saves and is requeued

    [published]                      # published figures the results set beside the runs (per corpus)
    source = "Pang et al. (2020), Table 2"
    real_fppl = { ptb = 100.36 }     # FPPL of real text under the publication's own LM: its ratios' base
    rows = [{ corpus = "ptb", model = "latent EBM prior", fppl = 107.45, rppl = 181.54, nll = 91.35 }]

Runs that differ only in their seed form one group: the results give their mean and spread.
Grids shipped with textebm (textebm/experiments/grids/*.toml) can be named without a path.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import tomllib
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from textebm.data.corpora import KNOWN, check_evaluation_split, open_corpus
from textebm.errors import UserError

RUN_KEYS = {"name", "label", "corpus", "train_split", "preset", "set", "max_minutes", "max_cpu_minutes", "max_steps",
            "keep_at", "evaluate_marks", "seed", "seeds", "evaluate"}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")  # a folder under OUT/runs: never `.`, `..` or hidden
NOT_IN_GRIDS = ("protocol",)  # the later papers' protocol (wKL, neural rPPL): `textebm evaluate` only, for now


def evaluate_types() -> dict[str, type]:
    """The `textebm evaluate` options a grid may set: EvaluationOptions' fields (`chain` as `set`), by type."""
    from textebm.evaluation.held_out import PLACE_KEYS, EvaluationOptions

    kinds = {"int": int, "float": float, "list": list, "str": str}
    return {("set" if f.name == "chain" else f.name): kinds[re.match(r"\w+", str(f.type)).group()]
            for f in dataclasses.fields(EvaluationOptions) if f.name not in PLACE_KEYS + NOT_IN_GRIDS}


@dataclass(frozen=True)
class Evaluation:
    split: str
    options: dict  # EvaluationOptions fields (besides checkpoint, data_dir, device, threads)


@dataclass(frozen=True)
class RunSpec:
    name: str
    label: str
    corpus: str
    train_split: str
    preset: str
    overrides: tuple[str, ...]
    seed: int
    max_minutes: float | None
    max_steps: int | None
    evaluations: tuple[Evaluation, ...]
    max_cpu_minutes: float | None = None
    keep_at: tuple[float, ...] = ()
    mark_evaluation: Evaluation | None = None  # how each kept mark is evaluated (the time-to-quality curve)

    @property
    def corpus_name(self) -> str:
        """The corpus's name, or a corpus file's or folder's own name."""
        return self.corpus if self.corpus in KNOWN else Path(self.corpus).name

    def config_overrides(self) -> list[str]:
        """The `--set` list that resolves this run's config, as `textebm train` builds it."""
        return [*self.overrides, f"train_split={self.train_split}", f"seed={self.seed}"]

    def group(self) -> tuple:
        """What the run is, but for its name and seed: runs of one group are seeds of one setting."""
        return (self.label, self.corpus, self.train_split, self.preset, self.overrides, self.max_minutes,
                self.max_steps, self.max_cpu_minutes, self.keep_at,
                tuple((e.split, json.dumps(e.options, sort_keys=True))
                      for e in (*self.evaluations, *([self.mark_evaluation] if self.mark_evaluation else []))))


@dataclass(frozen=True)
class Grid:
    path: Path
    title: str
    runs: tuple[RunSpec, ...]
    slurm: dict = dataclasses.field(default_factory=dict)  # submitit.SlurmExecutor parameters
    published: dict = dataclasses.field(default_factory=dict)  # {source, real_fppl, rows}: `_published`


def shipped_grids() -> list[str]:
    shipped = resources.files("textebm.experiments.grids").iterdir()
    return sorted(f.name[:-5] for f in shipped if f.name.endswith(".toml"))


def grid_path(name: str) -> Path:
    """A grid file, or the name of a grid shipped with textebm."""
    path = Path(name)
    if path.is_file():
        return path
    if name in shipped_grids():
        return Path(str(resources.files("textebm.experiments.grids").joinpath(f"{name}.toml")))
    raise UserError(f"grid {name!r} is neither a file nor a grid shipped with textebm ({', '.join(shipped_grids())})")


def load_grid(name: str) -> Grid:
    path = grid_path(name)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as err:
        raise UserError(f"{path}: not a readable TOML grid ({err})") from None
    unknown = sorted(set(data) - {"title", "defaults", "runs", "slurm", "published"})
    if unknown:
        raise UserError(f"{path}: unknown top-level key(s) {', '.join(unknown)} "
                        "(known: title, defaults, runs, slurm, published)")
    if not isinstance(data.get("slurm", {}), dict):
        raise UserError(f"{path}: [slurm] must be a table of Slurm options (e.g. partition = \"gpu\", time = 120)")
    defaults = data.get("defaults", {})
    entries = data.get("runs", [])
    if not isinstance(defaults, dict) or not isinstance(entries, list) or not entries:
        raise UserError(f"{path}: a grid needs a list of [[runs]] (and optionally a [defaults] table)")
    runs = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise UserError(f"{path}: runs[{i}] is not a table")
        runs += _runs_of(path, {**defaults, **entry}, f"runs[{i}]")
    names = [r.name for r in runs]
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise UserError(f"{path}: run name(s) used twice: {', '.join(twice)}")
    return Grid(path, str(data.get("title", path.stem)), tuple(runs), dict(data.get("slurm", {})),
                _published(path, data.get("published", {})))


PUBLISHED_FIGURES = ("fppl", "rppl", "nll")


def _published(path: Path, table) -> dict:
    """The [published] table, checked: a source, each corpus's real-text FPPL under the publication's
    own LM, and rows of corpus, model and any of fppl, rppl, nll (positive numbers)."""
    def fail(message: str):
        raise UserError(f"{path}: [published]: {message}")

    if not isinstance(table, dict):
        fail("must be a table (source, real_fppl, rows)")
    if not table:
        return {}
    unknown = sorted(set(table) - {"source", "real_fppl", "rows"})
    if unknown:
        fail(f"unknown key(s) {', '.join(unknown)} (known: source, real_fppl, rows)")
    source, real, rows = table.get("source"), table.get("real_fppl", {}), table.get("rows")
    if not isinstance(source, str) or not source:
        fail("`source` must name the publication")
    if not isinstance(real, dict) or not all(_is_positive_number(v) for v in real.values()):
        fail("`real_fppl` must map corpora to positive numbers, e.g. { ptb = 100.36 }")
    if not isinstance(rows, list) or not rows or not all(isinstance(r, dict) for r in rows):
        fail("`rows` must be a list of tables { corpus, model, fppl, rppl, nll }")
    for row in rows:
        unknown = sorted(set(row) - {"corpus", "model", *PUBLISHED_FIGURES})
        if unknown:
            fail(f"a row's unknown key(s) {', '.join(unknown)} (known: corpus, model, {', '.join(PUBLISHED_FIGURES)})")
        if not all(isinstance(row.get(k), str) and row[k] for k in ("corpus", "model")):
            fail(f"every row needs a `corpus` and a `model`, not {row!r}")
        if not all(_is_positive_number(row[k]) for k in PUBLISHED_FIGURES if k in row):
            fail(f"{row['model']} ({row['corpus']}): fppl, rppl and nll must be positive numbers")
    return {"source": source, "real_fppl": dict(real), "rows": [dict(r) for r in rows]}


def _runs_of(path: Path, entry: dict, where: str) -> list[RunSpec]:
    from textebm.config import preset_names, resolve_config

    def fail(message: str):
        raise UserError(f"{path}: {where} ({entry.get('name', '?')}): {message}")

    unknown = sorted(set(entry) - RUN_KEYS)
    if unknown:
        fail(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(sorted(RUN_KEYS))})")
    for key in ("name", "corpus"):
        if not isinstance(entry.get(key), str) or not entry[key]:
            fail(f"`{key}` must be a non-empty string")
    if not NAME.fullmatch(entry["name"]):
        fail("`name` must start with a letter or digit and hold only letters, digits, '.', '_' and '-'")
    preset = entry.get("preset", "cpu")
    if preset not in preset_names():
        fail(f"unknown preset {preset!r} (available: {', '.join(preset_names())})")
    overrides = entry.get("set", [])
    if not isinstance(overrides, list) or not all(isinstance(s, str) for s in overrides):
        fail('`set` must be a list of "key=value" strings')
    if any(s.split("=", 1)[0].strip() in ("seed", "train_split") for s in overrides):
        fail("give the seed and the training split as `seed`/`seeds` and `train_split`, not in `set`")
    max_minutes, max_steps = entry.get("max_minutes"), entry.get("max_steps")
    max_cpu_minutes = entry.get("max_cpu_minutes")
    if max_minutes is None and max_steps is None and max_cpu_minutes is None:
        fail("give a budget: `max_cpu_minutes`, `max_minutes` and/or `max_steps`")
    for key, value in (("max_minutes", max_minutes), ("max_cpu_minutes", max_cpu_minutes)):
        if value is not None and not _is_positive_number(value):
            fail(f"`{key}` must be a positive number, not {value!r}")
    keep_at = entry.get("keep_at", [])
    if not isinstance(keep_at, list) or not all(_is_positive_number(m) for m in keep_at) \
            or len(set(keep_at)) != len(keep_at):
        fail(f"`keep_at` must be a list of distinct positive CPU minutes, not {keep_at!r}")
    if max_cpu_minutes is not None and any(m > max_cpu_minutes for m in keep_at):  # `--dry-run` said "to do" for ever
        fail(f"`keep_at` {[m for m in keep_at if m > max_cpu_minutes]} is past `max_cpu_minutes` {max_cpu_minutes}: "
             "the run stops before it")
    if max_steps is not None and (not _is_int(max_steps) or max_steps < 1):
        fail(f"`max_steps` must be a positive integer, not {max_steps!r}")
    if "seed" in entry and "seeds" in entry:
        fail("give `seed` or `seeds`, not both")
    seeds = entry.get("seeds", [entry.get("seed", 0)])
    if not isinstance(seeds, list) or not seeds or not all(_is_int(s) and s >= 0 for s in seeds) \
            or len(set(seeds)) != len(seeds):
        fail(f"seeds must be distinct integers >= 0, not {seeds!r}")
    corpus = entry["corpus"]
    if corpus not in KNOWN:
        corpus = str((path.parent / corpus).resolve())
    train_split = entry.get("train_split", "train")
    if not isinstance(train_split, str):
        fail("`train_split` must be a string")
    evaluations = tuple(_evaluation(e, fail) for e in _table_list(entry.get("evaluate", []), "evaluate", fail))
    mark_evaluation = entry.get("evaluate_marks")
    if mark_evaluation is not None:
        if not isinstance(mark_evaluation, dict):
            fail("`evaluate_marks` must be a table of `textebm evaluate` options")
        if not keep_at:
            fail("`evaluate_marks` needs marks to evaluate: give `keep_at`")
        mark_evaluation = _evaluation(mark_evaluation, fail)
    if corpus not in KNOWN and Path(corpus).exists():  # its splits are known now, not only after training
        try:
            user_corpus = open_corpus(corpus)
            for evaluation in (*evaluations, *([mark_evaluation] if mark_evaluation else [])):
                check_evaluation_split(user_corpus, train_split, evaluation.split)
        except UserError as err:
            fail(str(err))
    splits = [e.split for e in evaluations]
    if len(set(splits)) != len(splits):
        fail("two evaluations of one split (RUN/evaluation-<split>.json holds one)")
    label = entry.get("label", entry["name"])
    if not isinstance(label, str) or not label:
        fail("`label` must be a non-empty string")
    runs = []
    for seed in seeds:
        spec = RunSpec(name=entry["name"] if "seeds" not in entry else f"{entry['name']}-seed{seed}", label=label,
                       corpus=corpus, train_split=train_split, preset=preset, overrides=tuple(overrides), seed=seed,
                       max_minutes=None if max_minutes is None else float(max_minutes), max_steps=max_steps,
                       evaluations=evaluations,
                       max_cpu_minutes=None if max_cpu_minutes is None else float(max_cpu_minutes),
                       keep_at=tuple(sorted(float(m) for m in keep_at)), mark_evaluation=mark_evaluation)
        try:
            resolve_config(preset, corpus, spec.config_overrides())
        except UserError as err:
            fail(str(err))
        runs.append(spec)
    return runs


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_positive_number(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and 0 < x < math.inf  # (TOML has inf)


def _table_list(value, key: str, fail) -> list[dict]:
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        fail(f"`{key}` must be a list of tables")
    return value


def _evaluation(table: dict, fail) -> Evaluation:
    from textebm.config import Config, with_chain_overrides
    from textebm.evaluation.held_out import EvaluationOptions

    types = evaluate_types()
    unknown = sorted(set(table) - set(types))
    if unknown:
        fail(f"evaluate: unknown option(s) {', '.join(unknown)} (known: {', '.join(sorted(types))})")
    for key, value in table.items():
        kind = types[key]
        ok = _is_int(value) if kind is int else (isinstance(value, (int, float)) and not isinstance(value, bool)
                                                  if kind is float else isinstance(value, kind))
        if not ok:
            fail(f"evaluate: `{key}` must be a {kind.__name__}, not {value!r}")
    options = {("chain" if key == "set" else key): value for key, value in table.items()}
    options.setdefault("split", "test")
    if options["split"] not in ("test", "valid"):
        fail(f"evaluate: split must be test or valid, not {options['split']!r}")
    if "temperatures" in options:
        if not all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in options["temperatures"]):
            fail("evaluate: `temperatures` must be a list of numbers")
        options["temperatures"] = [float(t) for t in options["temperatures"]]
    try:
        EvaluationOptions(checkpoint="", **options).check()
        with_chain_overrides(Config(), options.get("chain", []))
    except UserError as err:
        fail(f"evaluate: {err}")
    split = options.pop("split")
    return Evaluation(split, options)
