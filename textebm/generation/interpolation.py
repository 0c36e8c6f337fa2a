"""Sentences decoded (greedy) along the straight line between the codes of two sentences: what lies
between two points of the latent space. Shared by `textebm interpolate` and the server.

A single short-run posterior sample is noisy (the chain starts from noise and ends with a noise
step), so each sentence's code is the mean of `chains` independent posterior samples: an estimate
of the posterior mean E[z | x], stable across seeds."""

from __future__ import annotations

import torch

from textebm.arguments import check_chains, check_count, check_lines, check_seed
from textebm.config import MAX_CHAINS, MAX_DECODE_LENGTH
from textebm.data.batches import encode_lines, pad
from textebm.errors import UserError
from textebm.generation.decoding import decode
from textebm.modes import eval_mode


def sentence_codes(model, vocab, sentences: list[str], chains: int, seed: int) -> torch.Tensor:
    """Each sentence's code (`model.infer_code`, `chains` samples averaged): (len(sentences), latent), with
    the model in eval mode (no dropout in the chains; a model fresh from training is put back as it was)."""
    sentences, chains, seed = check_lines(sentences, "sentences"), check_chains("chains", chains), check_seed(seed)
    if not model.has_latent:
        raise UserError("the model was trained with prior=none (a language model without a latent): it has no codes")
    tokens = pad(encode_lines(sentences, vocab, model.config.max_length).sentences, model.pad_id).to(model.device)
    generator = torch.Generator(device=model.device).manual_seed(seed)
    with eval_mode(model):
        return model.infer_code(tokens, chains, generator)


def interpolate(model, vocab, source: str, target: str, points: int, chains: int, seed: int,
                max_length: int) -> list[tuple[float, str]]:
    """`points` (t, sentence) pairs, t from 0 (source's code) to 1 (target's), decoded greedily as one batch,
    in fp32 whatever the run's decoding precision (which serves sampling: the server answers as the command)."""
    points = check_count("points", points, least=2, most=MAX_CHAINS)
    max_length = check_count("max_length", max_length, most=MAX_DECODE_LENGTH)
    codes = sentence_codes(model, vocab, [source, target], chains, seed)
    weights = torch.linspace(0.0, 1.0, points, device=model.device).unsqueeze(1)
    line = (1 - weights) * codes[0] + weights * codes[1]  # (points, latent)
    ids = decode(model.decoder, line, model.bos_id, model.eos_id, max_length, greedy=True)
    return [(float(w), vocab.decode(row)) for w, row in zip(weights.squeeze(1).tolist(), ids.tolist())]
