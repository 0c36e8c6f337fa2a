"""Benchmark suite of textebm (`python -m bench`): every figure is a ratio against a plain reference.

These machines are shared and noisy, so absolute times say little. Each benchmark therefore runs a
plain reference implementation (bench/reference.py) and the library's code alternately in the same
process (ref, cand, ref, cand, ...) and reports the medians and their ratio. This module holds the
shared timing loop and the row format that the JSON and the Markdown table are made of.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field


@dataclass
class Row:
    """One line of the results table. `ratio` is candidate over reference in the row's `ratio_kind`
    (a speed-up for throughputs, a cost factor for times); `met` is None where no target applies or
    nothing was measured."""

    benchmark: str
    case: str
    unit: str = ""
    reference: float | None = None  # median figure of the reference, in `unit`
    candidate: float | None = None  # median figure of the candidate, in `unit`
    ratio: float | None = None
    ratio_kind: str = ""
    target: str = ""
    met: bool | None = None
    note: str = ""
    samples: dict = field(default_factory=dict)  # the raw per-repeat seconds, for the JSON only

    def to_dict(self) -> dict:
        return asdict(self)


def synchronize(device=None) -> None:
    """Wait for the device's queued work (CUDA runs asynchronously); nothing to wait for on a CPU."""
    import torch

    if device is not None and torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device=None) -> float:
    """Seconds of one call of `fn`, the device's queued work included (synchronised before and after)."""
    synchronize(device)
    tic = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - tic


def interleave(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 1,
               device=None) -> dict[str, list[float]]:
    """Seconds per call of each function, run in turn `repeats` times after `warmup` untimed rounds, so
    that a burst of load from a neighbour hits every contender alike; every other round in reverse order
    (a, b, b, a, a, b, ...), so that no contender always follows the same one (the caches it leaves).
    On CUDA every timing waits for the device (`timed`)."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    seconds: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(repeats):
        for name in (list(fns) if round_ % 2 == 0 else list(reversed(fns))):
            seconds[name].append(timed(fns[name], device))
    return seconds


def median(values: list[float]) -> float:
    return statistics.median(values)


def build_model(overrides: list[str], vocab_size: int, seed: int = 0, preset: str = "default", device="cpu"):
    """An untrained LatentEBMTextModel from `preset` plus `overrides`, weights fixed by `seed`.

    Its end-of-sentence id is -1, a token the decoder can never produce, so every sampled sentence
    runs to the full length and both sides of a sampling ratio do the same work."""
    import torch

    from textebm.config import resolve_config
    from textebm.model.latent_ebm import LatentEBMTextModel

    cfg = resolve_config(preset, "ptb", list(overrides))
    torch.manual_seed(seed)
    return LatentEBMTextModel(cfg, vocab_size, pad_id=0, bos_id=1, eos_id=-1).to(device), cfg


def load_latent_run(run: str, purpose: str):
    """The trained run at `run` (`load_run`), refused with a UserError unless it has a latent code
    inferred by Langevin chains (prior ebm or gaussian): what `purpose` needs."""
    from pathlib import Path

    from textebm.errors import UserError
    from textebm.model.runs import load_run

    loaded = load_run(Path(run))
    if not loaded.model.has_latent or loaded.config.model != "latent_ebm":
        raise UserError(f"{run}: {purpose} needs a latent model with Langevin inference (prior ebm or gaussian), "
                        f"not model={loaded.config.model}, prior={loaded.config.prior}")
    return loaded


def held_out_sentences(loaded, data_dir, split: str, first: int, count: int) -> list[list[int]]:
    """Sentences first .. first + count of the run's held-out `split` as id lists, encoded as `evaluate`
    encodes them; a UserError when the split is shorter."""
    from textebm.data.batches import encode_lines
    from textebm.data.corpora import evaluation_splits, open_run_corpus
    from textebm.errors import UserError

    config = loaded.config
    corpus, _ = open_run_corpus(loaded.folder, config.corpus, data_dir)
    _, held_out, _ = evaluation_splits(corpus, config.train_split, split)
    lines = held_out[first:first + count]
    if len(lines) < count:
        raise UserError(f"the {split} split has {len(held_out)} lines: --first {first} --sentences {count} "
                        "runs past its end")
    return encode_lines(lines, loaded.vocab, config.max_length).sentences
