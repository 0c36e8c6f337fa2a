"""`python -m bench`: run the benchmark suite, write bench/results/latest.{json,md}, print the table.

    python -m bench                                   # everything, median of 5
    python -m bench --only sampling,training --repeats 3
    python -m bench --only training --set posterior_steps=10   # measure a training variant
    python -m bench --only step_profile --threads 1           # where a cpu-preset step's time goes
    python -m bench --quick --repeats 1 --out /tmp/b           # smoke run with tiny sizes
    python -m bench --only precision --checkpoint RUN         # reduced-precision decoding, with its quality cost
    python -m bench --only step_profile,levers --device cuda  # a step on the GPU: TF32, bf16, compile, memory

Every figure is a ratio against a plain reference measured in the same run (bench/reference.py),
reference and candidate interleaved; see bench/__init__.py for why.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
import traceback
from pathlib import Path

import torch

from bench import Row
from textebm.devices import cpu_description
from textebm.io import atomic_write_files, json_safe

# in the order they run: on a GPU `levers` compiles, the longest and least known, so it follows `batching`
BENCHMARKS = ("training", "step_profile", "batching", "levers", "sampling", "precision", "eval_ppl", "likelihood",
              "server")
ON_DEVICE = ("step_profile", "batching", "levers")  # the benchmarks that `--device` moves; the others measure the CPU


def machine() -> dict:
    """What ran the figures: they are only comparable on the same machine."""
    try:
        load = os.getloadavg()
    except OSError:
        load = None
    cpu = cpu_description()
    return {
        "cpu": cpu["cpu"] or platform.processor(),
        "cpu_vector": cpu["vector"],
        "cpu_bf16": cpu["bf16"],
        "cpu_amx": cpu["amx"],
        "cores": cpu["cores"],
        "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_average_at_start": load,
    }


def _fmt(x: float | None) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.3g}" if abs(x) < 1 else f"{x:.2f}"


def markdown(rows: list[Row], info: dict, args) -> str:
    met = {True: "met", False: "**not met**", None: "—"}
    lines = [
        f"Benchmarks of textebm (`{' '.join(['python -m bench'] + sys.argv[1:])}`), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(info['started']))}, commit {info.get('commit')}; "
        f"median of {args.repeats}, reference and candidate interleaved.",
        "",
        f"Machine: {info['machine']['cpu']}, {info['machine']['cores']} cores, torch {info['machine']['torch']} "
        f"({info['machine']['torch_threads']} threads), "
        f"load average at start {info['machine']['load_average_at_start']}; GPU: {info['machine']['cuda'] or 'none'}"
        f" ({', '.join(ON_DEVICE)} on {info['device']}).",
        "",
        "| benchmark | case | unit | reference | candidate | ratio | target | status | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ratio = f"{_fmt(r.ratio)}x ({r.ratio_kind})" if r.ratio is not None else "—"
        note = r.note.replace("|", "\\|")
        lines.append(f"| {r.benchmark} | {r.case} | {r.unit} | {_fmt(r.reference)} | {_fmt(r.candidate)} | "
                     f"{ratio} | {r.target or '—'} | {met[r.met]} | {note} |")
    return "\n".join(lines) + "\n"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default=",".join(BENCHMARKS),
                   help=f"comma-separated subset of {','.join(BENCHMARKS)} (default: all)")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per contender; medians are reported")
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run, not figures")
    p.add_argument("--out", help="folder of latest.json and latest.md (default bench/results, the committed full "
                                 "table, for a run of every benchmark; bench/results/partial for an --only subset)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for the training candidate (repeatable), as in `textebm train --set`")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    p.add_argument("--device", default="cpu",
                   help=f"cpu, cuda, cuda:N or auto: where {' and '.join(ON_DEVICE)} run (the other benchmarks "
                        "measure the CPU); on CUDA every timing waits for the device")
    p.add_argument("--checkpoint", metavar="RUN",
                   help="a trained run: the quality rows of `precision`, and the model the `server` rows serve")
    args = p.parse_args(argv)
    args.only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(args.only) - set(BENCHMARKS))
    if unknown:
        p.error(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}")
    if not args.only:
        p.error("--only names no benchmark")
    if args.repeats < 1:
        p.error("--repeats must be at least 1")
    if args.threads is not None and args.threads < 1:
        p.error(f"--threads must be at least 1, not {args.threads}")
    if args.out is None:  # a few benchmarks' rows must not replace the committed table of all of them
        args.out = "bench/results" if set(args.only) == set(BENCHMARKS) else "bench/results/partial"
    return args


def run_one(name: str, args) -> list[Row]:
    if name == "sampling":
        from bench import sampling
        return sampling.run(args.quick, args.repeats)
    if name == "batching":
        from bench import batching
        return batching.run(args.quick, args.repeats, args.device)
    if name == "precision":
        from bench import precision
        return precision.run(args.quick, args.repeats, args.checkpoint)
    if name == "training":
        from bench import training
        return training.run(args.quick, args.repeats, args.overrides)
    if name == "step_profile":
        from bench import step_profile
        return step_profile.run(args.quick, args.repeats, args.overrides, args.device)
    if name == "levers":
        from bench import levers
        return levers.run(args.quick, args.repeats, args.overrides, args.device)
    if name == "eval_ppl":
        from bench import eval_ppl
        return eval_ppl.run(args.quick, args.repeats)
    if name == "likelihood":
        from bench import likelihood
        return likelihood.run(args.quick, args.repeats)
    from bench import server
    return server.run(args.quick, args.repeats, args.checkpoint)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from textebm.devices import resolve_device
    from textebm.errors import UserError
    from textebm.io import check_writable
    from textebm.model.runs import is_run

    try:  # before any work: a bad --out or --checkpoint failed after the first benchmarks, losing their rows
        args.device = str(resolve_device(args.device))
        check_writable(args.out, folder=True)
        if args.checkpoint is not None and not is_run(args.checkpoint):
            raise UserError(f"--checkpoint {args.checkpoint} is not a textebm run (no config.json)")
    except UserError as err:
        print(f"python -m bench: error: {err}", file=sys.stderr)
        return 2
    from textebm.experiments.reproduce import code_commit

    info = {"started": time.time(), "commit": code_commit(), "machine": machine(), "repeats": args.repeats,
            "quick": args.quick, "overrides": args.overrides, "only": args.only, "device": args.device}
    rows: list[Row] = []
    failed = False
    for name in [b for b in BENCHMARKS if b in args.only]:
        tic = time.perf_counter()
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        try:
            rows += run_one(name, args)
        except Exception as err:  # one broken benchmark must not lose the others' figures
            failed = True
            traceback.print_exc()
            rows.append(Row(name, "(failed)", note=f"error: {type(err).__name__}: {err}"))
        print(f"[bench] {name} done in {time.perf_counter() - tic:.0f} s", file=sys.stderr, flush=True)
        table = save(Path(args.out), rows, info, args)  # after each benchmark: a run cut short keeps what finished
    print(table)
    return 1 if failed else 0


def save(out: Path, rows: list[Row], info: dict, args) -> str:
    """Write the rows so far as latest.json and latest.md; return the table."""
    info["seconds"] = round(time.time() - info["started"], 1)
    table = markdown(rows, info, args)
    record = json_safe({**info, "rows": [r.to_dict() for r in rows]})  # a NaN figure is null: valid JSON
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_files([(out / "latest.json", (json.dumps(record, indent=1, allow_nan=False) + "\n").encode()),
                        (out / "latest.md", table.encode())])  # the two of one moment, or the two before
    return table


if __name__ == "__main__":
    sys.exit(main())
