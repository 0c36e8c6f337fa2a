"""lm_eval.bleu: the one BLEU convention (4-gram, uniform weights, smoothing method 1), held to values
worked out by hand."""

from __future__ import annotations

import math

import pytest

from lm_eval.bleu import corpus_bleu, sentence_bleu
from textebm.generation.reconstruction import bleu

REFERENCE = "the cat sat on the mat".split()


def test_sentence_bleu_is_the_geometric_mean_of_the_ngram_precisions():
    # 5/6 words, 3/5 bigrams, 2/4 trigrams and 1/3 four-grams match; equal lengths: no brevity penalty
    expected = (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25
    assert sentence_bleu([REFERENCE], "the cat sat on a mat".split()) == pytest.approx(expected)


def test_an_order_without_a_match_is_smoothed_and_a_short_hypothesis_penalised():
    # 3/5, 2/4, 1/3 and 0/2 (method 1: 0.1/2 instead of 0); 5 words against 6: brevity penalty exp(1 - 6/5)
    expected = math.exp(1 - 6 / 5) * (3 / 5 * 2 / 4 * 1 / 3 * 0.1 / 2) ** 0.25
    assert sentence_bleu([REFERENCE], "the cat sat a dog".split()) == pytest.approx(expected)


def test_several_references_count_a_match_in_any_of_them():
    other = "a dog sat on a mat".split()
    hypothesis = "a dog sat on the mat".split()
    assert sentence_bleu([REFERENCE, other], hypothesis) > max(sentence_bleu([REFERENCE], hypothesis),
                                                                sentence_bleu([other], hypothesis))


def test_corpus_bleu_pools_the_counts_and_reconstruction_reports_it_on_0_to_100():
    hypotheses = ["the cat sat on a mat", "the cat sat on the mat"]
    # pooled: 11/12, 8/10, 6/8, 4/6; 12 words against 12
    pooled = (11 / 12 * 8 / 10 * 6 / 8 * 4 / 6) ** 0.25
    assert corpus_bleu([[REFERENCE]] * 2, [h.split() for h in hypotheses]) == pytest.approx(pooled)
    assert bleu([" ".join(REFERENCE)] * 2, hypotheses) == pytest.approx(100 * pooled)
