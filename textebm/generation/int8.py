"""int8 linear maps with dynamically quantized activations, through `torch.ao.quantization`.

That API is deprecated in torch 2.13 (its successor, torchao, had no faster CPU path in a one-off
try here), and it is the only one used: this module is where it changes when torch drops it.
Weights are quantized per output channel, once; activations per call (dynamic quantization).
"""

from __future__ import annotations

import warnings

import torch
from torch import nn


def quantized_linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Module:
    """A module computing x @ weight.T + bias with int8 weights and int8 dynamic activations (fp32 in/out)."""
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        linear.weight.copy_(weight.detach().float().cpu())
        if bias is not None:
            linear.bias.copy_(bias.detach().float().cpu())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

        quantized = quantize_dynamic(nn.Sequential(linear), {nn.Linear: per_channel_dynamic_qconfig},
                                     dtype=torch.qint8)
    return quantized[0]
