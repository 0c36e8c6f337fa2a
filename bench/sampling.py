"""Sampling throughput: sentences/s of `textebm.generation.decoding.decode` against per-token `nn.LSTM` sampling.

Target (issue 5): at least 5x the reference's sentences/s at batch 32, 40 tokens, with the LSTM
256/512, vocabulary 10k, latent 32. The whole `model.generate` (the 60-step prior chain, then
decoding) is measured too, against the plain prior chain plus the per-token reference.

The `floor` row times only the matrix products every exact fp32 sampler of this decoder must do
per token (the recurrent gates and the vocabulary projection), in the same interleaved run: the
reference's rate over that floor's is the largest speed-up any such sampler can show here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from bench import Row, build_model, interleave, median
from bench import reference as ref
from textebm.generation.decoding import decode

FULL = dict(vocab=10_000, sizes=["embedding_dim=256", "hidden_dim=512", "latent_dim=32", "prior_steps=60"],
            length=40, batches=(1, 32, 256), generate_batch=32)
QUICK = dict(vocab=300, sizes=["embedding_dim=16", "hidden_dim=32", "latent_dim=4", "prior_steps=5"],
             length=8, batches=(1, 4), generate_batch=4)
TARGET_BATCH, TARGET = 32, 5.0


def matrix_products(decoder, batch: int, length: int, inner: int):
    """`length` steps of just the two products per token (hidden -> gates, hidden -> vocabulary logits)."""
    rnn = decoder.rnn
    h = torch.randn(batch, rnn.hidden_size)

    @torch.inference_mode()
    def run():
        for _ in range(inner * length):
            F.linear(h, rnn.weight_hh_l0, rnn.bias_hh_l0)
            decoder.out(h)
    return run


def run(quick: bool, repeats: int) -> list[Row]:
    spec = QUICK if quick else FULL
    model, cfg = build_model(spec["sizes"], spec["vocab"])
    model.eval()
    decoder, length = model.decoder, spec["length"]
    rows = []
    for batch in spec["batches"]:
        z = torch.randn(batch, cfg.latent_dim, generator=torch.Generator().manual_seed(batch))
        # batch 1 is a few milliseconds per sentence: time several per call so timer noise is small
        inner = 4 if batch == 1 and not quick else 1

        def reference(z=z, inner=inner):
            for _ in range(inner):
                ref.sample_per_token(decoder, z, model.bos_id, length)

        def candidate(z=z, inner=inner):
            for _ in range(inner):
                decode(decoder, z, model.bos_id, -1, length)

        floor = matrix_products(decoder, batch, length, inner)
        seconds = interleave({"reference": reference, "candidate": candidate, "floor": floor}, repeats,
                             warmup=0 if quick else 1)
        ref_rate, cand_rate, floor_rate = (batch * inner / median(seconds[k])
                                           for k in ("reference", "candidate", "floor"))
        ratio = cand_rate / ref_rate
        targeted = batch == TARGET_BATCH
        rows.append(Row(
            "sampling", f"decode, batch {batch}, {length} tokens", "sentences/s", ref_rate, cand_rate, ratio,
            "speed-up", f">= {TARGET:g}x" if targeted else "", (ratio >= TARGET) if targeted else None,
            "reference: nn.LSTM per token on cat(emb, z), softmax + multinomial, no_grad; "
            f"the matrix products alone: {floor_rate:.3g} sentences/s, i.e. at most "
            f"{floor_rate / ref_rate:.2f}x over the reference for any exact fp32 sampler", seconds))

    n = spec["generate_batch"]
    seconds = interleave({
        "reference": lambda: ref.generate_plain(model, n, length, cfg.prior_steps, cfg.prior_step_size),
        "candidate": lambda: model.generate(n, max_length=length),
    }, repeats, warmup=0 if quick else 1)
    ref_rate, cand_rate = n / median(seconds["reference"]), n / median(seconds["candidate"])
    rows.append(Row(
        "sampling", f"model.generate, batch {n}, {length} tokens, prior chain K0={cfg.prior_steps}",
        "sentences/s", ref_rate, cand_rate, cand_rate / ref_rate, "speed-up", "", None,
        "reference: plain prior chain + per-token nn.LSTM sampling", seconds))
    return rows
