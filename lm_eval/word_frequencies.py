"""Word-frequency KL divergence (wKL) of generated text against real text, as DGMVAE reports it.

Shi et al. 2020 (DGMVAE / DEM-VAE), and after them Pang & Wu 2021 and Yu et al. 2022, put a
"wKL" column beside the reverse perplexity of their PTB generation tables. It compares unigram
statistics only: does the generator use words as often as the real text does?

Definition (read from DGMVAE's evaluation script, written here in our words). Let q(w) be the
relative frequency of word w among all tokens of the generated sentences, and p(w) its relative
frequency among all tokens of the real training text. Then

    wKL = sum over words w with q(w) > 0 and p(w) > 0 of  q(w) * ln(q(w) / p(w))

i.e. KL(generated || real) in nats, where generated words that never occur in the training text
are skipped. They are skipped, not renormalised away: q keeps its denominator (all generated
tokens), so the skipped mass simply contributes nothing, and wKL can dip slightly below 0 when
much mass is skipped. Lower is better; identical word frequencies give exactly 0.

Tokens are whitespace-separated (the corpora and samples are tokenised already). DGMVAE's script
also splits "'s" off a word, which changes nothing on PTB's tokenised text and is not done here.
In DGMVAE the generated side is the 40,000 sentences the reverse LM is trained on.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from lm_eval.errors import InputError


def word_counts(sentences: Iterable[str]) -> Counter:
    """Occurrences of each whitespace token over all sentences."""
    counts: Counter = Counter()
    for sentence in sentences:
        counts.update(sentence.split())
    return counts


@dataclass(frozen=True)
class WordKL:
    kl: float  # nats: KL(generated || reference) over the words both texts use
    generated_tokens: int
    generated_types: int
    reference_tokens: int
    skipped_types: int  # generated words absent from the reference text
    skipped_share: float  # their share of the generated tokens (the mass left out of the sum)

    def as_dict(self) -> dict:
        return asdict(self)


def word_kl_from_counts(generated: Counter, reference: Counter) -> WordKL:
    """wKL from word counts (see the module docstring): a pure function."""
    q_total, p_total = sum(generated.values()), sum(reference.values())
    if q_total == 0:
        raise InputError("wKL: the generated text has no words")
    if p_total == 0:
        raise InputError("wKL: the reference text has no words")
    kl, skipped_types, skipped_tokens = 0.0, 0, 0
    for word, count in generated.items():
        if count <= 0:
            continue
        if reference.get(word, 0) <= 0:
            skipped_types += 1
            skipped_tokens += count
            continue
        q = count / q_total
        kl += q * math.log(q / (reference[word] / p_total))
    return WordKL(kl, q_total, sum(1 for c in generated.values() if c > 0), p_total, skipped_types,
                  skipped_tokens / q_total)


def word_kl(generated: Iterable[str], reference: Iterable[str]) -> WordKL:
    """wKL of generated sentences against reference (real training) sentences."""
    return word_kl_from_counts(word_counts(generated), word_counts(reference))
