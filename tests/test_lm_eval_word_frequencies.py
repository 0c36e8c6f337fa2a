"""wKL (lm_eval/word_frequencies.py) on cases small enough to compute by hand."""

from __future__ import annotations

import math

import pytest

from lm_eval import InputError, word_kl


def test_identical_frequencies_give_zero():
    # the same relative frequencies from texts of different sizes and sentence splits
    assert word_kl(["a b", "b a"], ["a b a b a b"]).kl == pytest.approx(0.0, abs=1e-15)


def test_two_words_by_hand():
    # generated: q(a) = q(b) = 1/2; reference: p(a) = 1/4, p(b) = 3/4
    result = word_kl(["a b"], ["a b b b"])
    expected = 0.5 * math.log(0.5 / 0.25) + 0.5 * math.log(0.5 / 0.75)
    assert result.kl == pytest.approx(expected, rel=1e-12)
    assert (result.generated_tokens, result.generated_types, result.reference_tokens) == (2, 2, 4)
    assert result.skipped_types == 0 and result.skipped_share == 0.0


def test_direction_is_generated_against_reference():
    # KL is not symmetric: swapping the texts changes the value
    forward = word_kl(["a b"], ["a b b b"]).kl
    backward = word_kl(["a b b b"], ["a b"]).kl
    expected_backward = 0.25 * math.log(0.25 / 0.5) + 0.75 * math.log(0.75 / 0.5)
    assert backward == pytest.approx(expected_backward, rel=1e-12)
    assert forward != pytest.approx(backward)


def test_words_unseen_in_the_reference_are_skipped_without_renormalising():
    # generated: a, a, x, y -> q(a) = 1/2 (x, y unseen: skipped); reference: p(a) = 1/2, p(b) = 1/2
    result = word_kl(["a x", "a y"], ["a b"])
    assert result.kl == pytest.approx(0.5 * math.log(0.5 / 0.5), abs=1e-15)
    assert result.skipped_types == 2 and result.skipped_share == pytest.approx(0.5)
    # q keeps its denominator, so the sum can go below zero: q(a) = 1/4 against p(a) = 1/2
    assert word_kl(["a x y z"], ["a b"]).kl == pytest.approx(0.25 * math.log(0.5), rel=1e-12)


def test_no_words_is_an_input_error():
    with pytest.raises(InputError, match="generated text has no words"):
        word_kl(["", "  "], ["a"])
    with pytest.raises(InputError, match="reference text has no words"):
        word_kl(["a"], [])
