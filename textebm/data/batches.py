"""Sentences as padded id tensors, and the order in which a training epoch visits them.

The order is a pure function of (seed, epoch), so a resumed run finds its place from the step
count alone: no iterator state to save.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class EncodedSplit:
    sentences: list[list[int]]  # `<s> w1 ... wn </s>` ids
    truncated: int  # lines cut to max_length
    num_tokens: int  # predicted tokens (words + end of sentence)


def encode_lines(lines: list[str], vocab, max_length: int) -> EncodedSplit:
    """Encode each line, cutting it to `max_length` tokens (the cuts are counted, not silent)."""
    sentences, truncated, tokens = [], 0, 0
    for line in lines:
        ids = vocab.encode(line)
        if len(ids) > max_length:
            ids, truncated = ids[:max_length], truncated + 1
        sentences.append([vocab.bos_id, *ids, vocab.eos_id])
        tokens += len(ids) + 1
    return EncodedSplit(sentences, truncated, tokens)


def pad(sentences: list[list[int]], pad_id: int) -> torch.Tensor:
    width = max(len(s) for s in sentences)
    out = torch.full((len(sentences), width), pad_id, dtype=torch.long)
    for row, sentence in enumerate(sentences):
        out[row, : len(sentence)] = torch.tensor(sentence, dtype=torch.long)
    return out


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int, pool: int = 50) -> list[list[int]]:
    """Index batches for one epoch: shuffle, sort pools of `pool` batches by length (less padding),
    cut into batches, shuffle the batches. Deterministic in (seed, epoch); partial last batch kept."""
    # modulo torch's 64-bit seed range: any seed up to config.MAX_SEED (the same value below the range)
    generator = torch.Generator().manual_seed((seed * 100_003 + epoch) % 2**64)
    order = torch.randperm(len(lengths), generator=generator).tolist()
    batches = []
    span = batch_size * pool
    for start in range(0, len(order), span):
        chunk = sorted(order[start:start + span], key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    shuffled = torch.randperm(len(batches), generator=generator).tolist()
    return [batches[i] for i in shuffled]
