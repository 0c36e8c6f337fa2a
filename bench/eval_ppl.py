"""`textebm eval-ppl` on 10,000 samples: cold (empty real-data LM cache) and warm (cached LM); and
several sample sets (as `textebm evaluate` passes its decodings) in one `evaluate_sample_sets` call
against one `evaluate_samples` call per set.

Target (issue 5): under 10 s warm on PTB. That is an absolute time on a noisy shared machine, so
the row reports the absolute medians and the warm/cold ratio (the share of the time the cache
saves). The command runs as a subprocess, exactly as a user types it, interpreter start included;
the in-process time that lm_eval reports itself is recorded next to it. Stand-in samples: PTB
valid+test lines, cycled to 10,000 (there are 7,131).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench import Row, interleave, median

FULL = dict(samples=10_000, train_lines=None, sets=6, set_size=1_000)
QUICK = dict(samples=300, train_lines=2_000, sets=3, set_size=100)
TARGET_SECONDS = 10.0
NAME = "eval_ppl"


def not_measured(why: str) -> list[Row]:
    return [Row(NAME, "textebm eval-ppl, 10,000 samples", target=f"warm < {TARGET_SECONDS:g} s",
                note=f"not measured: {why}")]


def data_dir() -> Path:
    """$TEXTEBM_DATA_DIR, else the first of data/ and ../shared/data (CI's default) that holds PTB."""
    if os.environ.get("TEXTEBM_DATA_DIR"):
        return Path(os.environ["TEXTEBM_DATA_DIR"])
    root = Path(__file__).resolve().parents[1]
    for candidate in (root / "data", root.parent / "shared" / "data"):
        if (candidate / "ptb" / "train.txt").is_file():
            return candidate
    return root / "data"


def _prepare(folder: Path, spec: dict) -> tuple[Path, Path, Path]:
    """The samples file, and the real train/test files (PTB's own unless --quick trims train)."""
    ptb = data_dir() / "ptb"
    lines = []
    for split in ("valid", "test"):
        lines += [s for s in (ptb / f"{split}.txt").read_text(encoding="utf-8").splitlines() if s.strip()]
    samples = [lines[i % len(lines)] for i in range(spec["samples"])]
    samples_path = folder / "samples.txt"
    samples_path.write_text("\n".join(samples) + "\n", encoding="utf-8")
    train, test = ptb / "train.txt", ptb / "test.txt"
    if spec["train_lines"]:
        small = folder / "train.txt"
        with open(train, encoding="utf-8") as fh:
            small.write_text("".join(line for _, line in zip(range(spec["train_lines"]), fh)), encoding="utf-8")
        train = small
    return samples_path, train, test


def registered() -> bool:
    """Whether `textebm eval-ppl` is wired into the command line yet."""
    from textebm import cli

    return "eval_ppl" in getattr(cli, "SUBCOMMANDS", ())


def subcommand_main(argv: list[str]) -> int:
    """`textebm eval-ppl ARGS` through its own subcommand module, for a tree where the module
    exists but is not yet registered in `textebm.cli`: the same parser and the same `run`."""
    import argparse

    from textebm.cli import eval_ppl as command
    from textebm.errors import UserError

    parser = argparse.ArgumentParser(prog="textebm")
    command.add_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["eval-ppl", *argv])
    try:
        return int(args.run(args) or 0)
    except UserError as err:
        print(f"textebm eval-ppl: error: {err}", file=sys.stderr)
        return 2


def _command() -> list[str]:
    if registered():
        return [sys.executable, "-m", "textebm", "eval-ppl"]
    return [sys.executable, "-c", "import sys; from bench.eval_ppl import subcommand_main; "
            "sys.exit(subcommand_main(sys.argv[1:]))"]


def _time_command(samples: Path, train: Path, test: Path, cache: Path) -> tuple[float, dict]:
    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, TEXTEBM_LM_CACHE_DIR=str(cache),
               PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    cmd = _command() + ["--samples", str(samples), "--train", str(train), "--test", str(test), "--json"]
    tic = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - tic
    if proc.returncode != 0:
        raise RuntimeError(f"textebm eval-ppl failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    return seconds, json.loads(proc.stdout)


def run(quick: bool, repeats: int) -> list[Row]:
    import lm_eval

    try:
        lm_eval.find_tools()
    except lm_eval.KenLMToolsMissing as err:
        return not_measured(f"KenLM tools missing ({err})")
    if not (data_dir() / "ptb" / "train.txt").is_file():
        return not_measured(f"PTB not found under {data_dir()} (set TEXTEBM_DATA_DIR)")

    spec = QUICK if quick else FULL
    with tempfile.TemporaryDirectory(prefix="bench-eval-ppl-") as tmp:
        folder = Path(tmp)
        samples, train, test = _prepare(folder, spec)
        warm_cache = folder / "warm-cache"
        _time_command(samples, train, test, warm_cache)  # fills the warm cache (and warms the page cache)
        seconds = {"cold": [], "warm": []}
        inner = {"cold": [], "warm": []}
        for i in range(repeats):  # interleaved: cold, warm, cold, warm, ...
            t, result = _time_command(samples, train, test, folder / f"cold-cache-{i}")
            if result["real_lm"]["cached"]:
                raise RuntimeError("the cold run found a cached LM")
            seconds["cold"].append(t)
            inner["cold"].append(result["seconds"])
            t, result = _time_command(samples, train, test, warm_cache)
            if not result["real_lm"]["cached"]:
                raise RuntimeError("the warm run did not use the cached LM")
            seconds["warm"].append(t)
            inner["warm"].append(result["seconds"])
        sets_row = _sample_sets_row(train, test, spec, repeats, warm_cache)
    cold, warm = median(seconds["cold"]), median(seconds["warm"])
    label = f"textebm eval-ppl, {spec['samples']:,} samples" + (" (quick: 2,000 train lines)" if quick else ", PTB")
    return [Row(NAME, label + ": cold -> warm (cached real-data LM)", "s", cold, warm, warm / cold,
                "warm/cold time", f"warm < {TARGET_SECONDS:g} s", warm < TARGET_SECONDS,
                f"{'textebm eval-ppl' if registered() else 'textebm.cli.eval_ppl (not yet registered in textebm.cli)'}"
                f" as a subprocess; absolute target on a noisy machine; in-process (lm_eval's own) s: cold "
                f"{median(inner['cold']):.2f}, warm {median(inner['warm']):.2f}",
                {**seconds, "in_process_cold": inner["cold"], "in_process_warm": inner["warm"]}), sets_row]


def _sample_sets_row(train: Path, test: Path, spec: dict, repeats: int, cache: Path) -> Row:
    """`evaluate_sample_sets` on `sets` sets of stand-in samples (training lines) in one call, against
    one `evaluate_samples` call per set (the old path of `textebm evaluate`); real-data LM cached."""
    import random

    import lm_eval

    real = lm_eval.read_sentences(train, "training")
    held_out = lm_eval.read_sentences(test, "test")
    sets = {f"set{i}": random.Random(i).sample(real.sentences, spec["set_size"]) for i in range(spec["sets"])}
    with tempfile.TemporaryDirectory(prefix="bench-sets-") as tmp:
        paths = {}
        for name, lines in sets.items():
            paths[name] = Path(tmp) / f"{name}.txt"
            paths[name].write_text("\n".join(lines) + "\n", encoding="utf-8")

        def separately():
            for path in paths.values():
                lm_eval.evaluate_samples(path, train, test)

        def together():
            lm_eval.evaluate_sample_sets({k: lm_eval.normalize_lines(v) for k, v in sets.items()}, real, held_out)

        previous = os.environ.get("TEXTEBM_LM_CACHE_DIR")
        os.environ["TEXTEBM_LM_CACHE_DIR"] = str(cache)  # the warm cache of the rows above
        try:
            seconds = interleave({"separately": separately, "together": together}, repeats)
        finally:
            if previous is None:
                os.environ.pop("TEXTEBM_LM_CACHE_DIR")
            else:
                os.environ["TEXTEBM_LM_CACHE_DIR"] = previous
    ref, cand = median(seconds["separately"]), median(seconds["together"])
    return Row(NAME, f"{spec['sets']} sample sets of {spec['set_size']:,}: one call per set -> one call for all",
               "s", ref, cand, cand / ref, "time ratio", "", None,
               "lm_eval.evaluate_samples per set vs lm_eval.evaluate_sample_sets (one real-LM load, test scored "
               "once); real-data LM cached", seconds)
