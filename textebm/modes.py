"""The modes a library call runs in, whatever its caller's: eval mode for the model (no dropout in a chain or
a decoding, the model put back as it was found), and autograd for the chains' gradients in z (under a
caller's `torch.no_grad()` or `torch.inference_mode()`, which researchers wrap evaluation code in)."""

from __future__ import annotations

import contextlib

import torch


@contextlib.contextmanager
def eval_mode(model):
    """`model` in eval mode for the block, then in the mode it was in (one fresh from training stays training)."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def gradients_anywhere():
    """Autograd on, whatever the caller's mode: `torch.enable_grad()` lifts `no_grad` but not `inference_mode`,
    under which a chain's gradient in z failed with torch's "does not require grad". Tensors made under
    inference mode still refuse autograd: `autograd_ready` copies them."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def autograd_ready(tensor: torch.Tensor) -> torch.Tensor:
    """`tensor`, or a copy of it where it was made under inference mode (which autograd cannot record)."""
    return tensor.clone() if tensor.is_inference() else tensor
