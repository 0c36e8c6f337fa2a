"""`textebm reproduce`: a tiny grid trained and evaluated, then reported done by --dry-run and left
alone; a run whose training process is killed resumes from its checkpoint within its total budget."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

import pytest

from textebm.experiments.grid import load_grid
from textebm.experiments.reproduce import BUDGET, MIN_MINUTES, TRAIN_MARKER, code_commit

EVALUATE = ('{ split = "test", max_sentences = 5, num_chains = 2, num_is_samples = 4, partition_samples = 200, '
            'ais_chains = 20, ais_steps = 40, fppl_samples = 20, temperatures = [1.0] }')


def _grid(tmp_path, corpus_folder, tiny_overrides, runs: str, extra_set=()) -> str:
    overrides = ", ".join(f'"{s}"' for s in [*tiny_overrides, *extra_set])
    path = tmp_path / "grid.toml"
    path.write_text(f'title = "tiny"\n[defaults]\npreset = "cpu"\ncorpus = "{corpus_folder}"\nset = [{overrides}]\n'
                    + runs, encoding="utf-8")
    return str(path)


def _snapshot(folder):
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_a_finished_grid_is_reported_done_and_left_alone(cli, tmp_path, corpus_folder, tiny_overrides, one_line_error):
    runs = f'[[runs]]\nname = "tiny"\nlabel = "tiny EBM"\nmax_steps = 6\nseeds = [0, 1]\nevaluate = [{EVALUATE}]\n'
    grid = _grid(tmp_path, corpus_folder, tiny_overrides, runs)
    out = tmp_path / "out"
    status, stdout, err = cli("reproduce", grid, "--out", out, "--jobs", "2", "--device", "cpu")
    assert status == 0, stdout + err
    results = json.loads((out / "results.json").read_text())
    assert [r["train"]["step"] for r in results["runs"]] == [6, 6]
    # the two seeds are one group: its figures are their mean and sample standard deviation
    (group,) = results["groups"]
    assert group["seeds"] == [0, 1] and group["runs"] == ["tiny-seed0", "tiny-seed1"]
    nlls = [json.loads((out / "runs" / name / "evaluation-test.json").read_text())["nll_per_sentence"]
            for name in group["runs"]]
    assert group["figures"]["nll"]["mean"] == pytest.approx(statistics.fmean(nlls))
    assert group["figures"]["nll"]["sd"] == pytest.approx(statistics.stdev(nlls))
    assert nlls[0] != nlls[1]  # different seeds, different models
    # the plain logmeanexp beside it: never below the jackknife's NLL (Jensen over the leave-one-out means)
    assert group["figures"]["nll_bound"]["mean"] >= group["figures"]["nll"]["mean"]
    page = (out / "results.md").read_text()
    assert "| tiny EBM | 0, 1 |" in page and " ± " in page and "real text (same evaluator)" in page
    assert (out / "quality_diversity-corpus-test.png").read_bytes()[:4] == b"\x89PNG"
    # the energy gap over training, one curve per EBM-prior run
    assert "## corpus: the energy gap over training" in page and "| tiny EBM, seed 1 | " in page
    assert [c["run"] for c in results["energy_gaps"]] == ["tiny-seed0", "tiny-seed1"]
    assert (out / "energy_gap-corpus.png").read_bytes()[:4] == b"\x89PNG"
    # the training table: each run's steps and its final validation, from its marker and metrics.jsonl
    final = [json.loads(line) for line in (out / "runs" / "tiny-seed0" / "metrics.jsonl").read_text().splitlines()
             if '"valid_gap"' in line][-1]
    row = next(line for line in page.splitlines() if line.startswith("| tiny-seed0 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[3] == "6" and float(cells[6]) == pytest.approx(final["valid_nll_posterior"], rel=1e-3)
    assert float(cells[8]) == pytest.approx(final["valid_gap"], rel=1e-2, abs=1e-3)
    assert results["runs"][0]["train"]["machine"]["cores"] == os.cpu_count()
    # the commit the marker names is that of the code that trained (its last segment's), the driver's own
    ledger = json.loads((out / "runs" / "tiny-seed0" / BUDGET).read_text())
    assert results["runs"][0]["train"]["commit"] == ledger["segments"][-1]["commit"] == code_commit()

    before = _snapshot(out)
    status, stdout, err = cli("reproduce", grid, "--out", out, "--dry-run")
    assert status == 0, err
    assert "done: 2 of 2 trainings, 2 of 2 evaluations" in stdout and "everything is done: nothing to start" in stdout
    assert len(re.findall(r"\bdone\b", stdout)) >= 4 and "to do" not in stdout
    assert _snapshot(out) == before  # a dry run writes nothing
    # run again for real: nothing is trained or evaluated again; only the results are rewritten
    status, stdout, err = cli("reproduce", grid, "--out", out, "--device", "cpu")
    assert status == 0, err
    after = _snapshot(out)
    changed = {p for p in after if after[p] != before.get(p)}
    assert changed == {str(out / name) for name in ("results.json", "results.md", "quality_diversity-corpus-test.png",
                                                    "energy_gap-corpus.png")}
    # --results-only writes the same files from what is done, and starts nothing
    (out / "results.md").unlink()
    status, stdout, err = cli("reproduce", grid, "--out", out, "--results-only")
    assert status == 0, err
    assert "| tiny EBM | 0, 1 |" in (out / "results.md").read_text()
    again = _snapshot(out)
    assert {p for p in again if again[p] != after.get(p)} == changed
    # a grid that now gives the runs less than they trained: refused, not filed under the smaller budget
    smaller = _grid(tmp_path, corpus_folder, tiny_overrides, runs.replace("max_steps = 6", "max_steps = 4"))
    for extra in (["--dry-run"], ["--device", "cpu"]):
        status, stdout, err = cli("reproduce", smaller, "--out", out, *extra)
        one_line_error(status, err, "reproduce", "tiny-seed0", "6 steps > max_steps 4", "remove that folder")
    assert _snapshot(out) == again


def test_a_killed_training_resumes_from_its_checkpoint_within_its_total_budget(
        cli, tmp_path, corpus_folder, tiny_overrides, subprocess_env):
    # 12 s of training in all: the kill after the first checkpoint (step 5, well under a second of a tiny model's
    # steps) comes long before the budget ends, even on a loaded machine
    grid = _grid(tmp_path, corpus_folder, tiny_overrides, '[[runs]]\nname = "timed"\nmax_minutes = 0.2\n',
                 extra_set=["checkpoint_every=5"])
    out = tmp_path / "out"
    folder = out / "runs" / "timed"
    command = [sys.executable, "-m", "textebm", "reproduce", grid, "--out", str(out), "--device", "cpu"]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=subprocess_env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ledger = json.loads((folder / BUDGET).read_text()) if (folder / BUDGET).is_file() else None
            if ledger and "pid" in ledger["segments"][-1] and (folder / "training_state.pt").is_file():
                break
            time.sleep(0.02)
        else:
            pytest.fail("the training never reached its first checkpoint")
        os.kill(ledger["segments"][-1]["pid"], signal.SIGKILL)  # the training process dies mid-run
        stdout, _ = driver.communicate(timeout=60)
    finally:
        driver.kill()
    assert driver.returncode == 1, stdout
    assert "killed by signal 9" in stdout and not (folder / TRAIN_MARKER).exists()

    status, stdout, err = cli("reproduce", grid, "--out", out, "--dry-run")
    assert status == 0 and re.search(r"train\s+resume\s+from step \d+", stdout), stdout
    status, stdout, err = cli("reproduce", grid, "--out", out, "--device", "cpu")
    assert status == 0, stdout + err
    log = (folder / "train.log").read_text()
    resumed = [int(n) for n in re.findall(r"resumed from step (\d+)", log)]
    final = [int(n) for n in re.findall(r"stopped at step (\d+) \(max_minutes\)", log)]
    assert len(resumed) == 1 and resumed[0] >= 5 and len(final) == 1 and final[0] > resumed[0]
    first, second = json.loads((folder / BUDGET).read_text())["segments"]
    assert first["counted_seconds"] > 0 and second["resumed_from"] == resumed[0]
    # the resumed run got what was left of the 0.2 minutes, not a fresh budget
    assert second["given_minutes"] == pytest.approx(max(MIN_MINUTES, 0.2 - first["counted_seconds"] / 60), abs=1e-4)
    marker = json.loads((folder / TRAIN_MARKER).read_text())
    assert marker["step"] == final[0] and marker["stopped_by"] == "max_minutes" and marker["segments"] == 2
    assert marker["segment_commits"] == [first["commit"], second["commit"]] == [code_commit()] * 2
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == final[0]  # no step trained twice across the kill


def test_a_stop_request_saves_the_training_and_exits_130(tmp_path, corpus_folder, tiny_overrides, subprocess_env):
    grid = _grid(tmp_path, corpus_folder, tiny_overrides, '[[runs]]\nname = "stopped"\nmax_minutes = 0.2\n',
                 extra_set=["checkpoint_every=1000"])  # only the stop request's own checkpoint
    out = tmp_path / "out"
    folder = out / "runs" / "stopped"
    command = [sys.executable, "-m", "textebm", "reproduce", grid, "--out", str(out), "--device", "cpu",
               "--train-only"]
    driver = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=subprocess_env)
    try:
        deadline = time.monotonic() + 60
        while not (folder / "metrics.jsonl").is_file() and time.monotonic() < deadline:  # training is under way
            time.sleep(0.02)
        driver.send_signal(signal.SIGTERM)  # as `kill`, or Ctrl-C, would
        time.sleep(0.3)
        driver.send_signal(signal.SIGINT)  # a second request (scancel sends two) left the saving with a traceback
        driver.send_signal(signal.SIGTERM)  # and a third at once, as SIGINT is ignored where the suite runs in the
        # background (both while the runs save: the stop takes seconds, a process's save and exit)
        stdout, _ = driver.communicate(timeout=60)
    finally:
        driver.kill()
    assert driver.returncode == 130 and "Traceback" not in stdout, stdout
    assert "stopped (saved; the same command resumes it)" in stdout and "again to resume" in stdout
    assert stdout.count("already stopping: waiting for each process to save") == 1, stdout  # the second request
    # the hint is this very call: without --train-only it would have started the evaluations too
    assert f"`textebm reproduce {grid} --out {out} --jobs 1 --train-only --device cpu` again to resume" in stdout
    assert re.search(r"stopped at step \d+ \(interrupt\)", (folder / "train.log").read_text())
    assert (folder / "training_state.pt").is_file() and not (folder / TRAIN_MARKER).exists()


def test_bad_grids_exit_2_with_one_line(cli, tmp_path, corpus_folder, tiny_overrides, one_line_error):
    cases = {
        '[[runs]]\nname = "a"\n': "budget",
        '[[runs]]\nname = "a"\nmax_steps = 2\nevaluate = [{ split = "test", num_chain = 3 }]\n': "num_chain",
        '[[runs]]\nname = "a"\nmax_steps = 2\nevaluate = [{ num_chains = 0 }]\n': "--num-chains",
        '[[runs]]\nname = "a"\nmax_steps = 2\n[[runs]]\nname = "a"\nmax_steps = 3\n': "used twice",
        '[[runs]]\nname = "a b"\nmax_steps = 2\n': "name",
        '[[runs]]\nname = "."\nmax_steps = 2\n': "start with a letter or digit",  # OUT/runs itself
        '[[runs]]\nname = ".."\nmax_steps = 2\n': "start with a letter or digit",  # OUT
        '[[runs]]\nname = ".hidden"\nmax_steps = 2\n': "start with a letter or digit",
        '[[runs]]\nname = "a"\nmax_steps = 2\nseed = 1\nseeds = [2]\n': "not both",
        '[[runs]]\nname = "a"\nmax_cpu_minutes = 0\n': "max_cpu_minutes",
        '[[runs]]\nname = "a"\nmax_minutes = inf\n': "max_minutes",
        '[[runs]]\nname = "a"\nmax_cpu_minutes = 1\nkeep_at = [0.5, -1]\n': "keep_at",
        '[[runs]]\nname = "a"\nmax_cpu_minutes = 1\nkeep_at = [0.5, 2]\n': "`keep_at` [2] is past `max_cpu_minutes` 1",
        '[[runs]]\nname = "a"\nmax_steps = 2\n[published]\nsource = "p"\nrows = [{ corpus = "ptb", model = "m", '
        'fppl = -1 }]\n': "positive numbers",
        '[[runs]]\nname = "a"\nmax_steps = 2\n[published]\nrows = [{ corpus = "ptb", model = "m" }]\n': "source",
    }
    for runs, fragment in cases.items():
        grid = _grid(tmp_path, corpus_folder, tiny_overrides, runs)
        one_line_error(*cli("reproduce", grid, "--out", tmp_path / "o", "--dry-run")[::2], "reproduce", fragment)
    one_line_error(*cli("reproduce", tmp_path / "none.toml", "--out", tmp_path / "o")[::2], "reproduce", "none.toml")


@pytest.mark.parametrize("text, fragment", [
    (b'title = "unclosed\n', "not a readable TOML grid"),
    (b'title = "caf\xe9"\n', "not a readable TOML grid"),
    (b'titel = "x"\n[[runs]]\nname = "a"\nmax_steps = 2\n',
     "unknown top-level key(s) titel (known: title, defaults, runs, slurm, published)"),
    (b'slurm = "gpu"\n[[runs]]\nname = "a"\nmax_steps = 2\n', "[slurm] must be a table of Slurm options"),
    (b'title = "no runs"\n', "a grid needs a list of [[runs]]"),
    (b'runs = "a"\n', "a grid needs a list of [[runs]]"),
    (b'runs = [1]\n', "runs[0] is not a table"),
])
def test_files_that_are_not_grids_exit_2_with_one_line(cli, tmp_path, one_line_error, text, fragment):
    grid = tmp_path / "grid.toml"
    grid.write_bytes(text)
    status, out, err = cli("reproduce", grid, "--out", tmp_path / "o", "--dry-run")
    one_line_error(status, err, "reproduce", f"{grid}: ", fragment)
    assert out == "" and not (tmp_path / "o").exists()


def test_no_jobs_is_refused_before_anything_runs(cli, tmp_path, corpus_folder, tiny_overrides, one_line_error):
    from textebm.errors import UserError
    from textebm.experiments.reproduce import Reproduction

    grid, out = _grid(tmp_path, corpus_folder, tiny_overrides, '[[runs]]\nname = "a"\nmax_steps = 2\n'), tmp_path / "o"
    for extra in (["--dry-run"], ["--device", "cpu"]):
        status, stdout, err = cli("reproduce", grid, "--out", out, "--jobs", "0", *extra)
        one_line_error(status, err, "reproduce", "--jobs must be at least 1, not 0")
        assert stdout == "" and not out.exists()
    with pytest.raises(UserError, match="--jobs must be at least 1, not 0"):  # the library's own guard
        Reproduction(load_grid(grid), out, jobs=0)


def test_a_run_folder_holding_another_config_is_refused_and_left_alone(cli, tmp_path, small_corpus, tiny_overrides,
                                                                        trained_run, one_line_error):
    """The grid's run `a` differs from the run already in out/runs/a (the session's tiny run) in latent_dim:
    neither a dry run nor a real one may resume it or train over it."""
    out = tmp_path / "out"
    folder = out / "runs" / "a"
    shutil.copytree(trained_run, folder)
    before = _snapshot(folder)
    grid = _grid(tmp_path, small_corpus, tiny_overrides, '[[runs]]\nname = "a"\nmax_steps = 30\n',
                 extra_set=["latent_dim=8"])
    for extra in (["--dry-run"], ["--device", "cpu"]):
        status, stdout, err = cli("reproduce", grid, "--out", out, *extra)
        one_line_error(status, err, "reproduce", f"{folder} holds a run with another config than the grid's a "
                       "(differs in latent_dim): remove that folder, or reproduce into another --out")
        assert stdout == ""
    assert _snapshot(folder) == before and sorted(p.name for p in out.iterdir()) == ["runs"]


def test_an_evaluation_the_corpus_cannot_give_is_refused_before_training(cli, tmp_path, small_corpus, corpus_folder,
                                                                         tiny_overrides, one_line_error):
    # a single text file has no test split: the grid trained, then its evaluation failed (exit 1)
    runs = f'[[runs]]\nname = "one-file"\nmax_steps = 2\ncorpus = "{small_corpus}"\nevaluate = [{EVALUATE}]\n'
    grid, out = _grid(tmp_path, small_corpus, tiny_overrides, runs), tmp_path / "out"
    one_line_error(*cli("reproduce", grid, "--out", out, "--device", "cpu")[::2], "reproduce", "one-file",
                   "no test split (have: train)", "is --split valid")
    assert not out.exists()
    grid = _grid(tmp_path, small_corpus, tiny_overrides, runs.replace('split = "test"', 'split = "valid"'))
    status, stdout, err = cli("reproduce", grid, "--out", out, "--dry-run")
    assert status == 0, err
    assert "evaluate valid" in stdout
    marks = '[[runs]]\nname = "m"\nmax_cpu_minutes = 1\nkeep_at = [0.5]\nevaluate_marks = { split = "valid" }\n'
    one_line_error(*cli("reproduce", _grid(tmp_path, corpus_folder, tiny_overrides, marks), "--out", out,
                        "--dry-run")[::2], "reproduce", "no valid split (have: train, test)")


def test_a_split_a_known_corpus_lacks_is_refused_before_training(cli, tmp_path, data_folder, tiny_overrides,
                                                                  one_line_error):
    """Yahoo here has valid and test: a run trained on valid and evaluated on valid is refused before it trains
    (its folder is known once --data-dir is), and so is one whose training split is missing."""
    root, out = data_folder(yahoo="valid test"), tmp_path / "out"
    on_valid = EVALUATE.replace('split = "test"', 'split = "valid"')
    runs = f'[[runs]]\nname = "y"\nmax_steps = 2\ncorpus = "yahoo"\ntrain_split = "valid"\nevaluate = [{on_valid}]\n'
    grid = _grid(tmp_path, "yahoo", tiny_overrides, runs)
    one_line_error(*cli("reproduce", grid, "--out", out, "--data-dir", root, "--device", "cpu")[::2], "reproduce",
                   "y: the run trained on the valid split of yahoo", "--split test")
    assert not out.exists()
    grid = _grid(tmp_path, "yahoo", tiny_overrides, runs.replace('train_split = "valid"\n', ""))
    one_line_error(*cli("reproduce", grid, "--out", out, "--data-dir", root, "--device", "cpu", "--train-only")[::2],
                   "reproduce", "y: ", "has no train split to train on (have: valid, test)")
    assert not out.exists()


def test_the_results_grid_is_shipped_and_valid():
    grid = load_grid("results")
    names = [r.name for r in grid.runs]
    assert names[:5] == ["ptb-ebm-seed0", "ptb-ebm-seed1", "ptb-gaussian-seed0", "ptb-gaussian-seed1", "ptb-none"]
    ptb = [r for r in grid.runs if r.corpus == "ptb"]
    assert all(r.max_cpu_minutes == 30 and r.preset == "cpu" for r in ptb)
    timed = [r for r in ptb if r.keep_at]  # the time-to-quality runs: every model of the comparison
    assert {r.name.removesuffix("-seed0").removesuffix("-seed1") for r in timed} == {
        "ptb-ebm", "ptb-gaussian", "ptb-none", "ptb-vae", "ptb-ebm-amortized"}
    assert all(r.keep_at == (5, 10, 20, 30) and r.mark_evaluation.split == "valid" for r in timed)
    assert all(r.max_minutes is None for r in grid.runs)  # CPU time only: the same steps under any load
    assert {r.train_split for r in grid.runs if r.corpus == "snli"} == {"test"}
    assert {r.train_split for r in grid.runs if r.corpus == "yahoo"} == {"valid"}
    assert all(r.max_cpu_minutes == 15 for r in grid.runs if r.corpus != "ptb")
    published = grid.published  # the paper's Table 2 beside every corpus
    assert {r["corpus"] for r in published["rows"]} == set(published["real_fppl"]) == {"ptb", "snli", "yahoo"}


def test_a_cpu_budget_with_marks_trains_only_and_an_older_evaluator_is_redone(cli, tmp_path, corpus_folder,
                                                                             tiny_overrides):
    from textebm.evaluation.held_out import EVALUATOR_VERSION
    from textebm.experiments.reproduce import evaluation_marker

    runs = (f'[[runs]]\nname = "cpu"\nmax_cpu_minutes = 0.02\nkeep_at = [0.01]\nevaluate = [{EVALUATE}]\n')
    grid = _grid(tmp_path, corpus_folder, tiny_overrides, runs)
    out = tmp_path / "out"
    folder = out / "runs" / "cpu"
    status, stdout, err = cli("reproduce", grid, "--out", out, "--device", "cpu", "--train-only")
    assert status == 0, stdout + err
    marker = json.loads((folder / TRAIN_MARKER).read_text())
    assert marker["stopped_by"] == "max_cpu_minutes" and marker["train_cpu_minutes"] >= 0.02
    assert marker["budget"]["max_cpu_minutes"] == 0.02 and marker["budget"]["keep_at"] == [0.01]
    assert "commit" in marker
    assert json.loads((folder / "marks" / "cpu-0.01min" / "mark.json").read_text())["cpu_seconds"] >= 0.6
    assert not (folder / "evaluation-test.json").exists()  # --train-only
    status, stdout, err = cli("reproduce", grid, "--out", out, "--device", "cpu")
    assert status == 0, stdout + err
    written = json.loads((folder / evaluation_marker("test")).read_text())
    assert written["evaluator"] == EVALUATOR_VERSION and written["step"] == marker["step"]
    assert "0 of 1 evaluations" not in cli("reproduce", grid, "--out", out, "--dry-run")[1]
    fresh = cli("reproduce", grid, "--out", tmp_path / "fresh", "--dry-run")[1]
    assert "0.02 CPU min" in fresh and "training CPU time left:" in fresh
    (folder / evaluation_marker("test")).write_text(json.dumps({**written, "evaluator": EVALUATOR_VERSION - 1}))
    stdout = cli("reproduce", grid, "--out", out, "--dry-run")[1]
    assert "done: 1 of 1 trainings, 0 of 1 evaluations" in stdout  # made by an older estimator: to do again


def test_marks_are_evaluated_into_time_to_quality_curves(cli, tmp_path, corpus_folder, tiny_overrides):
    marks_evaluation = EVALUATE.replace(", fppl_samples = 20", "")
    runs = ('[[runs]]\nname = "ttq"\nlabel = "tiny EBM"\nmax_cpu_minutes = 0.03\nkeep_at = [0.01, 0.03]\n'
            f'evaluate_marks = {marks_evaluation}\n')
    grid = _grid(tmp_path, corpus_folder, tiny_overrides, runs)
    out = tmp_path / "out"
    status, stdout, err = cli("reproduce", grid, "--out", out, "--device", "cpu")
    assert status == 0, stdout + err
    marks = out / "runs" / "ttq" / "marks"
    assert sorted(p.name for p in marks.iterdir()) == ["cpu-0.01min", "cpu-0.03min"]
    results = json.loads((out / "results.json").read_text())
    curve = results["time_to_quality"]
    assert [r["cpu_minutes"] for r in curve] == [0.01, 0.03]
    for row, mark in zip(curve, sorted(marks.iterdir())):
        report = json.loads((mark / "evaluation-test.json").read_text())
        assert row["nll"]["mean"] == pytest.approx(report["nll_per_sentence"])
        assert row["steps"]["mean"] == json.loads((mark / "mark.json").read_text())["step"]
    assert curve[0]["steps"]["mean"] < curve[1]["steps"]["mean"]
    page = (out / "results.md").read_text()
    assert "quality against training CPU time" in page and "time_to_quality-corpus.png" in page
    assert (out / "time_to_quality-corpus.png").read_bytes()[:4] == b"\x89PNG"
    stdout = cli("reproduce", grid, "--out", out, "--dry-run")[1]
    assert "2 of 2 marks evaluated" in stdout and "everything is done" in stdout


def test_an_out_that_is_a_file_is_refused_before_anything(cli, tmp_path, corpus_folder, tiny_overrides,
                                                         one_line_error):
    grid = _grid(tmp_path, corpus_folder, tiny_overrides, '[[runs]]\nname = "a"\nmax_steps = 2\n')
    afile = tmp_path / "afile"
    afile.write_text("kept\n")
    for extra in (["--dry-run"], ["--results-only"], ["--device", "cpu"]):
        one_line_error(*cli("reproduce", grid, "--out", afile, *extra)[::2], "reproduce", "afile", "not a folder")
    assert afile.read_text() == "kept\n"


def test_a_device_or_options_this_call_cannot_use_are_refused_once_before_anything(cli, tmp_path, corpus_folder,
                                                                                   tiny_overrides, one_line_error):
    grid = _grid(tmp_path, corpus_folder, tiny_overrides, '[[runs]]\nname = "a"\nmax_steps = 2\n[[runs]]\n'
                 'name = "b"\nmax_steps = 2\n')
    out = tmp_path / "out"
    one_line_error(*cli("reproduce", grid, "--out", out, "--device", "gpu0")[::2], "reproduce", "unknown device")
    for extra in (["--slurm", "partition=gpu"], ["--no-wait"]):
        one_line_error(*cli("reproduce", grid, "--out", out, *extra)[::2], "reproduce", "--executor slurm")
    assert not out.exists()


def test_training_runs_the_drivers_textebm_not_one_in_the_working_directory(cli, tmp_path, corpus_folder,
                                                                           tiny_overrides, monkeypatch):
    """Run from another checkout's root, the driver must not train with that checkout's code while its markers
    name its own commit."""
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "textebm").mkdir(parents=True)
    (elsewhere / "textebm" / "__init__.py").write_text("")
    (elsewhere / "textebm" / "__main__.py").write_text(
        f"open({str(tmp_path / 'wrong-textebm-ran')!r}, 'w').close()\nraise SystemExit(3)\n")
    grid = _grid(tmp_path, corpus_folder, tiny_overrides, '[[runs]]\nname = "a"\nmax_steps = 2\n')
    monkeypatch.chdir(elsewhere)
    status, stdout, err = cli("reproduce", grid, "--out", tmp_path / "out", "--device", "cpu", "--train-only")
    assert status == 0, stdout + err
    assert not (tmp_path / "wrong-textebm-ran").exists()
    assert json.loads((tmp_path / "out" / "runs" / "a" / TRAIN_MARKER).read_text())["step"] == 2


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")  # a zombie has ended
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="reads process states from /proc (Linux)")
def test_an_evaluation_process_ends_with_the_driver_that_started_it(tmp_path, subprocess_env):
    """An evaluation holds no run lock: a driver killed outright must not leave it evaluating beside the
    evaluation that the next driver starts."""
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import multiprocessing, os, sys, time\n"
        "from textebm.experiments.reproduce import _end_with_parent\n"
        "def job(path):\n"
        "    _end_with_parent()\n"
        "    with open(path + '.tmp', 'w') as f:\n"
        "        f.write(str(os.getpid()))\n"
        "    os.replace(path + '.tmp', path)\n"
        "    time.sleep(300)\n"
        "if __name__ == '__main__':\n"
        "    multiprocessing.get_context('spawn').Process(target=job, args=(sys.argv[1],)).start()\n"
        "    time.sleep(300)\n")
    pid_file = tmp_path / "evaluation.pid"
    process = subprocess.Popen([sys.executable, str(driver), str(pid_file)], env=subprocess_env)
    try:
        deadline = time.monotonic() + 120
        while not pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        evaluation = int(pid_file.read_text())
        assert not _gone(evaluation)
        process.kill()  # SIGKILL: the driver has no chance to stop its children
        process.wait()
        deadline = time.monotonic() + 60
        while not _gone(evaluation) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _gone(evaluation)
    finally:
        process.kill()
        if pid_file.exists() and not _gone(int(pid_file.read_text())):
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_a_budget_below_what_a_run_trained_is_told_by_its_clocks_only_where_they_shrank():
    from types import SimpleNamespace

    from textebm.errors import UserError
    from textebm.experiments.reproduce import TrainState, _check_not_past

    def spec(**budget):
        return SimpleNamespace(name="r", **{"max_steps": None, "max_cpu_minutes": None, "max_minutes": None, **budget})

    trained = TrainState("resume", 817, spent_minutes=42.3, cpu_minutes=30.03)
    with pytest.raises(UserError, match="30.03 CPU minutes > max_cpu_minutes 20"):
        _check_not_past(spec(max_cpu_minutes=20), "F", trained, {"max_cpu_minutes": 30})
    with pytest.raises(UserError, match="42.3 minutes > max_minutes 40"):
        _check_not_past(spec(max_minutes=40), "F", trained, {"max_minutes": None, "max_cpu_minutes": 30})
    with pytest.raises(UserError, match="817 steps > max_steps 800"):
        _check_not_past(spec(max_steps=800), "F", trained, {})  # steps are exact, finished or not
    # a run ends a little past its own budget: the same clock budget (another key changed) is no shrink
    _check_not_past(spec(max_cpu_minutes=30, max_steps=900), "F", trained, {"max_cpu_minutes": 30})
    # an interrupted run (no marker) may sit just past its end: resuming finishes it
    _check_not_past(spec(max_cpu_minutes=20), "F", trained, {})


def test_a_named_data_folder_that_does_not_exist_is_refused_before_any_run(cli, tmp_path, tiny_overrides,
                                                                           one_line_error, monkeypatch):
    # each run started and failed in turn (under Slurm, each as a job after its wait in the queue)
    grid = tmp_path / "grid.toml"
    grid.write_text('[[runs]]\nname = "a"\ncorpus = "ptb"\nmax_steps = 2\n', encoding="utf-8")
    monkeypatch.setenv("TEXTEBM_DATA_DIR", str(tmp_path / "typo"))
    one_line_error(*cli("reproduce", grid, "--out", tmp_path / "out")[::2], "reproduce",
                   f"the data folder {tmp_path / 'typo'} does not exist")
    assert not (tmp_path / "out" / "runs").exists()
