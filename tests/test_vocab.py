"""Vocabularies: word vocabulary (frequency order, unknown-word spellings) and SentencePiece."""

import json

import pytest

from textebm.data.vocab import SPECIALS, SentencePieceVocab, WordVocab, build_vocab, load_vocab, tokenize
from textebm.errors import UserError


def test_word_vocab_round_trip():
    sentences = ["the cat sat", "the dog sat", "a cat ran"]
    vocab = WordVocab.build(sentences)
    assert vocab.itos[:4] == SPECIALS
    assert (vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2, 3)
    for sentence in sentences:
        ids = vocab.encode(sentence)
        assert vocab.unk_id not in ids
        assert vocab.decode(ids) == sentence
    # decoding stops at the end of sentence and skips padding / <s>
    ids = [vocab.bos_id, *vocab.encode("the cat"), vocab.eos_id, *vocab.encode("dog"), vocab.pad_id]
    assert vocab.decode(ids) == "the cat"


def test_word_vocab_order_is_frequency_then_alphabetical():
    vocab = WordVocab.build(["b a c", "b a", "b z"])
    assert vocab.itos[4:] == ["b", "a", "c", "z"]


def test_max_size_and_min_freq():
    sentences = ["a a a b b c", "a b d"]
    assert len(WordVocab.build(sentences, max_size=6)) == 6
    assert WordVocab.build(sentences, max_size=6).itos[4:] == ["a", "b"]
    assert WordVocab.build(sentences, min_freq=2).itos[4:] == ["a", "b"]
    vocab = WordVocab.build(sentences, max_size=6)
    assert vocab.encode("c d a") == [vocab.unk_id, vocab.unk_id, vocab.stoi["a"]]


@pytest.mark.parametrize("lowercase", [False, True])
@pytest.mark.parametrize("spelling", ["<unk>", "_UNK"])
def test_unknown_word_spellings_map_to_unk_and_decode_back(spelling, lowercase):
    # lowercase=true made Yahoo's _UNK the ordinary word _unk
    vocab = WordVocab.build([f"the {spelling} sat", f"a {spelling} {spelling} ran"], lowercase=lowercase)
    assert spelling not in vocab.itos[4:], "the corpus's unknown word must not become an ordinary word"
    ids = vocab.encode(f"the {spelling} sat")
    assert ids[1] == vocab.unk_id
    assert vocab.decode(ids) == f"the {spelling} sat"
    # an out-of-vocabulary word maps to unk too, and decodes to the corpus's spelling
    assert vocab.decode(vocab.encode("the zebra sat")) == f"the {spelling} sat"
    # every alias maps to the one unk id
    assert vocab.encode("<unk> _UNK <UNK>") == [vocab.unk_id] * 3


def test_text_spelling_a_marker_is_an_unknown_word_not_the_marker(train_lines):
    # "<pad>" read as padding made a padded sentence's anomaly score drop; "</s>" cut a reconstruction
    vocab = WordVocab.build(["the cat sat"])
    ids = vocab.encode("the <pad> </s> <s> cat")
    assert ids == [vocab.stoi["the"], vocab.unk_id, vocab.unk_id, vocab.unk_id, vocab.stoi["cat"]]
    assert vocab.decode(ids) == "the <unk> <unk> <unk> cat"
    pieces = build_vocab(train_lines[:300], "sentencepiece", 200, 1, False)
    assert {pieces.pad_id, pieces.bos_id, pieces.eos_id}.isdisjoint(pieces.encode("the <pad> </s> <s> cat"))


def test_ptb_shaped_vocab_decodes_unk_as_ptb_does(train_lines):
    vocab = WordVocab.build(train_lines[:500])
    line = next(text for text in train_lines[:500] if "<unk>" in text)
    assert vocab.decode(vocab.encode(line)) == " ".join(line.split())


def test_word_vocab_save_load(tmp_path):
    vocab = WordVocab.build(["the _UNK cat", "Dog runs"], lowercase=True, tokenizer="treebank")
    vocab.save(tmp_path)
    loaded = load_vocab(tmp_path)
    assert isinstance(loaded, WordVocab)
    assert loaded.itos == vocab.itos and loaded.unk_word == vocab.unk_word
    assert loaded.tokenizer == "treebank" and loaded.lowercase is True
    assert loaded.encode("The dog, runs.") == vocab.encode("The dog, runs.")
    assert json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))["kind"] == "word"


def test_treebank_tokenizer_and_lowercase():
    assert tokenize("A man's dog, running.", "treebank", lowercase=True) == [
        "a", "man", "'s", "dog", ",", "running", "."]
    assert tokenize("  pre tokenised   text ", "word") == ["pre", "tokenised", "text"]


def test_load_vocab_errors(tmp_path):
    with pytest.raises(UserError, match="no readable vocabulary"):
        load_vocab(tmp_path)
    (tmp_path / "vocab.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(UserError, match="no readable vocabulary"):
        load_vocab(tmp_path)
    spm = {"kind": "sentencepiece", "lowercase": False, "model": "spm.model"}
    (tmp_path / "vocab.json").write_text(json.dumps(spm))
    with pytest.raises(UserError, match="no readable vocabulary"):
        load_vocab(tmp_path)


def test_sentencepiece_trains_saves_and_loads(tmp_path, train_lines):
    lines = train_lines[:300]
    vocab = build_vocab(lines, "sentencepiece", 200, 1, False)
    assert isinstance(vocab, SentencePieceVocab)
    assert (vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2, 3)
    assert 8 < len(vocab) <= 200
    sentence = " ".join(next(text for text in lines[3:] if "<unk>" not in text).split())
    ids = vocab.encode(sentence)
    assert ids and all(4 <= i < len(vocab) for i in ids)
    assert vocab.decode(ids + [vocab.eos_id, 5, 6]) == sentence
    vocab.save(tmp_path)
    assert (tmp_path / "spm.model").is_file()
    loaded = load_vocab(tmp_path)
    assert isinstance(loaded, SentencePieceVocab) and len(loaded) == len(vocab)
    assert loaded.encode(sentence) == ids and loaded.decode(ids) == sentence


def test_sentencepiece_keeps_the_corpus_unknown_word(train_lines):
    """PTB spells unknown words `<unk>`; a SentencePiece vocabulary trained on PTB must give them
    back as `<unk>` (evaluation compares samples with PTB text), not as SentencePiece's ' ⁇ '."""
    vocab = build_vocab(train_lines[:300], "sentencepiece", 200, 1, False)
    sentence = "the <unk> company said"
    assert vocab.decode(vocab.encode(sentence)) == sentence
