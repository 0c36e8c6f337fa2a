"""Perplexity of sentences under a KenLM model, in the two conventions the literature uses.

Every sentence is scored with a begin-of-sentence context (`<s>`). The end-of-sentence token
`</s>` is predicted too, but by default (ARAE, Zhao et al. 2018, and the baselines of the
latent-EBM paper) it is not counted: perplexity = 10 ** (-sum of log10 p(word) / number of
words). With `count_eos=True` its log-probability and one token per sentence are added, the
usual language-modelling convention (Mikolov's PTB numbers). Out-of-vocabulary words are scored
with the model's `<unk>` probability, as KenLM's query does; their share is reported beside.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from lm_eval.text import kenlm_line


@dataclass(frozen=True)
class SentenceScore:
    """Log10 probabilities of one sentence: its words, and its end-of-sentence token."""

    log10_words: float
    log10_eos: float
    num_words: int
    num_oov: int


@dataclass(frozen=True)
class Perplexity:
    ppl: float
    log10_prob: float  # the sum that `ppl` is computed from
    num_tokens: int  # the denominator: words, plus one per sentence when count_eos
    num_words: int
    num_sentences: int
    num_oov: int
    count_eos: bool

    @property
    def oov_rate(self) -> float:
        return self.num_oov / self.num_words if self.num_words else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "oov_rate": self.oov_rate}


def score_sentence(model, sentence: str) -> SentenceScore:
    """Score one normalised sentence (tokens joined by single spaces) with `<s>` context."""
    tokens = sentence.split(" ")
    scores = list(model.full_scores(kenlm_line(tokens), bos=True, eos=True))
    # full_scores yields (log10 p, n-gram length, is_oov) for each word and then for </s>.
    words, eos = scores[:-1], scores[-1]
    return SentenceScore(
        log10_words=sum(s[0] for s in words),
        log10_eos=eos[0],
        num_words=len(words),
        num_oov=sum(1 for s in words if s[2]),
    )


def ppl_from_log10(log10_prob: float, num_tokens: int) -> float:
    """10 ** (-mean log10 probability); infinity when there is nothing to average."""
    if num_tokens <= 0:
        return float("inf")
    return 10.0 ** (-log10_prob / num_tokens)


def aggregate(scores: Iterable[SentenceScore], count_eos: bool = False) -> Perplexity:
    """Corpus perplexity from per-sentence scores (a pure function)."""
    log10_prob, words, oov, sentences = 0.0, 0, 0, 0
    for s in scores:
        log10_prob += s.log10_words + (s.log10_eos if count_eos else 0.0)
        words += s.num_words
        oov += s.num_oov
        sentences += 1
    tokens = words + (sentences if count_eos else 0)
    return Perplexity(ppl_from_log10(log10_prob, tokens), log10_prob, tokens, words, sentences, oov, count_eos)


def perplexity(model, sentences: Iterable[str], count_eos: bool = False) -> Perplexity:
    """Perplexity of normalised sentences under a loaded KenLM model (`kenlm.Model`)."""
    return aggregate((score_sentence(model, s) for s in sentences), count_eos=count_eos)
