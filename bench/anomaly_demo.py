"""Anomaly-score demo: AUROC of `textebm score` for PTB test sentences (normal) against
(a) the same sentences with their words shuffled and (b) a foreign corpus, length-matched.

    python -m bench.anomaly_demo --run /work/runs/ptb30-ebm --n 300 --num-chains 2 --out /tmp/anomaly

Sets (all from $TEXTEBM_DATA_DIR, the first N lines, so the result is reproducible):
  ptb        PTB test, first N sentences                          (normal)
  shuffled   the same N sentences, words permuted (seeded)        (same words, broken order)
  yahoo      Yahoo test, PTB-normalised (lowercase, punctuation dropped, numbers -> N), each cut to
             the length of its paired PTB sentence (same length distribution as `ptb`)
  snli       SNLI test, normalised the same way (cut to the paired length, but mostly shorter)
Foreign words outside PTB's 10k vocabulary become <unk>; the `unk` column reports how often.
The files written under --out are plain text, so every row can be re-run with `textebm score --auroc`.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import sys
import time
from pathlib import Path

import torch

from textebm.evaluation.anomaly import auroc, score_lines
from textebm.io import atomic_write_text
from textebm.model.runs import load_run

_PUNCT = re.compile(r"^[^\w<>]+$")
_NUMBER = re.compile(r"^\d[\d.,:/-]*$")


def ptb_normalise(line: str) -> list[str]:
    """PTB's own preprocessing, roughly: lowercase, no punctuation, numbers as N."""
    words = []
    for word in line.lower().split():
        if _PUNCT.match(word):
            continue
        words.append("N" if _NUMBER.match(word) else word)
    return words


def build_sets(data_dir: Path, n: int, seed: int) -> dict[str, list[str]]:
    def first(name: str, count: int) -> list[str]:
        out = []
        with open(data_dir / name / "test.txt", encoding="utf-8") as handle:
            for line in handle:
                if line.strip():
                    out.append(line.strip())
                if len(out) == count:
                    break
        return out

    ptb = first("ptb", n)
    rng = random.Random(seed)
    shuffled = []
    for line in ptb:
        words = line.split()
        rng.shuffle(words)
        shuffled.append(" ".join(words))
    sets = {"ptb": ptb, "shuffled": shuffled}
    for name in ("yahoo", "snli"):
        foreign = [w for w in (ptb_normalise(line) for line in first(name, 3 * n)) if w][:n]
        sets[name] = [" ".join(words[:len(p.split())]) for words, p in zip(foreign, ptb)]
    return sets


def unk_rate(vocab, lines: list[str]) -> float:
    ids = [i for line in lines for i in vocab.encode(line)]
    return sum(i == vocab.unk_id for i in ids) / max(1, len(ids))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.anomaly_demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", action="append", required=True, help="run folder (repeatable)")
    parser.add_argument("--n", type=int, default=300, help="sentences per set (default 300)")
    parser.add_argument("--num-chains", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="/tmp/anomaly", help="folder for the sets and results.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    data_dir = Path(os.environ.get("TEXTEBM_DATA_DIR", "data"))
    out = Path(args.out)
    sets = build_sets(data_dir, args.n, args.seed)
    for name, lines in sets.items():
        atomic_write_text(out / f"{name}.txt", "".join(line + "\n" for line in lines))
    results = []
    for folder in args.run:
        loaded = load_run(folder)
        scores, seconds = {}, {}
        for name, lines in sets.items():
            started = time.perf_counter()
            scores[name] = score_lines(loaded.model, loaded.vocab, lines, args.num_chains, args.seed, args.batch_size)
            seconds[name] = time.perf_counter() - started
            print(f"{Path(folder).name} {name}: {seconds[name]:.1f} s", file=sys.stderr, flush=True)
        for name in ("shuffled", "yahoo", "snli"):
            row = {"run": Path(folder).name, "anomalous": name, "n": len(sets[name]),
                   "auroc_per_token": auroc(scores["ptb"].per_token, scores[name].per_token),
                   "auroc_total": auroc(scores["ptb"].total, scores[name].total),
                   "mean_per_token_ptb": sum(scores["ptb"].per_token) / len(sets["ptb"]),
                   "mean_per_token": sum(scores[name].per_token) / len(sets[name]),
                   "mean_tokens": sum(scores[name].tokens) / len(sets[name]),
                   "unk_rate": unk_rate(loaded.vocab, sets[name]), "unk_rate_ptb": unk_rate(loaded.vocab, sets["ptb"]),
                   "seconds": seconds[name], "seconds_ptb": seconds["ptb"]}
            results.append(row)
            print(json.dumps(row), flush=True)
    atomic_write_text(out / "results.json", json.dumps({"args": vars(args), "results": results}, indent=1) + "\n")
    print("| run | anomalous set | AUROC per-token | AUROC total | mean per-token (PTB / set) "
          "| <unk> rate (PTB / set) |")
    print("|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['run']} | {r['anomalous']} | {r['auroc_per_token']:.3f} | {r['auroc_total']:.3f} | "
              f"{r['mean_per_token_ptb']:.3f} / {r['mean_per_token']:.3f} | "
              f"{r['unk_rate_ptb']:.3f} / {r['unk_rate']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
