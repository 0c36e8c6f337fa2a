"""The Langevin settings sweep behind docs/inference.md: which posterior (and prior) chain makes z used.

Each variant trains the same model (the `cpu` preset, one thread, the same seed) for the same
number of steps, which costs the same time for every variant of the posterior grid (K1 is fixed;
step size and noise cost nothing), and then reports its last validation (NLL with posterior and
with prior z, their gap, mutual information, active units), its training speed, and FPPL/RPPL of
1,000 samples (temperature 1) by `textebm eval-ppl`.

    python -m bench.inference_sweep --grid posterior --steps 200 --jobs 2 --out runs/sweep
    python -m bench.inference_sweep --grid prior --steps 200 --base posterior_step_size=0.5 ...

Each finished variant is written to OUT/<name>/result.json at once, so an interrupted sweep is
continued by running the same command again; OUT/results.md holds the table of what is done.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from textebm.io import atomic_write_text
from textebm.model.checkpoints import has_checkpoint
from textebm.training.training_log import read_records

SCHEDULE = ["posterior_step_size=0.8", "posterior_step_schedule=geometric", "posterior_step_size_end=0.05"]


def posterior_grid() -> dict[str, list[str]]:
    grid = {f"step{s}-noise{c}": [f"posterior_step_size={s}", f"posterior_noise={c}"]
            for s, c in itertools.product((0.1, 0.3, 0.5, 0.8), (1, 0.5, 0.1, 0))}
    grid["sched0.8-0.05-noise0.1"] = [*SCHEDULE, "posterior_noise=0.1"]
    grid["sched0.8-0.05-noise0"] = [*SCHEDULE, "posterior_noise=0"]
    return grid


def prior_grid() -> dict[str, list[str]]:
    """Around the chosen posterior chain: the energy's learning rate and the prior chain."""
    return {
        "base": [],
        "energy_lr3e-5": ["energy_lr=3e-5"],
        "energy_lr3e-4": ["energy_lr=3e-4"],
        "prior_steps30": ["prior_steps=30"],
        "prior_step0.2": ["prior_step_size=0.2"],
        "prior_noise0.5": ["prior_noise=0.5"],
        "gaussian": ["prior=gaussian"],
    }


def run_variant(name: str, overrides: list[str], args, env: dict) -> dict:
    folder = Path(args.out) / name
    result_path = folder / "result.json"
    if result_path.is_file():
        return json.loads(result_path.read_text())
    textebm = [str(Path(sys.executable).parent / "textebm")]
    sets = [x for item in [*args.base, *overrides] for x in ("--set", item)]
    if not has_checkpoint(folder):
        if folder.exists():  # a variant killed before its first checkpoint: start it again
            shutil.rmtree(folder)
        subprocess.run([*textebm, "train", "--corpus", "ptb", "--preset", "cpu", "--threads", "1", "--no-progress",
                        "--max-steps", str(args.steps), "--seed", str(args.seed), "--out", str(folder),
                        "--set", f"valid_every={args.valid_every}", *sets],
                       check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = read_records(folder)
    train = [r for r in records if r["kind"] == "train"]
    valid = [r for r in records if r["kind"] in ("valid", "epoch", "final")]
    samples = folder / "samples.txt"
    subprocess.run([*textebm, "sample", "--checkpoint", str(folder), "-n", str(args.samples), "--seed", "0",
                    "--threads", "1", "--out", str(samples)], check=True, env=env, stdout=subprocess.DEVNULL)
    ppl = json.loads(subprocess.run([*textebm, "eval-ppl", "--samples", str(samples), "--corpus", "ptb", "--json"],
                                    check=True, env=env, capture_output=True, text=True).stdout)
    last = valid[-1]
    result = {
        "name": name, "overrides": [*args.base, *overrides], "steps": last["step"],
        "valid_nll_posterior": last["valid_nll_posterior"], "valid_nll_prior": last["valid_nll_prior"],
        "gap": last["valid_gap"], "rough_mi": last["valid_rough_mi"],
        "active_units": last["valid_active_units"],
        "gaps": [round(r["valid_gap"], 4) for r in valid],
        "tokens_per_s": sum(r["tokens_per_s"] for r in train[1:]) / max(1, len(train) - 1),
        "fppl": ppl["forward_ppl"], "rppl": ppl["reverse_ppl"], "distinct_2": ppl["distinct_2"],
    }
    atomic_write_text(result_path, json.dumps(result, indent=1) + "\n")
    return result


def table(results: list[dict]) -> str:
    head = ("| variant | valid NLL post z | prior z | gap | rough MI (nats) | AU | tok/s | FPPL | RPPL | distinct-2 |\n"
            "|---|---|---|---|---|---|---|---|---|---|\n")
    rows = [f"| {r['name']} | {r['valid_nll_posterior']:.3f} | {r['valid_nll_prior']:.3f} | {r['gap']:.3f} | "
            f"{r.get('rough_mi', r.get('mutual_information')):.2f} | {r['active_units']} | "  # (older results: MI)
            f"{r['tokens_per_s']:.0f} | {r['fppl']:.0f} | "
            f"{r['rppl']:.0f} | {r['distinct_2']:.3f} |" for r in results]
    return head + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.inference_sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("--grid", choices=("posterior", "prior"), default="posterior")
    p.add_argument("--only", nargs="*", help="run these variants of the grid only")
    p.add_argument("--base", nargs="*", default=[], metavar="KEY=VALUE", help="settings shared by every variant")
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--valid-every", type=int, default=100)
    p.add_argument("--samples", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=1, help="variants trained at once (one thread each)")
    p.add_argument("--out", default="runs/inference-sweep")
    args = p.parse_args(argv)
    grid = posterior_grid() if args.grid == "posterior" else prior_grid()
    if args.only:
        grid = {k: v for k, v in grid.items() if k in args.only}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(args.jobs) as pool:
        results = list(pool.map(lambda item: run_variant(*item, args, env), grid.items()))
    text = table(results)
    atomic_write_text(Path(args.out) / "results.md", text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
