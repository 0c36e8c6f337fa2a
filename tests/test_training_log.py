"""Training's budgets and logs: CPU-time budgets counted over resumes, kept marks, the clocks of
every record, TensorBoard events holding the scalars of metrics.jsonl."""

import itertools
import json
import shutil
import time

import pytest
import torch

from textebm.config import resolve_config
from textebm.data.batches import encode_lines
from textebm.data.vocab import build_vocab
from textebm.model.checkpoints import load_checkpoint
from textebm.model.runs import build_model, create_run, load_run
from textebm.training.learner import Learner
from textebm.training.train import mark_folder, train
from textebm.training.training_log import Clock, TrainingLog

QUIET = dict(progress=False, echo=lambda text: None)
WORDS = "the a cat dog sat ran on under mat log red big small".split()
TINY = ["embedding_dim=8", "hidden_dim=16", "latent_dim=4", "energy_hidden=8", "prior_steps=2", "posterior_steps=2",
        "batch_size=4", "dropout=0.0", "log_every=1", "checkpoint_every=1000", "valid_every=0", "num_log_samples=1",
        "valid_batches=1", "max_length=12"]


def _lines(n, seed):
    g = torch.Generator().manual_seed(seed)
    return [" ".join(WORDS[i] for i in torch.randint(len(WORDS), (int(torch.randint(3, 9, (1,), generator=g)),),
                                                     generator=g).tolist()) for _ in range(n)]


@pytest.fixture
def tiny_run(tmp_path, monkeypatch):
    """A tiny model on a synthetic corpus, and validation made cheap; `run(...)` trains it in tmp_path."""
    import textebm.training.train

    monkeypatch.setattr(textebm.training.train, "VALID_AIS_CHAINS", 8)
    monkeypatch.setattr(textebm.training.train, "VALID_AIS_STEPS", 4)
    monkeypatch.setattr(textebm.training.train, "VALID_AU_SENTENCES", 4)
    cfg = resolve_config("cpu", "ptb", TINY)
    train_lines, valid_lines = _lines(40, 0), _lines(8, 1)
    vocab = build_vocab(train_lines, cfg.tokenizer, cfg.vocab_size, cfg.min_freq, cfg.lowercase)
    data = encode_lines(train_lines, vocab, cfg.max_length), encode_lines(valid_lines, vocab, cfg.max_length)
    create_run(tmp_path, cfg, vocab, {"corpus": "ptb", "files": {}})

    def run(resume=False, **budget):
        torch.manual_seed(0)
        model = build_model(cfg, vocab)
        return train(model, cfg, *data, tmp_path, vocab, "cpu", resume=resume, **QUIET, **budget)

    return tmp_path, run


@pytest.fixture
def cpu_second_per_step(monkeypatch):
    """A process clock that advances one second per reading: each training step (read on entry and
    exit) counts exactly 1 CPU second, so CPU budgets give exact step counts."""
    ticks = itertools.count()
    monkeypatch.setattr("textebm.training.training_log.time.process_time", lambda: float(next(ticks)))


def _records(folder, kind=None):
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return [r for r in records if kind is None or r["kind"] == kind]


def test_cpu_budget_counts_training_steps_over_resumes_and_keeps_marks(tiny_run, cpu_second_per_step):
    folder, run = tiny_run
    result = run(max_cpu_minutes=5 / 60, keep_at=(2 / 60,))
    assert (result.step, result.stopped_by) == (5, "max_cpu_minutes")
    mark = mark_folder(folder, 2 / 60)
    assert json.loads((mark / "mark.json").read_text())["step"] == 2
    assert load_run(mark).step == 2  # a complete run folder: config, vocabulary, checkpoint
    assert json.loads((mark / "corpus.json").read_text()) == {"corpus": "ptb", "files": {}}  # and its corpus
    assert load_checkpoint(folder)["extra"]["clock"]["cpu_seconds"] == pytest.approx(5.0)
    # resumed with a larger budget: it goes on from 5 CPU seconds, not from 0
    result = run(resume=True, max_cpu_minutes=8 / 60)
    assert (result.step, result.stopped_by) == (8, "max_cpu_minutes")
    train_records = _records(folder, "train")
    assert [r["step"] for r in train_records] == list(range(1, 9))
    # a mark added once the time is spent is kept at the end, at the run's last step
    result = run(resume=True, max_cpu_minutes=8 / 60, keep_at=(2 / 60, 8 / 60))
    assert result.step == 8 and load_run(mark_folder(folder, 8 / 60)).step == 8
    assert [r["cpu_seconds"] for r in train_records] == [float(s) for s in range(1, 9)]


def test_a_mark_folder_left_incomplete_is_kept_again(tiny_run, cpu_second_per_step):
    # killed inside keep_mark after the mark's config and vocabulary, before its checkpoint: it counted as kept
    folder, run = tiny_run
    mark = mark_folder(folder, 2 / 60)
    mark.mkdir(parents=True)
    for name in ("config.json", "vocab.json"):
        shutil.copy(folder / name, mark / name)
    run(max_cpu_minutes=5 / 60, keep_at=(2 / 60,))
    assert json.loads((mark / "mark.json").read_text())["step"] == 2
    assert load_run(mark).step == 2


def test_every_record_carries_the_three_clocks(tiny_run):
    folder, run = tiny_run
    run(max_steps=3)
    records = _records(folder)
    assert {"train", "final"} <= {r["kind"] for r in records}
    for r in records:
        assert r["time"] > 1.7e9 and r["elapsed"] > 0 and r["process_cpu_seconds"] >= r["cpu_seconds"] > 0
    steps = _records(folder, "train")
    assert all(a["elapsed"] <= b["elapsed"] and a["cpu_seconds"] < b["cpu_seconds"] for a, b in zip(steps, steps[1:]))


def test_tensorboard_events_hold_the_scalars_of_metrics_jsonl(tiny_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder, run = tiny_run
    run(max_steps=4)
    # TensorBoard reads a folder's event files in name order, and a name is the writer's second, then a
    # per-process counter, compared as text: in the same second writer 10 sorts before writer 9 (a full
    # suite run read steps 5, 6 before 1-4). A resume is never that quick outside a test.
    time.sleep(1.05 - time.time() % 1)
    run(resume=True, max_steps=6)  # resumed from step 4: nothing after it is written twice
    events = EventAccumulator(str(folder / "tensorboard")).Reload()
    expected = {}
    for r in _records(folder):
        for key, value in r.items():
            if key not in ("step", "kind", "time") and isinstance(value, (int, float)) and not isinstance(value, bool):
                expected.setdefault(f"{r['kind']}/{key}", []).append((r["step"], value))
    assert set(events.Tags()["scalars"]) == set(expected)
    for tag, points in expected.items():
        logged = [(e.step, e.value) for e in events.Scalars(tag)]
        assert [s for s, _ in logged] == [s for s, _ in points], tag
        assert [v for _, v in logged] == pytest.approx([v for _, v in points], rel=1e-5), tag


def test_clock_state_round_trips_and_counts_only_training_work(cpu_second_per_step):
    clock = Clock.from_state({"elapsed": 10.0, "cpu_seconds": 3.0, "process_cpu_seconds": 4.0})
    with clock.training():
        pass
    outside = clock.process_cpu_seconds  # work outside training() (a validation) moves the process clock only
    assert clock.cpu_seconds == 4.0 and outside > 4.0
    state = clock.state()
    assert state["elapsed"] >= 10.0 and state["process_cpu_seconds"] > state["cpu_seconds"]
    assert Clock.from_state(state).cpu_seconds == 4.0


def test_a_log_without_tensorboard_writes_json_lines_only(tmp_path):
    log = TrainingLog(tmp_path, lambda text: None, Clock(), tensorboard=False)
    log.metrics({"step": 1, "kind": "train", "nll_token": 2.5})
    log.close()
    assert not (tmp_path / "tensorboard").exists()
    assert _records(tmp_path)[0]["nll_token"] == 2.5


def test_a_metrics_file_cut_short_by_a_kill_plots_and_a_damaged_one_is_one_line(tiny_run, cli, one_line_error):
    from textebm.evaluation.plots import read_metrics

    folder, run = tiny_run
    run(max_steps=3)
    records = _records(folder)
    metrics = folder / "metrics.jsonl"
    whole = metrics.read_text(encoding="utf-8")
    metrics.write_text(whole + '{"step": 4, "epoch": 0.4, "kind": "tra', encoding="utf-8")  # appended, then killed
    assert read_metrics(folder) == records
    status, out, err = cli("plot", folder, "--out", folder / "cut.png")
    assert status == 0, err
    assert (folder / "cut.png").read_bytes()[:4] == b"\x89PNG"
    first, rest = whole.split("\n", 1)
    metrics.write_text(first[:20] + "\n" + rest, encoding="utf-8")  # not the last line: a damaged file
    one_line_error(*cli("plot", folder)[::2], "plot", f"{metrics}: line 1 is not a JSON record")


@pytest.mark.parametrize("metrics, fragment", [
    (None, "has no metrics.jsonl to plot"),
    ("", "metrics.jsonl has no training records yet"),
    ('{"step": 0, "kind": "valid", "valid_nll_posterior": 5.0}\n', "metrics.jsonl has no training records yet"),
])
def test_a_run_with_nothing_to_plot_is_one_line(run_copy, cli, one_line_error, metrics, fragment):
    path, figure = run_copy / "metrics.jsonl", run_copy / "learning_curves.png"
    figure.unlink(missing_ok=True)
    if metrics is None:
        path.unlink()
    else:
        path.write_text(metrics, encoding="utf-8")
    status, out, err = cli("plot", run_copy)
    one_line_error(status, err, "plot", f"{run_copy}", fragment)
    assert out == "" and not figure.exists()


def test_learning_curves_against_cpu_minutes_and_a_clear_error_for_old_records(tiny_run, cli):
    folder, run = tiny_run
    run(max_steps=3)
    status, out, _ = cli("plot", str(folder), "--x", "cpu-minutes", "--out", str(folder / "cpu.png"))
    assert status == 0 and (folder / "cpu.png").read_bytes()[:4] == b"\x89PNG"
    records = _records(folder)  # as a run trained before the clocks wrote them
    (folder / "metrics.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "elapsed"}) + "\n"
                                                  for r in records), encoding="utf-8")
    status, _, err = cli("plot", str(folder), "--x", "minutes")
    assert status == 2 and "no elapsed" in err and "Traceback" not in err
    assert cli("plot", str(folder))[0] == 0  # against steps it still plots
    status, _, err = cli("plot", str(folder), "--out", str(folder))
    assert status == 2 and err == f"textebm plot: error: cannot write {folder}: it is a folder\n"


def test_records_of_runs_from_before_the_rough_mi_rename_read_under_todays_name(tiny_run, cli):
    from textebm.evaluation.plots import read_metrics

    folder, run = tiny_run
    run(max_steps=3)
    records = _records(folder)
    assert any("valid_rough_mi" in r for r in records) and not any("valid_mutual_information" in r for r in records)
    metrics = folder / "metrics.jsonl"
    metrics.write_text(metrics.read_text(encoding="utf-8").replace('"valid_rough_mi"', '"valid_mutual_information"'),
                       encoding="utf-8")  # as a run trained before 2026-12-07 wrote it
    assert read_metrics(folder) == records
    assert cli("plot", folder, "--out", folder / "old.png")[0] == 0


def test_a_run_resumed_after_a_crash_validates_as_an_uninterrupted_one(tmp_path, monkeypatch):
    """The validation's state (the steps' energy gaps since the last validation, the gap histories behind
    the warnings) is saved with the checkpoint: resumed after step 2, the step-4 validation's training
    energy gap averaged steps 3-4 only, where the uninterrupted run's averages 1-4."""
    import textebm.training.train as training

    monkeypatch.setattr(training, "VALID_AIS_CHAINS", 8)
    monkeypatch.setattr(training, "VALID_AIS_STEPS", 4)
    cfg = resolve_config("cpu", "ptb", [*TINY, "valid_every=4", "checkpoint_every=2"])
    train_lines, valid_lines = _lines(40, 0), _lines(8, 1)
    vocab = build_vocab(train_lines, cfg.tokenizer, cfg.vocab_size, cfg.min_freq, cfg.lowercase)
    data = encode_lines(train_lines, vocab, cfg.max_length), encode_lines(valid_lines, vocab, cfg.max_length)

    def run(folder, **kwargs):
        torch.manual_seed(0)
        return train(build_model(cfg, vocab), cfg, *data, folder, vocab, "cpu", max_steps=6, **QUIET, **kwargs)

    for name in ("whole", "crashed"):
        create_run(tmp_path / name, cfg, vocab)
    run(tmp_path / "whole")
    step = Learner.step
    calls = itertools.count(1)

    def crashing(self, *args, **kwargs):
        if next(calls) == 3:
            raise RuntimeError("crash")
        return step(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Learner, "step", crashing)
        with pytest.raises(RuntimeError, match="crash"):
            run(tmp_path / "crashed")
    run(tmp_path / "crashed", resume=True)

    def validations(folder):
        records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k not in ("time", "elapsed", "cpu_seconds", "process_cpu_seconds")}
                for r in records if r["kind"] != "train"]

    whole, resumed = validations(tmp_path / "whole"), validations(tmp_path / "crashed")
    assert [r["step"] for r in whole] == [4, 6] and "train_energy_gap" in whole[0]
    assert resumed == whole
