"""`compile=true`: torch.compile where it pays, with an eager fallback.

Two functions are compiled, the ones a training step runs most and that compile well:
- the likelihood's vocabulary projection with its log-softmax and target gather
  (`decoder.projected_log_likelihood`): the largest tensors of the generator's update (the chains take
  the projection's value and gradient together, `decoder.projected_value_and_grad`, uncompiled);
- the energy's written-out value-and-gradient pass (`energy.mlp_value_and_grad`): a chain of small
  kernels per Langevin step (60 per prior chain) that the compiler fuses into a few.
The RNN is left to cuDNN (one fused kernel already; dynamo would break its graph there), and so is
everything else. Shapes change from batch to batch, so the functions are compiled for dynamic shapes.

When compiling fails (no C++ compiler or Triton, an unsupported torch), the function runs eagerly
from then on, after one warning: a run never stops because of `compile=true`.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch


class EagerFallback:
    """`fn` compiled by torch.compile on its first call, or `fn` itself once compiling has failed."""

    def __init__(self, fn: Callable, what: str):
        self.fn, self.what = fn, what
        self.compiled: Callable | None = torch.compile(fn, dynamic=True)

    def __call__(self, *args):
        if self.compiled is not None:
            try:
                return self.compiled(*args)
            except torch._dynamo.exc.TorchDynamoException as err:  # compiling failed, not the computation
                reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
                warnings.warn(f"compile=true: {self.what} runs eagerly: torch.compile failed ({reason[:300]})",
                              RuntimeWarning, stacklevel=2)
                self.compiled = None
        return self.fn(*args)

    @property
    def is_compiled(self) -> bool:
        return self.compiled is not None


def compile_model(model) -> None:
    """Compile, in place, the projection of `model`'s decoder and its energy's gradient pass (if an EBM)."""
    model.decoder.project = EagerFallback(model.decoder.project, "the likelihood's vocabulary projection")
    if model.prior.is_ebm:
        model.prior.gradient_pass = EagerFallback(model.prior.gradient_pass, "the energy's gradient pass")
