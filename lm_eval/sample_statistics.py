"""Statistics of generated sentences alone: length, diversity, copying, self-BLEU.

All functions take normalised sentences (tokens joined by single spaces) and are pure.
Self-BLEU (Zhu et al. 2018, Texygen) scores each sentence as a hypothesis against the others as
references and averages; it is quadratic in the number of sentences, so it is computed on a
seeded subsample: `SELF_BLEU_SIZE` sentences drawn with `random.Random(seed).sample`, each
scored against the other sentences of the subsample, by `lm_eval.bleu.sentence_bleu` (nltk,
uniform weights up to 4-grams, smoothing method 1), on nltk's 0-1 scale.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Iterable
from concurrent.futures import CancelledError

from lm_eval.bleu import sentence_bleu

SELF_BLEU_SIZE = 200  # 200 x 199 sentence pairs: ~4 s with nltk on one core
SELF_BLEU_SEED = 1234
# Sentence-boundary and padding markers that generators often write into their output. Every n-gram LM
# scores them as ordinary (unknown) words, which raises FPPL; they are counted so that a report can say so.
MARKERS = ("<s>", "</s>", "<bos>", "<eos>", "<pad>")


def length_stats(sentences: list[str]) -> dict:
    """Mean and max sentence length in tokens."""
    lengths = [len(s.split(" ")) for s in sentences]
    if not lengths:
        return {"mean_length": 0.0, "max_length": 0}
    return {"mean_length": sum(lengths) / len(lengths), "max_length": max(lengths)}


def unique_share(sentences: list[str]) -> float:
    """Share of distinct sentences (1.0: no duplicates; 1/n: all identical)."""
    return len(set(sentences)) / len(sentences) if sentences else 0.0


def copied_share(sentences: list[str], training: Iterable[str]) -> float:
    """Share of sentences that occur verbatim (after normalisation) in the training text."""
    if not sentences:
        return 0.0
    train_set = training if isinstance(training, (set, frozenset)) else set(training)
    return sum(1 for s in sentences if s in train_set) / len(sentences)


def ngrams(tokens: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(sentences: list[str], n: int) -> float | None:
    """Distinct-n (Li et al. 2016): distinct n-grams / all n-grams over the whole sample set.

    None when no sentence has n tokens.
    """
    total = 0
    seen: set[tuple[str, ...]] = set()
    for s in sentences:
        grams = ngrams(s.split(" "), n)
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else None


def self_bleu_subsample(num_sentences: int, size: int = SELF_BLEU_SIZE, seed: int = SELF_BLEU_SEED) -> list[int]:
    """Indices of the self-BLEU subsample: all when there are at most `size`, else a seeded draw."""
    if num_sentences <= size:
        return list(range(num_sentences))
    return sorted(random.Random(seed).sample(range(num_sentences), size))


def marker_tokens(sentences: list[str]) -> dict[str, int]:
    """How often each of `MARKERS` occurs as a token (only those that occur)."""
    counts = Counter(token for s in sentences for token in s.split(" ") if token in MARKERS)
    return dict(sorted(counts.items()))


def self_bleu(sentences: list[str], size: int = SELF_BLEU_SIZE, seed: int = SELF_BLEU_SEED,
              stop: threading.Event | None = None) -> float | None:
    """Mean BLEU-4 of each subsampled sentence against the rest of the subsample (None if < 2).

    `stop`, once set, ends the computation at the next sentence (`CancelledError`): it runs in a thread
    beside other work, and a thread cannot be interrupted otherwise."""
    idx = self_bleu_subsample(len(sentences), size, seed)
    if len(idx) < 2:
        return None
    tokenised = [sentences[i].split(" ") for i in idx]
    total = 0.0
    for j, hyp in enumerate(tokenised):
        if stop is not None and stop.is_set():
            raise CancelledError("self-BLEU stopped")
        total += sentence_bleu(tokenised[:j] + tokenised[j + 1:], hyp)
    return total / len(tokenised)


def sample_stats(sentences: list[str], training: Iterable[str] | None = None,
                 self_bleu_size: int = SELF_BLEU_SIZE, seed: int = SELF_BLEU_SEED,
                 stop: threading.Event | None = None) -> dict:
    """All statistics in one JSON-ready dict (copied share is None without training text)."""
    stats = dict(length_stats(sentences))
    stats["unique_share"] = unique_share(sentences)
    stats["copied_share"] = copied_share(sentences, training) if training is not None else None
    for n in (1, 2, 3):
        stats[f"distinct_{n}"] = distinct_n(sentences, n)
    stats["marker_tokens"] = marker_tokens(sentences)
    stats["self_bleu"] = self_bleu(sentences, self_bleu_size, seed, stop)
    stats["self_bleu_subsample"] = {"size": min(self_bleu_size, len(sentences)), "seed": seed,
                                    "max_n": 4, "smoothing": "nltk method1"}
    return stats
