"""The GPU acceptance script (bench/gpu_acceptance.sh) in its dry mode on a CPU: every stage it runs on
a GPU runs here with a tiny model, so the script cannot rot before a GPU comes; a run cut short by
its time budget still reports what passed."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _acceptance(tmp_path: Path, data_dir: Path, *extra: str) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "out"
    env = {**os.environ, "PYTHON": os.sys.executable, "OMP_NUM_THREADS": "1"}
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
                            "chain, interpolate, score, reconstruct", "evaluate", "serve", "benchmarks",
                            "data parallel", "CUDA tests"]
    assert set(status.values()) == {"passed", "skipped"} and status["CUDA tests"] == "skipped"
    out = tmp_path / "out"
    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == ["acceptance.log", "bench/latest.json", "bench/latest.md", "report.json", "report.md"]  # <= 8
    assert "none failed" in (out / "report.md").read_text()
    assert any("training step" in key for key in report["figures"])


def test_a_run_cut_short_by_its_budget_still_reports_what_passed(tmp_path, ptb_folder):
    result, report = _acceptance(tmp_path, ptb_folder, "--budget-s", "0.5")
    assert result.returncode == 0, result.stderr[-3000:]
    stages = report["stages"]
    assert stages[0]["name"] == "environment" and stages[0]["status"] == "passed"  # started within the budget
    assert stages[0]["seconds"] > 0.5  # (importing torch and the server's packages): the rest would start late
    assert len(stages) == 10 and {s["status"] for s in stages[1:]} == {"not run"}
    text = (tmp_path / "out" / "report.md").read_text()
    assert "| environment | passed |" in text and text.count("| not run |") == 9


def test_the_script_refuses_a_data_folder_without_ptb(tmp_path):
    result, report = _acceptance(tmp_path, tmp_path)
    assert result.returncode == 2 and "has no ptb/train.txt" in result.stderr and not report
