"""The GPU acceptance script (bench/gpu_acceptance.sh) in its dry mode on a CPU: every stage it runs on
a GPU runs here with a tiny model, so the script cannot rot before a GPU comes; a run cut short by
its time budget still reports what passed."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from bench.gpu_acceptance import cuda_test_files

ROOT = Path(__file__).resolve().parents[1]


def _acceptance(tmp_path: Path, data_dir: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": os.sys.executable, "OMP_NUM_THREADS": "1",
           "http_proxy": "http://127.0.0.1:9", "no_proxy": ""}  # a proxy must not catch the local server's probes
    env.pop("OUT", None)  # the device tool's variable: no wheelhouse is installed here
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_acceptance.sh"), "--device", "cpu", "--out", str(out),
                             "--work", str(tmp_path / "work"), "--data-dir", str(data_dir), *extra],
                            capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    report = json.loads((out / "report.json").read_text()) if (out / "report.json").is_file() else {}
    return result, report


@pytest.fixture
def ptb_folder(data_folder) -> Path:
    """A corpora folder whose ptb/ is the synthetic corpus (the script reads PTB from a folder)."""
    return data_folder(ptb="train valid test")


@pytest.mark.slow
def test_the_dry_run_passes_every_stage_on_a_cpu(tmp_path, ptb_folder):
    result, report = _acceptance(tmp_path, ptb_folder)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    status = {stage["name"]: stage["status"] for stage in report["stages"]}
    assert list(status) == ["environment", "train (ptb data, validation)", "train --resume", "sample",
                            "chain, interpolate, score, reconstruct", "evaluate", "serve", "data parallel",
                            "CUDA tests", "benchmarks"]
    assert set(status.values()) == {"passed"}
    cuda_stage = next(s["detail"] for s in report["stages"] if s["name"] == "CUDA tests")
    assert re.search(r"\d+ (passed|skipped)", cuda_stage), cuda_stage  # skipped without a GPU
    out = tmp_path / "out"
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["acceptance.log", "bench/latest.json", "bench/latest.md", "report.json", "report.md"]  # <= 8
    assert "none failed" in (out / "report.md").read_text()
    assert any("training step" in key for key in report["figures"])
    assert "4 one-sentence requests over one request of 4" in report["figures"]  # the per-request streams' cost


def test_a_run_cut_short_by_its_budget_still_reports_what_passed(tmp_path, ptb_folder):
    result, report = _acceptance(tmp_path, ptb_folder, "--budget-s", "0.01")
    assert result.returncode == 0, result.stderr[-3000:]
    stages = report["stages"]
    assert stages[0]["name"] == "environment" and stages[0]["status"] == "passed"  # it starts at once
    assert stages[0]["seconds"] > 0.01  # (importing the server's packages): so every later one starts past the budget
    assert len(stages) == 10 and {s["status"] for s in stages[1:]} == {"not run"}
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| environment | passed |" in text and text.count("| not run |") == 9


HUNG_STAGE = """
import sys, time
from pathlib import Path
from bench import gpu_acceptance as acceptance
folder = Path(sys.argv[1])
plan = acceptance.Plan("cuda", folder, folder, folder, budget_s=600.0, cuda=True)
report = acceptance.Report(plan, "# test")
report.run("quick", lambda: "done")
report.run("hung", lambda: time.sleep(60), limit_s=1)
"""


def test_a_hung_stage_on_a_gpu_ends_the_run_with_its_stack_and_is_named_in_the_report(tmp_path):
    # a hang in an in-process command ran until the device call's own timeout, and the log said nowhere where
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", HUNG_STAGE, str(tmp_path)], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0 and time.monotonic() - started < 30, result.stderr[-2000:]
    stages = json.loads((tmp_path / "report.json").read_text())["stages"]
    assert [(s["name"], s["status"]) for s in stages] == [("quick", "passed"), ("hung", "running")]
    log = (tmp_path / "acceptance.log").read_text()
    assert "Timeout (0:00:01)!" in log and "in <lambda>" in log, log[-2000:]  # every thread's stack
    assert "failed: hung" in (tmp_path / "report.md").read_text()


def test_the_script_refuses_a_data_folder_without_ptb(tmp_path):
    result, report = _acceptance(tmp_path, tmp_path)
    assert result.returncode == 2 and "has no ptb/train.txt" in result.stderr and not report


def test_every_cuda_test_is_in_a_module_the_cuda_stage_collects():
    """The CUDA stage collects only the modules that mark a test `cuda`; a CUDA test skipped by a skipif of
    its own, unmarked, would never run on the GPU (two resume tests were so until 2026-12-07)."""
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "cuda", "-p",
                                "no:cacheprovider", "tests"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    modules = {line.split("::")[0] for line in collected.stdout.splitlines() if "::" in line}
    assert modules == {f"tests/{path.name}" for path in cuda_test_files()}, collected.stdout[-2000:]
    unmarked = [path.name for path in (ROOT / "tests").glob("test_*.py")
                if re.search(r"skipif\(\s*not torch\.cuda\.is_available", path.read_text(encoding="utf-8"))]
    assert not unmarked, f"mark CUDA tests `cuda` (tests/conftest.py skips them), no skipif: {unmarked}"


def _package_names(path: Path) -> set[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return {canonicalize_name(name) for line in lines if not line.startswith("#") for name in line.split()}


def test_the_wheelhouse_is_what_textebm_needs_beyond_the_gpu_image():
    """Every package textebm requires, directly or through a package the image lacks, is in the image or in
    the wheelhouse, and the wheelhouse holds nothing else: else the first GPU run stops at an import
    (fastapi's opentelemetry-api was missing until 2026-12-07). textebm's own requirements are read from
    pyproject.toml, the others' from the installed packages (the versions the wheelhouse downloads)."""
    image = _package_names(ROOT / "bench" / "gpu_image_packages.txt")
    wheels = _package_names(ROOT / "bench" / "gpu_wheelhouse.txt")
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
    needed, todo = set(), [Requirement(line).name for line in project["dependencies"]]
    while todo:
        name = canonicalize_name(todo.pop())
        if name in needed or name in image or name == "kenlm":  # kenlm: source only, the run skips FPPL
            continue
        needed.add(name)
        for line in importlib.metadata.requires(name) or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    assert "torch" in image
    floors = {canonicalize_name(Requirement(line).name) for name in needed
              for line in importlib.metadata.requires(name) or [] if Requirement(line).specifier}
    carried = wheels - needed  # only what the image has, but perhaps below a floor of a carried package
    assert needed <= wheels and carried <= floors & image, (
        f"bench/gpu_wheelhouse.txt lacks {sorted(needed - wheels)} and needs no {sorted(carried - (floors & image))} "
        "(the installed packages' requirements changed?)")
    assert "typing-extensions" in carried  # pydantic's floor (4.16) is this month's release


def test_benchmarks_stopped_at_the_budget_report_the_rows_that_finished(tmp_path, monkeypatch):
    """The last stage, whose length on a GPU is unknown: killed at the budget, it still reports (and the
    report keeps) the figures of the benchmarks that ended before."""
    from bench import gpu_acceptance as acceptance

    plan = acceptance.Plan("cpu", tmp_path, tmp_path, tmp_path, budget_s=60.0, cuda=False)
    report = acceptance.Report(plan, "# test")
    row = {"benchmark": "levers", "case": "Learner.step with precision=bf16, batch 8", "ratio": 1.5,
           "ratio_kind": "speed-up", "reference": 10.0, "candidate": 6.7, "unit": "ms"}

    def stopped(argv, env=None, timeout=None):
        out = Path(argv[argv.index("--out") + 1])
        out.mkdir(parents=True)
        (out / "latest.json").write_text(json.dumps({"rows": [row]}))
        raise subprocess.TimeoutExpired(argv, 1.0)

    toolkit = acceptance.Toolkit(plan, report)
    monkeypatch.setattr(toolkit, "subprocess", stopped)
    report.run("benchmarks", lambda: acceptance.benchmarks(plan, toolkit, report))
    (stage,) = report.stages
    assert stage.status == "failed" and "time budget; rows written: 1" in stage.detail and "1.50x" in stage.detail
    assert "precision=bf16" in json.loads((tmp_path / "report.json").read_text())["figures"]


def test_a_package_that_does_not_import_fails_the_environment_stage_with_the_versions(tmp_path, monkeypatch):
    """On the GPU machine the image's packages meet the wheelhouse's: a failing import names itself and the
    versions it is to be read against."""
    from bench import gpu_acceptance as acceptance

    monkeypatch.setitem(sys.modules, "nltk", None)  # import nltk raises
    plan = acceptance.Plan("cpu", tmp_path, tmp_path, tmp_path, budget_s=60.0, cuda=False)
    report = acceptance.Report(plan, "# test")
    report.run("environment", lambda: acceptance.environment(plan, acceptance.Toolkit(plan, report), report))
    (stage,) = report.stages
    assert stage.status == "failed" and stage.detail.startswith("AssertionError: import nltk: ModuleNotFoundError")
    assert f"numpy {importlib.metadata.version('numpy')}" in stage.detail and "pyarrow " in stage.detail
