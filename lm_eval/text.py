"""One reading and tokenisation path for real and generated text, so both are treated alike.

The corpora and the samples are already whitespace-tokenised: a sentence is `line.split()`,
blank lines are dropped (and counted). KenLM reserves `<s>`, `</s>` and `<unk>`: `lmplz`
refuses them in its input and the query side would map them to its own specials. PTB and Yahoo
use `<unk>` / `_UNK` as ordinary words, so those tokens are escaped, the same way for
estimation and for scoring, by prefixing a backslash (`<unk>` -> `\\<unk>`). Tokens that already
look like an escaped special get one more backslash, so the mapping is one-to-one.
"""

from __future__ import annotations

import gzip
import hashlib
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from lm_eval.errors import InputError

# Bump when escaping or tokenisation changes: it is part of the cache key of real-data LMs.
ESCAPE_VERSION = 1
_SPECIAL = re.compile(r"^\\*(?:<unk>|<s>|</s>)$")
# Default cap on tokens in one line: a whole Yahoo document is ~80 tokens on average and a few
# thousand at most; a line far longer is almost always a file that is not one-sentence-per-line.
DEFAULT_MAX_TOKENS = 10_000


def tokenize(line: str) -> list[str]:
    """Whitespace tokens of a line. NUL counts as a space (KenLM would cut a word at it)."""
    return line.replace("\x00", " ").split()


def escape_token(token: str) -> str:
    return "\\" + token if _SPECIAL.match(token) else token


def unescape_token(token: str) -> str:
    return token[1:] if _SPECIAL.match(token) and token.startswith("\\") else token


def kenlm_line(tokens: list[str]) -> str:
    """The text KenLM sees for a sentence, in estimation and in scoring alike."""
    return " ".join(escape_token(t) for t in tokens)


@dataclass
class Sentences:
    """Sentences of a file (tokens joined by single spaces) and how many blank lines were dropped."""

    path: str
    sentences: list[str]
    blank_lines: int

    def __len__(self) -> int:
        return len(self.sentences)


def _open_text(path: Path):
    if path.name.endswith(".gz"):
        return gzip.open(path, "rb")
    return open(path, "rb")


def normalize_lines(lines: Iterable[str], what: str = "text", max_tokens: int = DEFAULT_MAX_TOKENS,
                    where: str = "") -> Sentences:
    """Lines (one sentence each) as normalised sentences, blank ones dropped and counted.

    Raises `InputError` for a line over `max_tokens` tokens; `where` names the source in messages."""
    sentences: list[str] = []
    blank = 0
    for lineno, line in enumerate(lines, 1):
        tokens = tokenize(line)
        if not tokens:
            blank += 1
            continue
        if len(tokens) > max_tokens:
            source = f"{what} {where}" if where else what
            raise InputError(
                f"{source}: line {lineno} has {len(tokens)} tokens, over the limit of {max_tokens} (is it one "
                "sentence per line? raise the limit with --max-tokens)"
            )
        sentences.append(" ".join(tokens))
    return Sentences(where, sentences, blank)


def _decoded_lines(fh, what: str, path: Path) -> Iterator[str]:
    """The file's lines as text; a byte-order mark that some editors put first is dropped, not read as a word."""
    for lineno, raw in enumerate(fh, 1):
        try:
            yield raw.decode("utf-8-sig" if lineno == 1 else "utf-8")
        except UnicodeDecodeError as err:
            raise InputError(
                f"{what} file {path} is not UTF-8 text (line {lineno}, byte {err.start}: "
                f"{raw[err.start:err.start + 4]!r})"
            ) from None


def read_sentences(path: str | Path, what: str = "text", max_tokens: int = DEFAULT_MAX_TOKENS,
                   min_sentences: int = 1) -> Sentences:
    """Read a one-sentence-per-line UTF-8 file (optionally .gz) into normalised sentences.

    Raises `InputError` with a one-line message for a missing, unreadable, non-UTF-8 or empty
    file, and for a line over `max_tokens` tokens.
    """
    p = Path(path)
    if not p.exists():
        raise InputError(f"{what} file not found: {p}")
    if p.is_dir():
        raise InputError(f"{what} path is a folder, not a file: {p}")
    try:
        with _open_text(p) as fh:
            result = normalize_lines(_decoded_lines(fh, what, p), f"{what} file", max_tokens, str(p))
    except OSError as err:  # permissions, a damaged .gz, ...
        raise InputError(f"cannot read {what} file {p}: {err.strerror or err}") from None
    except EOFError:
        raise InputError(f"cannot read {what} file {p}: compressed file ended early") from None
    if len(result) < min_sentences:
        detail = f" ({result.blank_lines} blank lines)" if result.blank_lines else ""
        if not result.sentences:
            raise InputError(f"{what} file {p} has no sentences{detail}")
        raise InputError(f"{what} file {p} has {len(result)} sentence(s), at least {min_sentences} needed")
    return result


def text_sha256(sentences: Iterable[str]) -> str:
    """The digest of normalised sentences: the same text gives the same key, whatever file it came from."""
    h = hashlib.sha256()
    for sentence in sentences:
        h.update(sentence.encode("utf-8"))
        h.update(b"\n")
    return h.hexdigest()


def vocabulary(sentences: list[str]) -> list[str]:
    """Sorted distinct tokens: sorted, so that files built from it are reproducible."""
    vocab: set[str] = set()
    for s in sentences:
        vocab.update(s.split(" "))
    return sorted(vocab)
