"""lm_eval's pure parts: reading and escaping text, perplexity arithmetic, sample statistics."""

from __future__ import annotations

import gzip
import math
import threading
from concurrent.futures import CancelledError

import pytest

from lm_eval.errors import InputError
from lm_eval.sample_statistics import (
    copied_share,
    distinct_n,
    length_stats,
    marker_tokens,
    sample_stats,
    self_bleu,
    self_bleu_subsample,
    unique_share,
)
from lm_eval.scoring import SentenceScore, aggregate, ppl_from_log10
from lm_eval.text import escape_token, kenlm_line, read_sentences, tokenize, unescape_token, vocabulary

# --- text -------------------------------------------------------------------------------------

@pytest.mark.parametrize("token", ["<unk>", "<s>", "</s>", "\\<unk>", "\\\\</s>", "_UNK", "a", "x<unk>", "<unk>y"])
def test_escape_is_one_to_one_and_reversible(token):
    escaped = escape_token(token)
    assert unescape_token(escaped) == token
    # KenLM's reserved words never reach it
    assert escaped not in ("<unk>", "<s>", "</s>")


def test_escape_changes_only_specials():
    assert escape_token("<unk>") == "\\<unk>"
    assert escape_token("\\<unk>") == "\\\\<unk>"  # distinct from the escaped <unk>
    assert escape_token("_UNK") == "_UNK"
    assert kenlm_line(["the", "<unk>", "</s>", "end"]) == "the \\<unk> \\</s> end"


def test_tokenize_treats_all_whitespace_and_nul_as_separators():
    assert tokenize(" a\tb  c\r\n") == ["a", "b", "c"]
    assert tokenize("a\x00b") == ["a", "b"]
    assert tokenize("   \n") == []


def test_read_sentences_drops_and_counts_blank_lines(tmp_path):
    path = tmp_path / "s.txt"
    path.write_text(" the  cat \n\n   \nsat\tdown\n", encoding="utf-8")
    got = read_sentences(path)
    assert got.sentences == ["the cat", "sat down"]
    assert got.blank_lines == 2


def test_read_sentences_reads_gzip(tmp_path):
    path = tmp_path / "s.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("a b\n\nc\n")
    got = read_sentences(path)
    assert got.sentences == ["a b", "c"] and got.blank_lines == 1


def test_read_sentences_errors_are_one_line(tmp_path):
    with pytest.raises(InputError, match="not found"):
        read_sentences(tmp_path / "missing.txt", "samples")
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"fine line\nbad \xff\xfe line\n")
    with pytest.raises(InputError, match=r"not UTF-8 text \(line 2"):
        read_sentences(bad, "samples")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n \n", encoding="utf-8")
    with pytest.raises(InputError, match=r"no sentences \(2 blank lines\)"):
        read_sentences(empty, "samples")
    long = tmp_path / "long.txt"
    long.write_text("ok\n" + "w " * 50 + "\n", encoding="utf-8")
    with pytest.raises(InputError, match="line 2 has 50 tokens, over the limit of 20") as info:
        read_sentences(long, "samples", max_tokens=20)
    assert "\n" not in str(info.value)
    assert len(read_sentences(long, "samples", max_tokens=50)) == 2


def test_a_byte_order_mark_is_not_read_as_part_of_the_first_word(tmp_path):
    plain, marked = tmp_path / "plain.txt", tmp_path / "marked.txt"
    plain.write_text("we sat\n the cat ran\n", encoding="utf-8")
    marked.write_bytes(b"\xef\xbb\xbf" + plain.read_bytes())
    assert read_sentences(marked).sentences == read_sentences(plain).sentences == ["we sat", "the cat ran"]
    spaced = tmp_path / "spaced.txt"  # PTB's lines start with a space: the mark was a word of its own
    spaced.write_bytes(b"\xef\xbb\xbf the cat\n")
    assert read_sentences(spaced).sentences == ["the cat"]
    later = tmp_path / "later.txt"  # only a file's first bytes are a byte-order mark
    later.write_bytes("a b\n\ufeffc d\n".encode("utf-8"))
    assert read_sentences(later).sentences == ["a b", "\ufeffc d"]


@pytest.mark.parametrize("damage, reason", [("truncated", "compressed file ended early"),
                                            ("not_gzip", "Not a gzipped file")])
def test_read_sentences_of_a_damaged_gz_is_one_line(tmp_path, damage, reason):
    whole = gzip.compress("".join(f"sentence {i} of the file\n" for i in range(200)).encode("utf-8"))
    path = tmp_path / "samples.txt.gz"
    path.write_bytes(whole[:len(whole) // 2] if damage == "truncated" else b"plain text, not gzip\n")
    with pytest.raises(InputError) as info:
        read_sentences(path, "samples")
    message = str(info.value)
    assert message.startswith(f"cannot read samples file {path}: {reason}") and "\n" not in message, message


def test_vocabulary_is_sorted_and_distinct():
    assert vocabulary(["b a", "a c"]) == ["a", "b", "c"]


# --- perplexity arithmetic --------------------------------------------------------------------

def test_aggregate_conventions_by_hand():
    scores = [SentenceScore(log10_words=-4.0, log10_eos=-1.0, num_words=2, num_oov=1),
              SentenceScore(log10_words=-2.0, log10_eos=-1.0, num_words=1, num_oov=0)]
    no_eos = aggregate(scores, count_eos=False)
    assert no_eos.num_tokens == 3 and no_eos.num_words == 3 and no_eos.num_sentences == 2
    assert no_eos.ppl == pytest.approx(10 ** (6 / 3))
    with_eos = aggregate(scores, count_eos=True)
    assert with_eos.num_tokens == 5
    assert with_eos.ppl == pytest.approx(10 ** (8 / 5))
    assert no_eos.oov_rate == pytest.approx(1 / 3) == with_eos.oov_rate


def test_ppl_of_nothing_is_infinite():
    assert math.isinf(ppl_from_log10(0.0, 0))
    assert ppl_from_log10(-2.0, 1) == pytest.approx(100.0)


# --- sample statistics ------------------------------------------------------------------------

def test_distinct_n_by_hand():
    sents = ["a b a b", "a b c"]
    # unigrams: a b a b a b c -> 3 distinct / 7; bigrams: ab ba ab ab bc -> 3 / 5; trigrams: aba bab abc -> 3/3
    assert distinct_n(sents, 1) == pytest.approx(3 / 7)
    assert distinct_n(sents, 2) == pytest.approx(3 / 5)
    assert distinct_n(sents, 3) == pytest.approx(1.0)
    assert distinct_n(["a b"], 3) is None


def test_length_unique_copied():
    sents = ["a b c", "a b c", "d"]
    assert length_stats(sents) == {"mean_length": pytest.approx(7 / 3), "max_length": 3}
    assert unique_share(sents) == pytest.approx(2 / 3)
    assert copied_share(sents, ["d", "x y"]) == pytest.approx(1 / 3)
    assert copied_share(sents, []) == 0.0


def test_marker_tokens_counts_only_whole_marker_tokens():
    assert marker_tokens(["<s> a b </s>", "c </s>", "x</s> <eos>", "<unk> d"]) == {"</s>": 2, "<eos>": 1, "<s>": 1}
    assert marker_tokens(["a b", "<unk> c"]) == {}


def test_self_bleu_stops_at_the_next_sentence_once_told():
    stop = threading.Event()
    stop.set()
    with pytest.raises(CancelledError):
        self_bleu(["a b c d", "a b c e", "x y z w"], stop=stop)
    assert self_bleu(["a b c d", "a b c e", "x y z w"], stop=threading.Event()) == self_bleu(
        ["a b c d", "a b c e", "x y z w"])


def test_self_bleu_extremes():
    same = ["the cat sat on the mat"] * 10
    assert self_bleu(same) == pytest.approx(1.0)
    disjoint = [f"w{i}a w{i}b w{i}c w{i}d w{i}e" for i in range(10)]
    assert self_bleu(disjoint) < 0.01
    assert self_bleu(["only one"]) is None


def test_self_bleu_subsample_is_seeded_and_documented():
    a = self_bleu_subsample(1000, size=50, seed=7)
    assert a == self_bleu_subsample(1000, size=50, seed=7)
    assert a != self_bleu_subsample(1000, size=50, seed=8)
    assert len(a) == 50 == len(set(a)) and a == sorted(a)
    assert self_bleu_subsample(30, size=50) == list(range(30))


def test_sample_stats_values():
    stats = sample_stats(["a b c", "a b d", "e f"], training=["e f"], self_bleu_size=10, seed=1)
    assert stats["copied_share"] == pytest.approx(1 / 3)
    assert stats["self_bleu_subsample"] == {"size": 3, "seed": 1, "max_n": 4, "smoothing": "nltk method1"}
    # 8 words, 6 distinct; bigrams ab bc ab bd ef, 4 distinct; trigrams abc abd, both distinct
    assert (stats["distinct_1"], stats["distinct_2"], stats["distinct_3"]) == pytest.approx((6 / 8, 4 / 5, 1.0))
    assert (stats["mean_length"], stats["max_length"], stats["unique_share"]) == pytest.approx((8 / 3, 3, 1.0))
    assert 0 < stats["self_bleu"] < 1
