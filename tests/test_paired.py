"""The paired NLL comparison (textebm/evaluation/paired.py)."""

import math

import pytest

from textebm.errors import UserError
from textebm.evaluation.paired import paired_difference, paired_nll_differences


def test_pairing_removes_what_the_sentences_share():
    # sentence lengths spread the NLLs by tens of nats; the second model is 0.5 better on each, +- 0.1
    a = [-30.0, -80.0, -55.0, -120.0]
    b = [x + 0.5 + e for x, e in zip(a, (0.1, -0.1, 0.1, -0.1))]
    paired = paired_difference(a, b)
    assert paired.sentences == 4 and paired.difference == pytest.approx(-0.5)
    assert paired.stderr == pytest.approx(math.sqrt(4 * 0.01 / 3 / 4))  # the spread of the differences only
    assert paired_difference([-3.0], [-4.0]).stderr == 0.0
    with pytest.raises(ValueError):
        paired_difference([-1.0], [-1.0, -2.0])


def _report(values, **other):
    return {"corpus": "ptb", "split": "test", "evaluated_text": "ptb test", "num_sentences": len(values),
            "num_tokens": 10 * len(values), "nll_per_sentence": -sum(values) / len(values),
            "log_px_per_sentence": values, **other}


def test_each_run_is_paired_with_the_first_on_the_same_sentences():
    rows = paired_nll_differences([("lm", _report([-10.0, -20.0])), ("ebm", _report([-11.0, -22.0]))])
    assert [(label, nll) for label, nll, _ in rows] == [("lm", 15.0), ("ebm", 16.5)]
    assert rows[0][2].difference == 0.0 and rows[1][2].difference == pytest.approx(1.5)
    with pytest.raises(UserError, match="other sentences"):
        paired_nll_differences([("a", _report([-1.0, -2.0])), ("b", _report([-1.0, -2.0], split="valid"))])
    older = _report([-1.0, -2.0])
    del older["log_px_per_sentence"]
    with pytest.raises(UserError, match="b's evaluation has no per-sentence"):
        paired_nll_differences([("a", _report([-1.0, -2.0])), ("b", older)])


def test_reports_of_other_lines_are_not_paired_even_at_the_same_counts():
    # a held-out file reordered or edited to the same line and token counts was paired row by row
    with pytest.raises(UserError, match="other sentences"):
        paired_nll_differences([("a", _report([-1.0, -2.0], evaluated_sha256="aa")),
                                ("b", _report([-2.0, -1.0], evaluated_sha256="bb"))])
    rows = paired_nll_differences([("a", _report([-1.0, -2.0], evaluated_sha256="aa")),
                                   ("old", _report([-1.0, -2.0]))])  # a report from before the digest: paired
    assert len(rows) == 2


@pytest.mark.parametrize("damage", [["x", -2.0], [None, -2.0], [math.nan, -2.0], "no nll"])
def test_a_damaged_report_is_one_user_error(damage):
    # a traceback (TypeError, KeyError), or "+nan +- nan"
    damaged = _report([-1.0, -2.0])
    if damage == "no nll":
        del damaged["nll_per_sentence"]
    else:
        damaged["log_px_per_sentence"] = damage
    with pytest.raises(UserError, match="b's evaluation is damaged"):
        paired_nll_differences([("a", _report([-1.0, -2.0])), ("b", damaged)])
