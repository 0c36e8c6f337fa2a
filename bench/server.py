"""The server rows: /generate latency and throughput against the decoding floor of the same model.

The load test (bench/load_test.py) starts `python -m server` on loopback and drives it. The
floor is what the server cannot avoid: `model.generate` of the same model in this process, one
thread as the server has, for the same n and max_length (the prior chain, then decoding until
every sentence ends, so sentence lengths are the model's own). Give `--checkpoint RUN` a trained
run: an untrained model (the default, LSTM 256/512 with PTB's vocabulary) rarely ends a sentence,
so nearly every request decodes the full 40 tokens, where a trained PTB model averages about 22.

Target (issue 14): p50 within 1.3x of the floor at n=1 and n=32. Throughput with 1, 4 and 16
clients (n=1) is reported against the floor's sentences/s at the batch those clients can form.
"""

from __future__ import annotations

import contextlib
import io
import json
import tempfile
from pathlib import Path

from bench import Row, interleave, median

NAME = "server"
TARGET = 1.3
MAX_LENGTH = 40
SIZES = ["embedding_dim=256", "hidden_dim=512", "latent_dim=32"]
QUICK_SIZES = ["embedding_dim=16", "hidden_dim=32", "latent_dim=4"]


def make_run(folder: Path, quick: bool) -> Path:
    """An untrained run folder the server can load: config, PTB word vocabulary, step-0 checkpoint."""
    import torch

    from bench.eval_ppl import data_dir
    from textebm.config import resolve_config
    from textebm.data.vocab import WordVocab
    from textebm.model.checkpoints import save_checkpoint
    from textebm.model.runs import build_model, create_run
    from textebm.training.learner import make_optimizers

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
    argv = ["--checkpoint", str(run), "--clients", str(clients), "--n", str(n), "--max-length", str(MAX_LENGTH),
            "--duration", str(duration), "--json", str(out)]
    with contextlib.redirect_stdout(io.StringIO()):  # it prints its report; the JSON file holds it
        code = load_test.main(argv)
    report = json.loads(out.read_text())
    if code != 0:
        raise RuntimeError(f"bench/load_test.py failed ({code}): {report}")
    return report


class Floor:
    """`model.generate(n, max_length=40)` per batch size n in this process, one thread as the server has,
    fresh seeds: timed a few calls at a time between the load segments."""

    def __init__(self, run: Path, batches: list[int]):
        import torch

        from textebm.model.runs import load_run

        model, seeds = load_run(run).model, iter(range(10**6))
        self.fns = {n: (lambda n=n: model.generate(n, max_length=MAX_LENGTH,
                                                   generator=torch.Generator().manual_seed(next(seeds))))
                    for n in batches}
        self.seconds: dict[int, list[float]] = {n: [] for n in batches}

    def time(self, calls: int) -> None:
        import torch

        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            for n, values in interleave(self.fns, calls, warmup=0).items():
                self.seconds[n] += values
        finally:
            torch.set_num_threads(threads)

    def median(self) -> dict[int, float]:
        return {n: median(values) for n, values in self.seconds.items()}


CASES = ((1, 1), (1, 32), (4, 1), (16, 1))  # (clients, n)


def pooled(parts: list[dict]) -> dict:
    """One load test's segments as one report: the median of their percentiles and batch sizes, their
    mean throughput (equal durations)."""
    def mid(key):
        values = [part[key] for part in parts if part.get(key) is not None]
        return round(median(values), 1) if values else None

    return {"p50_ms": mid("p50_ms"), "p95_ms": mid("p95_ms"), "p99_ms": mid("p99_ms"),
            "mean_sentence_tokens": mid("mean_sentence_tokens"), "mean_batch_requests": mid("mean_batch_requests"),
            "sentences_per_s": sum(part["sentences_per_s"] for part in parts) / len(parts), "segments": parts}


def run(quick: bool, repeats: int, checkpoint: str | None = None) -> list[Row]:
    from bench import load_test

    duration = 3.0 if quick else 5.0 * repeats
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        tmp = Path(tmp)
        run_dir = Path(checkpoint) if checkpoint else make_run(tmp / "run", quick)
        # interleaved: each round a segment of every load test, then the floor, so that both sides meet the
        # same load from the machine (the floor timed after all the load swung the row from 0.61x to 1.73x)
        floor, segments = Floor(run_dir, [1, 4, 16, 32]), {case: [] for case in CASES}
        floor.time(1)  # warm-up, untimed
        floor.seconds = {n: [] for n in floor.seconds}
        for round_ in range(repeats):
            for clients, n in CASES:
                segments[(clients, n)].append(_load(load_test, run_dir, tmp / f"{clients}-{n}-{round_}.json",
                                                    clients, n, duration / repeats))
            floor.time(max(1, 3 // repeats))
        reports = {case: pooled(parts) for case, parts in segments.items()}
        floor = floor.median()
    model = (f"trained run {run_dir.name}" if checkpoint
             else "tiny untrained model" if quick else "untrained LSTM 256/512, PTB vocabulary")
    rows = []
    for n in (1, 32):
        report = reports[(1, n)]
        floor_ms = floor[n] * 1000
        ratio = report["p50_ms"] / floor_ms if report["p50_ms"] else None
        rows.append(Row(NAME, f"/generate p50 latency, n={n}, 1 client, vs the decoding floor", "ms", floor_ms,
                        report["p50_ms"], ratio, "cost factor", f"<= {TARGET:g}x the floor",
                        None if ratio is None else ratio <= TARGET,
                        f"p95 {report['p95_ms']} ms, p99 {report['p99_ms']} ms; mean sentence "
                        f"{report['mean_sentence_tokens']} tokens; {model}; {duration:g} s of load",
                        {"report": report, "floor_s": floor[n]}))
    for clients in (1, 4, 16):
        report = reports[(clients, 1)]
        floor_rate = clients / floor[clients]
        ratio = report["sentences_per_s"] / floor_rate
        rows.append(Row(NAME, f"/generate throughput, {clients} client(s), n=1, vs the floor at batch {clients}",
                        "sentences/s", floor_rate, report["sentences_per_s"], ratio, "share of the floor", "", None,
                        f"p50 {report['p50_ms']} ms, p95 {report['p95_ms']} ms; mean requests per decoded batch "
                        f"{report['mean_batch_requests']}; {model}", {"report": report}))
    return rows
