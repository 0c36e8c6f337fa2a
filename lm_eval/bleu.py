"""BLEU as the toolkit computes it wherever it reports one (self-BLEU of samples, reconstruction BLEU).

nltk's implementation, n-grams up to 4 with uniform weights, and smoothing method 1 of Chen & Cherry
(2014): an n-gram order without a single match gets a small count instead of zero, so that a short
sentence is not scored 0 outright. The scores are nltk's, between 0 and 1; the callers choose the
scale they report and how sentences become tokens.
"""

from __future__ import annotations

WEIGHTS = (0.25, 0.25, 0.25, 0.25)
CONVENTION = "nltk BLEU: 4-gram, uniform weights, smoothing method 1"


def corpus_bleu(references: list[list[list[str]]], hypotheses: list[list[str]]) -> float:
    """Corpus BLEU (0-1) of tokenised `hypotheses`, each against its list of tokenised references."""
    from nltk.translate.bleu_score import SmoothingFunction
    from nltk.translate.bleu_score import corpus_bleu as nltk_corpus_bleu

    return nltk_corpus_bleu(references, hypotheses, weights=WEIGHTS, smoothing_function=SmoothingFunction().method1)


def sentence_bleu(references: list[list[str]], hypothesis: list[str]) -> float:
    """One tokenised sentence's BLEU (0-1) against its tokenised references."""
    from nltk.translate.bleu_score import SmoothingFunction
    from nltk.translate.bleu_score import sentence_bleu as nltk_sentence_bleu

    return nltk_sentence_bleu(references, hypothesis, weights=WEIGHTS, smoothing_function=SmoothingFunction().method1)
