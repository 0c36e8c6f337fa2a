"""The generator p(x | z): an LSTM or GRU sentence decoder conditioned on a latent code z.

z sets the initial hidden state (through a linear map and tanh) and is concatenated to every
input embedding, the usual wiring of text VAEs. Sentences are `<s> w1 ... wn </s>`. With
latent_dim 0 it is a plain RNN language model starting from a zero state.

The likelihood's projection onto the vocabulary (and its softmax) is most of its cost. The
posterior chain may run that part in bf16 (`projection="bf16"`, config `chain_precision`): the
chain needs only a gradient direction in z, while the RNN (oneDNN's CPU LSTM has no bf16 kernel),
the updates and every likelihood that is reported stay fp32.

Chains need log p(x | z) and its gradient in z, never the weights' gradient: `log_likelihood_and_grad`
computes the projection's value and its gradient to the RNN's outputs together, a block of token
rows at a time (`projected_value_and_grad`), so that the logits, their softmax and the gradient to the
hidden states are made while the block is in cache, and bf16 pays in full (autocast's conversions of
whole logit tensors cost half of what its matrix products save); autograd carries the rest through the
RNN to z. Measured 2026-12-07 on this project's CPU (AVX-512 BF16, one thread, 64 rows of 22 tokens
over 10,000 words, `cpu`-preset sizes): 1.11x the autograd path's speed in fp32, 1.9x with bf16
operands (autocast over the autograd path: 1.35x; docs/evaluate-command.md, evaluator 10).

The RNN module itself is always in training mode (`train` below): cuDNN computes an RNN's backward
pass only in training mode, and the chains take gradients through it with the model in eval mode.
What eval mode must switch off, the dropout between stacked layers, is switched off by setting the
RNN's dropout to 0; a one-layer RNN has none, and in training mode it computes what it computes in
eval mode.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from textebm import cancellation
from textebm.modes import autograd_ready, gradients_anywhere


class Decoder(nn.Module):
    def __init__(self, vocab_size: int, embedding_dim: int, hidden_dim: int, latent_dim: int,
                 num_layers: int = 1, cell: str = "lstm", dropout: float = 0.0, pad_id: int = 0):
        super().__init__()
        self.cell, self.num_layers, self.hidden_dim, self.pad_id = cell, num_layers, hidden_dim, pad_id
        self.layer_dropout = dropout if num_layers > 1 else 0.0  # between stacked layers, in training only
        self.embed = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        states = 2 if cell == "lstm" else 1  # (h, c) for an LSTM
        self.state_size = states * num_layers * hidden_dim
        self.z_to_state = nn.Linear(latent_dim, self.state_size) if latent_dim else None
        rnn = nn.LSTM if cell == "lstm" else nn.GRU
        self.rnn = rnn(embedding_dim + latent_dim, hidden_dim, num_layers=num_layers, batch_first=True,
                       dropout=self.layer_dropout)
        self.drop = nn.Dropout(dropout)
        self.out = nn.Linear(hidden_dim, vocab_size)
        self.project = projected_log_likelihood  # compiled in place by `compile=true` (textebm/training/compiling.py)

    def rows_per_chunk(self, length: int) -> int:
        """How many rows of `length` tokens to score at once (`chunk_rows`: logits within 1 GiB)."""
        return chunk_rows(length, self.out.out_features)

    def train(self, mode: bool = True) -> Decoder:
        """Dropout on (`mode`) or off, as for any module; the RNN stays in training mode either way (cuDNN
        takes an RNN's backward pass only there), its dropout between layers set to 0 in eval mode."""
        super().train(mode)
        self.rnn.training = True
        self.rnn.dropout = self.layer_dropout if mode else 0.0
        return self

    def initial_state(self, z: torch.Tensor):
        """The RNN state at t=0, as nn.LSTM/nn.GRU expect it: (layers, batch, hidden)."""
        if self.z_to_state is None:
            state = z.new_zeros(z.shape[0], self.state_size)
        else:
            state = torch.tanh(self.z_to_state(z))
        state = state.view(z.shape[0], -1, self.num_layers, self.hidden_dim).permute(1, 2, 0, 3).contiguous()
        return (state[0], state[1]) if self.cell == "lstm" else state[0]

    def hidden_states(self, z: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """The RNN's teacher-forced outputs (batch, time, hidden), after dropout: what the projection reads.
        Always fp32, outside any autocast (`rnn_precision`)."""
        with rnn_precision(inputs.device):
            emb = self.drop(self.embed(inputs))
            rnn_in = torch.cat([emb, z.float().unsqueeze(1).expand(-1, inputs.shape[1], -1)], dim=-1)
            hidden, _ = self.rnn(rnn_in, self.initial_state(z.float()))
            return self.drop(hidden)

    def logits(self, z: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
        """Teacher-forced logits (batch, time, vocab) for the next token after each input token."""
        return self.out(self.hidden_states(z, inputs))

    def log_likelihood(self, z: torch.Tensor, tokens: torch.Tensor, projection: str = "fp32") -> torch.Tensor:
        """log p(x | z) summed over each sentence's tokens (end-of-sentence included): shape (batch,).

        `tokens` is `<s> w1 ... wn </s> <pad>...`; padding is ignored. `projection="bf16"` computes
        the vocabulary projection with bf16 operands (by hand without autograd, under bf16 autocast with
        it; the RNN as it would run anyway); the log-softmax and the sum over tokens are fp32. (A chain,
        which needs the gradient in z only, calls `log_likelihood_and_grad`.)"""
        return self.states_log_likelihood(self.hidden_states(z, tokens[:, :-1]), tokens[:, 1:], projection)

    def states_log_likelihood(self, hidden: torch.Tensor, targets: torch.Tensor, projection: str = "fp32"):
        """The likelihood's second half, from the RNN's outputs: project onto the vocabulary, log-softmax,
        sum each sentence's target log-probabilities (padding ignored). Shape (batch,). Without autograd
        (evaluation, validation, a fit's line search) a block of token rows at a time (`projected_values`),
        so that the logits never leave the cache: 0.60 of the cost of projecting every row at once in bf16,
        0.88 in fp32 (docs/evaluate-command.md, evaluator 11)."""
        if torch.is_grad_enabled():
            with projection_autocast(projection, hidden.device):
                return self.project(hidden, self.out.weight, self.out.bias, targets, self.pad_id)
        rows = hidden.reshape(-1, hidden.shape[-1])
        values = projected_values(rows, self.out.weight, self.out.bias, targets.reshape(-1), self.pad_id, projection,
                                  BLOCK_ROWS if rows.device.type == "cpu" else rows.shape[0])
        return values.view(targets.shape).sum(1)

    def log_likelihood_and_grad(self, z: torch.Tensor, tokens: torch.Tensor,
                                projection: str = "fp32") -> tuple[torch.Tensor, torch.Tensor]:
        """(log p(x | z) per sentence (batch,), its gradient in z (batch, latent)), the weights held fixed:
        what a chain's step needs (module docstring). Gradients flow whatever the caller's grad mode, under
        `torch.no_grad()` and `torch.inference_mode()` alike (`gradients_anywhere`)."""
        with gradients_anywhere():
            z, tokens = autograd_ready(z).detach().requires_grad_(True), autograd_ready(tokens)
            targets = tokens[:, 1:]
            hidden = self.hidden_states(z, tokens[:, :-1])
            rows = hidden.detach().reshape(-1, hidden.shape[-1])
            block = BLOCK_ROWS if rows.device.type == "cpu" else rows.shape[0]  # a GPU has no cache to fit
            values, hidden_grad = projected_value_and_grad(rows, self.out.weight.detach(), self.out.bias.detach(),
                                                           targets.reshape(-1), self.pad_id, projection, block)
            (grad,) = torch.autograd.grad(hidden, z, hidden_grad.view_as(hidden))
        return values.view(targets.shape).sum(1), grad

    def forward(self, z: torch.Tensor, tokens: torch.Tensor, projection: str = "fp32") -> torch.Tensor:
        """log p(x | z) per sentence: the call that data-parallel training wraps."""
        return self.log_likelihood(z, tokens, projection)

    def start_decoding(self, z: torch.Tensor):
        """Constants and state for `step`: z's share of the first layer's input gates is the same at
        every time step, so it is computed once per sentence instead of once per token."""
        emb_dim = self.embed.embedding_dim
        z_gates = F.linear(z, self.rnn.weight_ih_l0[:, emb_dim:], self.rnn.bias_ih_l0)
        state = self.initial_state(z)
        if self.cell == "lstm":
            return z_gates, list(zip(state[0].unbind(0), state[1].unbind(0)))
        return z_gates, list(state.unbind(0))

    def step(self, tokens: torch.Tensor, z_gates: torch.Tensor, state: list, products):
        """One decoding step for a batch, written at the cell level (the nn.LSTM/nn.GRU equations on
        their own weights, gate order i, f, g, o and r, z, n): next-token logits and the new state.

        `products` computes the step's matrix products (`textebm.generation.precision`: `StepProducts(decoder)`
        in fp32 from these weights, or bf16 / int8 copies prepared once)."""
        x = products.token_gates(tokens) + z_gates
        new_state = []
        for layer, layer_state in enumerate(state):
            if layer > 0:
                x = products.input_gates(layer, x)
            if self.cell == "lstm":
                h, c = layer_state
                i, f, g, o = (x + products.recurrent_gates(layer, h)).chunk(4, dim=1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                new_state.append((h, c))
            else:
                h = layer_state
                x_r, x_u, x_n = x.chunk(3, dim=1)
                h_r, h_u, h_n = products.recurrent_gates(layer, h).chunk(3, dim=1)
                r, u = torch.sigmoid(x_r + h_r), torch.sigmoid(x_u + h_u)
                h = (1 - u) * torch.tanh(x_n + r * h_n) + u * h
                new_state.append(h)
            x = h
        return products.logits(x), new_state


def projected_log_likelihood(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor,
                             pad_id: int) -> torch.Tensor:
    """sum_t log softmax(W h_t + b)[x_t] per sentence, padding ignored, summed in fp32: shape (batch,).
    Most of a likelihood's cost (the vocabulary is large), and what `compile=true` compiles."""
    # On 2-D rows: a 3-D input with a weight that needs no gradient makes matmul take a batched path
    # that copies the weight once per sentence, ten times the cost under bf16 autocast.
    logits = F.linear(hidden.reshape(-1, hidden.shape[-1]), weight, bias)
    return TargetLogSoftmax.apply(logits, targets.reshape(-1), pad_id).view(targets.shape).sum(dim=1)


class TargetLogSoftmax(torch.autograd.Function):
    """log softmax(logits)[target] per row in fp32 (0 where the target is padding), with its gradient.

    Autograd's log_softmax + nll_loss makes three passes over the (rows, vocabulary) logits in the
    backward pass (a zero fill, a scatter, log_softmax's own backward), which together cost as much as
    the projection's matrix product (profiled on `evaluate`, 2026-12-06). Here the backward pass turns
    the saved log-probabilities into the logits' gradient g (1{target} - p) in place: one exp, one
    scaling."""

    @staticmethod
    def forward(ctx, logits, targets, pad_id: int):
        log_probs = torch.log_softmax(logits, 1, dtype=torch.float32)
        kept = targets != pad_id
        ctx.save_for_backward(log_probs, targets, kept)
        ctx.logits_dtype = logits.dtype
        return log_probs.gather(1, targets.unsqueeze(1)).squeeze(1) * kept

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        log_probs, targets, kept = ctx.saved_tensors
        scale = (grad * kept).unsqueeze(1)
        logit_grad = log_probs.exp_().mul_(scale.neg()).scatter_add_(1, targets.unsqueeze(1), scale)
        return logit_grad.to(ctx.logits_dtype), None, None


PROJECTIONS = ("fp32", "bf16")
BLOCK_ROWS = 256  # token rows per block of `projected_value_and_grad` on a CPU: 10 MB of logits over 10,000 words


def projected_value_and_grad(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor,
                             pad_id: int, projection: str = "fp32",
                             block: int = BLOCK_ROWS) -> tuple[torch.Tensor, torch.Tensor]:
    """For token rows h_t (N, hidden) with targets x_t (N,): (log softmax(W h_t + b)[x_t] (N,), its gradient
    in h_t, W[x_t] - W^T softmax(W h_t + b) (N, hidden)), both 0 where the target is padding; no autograd.
    A block of `block` rows at a time: its logits, their softmax and the block's gradient are made while
    the block is in cache. `projection="bf16"`: the two matrix products take bf16 operands (the logits
    come out rounded to bf16), the softmax and everything summed stay fp32; an enclosing autocast
    (training's `precision=bf16`) asks for bf16 as well, as it does of `log_likelihood`'s projection."""
    low = _low_precision(projection, hidden.device)
    with torch.autocast(hidden.device.type, enabled=False):
        return _blockwise(hidden, weight, bias, targets, pad_id, low, block, with_grad=True)


def projected_values(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, targets: torch.Tensor,
                     pad_id: int, projection: str = "fp32", block: int = BLOCK_ROWS) -> torch.Tensor:
    """`projected_value_and_grad`'s first half alone: log softmax(W h_t + b)[x_t] per token row (N,), 0 at
    padding, with the same blocks and precision; what a likelihood without autograd needs."""
    low = _low_precision(projection, hidden.device)
    with torch.no_grad(), torch.autocast(hidden.device.type, enabled=False):
        return _blockwise(hidden, weight, bias, targets, pad_id, low, block, with_grad=False)[0]


def _low_precision(projection: str, device: torch.device) -> bool:
    """bf16 operands: asked for, or asked by an enclosing autocast (training's `precision=bf16`)."""
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {', '.join(PROJECTIONS)}, not {projection!r}")
    return projection == "bf16" or torch.is_autocast_enabled(device.type)


def _blockwise(hidden, weight, bias, targets, pad_id: int, low: bool, block: int, with_grad: bool):
    """The loop of `projected_value_and_grad` (`with_grad`) and `projected_values`, outside any autocast
    (`low`: bf16 operands): (values, gradients or None)."""
    matrix = weight.to(torch.bfloat16) if low else weight
    values = hidden.new_empty(hidden.shape[0], dtype=torch.float32)
    grads = torch.empty(hidden.shape, dtype=torch.float32, device=hidden.device) if with_grad else None
    for start in range(0, hidden.shape[0], block):
        cancellation.check()  # a server job that nobody awaits stops here too: a step at its bound is seconds
        rows, index = hidden[start:start + block], targets[start:start + block].unsqueeze(1)
        if low:
            logits = torch.mm(rows.to(torch.bfloat16), matrix.t()).float().add_(bias)
        else:
            logits = torch.addmm(bias, rows, matrix.t())
        target, peak = logits.gather(1, index), logits.amax(1, keepdim=True)
        unnormalised = logits.sub_(peak).exp_()  # in place: one exp per logit, the softmax's numerator
        total = unnormalised.sum(1, keepdim=True)
        values[start:start + block] = (target - peak - total.log()).squeeze(1)
        if with_grad:
            expected = (torch.mm(unnormalised.to(torch.bfloat16), matrix).float() if low
                        else torch.mm(unnormalised, matrix))
            grads[start:start + block] = weight[index.squeeze(1)] - expected / total  # W^T softmax, normalised here
    kept = targets != pad_id
    return values * kept, (grads * kept.unsqueeze(1) if with_grad else None)


MAX_ROWS = 512  # decoder rows (sentence x draw pairs) decoded together, at most ...
LOGITS_PER_CHUNK = 2**28  # ... and few enough that their vocabulary logits stay within this many (1 GiB in fp32)


def chunk_rows(length: int, vocab_size: int, budget: int = LOGITS_PER_CHUNK) -> int:
    """Decoder rows per chunk for sentences of `length` tokens: MAX_ROWS, or fewer where a chunk's
    logits (rows x length x vocabulary, with their log-softmax, later their gradient, as large again)
    would pass `budget` elements. Yahoo's 200 tokens over 20,000 words fit 67 rows, where 512 would hold 8 GB of
    logits; PTB's 40 tokens over 10,000 words keep 512."""
    return max(1, min(MAX_ROWS, budget // max(1, length * vocab_size)))


def rnn_precision(device: torch.device):
    """Autocast switched off: the RNN runs in fp32 under training's `precision=bf16`. Autocast would
    run cuDNN's RNN in fp16 whatever dtype it was given (and without a loss scale small gradients
    underflow there), and oneDNN's CPU LSTM has no bf16 kernel on most CPUs. The vocabulary
    projection after it and the energy's MLP take the enclosing autocast's bf16."""
    return torch.autocast(device.type, enabled=False)


def projection_autocast(projection: str, device: torch.device):
    """bf16 autocast on the device for `projection="bf16"`; for fp32 no context at all, so that an
    enclosing autocast (training's `precision=bf16`) still applies."""
    if projection not in PROJECTIONS:
        raise ValueError(f"projection must be one of {', '.join(PROJECTIONS)}, not {projection!r}")
    if projection == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)
