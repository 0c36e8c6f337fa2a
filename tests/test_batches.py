"""Encoding, padding, and the epoch order (a pure function of seed and epoch)."""

import torch

from textebm.data.batches import encode_lines, epoch_batches, pad
from textebm.data.vocab import WordVocab


def test_encode_lines_truncates_and_counts():
    vocab = WordVocab.build(["a b c d e f"])
    split = encode_lines(["a b", "a b c d e f", "c"], vocab, max_length=4)
    assert split.truncated == 1
    assert split.sentences[0] == [vocab.bos_id, vocab.stoi["a"], vocab.stoi["b"], vocab.eos_id]
    assert len(split.sentences[1]) == 4 + 2 and split.sentences[1][-1] == vocab.eos_id
    assert split.num_tokens == 3 + 5 + 2


def test_pad():
    batch = pad([[1, 5, 2], [1, 2]], pad_id=0)
    assert batch.dtype == torch.long
    assert batch.tolist() == [[1, 5, 2], [1, 2, 0]]


def test_epoch_batches_cover_every_index_once():
    lengths = [(i * 7) % 23 + 1 for i in range(1003)]
    batches = epoch_batches(lengths, batch_size=16, seed=3, epoch=0, pool=4)
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(1003))
    assert all(1 <= len(b) <= 16 for b in batches)
    assert sum(len(b) < 16 for b in batches) <= -(-1003 // (16 * 4))  # only pool tails are partial


def test_epoch_batches_deterministic_in_seed_and_epoch():
    lengths = list(range(500))
    a = epoch_batches(lengths, 8, seed=1, epoch=2)
    assert a == epoch_batches(lengths, 8, seed=1, epoch=2)
    assert a != epoch_batches(lengths, 8, seed=1, epoch=3)
    assert a != epoch_batches(lengths, 8, seed=2, epoch=2)
    # independent of the global RNG
    torch.manual_seed(123)
    b = epoch_batches(lengths, 8, seed=1, epoch=2)
    torch.manual_seed(456)
    assert b == a == epoch_batches(lengths, 8, seed=1, epoch=2)


def test_epoch_batches_take_every_seed_a_command_accepts():
    from textebm.config import MAX_SEED

    lengths = list(range(50))
    for seed in (2 * 10**14, MAX_SEED):  # seed * 100_003 passes torch's 64-bit range: it raised
        assert sorted(i for batch in epoch_batches(lengths, 8, seed=seed, epoch=3) for i in batch) == lengths


def test_epoch_batches_group_similar_lengths():
    lengths = [i % 50 for i in range(3200)]
    batches = epoch_batches(lengths, 32, seed=0, epoch=0, pool=100)
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in batches) / len(batches)
    assert spread < 5
