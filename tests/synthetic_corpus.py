"""The tests' corpus: synthetic text shaped like Mikolov's PTB (lower-case words, `<unk>`, `N` for
numbers, one sentence per line between single spaces), made by a small grammar from a fixed seed.

The suite needs no downloaded corpus: every test that only needs "varied sentences" reads these.
Each sentence draws one of a few topics, and the topic skews which nouns, verbs, adjectives and set
phrases it uses, so a latent code has something to explain (as the topic of a real sentence does).
Word and phrase choice is Zipf-like and set phrases recur, so n-gram models up to order 5 see
count-of-counts like real text's (KenLM's discounts need no fallback).
"""

from __future__ import annotations

import random
from pathlib import Path

SEED = 2020
SIZES = {"train": 2000, "valid": 200, "test": 1600}  # sentences per split
TOPICS = 8
TOPIC_SHARE = 0.9  # chance that a content word comes from the sentence's topic
UNK_RATE = 0.04  # content words replaced by <unk>, as PTB's rare words are
PHRASES = 80  # set phrases (noun phrases that recur word for word) per topic
PHRASE_SHARE = 0.3  # chance that a clause's noun phrase is a set phrase

DETERMINERS = ["the", "a", "this", "that", "its", "their", "some", "every", "N"]
THE_SHARE = 0.5  # "the" leads half the noun phrases: as in PTB, the most frequent token is a word, not </s>
# (a barely trained model's greedy sentences then start with it instead of ending at once)
PREPOSITIONS = ["of", "in", "for", "on", "with", "from", "at", "by", "about", "after"]
CONJUNCTIONS = ["and", "but", "while", "because"]
ONSETS = ["b", "c", "d", "f", "g", "h", "j", "k", "l", "m", "n", "p", "r", "s", "t", "v", "w", "z",
          "br", "cl", "dr", "fl", "gr", "pl", "st", "tr", "sh", "ch"]
VOWELS = ["a", "e", "i", "o", "u", "ai", "ea", "ou"]
CODAS = ["", "", "n", "r", "s", "t", "l", "m", "nd", "st"]


def _zipf(rng: random.Random, items: list) -> object:
    """An item of `items` by rank r with chance about 1/r."""
    return items[int(len(items) ** rng.random()) - 1]


def _words(rng: random.Random, count: int, suffix: str, taken: set[str]) -> list[str]:
    """`count` new pronounceable words (one to three syllables, ending in `suffix`)."""
    out = []
    while len(out) < count:
        syllables = rng.choice((1, 2, 2, 3))
        word = "".join(rng.choice(ONSETS) + rng.choice(VOWELS) for _ in range(syllables)) + rng.choice(CODAS) + suffix
        if word not in taken:
            taken.add(word)
            out.append(word)
    return out


class Grammar:
    """Word classes split into topics, and each topic's set phrases; `sentence(rng)` draws one
    sentence's tokens."""

    def __init__(self, seed: int = SEED):
        rng = random.Random(seed)
        taken: set[str] = set(DETERMINERS + PREPOSITIONS + CONJUNCTIONS)
        self.classes = {"noun": _words(rng, 2400, "", taken), "verb": _words(rng, 640, "ed", taken),
                        "adjective": _words(rng, 400, "y", taken)}
        self.phrases = [[self._noun_phrase(rng, topic, 1) for _ in range(PHRASES)] for topic in range(TOPICS)]

    def _pick(self, rng: random.Random, kind: str, topic: int) -> str:
        words = self.classes[kind]
        if rng.random() < TOPIC_SHARE:  # the topic's own slice of the class
            size = len(words) // TOPICS
            words = words[topic * size:(topic + 1) * size]
        return "<unk>" if rng.random() < UNK_RATE else _zipf(rng, words)

    def _noun_phrase(self, rng: random.Random, topic: int, depth: int) -> list[str]:
        words = ["the" if rng.random() < THE_SHARE else rng.choice(DETERMINERS)]
        words += [self._pick(rng, "adjective", topic) for _ in range(rng.choice((0, 0, 1, 2)))]
        words.append(self._pick(rng, "noun", topic))
        if depth < 2 and rng.random() < 0.35:
            words += [rng.choice(PREPOSITIONS), *self._noun_phrase(rng, topic, depth + 1)]
        return words

    def _subject_or_object(self, rng: random.Random, topic: int) -> list[str]:
        if rng.random() < PHRASE_SHARE:
            return list(_zipf(rng, self.phrases[topic]))
        return self._noun_phrase(rng, topic, 0)

    def _clause(self, rng: random.Random, topic: int) -> list[str]:
        return [*self._subject_or_object(rng, topic), self._pick(rng, "verb", topic),
                *self._subject_or_object(rng, topic)]

    def sentence(self, rng: random.Random) -> list[str]:
        topic = rng.randrange(TOPICS)
        words = self._clause(rng, topic)
        while rng.random() < 0.3:
            words += [rng.choice(CONJUNCTIONS), *self._clause(rng, topic)]
        return words


def synthetic_splits(seed: int = SEED, sizes: dict[str, int] = SIZES) -> dict[str, list[str]]:
    """Each split's lines, PTB-style (` word word `), all from one grammar and one random stream."""
    grammar, rng = Grammar(seed), random.Random(seed + 1)
    return {split: [" " + " ".join(grammar.sentence(rng)) + " " for _ in range(count)]
            for split, count in sizes.items()}


def write_corpus(folder: Path, splits: dict[str, list[str]]) -> Path:
    """`folder/<split>.txt` for each split given (a corpus laid out as `textebm data` expects)."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, lines in splits.items():
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder
