"""Token vocabularies: a word vocabulary and a SentencePiece wrapper with one interface.

Both map a sentence (a string) to ids and back; both save to and load from a run folder
without pickles (JSON for words, SentencePiece's own model file).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

from textebm.config import SPECIAL_TOKENS
from textebm.errors import UserError
from textebm.io import atomic_write_bytes, atomic_write_text

PAD, BOS, EOS, UNK = SPECIAL_TOKENS
SPECIALS = list(SPECIAL_TOKENS)
# Corpora spell the unknown word their own way; all of them map onto UNK's id.
UNK_ALIASES = ("<unk>", "_UNK", "<UNK>")


class Vocabulary(Protocol):
    pad_id: int
    bos_id: int
    eos_id: int
    unk_id: int

    def __len__(self) -> int: ...
    def encode(self, sentence: str) -> list[int]: ...
    def decode(self, ids: Iterable[int]) -> str: ...
    def save(self, folder: Path) -> None: ...


def tokenize(sentence: str, tokenizer: str, lowercase: bool = False) -> list[str]:
    """Split one line into words: whitespace for pre-tokenised corpora, nltk's Treebank rules for raw text.
    Lowercasing leaves a pre-tokenised corpus's unknown-word token alone (Yahoo's `_UNK` would become a word)."""
    if tokenizer == "treebank":
        return _treebank().tokenize(sentence.lower() if lowercase else sentence)
    words = sentence.split()
    return [w if w in UNK_ALIASES else w.lower() for w in words] if lowercase else words


_TREEBANK = None


def _treebank():
    # nltk's Treebank word tokenizer needs no downloaded data (unlike punkt).
    global _TREEBANK
    if _TREEBANK is None:
        from nltk.tokenize import TreebankWordTokenizer

        _TREEBANK = TreebankWordTokenizer()
    return _TREEBANK


class WordVocab:
    """Words by frequency (ties broken alphabetically, so the vocabulary is reproducible)."""

    kind = "word"

    def __init__(self, words: list[str], tokenizer: str = "word", lowercase: bool = False):
        self.itos = SPECIALS + [w for w in words if w not in SPECIALS and w not in UNK_ALIASES]
        # Text that spells <pad>, <s> or </s> is a word the vocabulary lacks, not the marker itself
        # (a scored sentence padded with "<pad>" would otherwise read as less anomalous).
        self.stoi = {w: i for i, w in enumerate(self.itos) if w not in (PAD, BOS, EOS)}
        self.unk_word = UNK
        self.tokenizer = tokenizer
        self.lowercase = lowercase
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = range(4)

    @classmethod
    def build(cls, sentences: Iterable[str], max_size: int = 0, min_freq: int = 1,
              tokenizer: str = "word", lowercase: bool = False) -> WordVocab:
        counts = Counter()
        unk_spelling = Counter()
        for sentence in sentences:
            for word in tokenize(sentence, tokenizer, lowercase):
                if word in UNK_ALIASES:
                    unk_spelling[word] += 1
                else:
                    counts[word] += 1
        words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
        budget = max_size - len(SPECIALS) if max_size else len(words)
        vocab = cls(words[:budget], tokenizer, lowercase)
        if unk_spelling:  # decode with the corpus's own spelling, so evaluation sees the same token
            vocab.unk_word = unk_spelling.most_common(1)[0][0]
        return vocab

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, sentence: str) -> list[int]:
        get, unk = self.stoi.get, self.unk_id
        return [get(w, unk) for w in tokenize(sentence, self.tokenizer, self.lowercase)]

    def decode(self, ids: Iterable[int]) -> str:
        words = []
        for i in ids:
            if i == self.eos_id:
                break
            if i in (self.pad_id, self.bos_id):
                continue
            words.append(self.unk_word if i == self.unk_id else self.itos[i])
        return " ".join(words)

    def save(self, folder: Path) -> None:
        data = {"kind": self.kind, "tokenizer": self.tokenizer, "lowercase": self.lowercase,
                "unk_word": self.unk_word, "itos": self.itos}
        atomic_write_text(Path(folder) / "vocab.json", json.dumps(data, ensure_ascii=False))

    @classmethod
    def from_dict(cls, data: dict) -> WordVocab:
        vocab = cls(data["itos"][len(SPECIALS):], data["tokenizer"], data["lowercase"])
        vocab.unk_word = data["unk_word"]
        return vocab


class SentencePieceVocab:
    """Subword units from SentencePiece, trained on the training split and saved with the run.

    A corpus's own unknown-word token (`<unk>`, `_UNK`) is kept whole: it maps to SentencePiece's
    unk id and decodes back to the corpus's spelling, instead of being spelled out in pieces."""

    kind = "sentencepiece"

    def __init__(self, model_bytes: bytes, lowercase: bool = False, unk_word: str = UNK):
        import sentencepiece as spm

        self.model_bytes = model_bytes
        self.lowercase = lowercase
        self.unk_word = unk_word
        self.sp = spm.SentencePieceProcessor(model_proto=model_bytes)
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = (
            self.sp.pad_id(), self.sp.bos_id(), self.sp.eos_id(), self.sp.unk_id())

    @classmethod
    def build(cls, sentences: Iterable[str], vocab_size: int, lowercase: bool = False) -> SentencePieceVocab:
        import io

        import sentencepiece as spm

        unk_spelling = Counter()
        lines = []
        for sentence in sentences:
            words = sentence.split()
            unk_spelling.update(w for w in words if w in UNK_ALIASES)
            text = " ".join(w for w in words if w not in UNK_ALIASES)
            lines.append(text.lower() if lowercase else text)
        model = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(lines), model_writer=model, vocab_size=vocab_size,
                pad_id=0, bos_id=1, eos_id=2, unk_id=3, model_type="unigram",
                character_coverage=1.0, hard_vocab_limit=False, minloglevel=2,
                num_threads=2, input_sentence_size=2_000_000, shuffle_input_sentence=True)
        except RuntimeError as err:
            raise UserError(f"SentencePiece training failed: {str(err).splitlines()[0]}") from None
        unk_word = unk_spelling.most_common(1)[0][0] if unk_spelling else UNK
        return cls(model.getvalue(), lowercase, unk_word)

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, sentence: str) -> list[int]:
        ids, chunk = [], []
        for word in sentence.split():
            if word in UNK_ALIASES:
                if chunk:
                    ids += self.sp.encode(" ".join(chunk))
                ids.append(self.unk_id)
                chunk = []
            else:
                chunk.append(word.lower() if self.lowercase else word)
        if chunk:
            ids += self.sp.encode(" ".join(chunk))
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        segments, current = [], []
        for i in ids:
            i = int(i)
            if i == self.eos_id:
                break
            if i == self.unk_id:
                segments += [self.sp.decode(current), self.unk_word]
                current = []
            elif i not in (self.pad_id, self.bos_id):
                current.append(i)
        segments.append(self.sp.decode(current))
        return " ".join(seg for seg in segments if seg)

    def save(self, folder: Path) -> None:
        atomic_write_bytes(Path(folder) / "spm.model", self.model_bytes)
        atomic_write_text(Path(folder) / "vocab.json", json.dumps(
            {"kind": self.kind, "lowercase": self.lowercase, "unk_word": self.unk_word, "model": "spm.model"}))


def build_vocab(sentences: list[str], tokenizer: str, vocab_size: int, min_freq: int, lowercase: bool) -> Vocabulary:
    if tokenizer == "sentencepiece":
        return SentencePieceVocab.build(sentences, vocab_size, lowercase)
    return WordVocab.build(sentences, vocab_size, min_freq, tokenizer, lowercase)


def load_vocab(folder: Path) -> Vocabulary:
    folder = Path(folder)
    try:
        data = json.loads((folder / "vocab.json").read_text(encoding="utf-8"))
        if data["kind"] == "sentencepiece":
            model = (folder / data["model"]).read_bytes()
            return SentencePieceVocab(model, data["lowercase"], data.get("unk_word", UNK))
        return WordVocab.from_dict(data)
    except (OSError, ValueError, KeyError, TypeError, RuntimeError) as err:
        raise UserError(f"{folder} has no readable vocabulary ({type(err).__name__}: {err})") from None
