"""Reduced-precision decoding: the matrix products of each decoding step in bf16 or int8, chosen once.

A decoding step costs three kinds of matrix product: the first layer's input gates of the token's
embedding, each layer's recurrent gates (and a deeper layer's input gates), and the projection
onto the vocabulary, which dominates. `StepProducts` computes them from the decoder's own fp32
weights (the exact sampler). `Bf16Products` uses bf16 copies of the weights (this CPU has AVX-512
bf16 instructions; CUDA has tensor cores), `Int8Products` int8 weights with dynamically quantized
activations (`textebm/generation/int8.py`). Either way the products come back as fp32, and the cell's
nonlinearities, its state and the sampling stay fp32. Training, the Langevin chains and every
likelihood always run in fp32: precision is a property of how a loaded run decodes
(`LatentEBMTextModel.set_decoding_precision`), not of the run.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from textebm.devices import PRECISIONS
from textebm.errors import UserError


class StepProducts:
    """The fp32 products of one decoding step, read from the decoder's weights at each call."""

    def __init__(self, decoder):
        self.decoder = decoder

    def _weights(self, layer: int) -> tuple[torch.Tensor, ...]:
        rnn = self.decoder.rnn
        return (getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"bias_ih_l{layer}"),
                getattr(rnn, f"weight_hh_l{layer}"), getattr(rnn, f"bias_hh_l{layer}"))

    def token_gates(self, tokens: torch.Tensor) -> torch.Tensor:
        """The first layer's input gates of the tokens' embeddings (its bias comes with z's share)."""
        emb_dim = self.decoder.embed.embedding_dim
        return F.linear(self.decoder.embed(tokens), self.decoder.rnn.weight_ih_l0[:, :emb_dim])

    def input_gates(self, layer: int, x: torch.Tensor) -> torch.Tensor:
        w_ih, b_ih, _, _ = self._weights(layer)
        return F.linear(x, w_ih, b_ih)

    def recurrent_gates(self, layer: int, h: torch.Tensor) -> torch.Tensor:
        _, _, w_hh, b_hh = self._weights(layer)
        return F.linear(h, w_hh, b_hh)

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder.out(h)


class _Prepared(StepProducts):
    """Products from weights converted once (`convert`), applied by `apply`."""

    def __init__(self, decoder):
        super().__init__(decoder)
        emb_dim = decoder.embed.embedding_dim
        rnn = decoder.rnn
        self.embed_weight = decoder.embed.weight.detach()
        self.token = self.convert(rnn.weight_ih_l0[:, :emb_dim], None)
        self.inputs = {layer: self.convert(*self._weights(layer)[:2]) for layer in range(1, rnn.num_layers)}
        self.recurrent = {layer: self.convert(*self._weights(layer)[2:]) for layer in range(rnn.num_layers)}
        self.out = self.convert(decoder.out.weight, decoder.out.bias)

    def token_gates(self, tokens):
        return self.apply(self.token, F.embedding(tokens, self.embed_weight))

    def input_gates(self, layer, x):
        return self.apply(self.inputs[layer], x)

    def recurrent_gates(self, layer, h):
        return self.apply(self.recurrent[layer], h)

    def logits(self, h):
        return self.apply(self.out, h)


class Bf16Products(_Prepared):
    def convert(self, weight, bias):
        return weight.detach().to(torch.bfloat16), None if bias is None else bias.detach().to(torch.bfloat16)

    def apply(self, prepared, x):
        weight, bias = prepared
        return F.linear(x.to(torch.bfloat16), weight, bias).float()


class Int8Products(_Prepared):
    def convert(self, weight, bias):
        from textebm.generation.int8 import quantized_linear

        return quantized_linear(weight, bias)

    def apply(self, prepared, x):
        return prepared(x)


def decoding_products(decoder, precision: str) -> StepProducts:
    """The step products of `decoder` at `precision` (fp32, bf16, int8), converted once now."""
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    device = decoder.out.weight.device
    if precision == "int8" and device.type != "cpu":
        raise UserError("precision int8 (dynamic quantization) runs on the CPU only; use bf16 on CUDA")
    with torch.no_grad():
        return {"fp32": StepProducts, "bf16": Bf16Products, "int8": Int8Products}[precision](decoder)
