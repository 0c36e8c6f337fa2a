"""The server rows: /generate latency and throughput, measured by the server helper's bench/load_test.py.

Targets (issue 5): p50 latency under 50 ms for n=1 and under 300 ms for n=32; throughput with 16
concurrent clients at least 3x the sequential one (one client). The load test owns the measurement
(it starts `python -m server` on loopback and drives it); this module gives it a run folder (an
untrained model of the benchmark's size, LSTM 256/512, latent 32, PTB's vocabulary, fixed seed),
calls its `main` three times (1 client n=1, 1 client n=32, 16 clients n=1) and turns the reports into
rows. The latency targets are absolute (no reference can stand in for an HTTP round trip); the
throughput figure is the ratio 16 clients / 1 client measured in the same run.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path

from bench import Row

NAME = "server"
TARGETS = "p50 n=1 < 50 ms; p50 n=32 < 300 ms; 16 clients >= 3x sequential"
SIZES = ["embedding_dim=256", "hidden_dim=512", "latent_dim=32"]
QUICK_SIZES = ["embedding_dim=16", "hidden_dim=32", "latent_dim=4"]


def make_run(folder: Path, quick: bool) -> Path:
    """An untrained run folder the server can load: config, PTB word vocabulary, step-0 checkpoint."""
    import torch

    from bench.eval_ppl import data_dir
    from textebm.config import resolve_config
    from textebm.runs import build_model, create_run, save_checkpoint
    from textebm.train import make_optimizers
    from textebm.vocab import WordVocab

    train = data_dir() / "ptb" / "train.txt"
    lines = train.read_text(encoding="utf-8").splitlines() if train.is_file() else ["a b c"]
    vocab = WordVocab.build(lines[:2000] if quick else lines)
    cfg = resolve_config("default", "ptb", QUICK_SIZES if quick else SIZES)
    torch.manual_seed(0)
    model = build_model(cfg, vocab)
    create_run(folder, cfg, vocab)
    save_checkpoint(folder, model, make_optimizers(model, cfg), 0)
    return folder


def _load(load_test, run: Path, out: Path, clients: int, n: int, duration: float) -> dict:
    argv = ["--checkpoint", str(run), "--clients", str(clients), "--n", str(n), "--max-length", "40",
            "--duration", str(duration), "--json", str(out)]
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its report; the JSON file holds it
        code = load_test.main(argv)
    report = json.loads(out.read_text())
    if code != 0:
        raise RuntimeError(f"bench/load_test.py failed ({code}): {report}")
    return report


def run(quick: bool, repeats: int) -> list[Row]:
    from bench import load_test

    duration = 3.0 if quick else 5.0 * repeats
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        tmp = Path(tmp)
        run_dir = make_run(tmp / "run", quick)
        one = _load(load_test, run_dir, tmp / "one.json", 1, 1, duration)
        many = _load(load_test, run_dir, tmp / "many.json", 1, 32, duration)
        busy = _load(load_test, run_dir, tmp / "busy.json", 16, 1, duration)
    size = "tiny untrained model" if quick else "untrained LSTM 256/512, PTB vocabulary"
    throughput = busy["sentences_per_s"] / one["sentences_per_s"] if one["sentences_per_s"] else None
    common = f"{size}; max_length 40 (sentences may end earlier at a sampled </s>); {duration:g} s of load each"
    return [
        Row(NAME, "/generate p50 latency, n=1, 1 client", "ms", None, one["p50_ms"], None, "", "< 50 ms",
            one["p50_ms"] is not None and one["p50_ms"] < 50, f"absolute; p99 {one['p99_ms']} ms; {common}",
            {"report": one}),
        Row(NAME, "/generate p50 latency, n=32, 1 client", "ms", None, many["p50_ms"], None, "", "< 300 ms",
            many["p50_ms"] is not None and many["p50_ms"] < 300, f"absolute; p99 {many['p99_ms']} ms; {common}",
            {"report": many}),
        Row(NAME, "/generate throughput, 16 concurrent clients vs 1 (n=1)", "sentences/s", one["sentences_per_s"],
            busy["sentences_per_s"], throughput, "speed-up", ">= 3x",
            throughput is not None and throughput >= 3,
            f"p50 under load {busy['p50_ms']} ms, mean requests per decoded batch "
            f"{busy['mean_batch_requests']}; {common}",
            {"report": busy}),
    ]
