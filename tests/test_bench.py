"""The benchmark suite runs end to end (tiny sizes) and its references compute what the library computes;
bench.time_to_quality trains, keeps and evaluates its marks, and skips them when they are done.

No timing assertions: these machines are too noisy for them; the suite reports ratios instead.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import Row, build_model
from bench import reference as ref
from textebm.generation.decoding import decode

ROOT = Path(__file__).resolve().parents[1]


def bench_env() -> dict[str, str]:
    """The environment of a bench process: this test's (read when the test runs, so that it holds the
    suite's offline switch and KenLM cache, tests/conftest.py), the repository first on the path, then
    whatever path this run was given (the GPU acceptance run's wheelhouse)."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def _met_follows_the_target(row: dict) -> bool:
    """A row's `met` is its ratio held to its target (">= 3x", "<= 1.3x the floor", ...)."""
    direction, bound = re.match(r"([<>]=) ([0-9.]+)x", row["target"]).groups()
    return row["met"] == (row["ratio"] >= float(bound) if direction == ">=" else row["ratio"] <= float(bound))


def test_quick_run_writes_json_and_markdown_with_ratios(tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "sampling,training", "--repeats", "1", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env=bench_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads((out / "latest.json").read_text())
    assert data["machine"]["cores"] and data["machine"]["torch"] and data["machine"]["torch_threads"]
    rows = data["rows"]
    assert {r["benchmark"] for r in rows} == {"sampling", "training"}
    for row in rows:
        assert row["reference"] > 0 and row["candidate"] > 0 and row["ratio"] > 0, row
        assert row["ratio_kind"] and row["unit"]
    targeted = [r for r in rows if r["target"].startswith(">=")]
    assert {r["benchmark"] for r in targeted} == {"training"}  # quick sizes have no batch-32 row
    assert ["amortized" in r["case"] for r in targeted] == [True]  # the 3x target is the amortized option's
    assert any("paper's chain" in r["case"] and not r["target"] for r in rows)
    assert all("at most" in r["note"] for r in rows if r["case"].startswith("decode"))  # the floor
    assert all(_met_follows_the_target(r) for r in targeted)
    table = (out / "latest.md").read_text()
    sampling_rows = [r for r in rows if r["benchmark"] == "sampling"]
    assert "| benchmark | case |" in table and table.count("\n| sampling |") == len(sampling_rows)
    assert "| benchmark | case |" in proc.stdout
    assert not list(out.glob("*.tmp"))


def test_reference_sampler_decodes_like_the_library():
    model, _ = build_model(["embedding_dim=8", "hidden_dim=12", "latent_dim=3", "dropout=0"], 40)
    model.eval()
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(0))
    expected = decode(model.decoder, z, model.bos_id, -1, 9, greedy=True)
    assert torch.equal(ref.sample_per_token(model.decoder, z, model.bos_id, 9, greedy=True), expected)
    sampled = ref.sample_per_token(model.decoder, z, model.bos_id, 9)
    assert sampled.shape == (5, 9) and int(sampled.min()) >= 0 and int(sampled.max()) < 40


def test_reference_likelihood_and_prior_density_match_the_library():
    model, _ = build_model(["embedding_dim=8", "hidden_dim=12", "latent_dim=3", "dropout=0"], 40)
    model.eval()
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(4, 3, generator=gen)
    tokens = torch.randint(4, 40, (4, 6), generator=gen)
    tokens[2, 4:] = model.pad_id
    with torch.no_grad():
        torch.testing.assert_close(ref.log_likelihood(model.decoder, z, tokens, model.pad_id),
                                   model.decoder.log_likelihood(z, tokens))
        torch.testing.assert_close(ref.prior_log_density(model.prior, z), model.prior.log_density(z))


def test_quick_precision_rows_and_their_quality_rows_need_a_checkpoint(tmp_path, trained_run):
    out = tmp_path / "results"
    base = [sys.executable, "-m", "bench", "--quick", "--only", "precision", "--repeats", "1"]
    proc = subprocess.run([*base, "--out", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=bench_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "latest.json").read_text())["rows"]
    speed = [r for r in rows if r["unit"] == "sentences/s"]
    assert {r["case"].split(" vs ")[0] for r in speed} == {"fp32 exact sampler", "decode bf16", "decode int8"}
    assert all(r["reference"] > 0 and r["candidate"] > 0 for r in speed)
    assert all(_met_follows_the_target(r) for r in speed if r["target"])
    assert rows[-1]["note"].startswith("not measured: needs --checkpoint")
    proc = subprocess.run([*base, "--out", str(out), "--checkpoint", str(trained_run)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=bench_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    quality = [r for r in json.loads((out / "latest.json").read_text())["rows"] if r["case"].startswith("quality")]
    assert len(quality) == 4 and all(r["candidate"] > 1 for r in quality)
    for r in quality:  # met: FPPL and distinct-2 within 2% of fp32's
        change = float(re.search(r"largest change ([0-9.]+)%", r["note"]).group(1))
        assert r["met"] == (change <= 2.0) or abs(change - 2.0) < 0.1, r


def test_quick_server_rows_stand_against_the_decoding_floor(tmp_path, trained_run):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "server", "--repeats", "1",
                           "--out", str(out), "--checkpoint", str(trained_run)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=bench_env())
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "latest.json").read_text())["rows"]
    assert [r["case"].split(",")[0] for r in rows] == ["/generate p50 latency"] * 2 + ["/generate throughput"] * 3
    for row in rows:
        assert row["reference"] > 0 and row["candidate"] > 0 and row["ratio"] > 0, row
        assert "trained run" in row["note"]
    assert all(_met_follows_the_target(r) for r in rows[:2]) and "p95" in rows[0]["note"]


def test_quick_step_profile_splits_a_step_into_its_parts(tmp_path):
    """The cpu preset's step as it runs (the encoder's guess, then refine steps), split into its parts."""
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--only", "step_profile", "--repeats", "1", "--threads", "1",
         "--set", "refine_steps=3", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=300, env=bench_env(),
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((out / "latest.json").read_text())["rows"]
    assert {r["benchmark"] for r in rows} == {"step_profile"}
    cases = [r["case"].split(",")[0] for r in rows]
    assert cases == ["Learner.step (encoder + 3 refine steps", "posterior chain (encoder + 3 refine steps",
                     "one chain step (forward and backward to z)",
                     "of which the RNN (forward and backward to z)",
                     "of which the vocabulary projection and log-softmax (value and gradient to the RNN's outputs)",
                     "the same projection on bf16 operands", "generator update (forward", "prior chain (K0=3)",
                     "energy update", "lever: one chain step with chain_precision=bf16",
                     "lever: Learner.step with chain_precision=bf16", "Learner.step (encoder + 3 refine steps"]
    assert all(r["unit"] == "ms" and r["reference"] > 0 and r["candidate"] > 0 for r in rows)
    for r in rows:  # each ratio is the figures' own: a cost over its reference, or a speed-up
        cost = r["ratio_kind"] == "cost factor"
        expected = r["candidate"] / r["reference"] if cost else r["reference"] / r["candidate"]
        assert abs(r["ratio"] - expected) < 1e-9 * expected, r
    lm_rows = [r for r in rows if "over the LM step" in r["case"]]
    assert [r["target"] for r in lm_rows] == ["<= 2x"] * 2 and all(r["met"] == (r["ratio"] <= 2) for r in lm_rows)
    assert lm_rows[1]["candidate"] == rows[10]["candidate"]  # the bf16 step is the lever's candidate
    assert all("% of the latent step" in r["note"] for r in rows[1:3] + rows[6:9])
    assert all("% of one chain step" in r["note"] for r in rows[3:5])


TTQ_SETS = ["embedding_dim=16", "hidden_dim=32", "latent_dim=4", "energy_hidden=16", "prior_steps=3",
            "batch_size=16", "max_length=30", "valid_batches=1", "checkpoint_every=1000", "num_log_samples=1"]
TTQ_EVAL = ["max_sentences=8", "num_chains=2", "num_is_samples=4", "ais_chains=10", "ais_steps=20",
            "partition_samples=50", "fppl_samples=10"]


@pytest.mark.slow
def test_time_to_quality_keeps_marks_evaluates_them_and_skips_done_work(tmp_path, train_lines, valid_lines):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.txt").write_text("\n".join(train_lines[:300]) + "\n", encoding="utf-8")
    (corpus / "valid.txt").write_text("\n".join(valid_lines[:20]) + "\n", encoding="utf-8")
    out = tmp_path / "ttq"
    command = [sys.executable, "-m", "bench.time_to_quality", "--minutes", "0.01", "0.02", "--variants",
               "k2:posterior_steps=2", "--out", str(out), "--jobs", "2", "--corpus", str(corpus)]
    command += [arg for item in TTQ_SETS for arg in ("--set", item)]
    command += [arg for item in TTQ_EVAL for arg in ("--eval", item)]
    first = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=bench_env())
    assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-3000:]
    rows = json.loads((out / "results.json").read_text())["time_to_quality"]
    assert [(r["label"], r["cpu_minutes"]) for r in rows] == [
        ("plain LM (prior=none)", 0.01), ("plain LM (prior=none)", 0.02),
        ("k2 (posterior_steps=2)", 0.01), ("k2 (posterior_steps=2)", 0.02)]
    assert all(r["nll"]["mean"] > 0 for r in rows)
    assert [r["exact"] for r in rows] == [True, True, False, False] and rows[2]["gap"]["mean"] is not None
    assert rows[1]["steps"]["mean"] > rows[0]["steps"]["mean"] and rows[3]["steps"]["mean"] > rows[2]["steps"]["mean"]
    config = json.loads((out / "runs" / "k2" / "marks" / "cpu-0.02min" / "config.json").read_text())
    assert config["posterior_steps"] == 2 and config["hidden_dim"] == 32
    assert (out / "time_to_quality-corpus.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (out / "results.md").read_text()
    assert page.count("\n| k2 (posterior_steps=2) |") == 3  # its two marks, and its energy gap over training
    assert "## corpus: the energy gap over training" in page
    stamps = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/marks/*/*") if p.suffix in (".pt", ".json")}

    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=bench_env())
    assert second.returncode == 0, second.stderr[-3000:]
    assert "train," not in second.stdout and ": evaluate" not in second.stdout, second.stdout
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps  # nothing trained or evaluated again
    assert json.loads((out / "results.json").read_text())["time_to_quality"] == rows


def test_time_to_quality_refuses_bad_input_before_training(tmp_path, capsys):
    from bench.time_to_quality import main

    for extra, message in ((["--variants", "nosuch"], "unknown variant 'nosuch'"),
                           (["--variants", "k:posterior_steps=-1"], "posterior_steps must not be negative"),
                           (["--eval", "bogus=1"], "--eval 'bogus=1'"),
                           (["--minutes", "10", "5"], "--minutes must be positive and increasing")):
        assert main(["--out", str(tmp_path / "ttq"), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "ttq").exists()


def _levers(tmp_path, device: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, "-m", "bench", "--quick", "--only", "levers", "--repeats", "1",
                           "--threads", "1", "--device", device, "--out", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env=bench_env())
    rows = json.loads((out / "latest.json").read_text())["rows"] if proc.returncode == 0 else []
    return proc, rows


def test_quick_levers_run_on_a_cpu_and_name_their_cuda_only_rows(tmp_path):
    proc, rows = _levers(tmp_path, "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    measured = {r["case"].split(",")[0]: r for r in rows if r["candidate"] is not None}
    assert set(measured) == {"Learner.step with precision=bf16 over fp32", "Learner.step with chain_precision=bf16 "
                             "over fp32", "latent step over the LM step (prior=none)"}
    for r in measured.values():
        cost = r["ratio_kind"] == "cost factor"
        expected = r["candidate"] / r["reference"] if cost else r["reference"] / r["candidate"]
        assert r["reference"] > 0 and abs(r["ratio"] - expected) < 1e-9 * expected, r
    cuda_only = [r["case"].split(",")[0] for r in rows if r["candidate"] is None]
    assert cuda_only == ["Learner.step with TF32 over fp32", "Learner.step with compile=true over fp32",
                         "peak memory of a step with each setting"]
    assert all(r["note"].startswith("CUDA only") for r in rows if r["candidate"] is None)


def test_a_compile_that_fails_loses_its_own_row_only(monkeypatch):
    # all contenders shared one timing loop: a compile=true failing at its first backward lost every row
    import bench.levers as levers

    made = levers.learner

    def learner(spec, overrides, device):
        learner = made(spec, [o for o in overrides if o != "compile=true"], device)
        if "compile=true" in overrides:
            def broken(tokens):
                raise RuntimeError("inductor refused the backward graph")
            learner.step = broken
        return learner

    monkeypatch.setattr(levers, "learner", learner)
    monkeypatch.setitem(levers.SETTINGS, "compile=true", (["compile=true"], True, False))  # on a CPU, for once
    rows = {row.case.split(",")[0]: row for row in levers.run(quick=True, repeats=1)}
    failed = rows["Learner.step with compile=true over fp32"]
    assert failed.candidate is None and failed.note == ("FAILED to compile or run: RuntimeError: inductor refused "
                                                        "the backward graph")
    assert rows["Learner.step with precision=bf16 over fp32"].ratio > 0  # the others measured all the same


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_quick_batching_row_prices_the_per_request_streams(device):
    from bench import batching

    (row,) = batching.run(quick=True, repeats=2, device=device)
    assert row.case.startswith(f"4 one-sentence requests in a batch over one request of 4, 8 tokens, prior chain "
                               f"K0=5, cpu preset on {device}")
    assert row.reference > 0 and row.ratio == pytest.approx(row.candidate / row.reference)
    assert {name: len(times) for name, times in row.samples.items()} == {"one request": 2, "requests": 2}


def test_bench_refuses_cuda_without_a_gpu_in_one_line(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: the refusal cannot happen")
    proc, _ = _levers(tmp_path, "cuda")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "no CUDA GPU" in proc.stderr


@pytest.mark.slow  # compiles the step (the acceptance run's benchmark stage measures these rows anyway)
@pytest.mark.cuda
def test_quick_levers_on_cuda_measure_every_row(tmp_path):
    proc, rows = _levers(tmp_path, "cuda")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert all(r["candidate"] and r["candidate"] > 0 and r["reference"] > 0 for r in rows), rows
    assert sum(r["unit"] == "MiB" for r in rows) == 6


def test_every_timing_on_cuda_waits_for_the_device(monkeypatch):
    """CUDA runs asynchronously: a timing that does not synchronise measures the launches only."""
    from bench import interleave

    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(str(device)))
    interleave({"a": lambda: None, "b": lambda: None}, repeats=3, warmup=1, device="cpu")
    assert calls == []
    interleave({"a": lambda: None, "b": lambda: None}, repeats=3, warmup=1, device="cuda:0")
    assert calls == ["cuda:0"] * 12  # before and after each of the 6 timed calls


def test_interleaved_rounds_alternate_their_order():
    from bench import interleave

    order = []
    seconds = interleave({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, repeats=3, warmup=1)
    assert order == ["a", "b", "a", "b", "b", "a", "a", "b"]  # the warm-up round, then a b | b a | a b
    assert {name: len(values) for name, values in seconds.items()} == {"a": 3, "b": 3}


def test_quick_likelihood_rows_time_both_estimators_and_hold_the_new_one_to_the_closed_form():
    from bench import issue_day, likelihood

    bound, timing, closed = likelihood.run(quick=True, repeats=1)
    in_history = subprocess.run(["git", "-C", str(issue_day.REPOSITORY), "cat-file", "-e", issue_day.ISSUE_DAY],
                                capture_output=True).returncode == 0
    if in_history:  # the issue's day's own code ran, in its worker
        assert bound.reference > 0 and bound.ratio == pytest.approx(bound.candidate / bound.reference)
        assert bound.met is (bound.ratio >= 1) and len(bound.samples["issue_day"]) == 1
    else:
        assert bound.reference is None and bound.met is None and "not in this checkout" in bound.note
    assert timing.benchmark == "likelihood" and timing.unit == "sentences/s" and timing.met is None
    assert timing.reference > 0 and timing.candidate == bound.candidate and "floor" in timing.note
    assert closed.unit.startswith("nats") and closed.met is True  # |error| <= 0.1 nat and ESS >= 30% of draws
    assert closed.candidate < closed.reference


def test_issue_day_estimator_says_why_when_its_commit_is_missing(monkeypatch):
    from bench import issue_day

    monkeypatch.setattr(issue_day, "ISSUE_DAY", "0" * 40)
    with pytest.raises(issue_day.Unavailable, match="not in this checkout's history"):
        with issue_day.IssueDayEstimator(["latent_dim=4"], 50, torch.ones(2, 3, dtype=torch.long), 1):
            pass


def test_bdmc_sandwich_brackets_evaluate_on_the_tiny_run(trained_run, tmp_path, capsys):
    from bench.bdmc_sandwich import main

    out = tmp_path / "sandwich.json"
    assert main([str(trained_run), "--sentences", "6", "--temperatures", "30", "--chains", "2", "--estimate", "20x4",
                 "--ais", "100x100", "--max-length", "12", "--out", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["sentences"] == 6 and figures["temperatures"] == 30
    # stochastic bounds: on this tiny run (z barely used) they nearly meet, so allow float noise across machines
    assert -0.01 < figures["gap"] < 1.0, figures
    # (the means are float32: a few ulps of |log p(x)| ~ 85, 8e-6 each, apart from the mean of the gaps)
    assert figures["gap"] == pytest.approx(figures["upper"] - figures["lower"], abs=1e-4)
    (estimate,) = figures["estimates"]
    assert estimate["inside"] >= 5 and abs(estimate["below_lower"]) < 0.5, estimate
    assert f"gap {figures['gap']:.2f}" in capsys.readouterr().out


def test_bdmc_sandwich_refuses_bad_input(trained_run, tmp_path, capsys):
    from bench.bdmc_sandwich import main

    for extra, message in ((["--estimate", "80"], "--estimate '80'"), (["--chains", "0"], "at least 1"),
                           (["--ais", "10x"], "--ais '10x'")):
        assert main([str(trained_run), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    assert main([str(tmp_path / "nosuch")]) == 2
    assert capsys.readouterr().err.count("\n") == 1


@pytest.fixture
def folder_run(tmp_path, corpus_folder, train_lines):
    """A tiny untrained EBM-prior run on a corpus with a test split (the check reads held-out lines)."""
    return _untrained_run(tmp_path / "run", corpus_folder, train_lines, "ebm")


def _untrained_run(folder, corpus_folder, train_lines, prior: str):
    from textebm.config import Config
    from textebm.data.vocab import WordVocab
    from textebm.model.checkpoints import save_checkpoint
    from textebm.model.runs import build_model as build_run_model
    from textebm.model.runs import create_run

    torch.manual_seed(0)
    config = Config(corpus=str(corpus_folder), embedding_dim=8, hidden_dim=16, latent_dim=3, energy_hidden=8,
                    dropout=0.0, prior=prior, posterior_steps=3, prior_steps=3, max_length=30)
    vocab = WordVocab.build(train_lines[:300])
    create_run(folder, config, vocab)
    save_checkpoint(folder, build_run_model(config, vocab), {}, step=7)
    return folder


def test_curvature_check_measures_each_estimator_against_the_reference_and_resumes(folder_run, tmp_path, capsys):
    from bench.curvature_check import main

    out = tmp_path / "check.json"
    args = [str(folder_run), "--out", str(out), "--sentences", "4", "--variant", "small=1:5:2", "--variant",
            "bf16=1:5:2@bf16", "--reference", "2:20:4", "--ais", "50x50"]
    assert main([*args, "--repeats", "2"]) == 0
    figures = json.loads(out.read_text())
    reference, small = figures["reference"]["log_px"], figures["variants"]["small"]
    assert len(reference) == 4 and [len(r) for r in small["repeats"]] == [4, 4]
    diffs = [sum(e - r for e, r in zip(repeat, reference)) / 4 for repeat in small["repeats"]]
    assert small["differences"] == pytest.approx(diffs) and small["mean"] == pytest.approx(sum(diffs) / 2)
    assert small["repeats"][0] != small["repeats"][1]  # fresh randomness per repeat
    assert abs(small["mean"]) < 1.0, small  # the tiny run barely uses z: every estimator is close
    assert f"small (1:5:2): estimate - reference {small['mean']:+.2f}" in capsys.readouterr().out
    assert main([*args, "--repeats", "3"]) == 0  # resumes: one repeat more, the rest kept
    again = json.loads(out.read_text())
    assert again["reference"]["log_px"] == reference and again["variants"]["small"]["repeats"][:2] == small["repeats"]
    assert len(again["variants"]["small"]["repeats"]) == 3
    bf16 = again["variants"]["bf16"]  # the path below beta = 1 in bf16: the same sentences, other numbers
    assert bf16["spec"] == "1:5:2@bf16" and bf16["repeats"][0] != small["repeats"][0] and abs(bf16["mean"]) < 1.0


def test_curvature_check_pools_reference_runs_of_other_seeds_and_updates_the_differences(folder_run, tmp_path):
    from bench.curvature_check import main
    from textebm.inference.likelihood import jackknife_log_mean_exp

    out = tmp_path / "check.json"
    args = [str(folder_run), "--out", str(out), "--sentences", "3", "--variant", "small=1:4:2", "--reference", "2:10:3",
            "--ais", "50x50", "--repeats", "1"]
    assert main(args) == 0
    one = json.loads(out.read_text())
    assert [run["seed"] for run in one["reference"]["runs"]] == [0]
    assert main([*args, "--reference-seeds", "2"]) == 0  # resumes: a second reference run, the first kept
    two = json.loads(out.read_text())
    runs = two["reference"]["runs"]
    assert [run["seed"] for run in runs] == [0, 1000] and runs[0] == one["reference"]["runs"][0]
    assert runs[1]["log_px"] != runs[0]["log_px"] and [len(w) for w in runs[1]["log_w"]] == [3, 3, 3]
    pooled = jackknife_log_mean_exp(torch.tensor([a + b for a, b in zip(runs[0]["log_w"], runs[1]["log_w"])],
                                                 dtype=torch.float64))
    assert two["reference"]["log_px"] == pytest.approx(pooled.tolist())
    assert two["reference"]["log_px"] != one["reference"]["log_px"]
    small = two["variants"]["small"]  # the same repeat, measured against the pooled reference now
    assert small["repeats"] == one["variants"]["small"]["repeats"]
    assert small["mean"] == pytest.approx(sum(e - r for e, r in zip(small["repeats"][0], pooled.tolist())) / 3)


def test_curvature_check_refuses_bad_input(folder_run, tmp_path, capsys):
    from bench.curvature_check import main

    out = tmp_path / "check.json"
    assert main([str(folder_run), "--out", str(out), "--variant", "x=1:2"]) == 2
    assert "NAME=C:T:N" in capsys.readouterr().err
    assert main([str(folder_run), "--out", str(out), "--variant", "x=1:2:2@fp16"]) == 2
    assert "auto, fp32, bf16" in capsys.readouterr().err
    assert main([str(folder_run), "--out", str(out), "--sentences", "100000"]) == 2
    assert "runs past its end" in capsys.readouterr().err
    out.write_text("{not json")
    assert main([str(folder_run), "--out", str(out), "--sentences", "2"]) == 2
    assert "not a check's JSON file" in capsys.readouterr().err
    out.write_text(json.dumps({"run": str(folder_run.resolve()), "step": 7, "split": "test", "first": 0, "sentences": 2,
                               "ais": "1000x2000", "seed": 0, "variants": {},
                               "reference": {"spec": "16:200:16", "log_px": [-5.0, -6.0], "cpu_s_per_sentence": 1.0}}))
    assert main([str(folder_run), "--out", str(out), "--sentences", "2", "--reference-seeds", "2"]) == 2
    assert "without its AIS chains' weights" in capsys.readouterr().err
    assert main([str(folder_run), "--out", str(out), "--sentences", "2", "--reference-seeds", "0"]) == 2
    assert "--reference-seeds" in capsys.readouterr().err


def test_ais_transitions_traces_evaluates_path_and_compares_it_with_perfect_transitions(folder_run, tmp_path, capsys):
    from bench.ais_transitions import main

    out = tmp_path / "transitions.json"
    assert main([str(folder_run), "--out", str(out), "--sentences", "4", "--chains", "4", "--temperatures", "6"]) == 0
    figures = json.loads(out.read_text())
    assert figures["sentences"] == 4 and figures["temperatures"] == 6 and figures["step"] == 7
    assert figures["estimator"]["tempered_chains"] == 3  # evaluate's reference
    assert 0 < figures["best_schedule"] <= figures["perfect_transitions"]
    assert figures["lag_factor"] == pytest.approx(figures["log_weight_variance"] / figures["perfect_transitions"])
    profile = figures["profile"]
    assert profile["beta"][0] == pytest.approx(1 / 6) and profile["beta"][-1] == 1.0 and profile["beta_before"][0] == 0
    assert all(len(v) == 11 for v in profile.values()) and all(0 <= a <= 1 for a in profile["acceptance"])
    largest, smallest = figures["stiffness"]["largest"], figures["stiffness"]["smallest"]
    assert largest["q10"] <= largest["q50"] <= largest["q90"] and smallest["q50"] <= largest["q50"]
    assert f"measured {figures['log_weight_variance']:.2f}" in capsys.readouterr().out


def test_ais_transitions_refuses_bad_input(folder_run, corpus_folder, train_lines, tmp_path, capsys):
    from bench.ais_transitions import main

    out = tmp_path / "transitions.json"
    for extra, message in ((["--chains", "1"], "--chains at least 2"), (["--temperatures", "0"], "--temperatures"),
                           (["--sentences", "100000"], "runs past its end")):
        assert main([str(folder_run), "--out", str(out), *extra]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, err
    language_model = _untrained_run(tmp_path / "lm", corpus_folder, train_lines, "none")
    assert main([str(language_model), "--out", str(out)]) == 2
    assert "needs a latent model with Langevin inference" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("module", ["levers", "step_profile"])
def test_the_speed_ups_of_bf16_chains_are_against_the_fp32_chain_whatever_the_preset_says(monkeypatch, module):
    """The cpu preset's chain_precision is auto (bf16 on bf16 hardware): the benchmark's reference steps
    must still run the fp32 chain, or the bf16 lever would measure bf16 against itself."""
    import importlib

    bench_module = importlib.import_module(f"bench.{module}")
    made = []
    real = bench_module.learner

    def recording(spec, extra, device):
        made.append(real(spec, extra, device))
        return made[-1]

    def stop(*args, **kwargs):
        raise RuntimeError("stop before timing")

    monkeypatch.setattr(bench_module, "learner", recording)
    monkeypatch.setattr(bench_module, "interleave", stop)
    from bench.step_profile import QUICK

    monkeypatch.setattr(bench_module, "spec_for", lambda quick, device: {**QUICK, "preset": "cpu"})
    with pytest.raises(RuntimeError, match="stop before timing"):
        bench_module.run(quick=True, repeats=1, overrides=["chain_precision=auto"])
    precisions = sorted(learner.cfg.chain_precision for learner in made if learner.cfg.prior != "none")
    assert precisions.count("bf16") == 1 and set(precisions) == {"fp32", "bf16"}, precisions


def test_each_benchmark_s_rows_are_on_disk_before_the_next_starts(tmp_path, monkeypatch):
    """A run cut short (the GPU acceptance run's budget, Ctrl-C) keeps the rows of the benchmarks done."""
    import bench.__main__ as bench_cli

    on_disk = []

    def fake(name, args):
        latest = tmp_path / "latest.json"
        on_disk.append([r["benchmark"] for r in json.loads(latest.read_text())["rows"]] if latest.is_file() else [])
        return [Row(name, "a case", "s", 1.0, 2.0, 2.0, "cost")]

    monkeypatch.setattr(bench_cli, "run_one", fake)
    assert bench_cli.main(["--only", "sampling,training,server", "--out", str(tmp_path)]) == 0
    assert on_disk == [[], ["training"], ["training", "sampling"]]  # in BENCHMARKS' order
    final = json.loads((tmp_path / "latest.json").read_text())["rows"]
    assert [r["benchmark"] for r in final] == ["training", "sampling", "server"]


@pytest.mark.parametrize("bad, message", [
    ("--out", "cannot write"),  # a traceback after the first benchmark's work
    ("--checkpoint", "is not a textebm run"),  # a traceback in `precision`, its speed rows lost
])
def test_bench_refuses_a_bad_path_before_any_work(tmp_path, capsys, bad, message):
    from bench.__main__ import main

    (tmp_path / "file").write_text("x")
    out = tmp_path / "file" if bad == "--out" else tmp_path / "o"
    extra = ["--checkpoint", str(tmp_path)] if bad == "--checkpoint" else []
    assert main(["--quick", "--only", "batching", "--repeats", "1", "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err and not (tmp_path / "o").exists(), err


def test_bench_refuses_threads_below_one():
    from bench.__main__ import parse_args

    with pytest.raises(SystemExit) as exit_:  # 0 was silently ignored, -1 a traceback
        parse_args(["--only", "batching", "--threads", "0"])
    assert exit_.value.code == 2


def test_a_nan_figure_is_written_as_null_not_invalid_json(tmp_path):
    from bench.__main__ import parse_args, save

    args = parse_args(["--only", "batching", "--out", str(tmp_path)])
    from bench.__main__ import machine

    save(tmp_path, [Row("batching", "case", "ms", float("nan"), 1.0, float("inf"), "cost factor")],
         {"started": 0.0, "machine": machine(), "repeats": 1, "quick": False, "overrides": [], "only": ["batching"],
          "device": "cpu"}, args)
    row = json.loads((tmp_path / "latest.json").read_text())["rows"][0]  # strict: NaN is no JSON
    assert row["reference"] is None and row["ratio"] is None and row["candidate"] == 1.0


def test_a_partial_run_does_not_replace_the_committed_table_by_default():
    # `--only likelihood` without --out replaced bench/results/latest.md, the full table, with its few rows
    from bench.__main__ import BENCHMARKS, parse_args

    assert parse_args(["--only", "likelihood"]).out == "bench/results/partial"
    assert parse_args(["--only", ",".join(BENCHMARKS)]).out == parse_args([]).out == "bench/results"
    assert parse_args(["--only", "likelihood", "--out", "/tmp/x"]).out == "/tmp/x"
