"""The GPU acceptance run (issue 25): every command of the toolkit once on a CUDA device, the CUDA
tests, the GPU benchmark rows and data parallelism, in one call of at most 8 minutes.

    bash bench/gpu_acceptance.sh --device cuda --data-dir .gpu-data     # on a GPU machine (docs/training.md)
    bash bench/gpu_acceptance.sh --device cpu --out /tmp/acceptance      # dry mode: tiny model, a few minutes less

It writes to --out (the device tool's $OUT) as it goes: `report.md` and `report.json` are rewritten
after every stage, so a run cut short still says what passed; `acceptance.log` holds every stage's
output, as it comes; `bench/latest.{md,json}` the benchmark rows. Stages that would start after the time
budget are reported as not run; on a GPU a stage past its limit (LIMITS_S) ends the run with every
thread's stack in the log, the report naming it as the stage running. Exit status 0 when no stage failed.

The stages, in order of what a first GPU run must show: the environment; `textebm train --corpus
ptb` at the paper preset (`ptb`) with validation, then `--resume`; `sample` (fp32, bf16, same seed
twice; int8 refused in one line on CUDA); `chain`, `interpolate`, `score`, `reconstruct`, a small
`evaluate`; `serve` with /generate and /score; data parallelism; the CUDA tests (`pytest -m "cuda
and not slow"`); last, as the one stage whose length on a GPU nobody knows yet (compiling), the
benchmark rows (`python -m bench --only step_profile,batching,levers`: each benchmark's rows are on
disk as soon as it ends, so a run stopped at the budget keeps them).

Data parallelism on one card: NCCL refuses two processes on one GPU, so the two-process run uses
gloo on CUDA tensors (`TEXTEBM_DIST_BACKEND=gloo`: both processes share the card) and is held
against one process at the same global batch; NCCL itself runs with one process (torchrun
--nproc_per_node 1: a process group and DDP wrappers all the same).

Dry mode (`--device cpu`) runs the same stages with a tiny model on a CPU (the CUDA-only checks are
left out and say so; the CUDA tests are collected and skip): tests/test_gpu_acceptance.py runs it, so
the script cannot rot before a GPU comes.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import importlib.metadata
import io
import json
import math
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SENTENCES = ["the company said it expects to report a loss", "stocks fell sharply in heavy trading yesterday",
             "the bank raised its prime rate", "investors are worried about the economy"]
TINY = ["embedding_dim=16", "hidden_dim=32", "latent_dim=4", "energy_hidden=16", "prior_steps=3",
        "posterior_steps=2", "batch_size=16", "max_length=30", "num_log_samples=1", "dropout=0"]


@dataclass
class Stage:
    name: str
    status: str  # passed | failed | not run
    seconds: float
    detail: str


@dataclass
class Plan:
    """What the run does on this device: sizes, steps and budgets."""

    device: str
    data_dir: Path
    out: Path  # the report and logs (the device tool brings back 8 files at most: the runs go to `work`)
    work: Path
    budget_s: float
    cuda: bool

    @property
    def preset(self) -> list[str]:
        if self.cuda:  # the paper's sizes; validation on a few batches, twice
            return ["--preset", "ptb", "--set", "valid_every=20", "--set", "valid_batches=4", "--set",
                    "checkpoint_every=20", "--set", "log_every=5", "--set", "num_log_samples=2"]
        return ["--preset", "cpu", *sets(TINY), "--set", "valid_every=3", "--set", "valid_batches=1",
                "--set", "checkpoint_every=3", "--set", "log_every=1", "--train-split", "valid"]  # 3,370 lines

    @property
    def steps(self) -> int:
        return 40 if self.cuda else 6

    @property
    def run_folder(self) -> Path:
        return self.work / "run"


def sets(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


class Report:
    """The stages so far, rewritten to report.md and report.json after each one."""

    def __init__(self, plan: Plan, header: str):
        self.plan, self.header, self.stages, self.figures = plan, header, [], {}
        self.started = time.monotonic()
        self.log = open(plan.out / "acceptance.log", "a", encoding="utf-8", buffering=1)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return self.plan.budget_s - self.elapsed()

    def run(self, name: str, stage, limit_s: float | None = None) -> None:
        """`stage`, reported; on CUDA a stage that runs past `limit_s` (or past the budget by a minute) ends
        the process with every thread's stack in the log, and the report names it as the one running, so
        that a hang costs one stage's minutes and says where it hung, not the whole call's."""
        if self.left() <= 0:
            self.add(Stage(name, "not run", 0.0, f"the time budget ({self.plan.budget_s:.0f} s) was spent"))
            return
        self.log.write(f"\n===== {name} (at {self.elapsed():.0f} s) =====\n")
        self.add(Stage(name, "running", 0.0, "cut off here if this is the last line: its stack is in acceptance.log"))
        if self.plan.cuda:
            faulthandler.dump_traceback_later(min(limit_s or math.inf, max(30.0, self.left() + 60)), exit=True,
                                              file=self.log)
        tic = time.monotonic()
        try:
            detail, status = stage() or "", "passed"
        except Exception as err:  # noqa: BLE001 - a failing stage is reported; the next stages still run
            self.log.write(traceback.format_exc())
            detail, status = f"{type(err).__name__}: {err}".splitlines()[0][:500], "failed"
        finally:
            faulthandler.cancel_dump_traceback_later()
        self.stages.pop()  # the provisional record
        self.add(Stage(name, status, time.monotonic() - tic, detail))

    def add(self, stage: Stage) -> None:
        self.stages.append(stage)
        self.log.write(f"----- {stage.name}: {stage.status.upper()} ({stage.seconds:.1f} s) {stage.detail}\n")
        print(f"[acceptance] {stage.name}: {stage.status} ({stage.seconds:.0f} s) {stage.detail}", flush=True)
        self.write()

    def write(self) -> None:
        lines = [self.header, "", "| stage | result | seconds | detail |", "|---|---|---|---|"]
        lines += [f"| {s.name} | {s.status} | {s.seconds:.1f} | {s.detail.replace('|', '/')} |" for s in self.stages]
        if self.figures:
            lines += ["", "Figures:", ""] + [f"- {key}: {value}" for key, value in self.figures.items()]
        failed = [s.name for s in self.stages if s.status in ("failed", "running")]
        lines += ["", f"{len(self.stages)} stages reported after {self.elapsed():.0f} s; "
                      f"{'failed: ' + ', '.join(failed) if failed else 'none failed'}."]
        atomic_write(self.plan.out / "report.md", "\n".join(lines) + "\n")
        atomic_write(self.plan.out / "report.json", json.dumps(
            {"header": self.header, "seconds": round(self.elapsed(), 1), "figures": self.figures,
             "stages": [asdict(s) for s in self.stages]}, indent=1) + "\n")


def atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


class Tee(io.StringIO):
    """A command's stdout or stderr, kept for its checks and written to the log as it comes."""

    def __init__(self, log):
        super().__init__()
        self.log = log

    def write(self, text: str) -> int:
        self.log.write(text)
        return super().write(text)


class Toolkit:
    """The commands, in this process (one import of torch for all) or as subprocesses."""

    def __init__(self, plan: Plan, report: Report):
        self.plan, self.report = plan, report

    def cli(self, *argv) -> tuple[int, str, str]:
        from textebm.cli import main

        argv = [str(a) for a in argv]
        out, err = Tee(self.report.log), Tee(self.report.log)  # in the log as it comes: a hang shows where
        self.report.log.write(f"$ textebm {' '.join(argv)}\n")
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                status = main(argv)
            except SystemExit as exit_:
                status = exit_.code
        self.report.log.write(f"[exit status {status}]\n")
        return status, out.getvalue(), err.getvalue()

    def ok(self, *argv) -> str:
        status, out, err = self.cli(*argv)
        if status != 0:
            raise AssertionError(f"textebm {argv[0]} exited {status}: {err.strip()[-300:]}")
        return out

    def subprocess(self, argv: list[str], env: dict | None = None, timeout: float | None = None):
        self.report.log.write(f"$ {' '.join(argv)}\n")
        timeout = max(30.0, min(timeout or math.inf, self.report.left() + 60))
        try:
            result = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                                    env={**os.environ, **(env or {})})
        except subprocess.TimeoutExpired as stopped:  # the output so far still goes to the log
            output = [part.decode(errors="replace") if isinstance(part, bytes) else part or ""
                      for part in (stopped.stdout, stopped.stderr)]
            self.report.log.write("".join(output) + f"[stopped after {timeout:.0f} s]\n")
            raise
        self.report.log.write(result.stdout + result.stderr + f"[exit status {result.returncode}]\n")
        return result

    def common(self) -> list[str]:
        return ["--device", self.plan.device]


def records(folder: Path, kind: str) -> list[dict]:
    lines = (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    return [r for r in map(json.loads, lines) if r.get("kind") == kind]


def step_ms(record: dict, batch: int) -> float:
    """A training step's milliseconds, from its tokens/s and the tokens of its batch."""
    tokens = record["nll_sentence"] * batch / record["nll_token"]
    return 1000 * tokens / record["tokens_per_s"]


# ---- the stages -----------------------------------------------------------------------------------

def environment(plan: Plan, tk: Toolkit, report: Report) -> str:
    import torch

    if plan.cuda and not torch.cuda.is_available():
        raise AssertionError("--device cuda, but torch sees no CUDA GPU")
    found = f"torch {torch.__version__}, Python {platform.python_version()}"
    if plan.cuda:
        found += (f", {torch.cuda.get_device_name(0)}, CUDA {torch.version.cuda}, "
                  f"cuDNN {torch.backends.cudnn.version()}, {torch.cuda.device_count()} GPU(s)")
    # The versions an import failure is first read against: the image's own beside the wheelhouse's.
    versions = ", ".join(f"{name} {installed_version(name)}" for name in
                         ("numpy", "typing-extensions", "anyio", "pyarrow", "fsspec", "huggingface-hub", "datasets",
                          "fastapi", "pydantic", "sentencepiece"))
    for module in ("textebm", "nltk", "fastapi", "uvicorn", "fastapi_offline"):
        try:
            __import__(module)
        except Exception as err:
            raise AssertionError(f"import {module}: {type(err).__name__}: {err} ({versions})") from err
    try:  # only SNLI's preparation from the hub needs it: no stage does, so a failure is a note
        __import__("datasets")
        note = ""
    except Exception as err:  # noqa: BLE001 - pyarrow or fsspec of the image below datasets' floor
        note = f"; note: import datasets failed ({type(err).__name__}: {str(err)[:120]}): SNLI from the hub only"
    return found + f"; every package the stages need imports ({versions}){note}"


def installed_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def train(plan: Plan, tk: Toolkit, report: Report) -> str:
    folder = plan.run_folder
    tic = time.monotonic()
    tk.ok("train", "--corpus", "ptb", "--data-dir", plan.data_dir, "--out", folder, *plan.preset,
          "--max-steps", plan.steps, "--seed", "0", "--no-progress", *tk.common())
    seconds = time.monotonic() - tic
    config = json.loads((folder / "config.json").read_text())
    train_rows, valid_rows = records(folder, "train"), records(folder, "valid") + records(folder, "final")
    assert train_rows and train_rows[-1]["step"] == plan.steps, train_rows[-1:]
    assert len(valid_rows) >= 2, f"{len(valid_rows)} validation records"
    assert all(r["valid_nll_posterior"] == r["valid_nll_posterior"] for r in valid_rows), "NaN in validation"
    later = [r for r in train_rows if r["step"] > 1]
    ms = statistics.median(step_ms(r, config["batch_size"]) for r in later)
    report.figures["training step (ms, median, preset " + config["preset"] + ")"] = round(ms, 1)
    return (f"{plan.steps} steps of preset {config['preset']} (LSTM {config['embedding_dim']}/{config['hidden_dim']}, "
            f"batch {config['batch_size']}, K1={config['posterior_steps']}, K0={config['prior_steps']}) in "
            f"{seconds:.0f} s with {len(valid_rows)} validations; step {ms:.0f} ms (median); NLL/token "
            f"{train_rows[0]['nll_token']:.2f} -> {train_rows[-1]['nll_token']:.2f}; last valid NLL/token "
            f"{valid_rows[-1]['valid_nll_posterior']:.2f}")


def resume(plan: Plan, tk: Toolkit, report: Report) -> str:
    more = plan.steps + (10 if plan.cuda else 3)
    tk.ok("train", "--corpus", "ptb", "--data-dir", plan.data_dir, "--out", plan.run_folder, "--resume",
          "--max-steps", more, "--no-progress", *tk.common())
    steps = [r["step"] for r in records(plan.run_folder, "train")]
    assert steps[-1] == more and steps == sorted(steps), steps[-5:]
    assert f"resumed from step {plan.steps}" in (plan.run_folder / "train.log").read_text()
    return f"resumed at step {plan.steps}, trained to {more}"


def sample(plan: Plan, tk: Toolkit, report: Report) -> str:
    run = ["sample", "--checkpoint", plan.run_folder, "-n", "8", "--seed", "3", *tk.common()]
    first, again = tk.ok(*run), tk.ok(*run)
    assert first == again and len(first.splitlines()) == 8, "the same seed gave other sentences"
    bf16 = tk.ok(*run, "--precision", "bf16")
    assert len(bf16.splitlines()) == 8
    status, _, err = tk.cli(*run, "--precision", "int8")
    if plan.cuda:
        assert status == 2 and err.strip().count("\n") == 0 and "int8" in err, (status, err)
        int8 = "int8 refused in one line"
    else:
        assert status == 0, err
        int8 = "int8 ran (CPU)"
    return f"fp32 (same seed twice: the same 8 sentences), bf16; {int8}; e.g. {first.splitlines()[0][:80]!r}"


def latent_commands(plan: Plan, tk: Toolkit, report: Report) -> str:
    lines = plan.work / "lines.txt"
    lines.write_text("\n".join(SENTENCES) + "\n", encoding="utf-8")
    run = ["--checkpoint", plan.run_folder, *tk.common()]
    chain = json.loads(tk.ok("chain", *run, "--steps", "0,5", "--chains", "2", "--json"))
    path = json.loads(tk.ok("interpolate", *run, "--from", SENTENCES[0], "--to", SENTENCES[1], "--points", "4",
                            "--json"))
    scores = tk.ok("score", *run, "--num-chains", "2", lines).splitlines()
    assert len(scores) == len(SENTENCES), scores
    rebuilt = json.loads(tk.ok("reconstruct", *run, "--input", lines, "--json"))
    return (f"chain ({len(json.dumps(chain))} bytes of JSON), interpolate ({len(json.dumps(path))} bytes), "
            f"score ({len(scores)} lines), reconstruct (BLEU {rebuilt['bleu']:.1f})")


def evaluate(plan: Plan, tk: Toolkit, report: Report) -> str:
    result = json.loads(tk.ok("evaluate", "--checkpoint", plan.run_folder, "--data-dir", plan.data_dir, "--split",
                              "test", "--max-sentences", "16", "--num-chains", "4", "--num-is-samples", "16",
                              "--ais-chains", "100", "--ais-steps", "50", "--partition-samples", "1000",
                              "--fppl-samples", "0", "--json", "--no-progress", *tk.common()))
    assert result["perplexity"] > 1, result["perplexity"]
    return (f"16 sentences: NLL/sentence {result['nll_per_sentence']:.1f}, perplexity {result['perplexity']:.0f}, "
            f"log Z {result['log_partition']['log_z']:.2f} (FPPL left out: KenLM is not installed there)")


def serve(plan: Plan, tk: Toolkit, report: Report) -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    local = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # an http_proxy must not catch 127.0.0.1
    log = open(plan.out / "acceptance.log", "a", encoding="utf-8")
    server = subprocess.Popen([sys.executable, "-m", "textebm", "serve", "--checkpoint", str(plan.run_folder),
                               "--port", str(port), "--log-level", "warning", *tk.common()],
                              cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with local.open(base + "/health", timeout=5) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(f"the server did not come up (exit status {server.poll()})") from None
                time.sleep(0.5)

        def post(path: str, body: dict) -> dict:
            request = urllib.request.Request(base + path, json.dumps(body).encode(),
                                             {"Content-Type": "application/json"})
            with local.open(request, timeout=120) as answer:
                assert answer.status == 200, answer.status
                return json.loads(answer.read())

        generated = post("/generate", {"n": 4, "seed": 1})
        scored = post("/score", {"sentences": SENTENCES[:2], "num_chains": 2, "seed": 1})
        assert len(generated["sentences"]) == 4 and len(scored["scores"]) == 2
        return f"/health, /generate (4 sentences in {generated['took_ms']:.0f} ms), /score (2 sentences)"
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()


def benchmarks(plan: Plan, tk: Toolkit, report: Report) -> str:
    out = plan.out / "bench"
    argv = ([sys.executable, "-m", "bench", "--only", "step_profile,batching,levers", "--device", plan.device,
             "--repeats", "3"]
            if plan.cuda else [sys.executable, "-m", "bench", "--quick", "--only", "step_profile,batching,levers",
                               "--device", "cpu", "--repeats", "1", "--threads", "1"])
    try:
        result = tk.subprocess([*argv, "--out", str(out)])
    except subprocess.TimeoutExpired:  # past the budget: the benchmarks that finished wrote their rows
        result = None
    rows = json.loads((out / "latest.json").read_text())["rows"] if (out / "latest.json").is_file() else []
    found = []
    for row in rows:
        if row["benchmark"] not in ("levers", "batching") or row["ratio"] is None:
            continue
        what = row["case"].split(",")[0].replace("Learner.step with ", "").replace(" in a batch", "")
        report.figures[what] = (f"{row['ratio']:.2f}x ({row['ratio_kind']}; {row['reference']:.1f} -> "
                                f"{row['candidate']:.1f} {row['unit']})")
        found.append(f"{what}: {row['ratio']:.2f}x")
    assert result is not None, f"stopped at the time budget; rows written: {len(rows)}; " + "; ".join(found)
    assert result.returncode == 0, result.stderr[-500:]
    return f"{len(rows)} rows; " + "; ".join(found)


def data_parallel(plan: Plan, tk: Toolkit, report: Report) -> str:
    work = plan.work
    corpus = work / "ddp.txt"
    corpus.write_text("".join((plan.data_dir / "ptb" / "valid.txt").read_text().splitlines(keepends=True)[:400]))
    common = ["train", "--corpus", str(corpus), "--preset", "cpu", *sets(TINY), "--set", "batch_size=8",
              "--set", "log_every=1", "--set", "checkpoint_every=100", "--max-steps", "4", "--no-progress",
              "--seed", "0", *tk.common()]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    env = {"OMP_NUM_THREADS": "1", "TEXTEBM_DIST_BACKEND": "gloo"}
    tk.ok(*common, "--out", work / "ddp-one")
    two = tk.subprocess([*torchrun, "--nproc_per_node", "2", "-m", "textebm", *common, "--out", str(work / "ddp-two")],
                        env=env, timeout=150)
    assert two.returncode == 0, two.stderr[-500:]
    assert "data parallel: 2 processes, global batch 8" in two.stdout + two.stderr
    one, both = records(work / "ddp-one", "train"), records(work / "ddp-two", "train")
    assert [r["step"] for r in one] == [r["step"] for r in both] == [1, 2, 3, 4]
    tolerance = 1e-3 if plan.cuda else 1e-5  # cuDNN may pick other kernels for half the rows
    worst = max(abs(a["nll_token"] - b["nll_token"]) / abs(a["nll_token"]) for a, b in zip(one, both))
    assert worst <= tolerance, f"two processes differ from one by {worst:.2g} (relative NLL/token)"
    found = f"2 gloo processes on {plan.device} = 1 process at global batch 8 (NLL/token within {worst:.1g})"
    if not plan.cuda:
        return found + "; NCCL: CUDA only"
    nccl = tk.subprocess([*torchrun, "--nproc_per_node", "1", "-m", "textebm", *common, "--out",
                          str(work / "ddp-nccl")], env={"OMP_NUM_THREADS": "1"}, timeout=120)
    assert nccl.returncode == 0, nccl.stderr[-500:]
    assert "data parallel: 1 process, global batch 8" in nccl.stdout + nccl.stderr
    return found + "; NCCL with one process (a group and DDP): trained 4 steps"


def cuda_test_files() -> list[Path]:
    """The test modules holding a test marked `cuda` (tests/conftest.py skips those without a GPU): only
    these are collected, since the GPU machine lacks what other modules import (KenLM, a browser)."""
    marked = re.compile(r"^\s*@pytest\.mark\.cuda\b|marks=pytest\.mark\.cuda\b", re.MULTILINE)
    modules = (ROOT / "tests").glob("test_*.py")
    return sorted(path for path in modules if marked.search(path.read_text(encoding="utf-8")))


def cuda_tests(plan: Plan, tk: Toolkit, report: Report) -> str:
    """`pytest -m "cuda and not slow"` over the modules that mark a CUDA test. Without a GPU (dry mode) the
    same command runs and the tests skip: the modules still import there and the selection is not empty."""
    files = [str(path.relative_to(ROOT)) for path in cuda_test_files()]
    result = tk.subprocess([sys.executable, "-m", "pytest", "-m", "cuda and not slow", "-q", "-p", "no:cacheprovider",
                            *files], env={"TEXTEBM_DATA_DIR": str(plan.data_dir)}, timeout=240)
    summary = (result.stdout.strip().splitlines() or ["no output"])[-1]
    assert result.returncode == 0, summary
    ran = sum(int(n) for n, _ in re.findall(r"(\d+) (passed|skipped)", summary))
    assert ran > 0, f"no CUDA test selected: {summary}"
    return f"{len(files)} modules: {summary}"


STAGES = [("environment", environment), ("train (ptb data, validation)", train), ("train --resume", resume),
          ("sample", sample), ("chain, interpolate, score, reconstruct", latent_commands), ("evaluate", evaluate),
          ("serve", serve), ("data parallel", data_parallel), ("CUDA tests", cuda_tests), ("benchmarks", benchmarks)]


# The most a stage may take on a GPU before it is stopped as hung (a few times its estimate on an H100); the
# subprocess stages have their own timeouts below these, and nothing runs past the budget by over a minute.
LIMITS_S = {"environment": 60, "train (ptb data, validation)": 180, "train --resume": 120, "sample": 90,
            "chain, interpolate, score, reconstruct": 120, "evaluate": 150, "serve": 180, "data parallel": 330,
            "CUDA tests": 270}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/gpu_acceptance.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (the acceptance run) or cpu (dry mode, tiny model)")
    p.add_argument("--data-dir", default=os.environ.get("TEXTEBM_DATA_DIR", ".gpu-data"),
                   help="folder holding ptb/{train,valid,test}.txt (default: $TEXTEBM_DATA_DIR, else .gpu-data)")
    p.add_argument("--out", default=os.environ.get("OUT", "acceptance-out"),
                   help="where the report and logs go (default: $OUT, else acceptance-out)")
    p.add_argument("--work", help="where the runs are trained (default: a new temporary folder)")
    p.add_argument("--budget-s", type=float, default=420.0,
                   help="no stage starts after this many seconds (default 420: a call of 8 minutes, with margin)")
    args = p.parse_args(argv)
    device = args.device
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        p.error(f"--device must be cpu or cuda, not {device!r}")
    data_dir = Path(args.data_dir).resolve()
    if not (data_dir / "ptb" / "train.txt").is_file():
        p.error(f"{data_dir} has no ptb/train.txt (carry a folder with PTB: docs/training.md)")
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    work = Path(args.work or tempfile.mkdtemp(prefix="textebm-acceptance-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    plan = Plan(device, data_dir, out, work, args.budget_s, device != "cpu")
    os.environ.setdefault("TEXTEBM_OFFLINE", "1")
    mode = "GPU acceptance" if plan.cuda else "dry run on a CPU (tiny model)"
    header = (f"# textebm {mode}: `bash bench/gpu_acceptance.sh {' '.join(argv if argv is not None else sys.argv[1:])}`"
              f", {time.strftime('%Y-%m-%d %H:%M')}, {platform.node()}")
    report = Report(plan, header)
    toolkit = Toolkit(plan, report)
    for name, stage in STAGES:
        report.run(name, lambda stage=stage: stage(plan, toolkit, report), LIMITS_S.get(name))
    report.write()
    return 1 if any(s.status == "failed" for s in report.stages) else 0


if __name__ == "__main__":
    sys.exit(main())
