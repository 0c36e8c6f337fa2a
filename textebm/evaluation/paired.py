"""Two runs' NLL compared sentence by sentence, with the standard error that pairing allows.

Two evaluations of the same held-out sentences share most of their spread: a long or rare
sentence costs every model many nats. The difference of the two mean NLLs is therefore judged by
the spread of the per-sentence differences, not of the NLLs themselves (a paired comparison):
stderr = std_i(nll_b,i - nll_a,i) / sqrt(n). Each per-sentence estimate's own noise (the
importance-sampling estimator draws afresh for each run) is inside that spread; its bias is not:
an estimator that reads one model further too high than the other shifts the mean difference by
that much, whatever the standard error says (docs/evaluate-command.md, the Gaussian check).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from textebm.errors import UserError

# The evaluation report's per-sentence figures (written by textebm.evaluation.held_out.evaluate).
PER_SENTENCE_KEY = "log_px_per_sentence"


@dataclass(frozen=True)
class PairedDifference:
    """mean over the shared sentences of NLL_b - NLL_a (nats per sentence; negative: b is better)."""

    sentences: int
    difference: float
    stderr: float


def paired_difference(log_px_a: list[float], log_px_b: list[float]) -> PairedDifference:
    """The mean of -log p_b(x) + log p_a(x) over sentences and its paired standard error (0 for one)."""
    if len(log_px_a) != len(log_px_b) or not log_px_a:
        raise ValueError(f"paired_difference needs two equal, non-empty lists ({len(log_px_a)}, {len(log_px_b)})")
    diffs = [a - b for a, b in zip(log_px_a, log_px_b)]
    n = len(diffs)
    mean = math.fsum(diffs) / n
    if n == 1:
        return PairedDifference(1, mean, 0.0)
    variance = math.fsum((d - mean) ** 2 for d in diffs) / (n - 1)
    return PairedDifference(n, mean, math.sqrt(variance / n))


def same_sentences(a: dict, b: dict) -> bool:
    """Whether two evaluation reports scored the same sentences (corpus, split, text, count, and the lines'
    digest where both have it: reports before 2026-12-08 lack it, and a file reordered or edited to the same
    count was paired row by row)."""
    keys = ("corpus", "split", "evaluated_text", "num_sentences", "num_tokens")
    digests = a.get("evaluated_sha256"), b.get("evaluated_sha256")
    return all(a.get(k) == b.get(k) for k in keys) and (None in digests or digests[0] == digests[1])


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def paired_nll_differences(evaluations: list[tuple[str, dict]]) -> list[tuple[str, float, PairedDifference]]:
    """Each evaluation's NLL per sentence and its paired difference from the first's: rows of
    (label, nll_per_sentence, difference). A UserError names the report that lacks per-sentence
    figures (written before they were kept) or scored other sentences than the first."""
    first_label, first = evaluations[0]
    rows = []
    for label, evaluation in evaluations:
        if PER_SENTENCE_KEY not in evaluation:
            raise UserError(f"{label}'s evaluation has no per-sentence log p(x) (written by an older textebm): "
                            "run `textebm evaluate` on it again")
        scores, nll = evaluation[PER_SENTENCE_KEY], evaluation.get("nll_per_sentence")
        if (not isinstance(scores, list) or len(scores) != evaluation.get("num_sentences", len(scores))
                or not all(_finite(v) for v in [*scores, nll])):
            raise UserError(f"{label}'s evaluation is damaged: its per-sentence log p(x) does not hold one number "
                            "per sentence it names: run `textebm evaluate` on it again")
        if not same_sentences(first, evaluation):
            raise UserError(f"{label} was evaluated on other sentences than {first_label} (corpus, split, "
                            "--max-sentences or the held-out file's lines differ): a paired comparison needs the "
                            "same ones")
        rows.append((label, float(evaluation["nll_per_sentence"]),
                     paired_difference(first[PER_SENTENCE_KEY], evaluation[PER_SENTENCE_KEY])))
    return rows
