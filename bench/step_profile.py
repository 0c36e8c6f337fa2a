"""Where a latent training step's time goes (issue 17): one `Learner.step` split into its parts, each
against the plain language model's step (prior=none) of the same run: the `cpu` preset on a CPU,
the paper's `ptb` preset (LSTM 512/1024, batch 64) with `--device cuda` (TF32 on, as the commands
run it there; every timing waits for the GPU).

The parts, each timed on its own and interleaved with the others (bench/__init__.py):
- the whole step, and the LM step (the library's `Learner.step` with prior=none) it is held against
  (target: the latent step within 2x of the LM step);
- the posterior chain (K1 steps) and one of its steps (forward and backward to z), the latter split
  into the RNN (forward and backward to z) and the vocabulary projection with its log-softmax
  (value and gradient to the RNN's outputs, as the chains make them: `decoder.projected_value_and_grad`),
  the projection also on bf16 operands;
- the generator update, the prior chain (K0 steps) and the energy update;
- the lever `chain_precision=bf16`: one chain step and the whole step against their fp32 selves.
Shares are of the whole (fp32) step, or of one chain step for its two halves. `--set key=value`
changes the latent model (the LM keeps the preset's sizes).
"""

from __future__ import annotations

import dataclasses
import itertools

import torch

from bench import Row, build_model, interleave, median
from bench.training import token_batches
from textebm.model.decoder import projected_value_and_grad
from textebm.training.learner import Learner

FULL = dict(vocab=10_002, batch=32, words=23, pool=4, sizes=[], preset="cpu")  # the cpu preset, PTB's 10,002 words
CUDA = dict(vocab=10_002, batch=64, words=23, pool=4, sizes=[], preset="ptb")  # the paper's sizes, on a GPU
QUICK = dict(vocab=300, batch=4, words=5, pool=2, preset="cpu",
             sizes=["embedding_dim=16", "hidden_dim=32", "latent_dim=4", "energy_hidden=16", "batch_size=4",
                    "posterior_steps=2", "prior_steps=3"])


def spec_for(quick: bool, device: torch.device) -> dict:
    """Tiny sizes for a smoke run; else the cpu preset on a CPU, the ptb preset on CUDA."""
    return QUICK if quick else CUDA if device.type == "cuda" else FULL


def batches_on(spec: dict, device: torch.device) -> list[torch.Tensor]:
    return [batch.to(device) for batch in token_batches(spec, spec["vocab"])]
LM_FACTOR_TARGET = 2.0


def _ms(value: float) -> str:
    return f"{value:,.0f}" if value >= 10 else f"{value:.2g}"


def fed(step, batches: list[torch.Tensor]):
    """`step` on the next batch of the pool (each contender cycles through the same batches)."""
    pool = itertools.cycle(batches)
    return lambda: step(next(pool))


def learner(spec: dict, extra: list[str], device: torch.device) -> Learner:
    """A learner of the spec's preset and sizes plus `extra`, weights from seed 0 whatever `extra` says."""
    model, cfg = build_model(spec["sizes"] + extra, spec["vocab"], preset=spec["preset"], device=device)
    model.eos_id = 2  # the batches end sentences with id 2
    return Learner(model, cfg, device)


def parts(learner: Learner, batches: list[torch.Tensor]) -> dict:
    """The step's parts as functions on one model (a learner of its own, so its updates touch no
    other contender): chain, chain step, its RNN and projection halves, updates, prior chain."""
    model, cfg = learner.model, learner.cfg
    decoder, tokens = model.decoder, batches[0]
    model.eval()
    z0 = model.prior.sigma * torch.randn(tokens.shape[0], cfg.latent_dim, generator=torch.Generator().manual_seed(2))
    z0 = z0.to(tokens.device)
    with torch.no_grad():
        hidden0 = decoder.hidden_states(z0, tokens[:, :-1])
    upstream = torch.randn(hidden0.shape, generator=torch.Generator().manual_seed(3)).to(tokens.device)
    z_pos, z_neg = model.posterior_sample(tokens), model.prior_sample(tokens.shape[0])
    bf16 = dataclasses.replace(cfg, chain_precision="bf16")

    def chain_step(config):
        def run():
            model.config = config
            try:
                return model.posterior_sample(tokens, steps=1)
            finally:
                model.config = cfg
        return run

    def rnn_half():
        z = z0.clone().requires_grad_(True)
        return torch.autograd.grad(decoder.hidden_states(z, tokens[:, :-1]), z, upstream)

    def projection_half(projection):  # as the chains make it: value and gradient together, block by block
        def run():
            return projected_value_and_grad(hidden0.reshape(-1, hidden0.shape[-1]), decoder.out.weight.detach(),
                                            decoder.out.bias.detach(), tokens[:, 1:].reshape(-1), decoder.pad_id,
                                            projection)
        return run

    def in_eval(fn):
        def run():
            model.eval()
            return fn()
        return run

    scale = 1.0 / tokens.shape[0]
    return {
        "posterior chain": in_eval(lambda: model.posterior_sample(tokens, amortized=True)),  # as Learner.step
        "one chain step": in_eval(chain_step(cfg)),
        "one chain step, bf16": in_eval(chain_step(bf16)),
        "RNN half": in_eval(rnn_half),
        "projection half": in_eval(projection_half("fp32")),
        "projection half, bf16": in_eval(projection_half("bf16")),
        "generator update": lambda: learner.generator_update(tokens, z_pos, scale),
        "prior chain": in_eval(lambda: model.prior_sample(tokens.shape[0])),
        "energy update": lambda: learner.energy_update(z_pos, z_neg, scale),
    }


def run(quick: bool, repeats: int, overrides: list[str] = (), device: str = "cpu") -> list[Row]:
    device = torch.device(device)
    if device.type == "cuda":
        from textebm.devices import set_tf32

        set_tf32(True)  # as `textebm train` runs on CUDA
    spec = spec_for(quick, device)
    overrides = [item for item in overrides if not item.startswith("chain_precision=")]
    fp32_chain = [*overrides, "chain_precision=fp32"]  # the reference, whatever the preset says (cpu: auto)
    batches = batches_on(spec, device)
    lm, latent = learner(spec, ["prior=none"], device), learner(spec, fp32_chain, device)
    latent_bf16 = learner(spec, [*overrides, "chain_precision=bf16"], device)  # the same weights (same seed)
    contenders = {"LM step": fed(lm.step, batches), "latent step": fed(latent.step, batches),
                  "latent step, bf16": fed(latent_bf16.step, batches)}
    contenders.update(parts(learner(spec, fp32_chain, device), batches))
    seconds = interleave(contenders, repeats, 0 if quick else 1, device)
    ms = {name: 1000 * median(values) for name, values in seconds.items()}

    cfg = latent.cfg
    settings = f" --set {' '.join(overrides)}" if overrides else ""
    shape = f"batch {spec['batch']} x {spec['words'] + 1} tokens, {spec['preset']} preset on {device.type}{settings}"
    lm_ms, step_ms, chain_step_ms = ms["LM step"], ms["latent step"], ms["one chain step"]

    def part(name: str, what: str, of: float = step_ms, whole: str = "the latent step") -> Row:
        return Row("step_profile", f"{what}, {shape}", "ms", lm_ms, ms[name], ms[name] / lm_ms, "cost factor",
                   note=f"{ms[name] / of:.0%} of {whole} ({_ms(of)} ms); reference: the LM step")

    def lever(name: str, fp32: str, what: str) -> Row:
        return Row("step_profile", f"{what}, {shape}", "ms", ms[fp32], ms[name], ms[fp32] / ms[name], "speed-up",
                   note=f"chain_precision=bf16 against fp32; {_ms(ms[fp32])} -> {_ms(ms[name])} ms")

    def against_lm(name: str, what: str) -> Row:
        factor = ms[name] / lm_ms
        return Row("step_profile", f"{what} over the LM step (prior=none), {shape}", "ms", lm_ms, ms[name], factor,
                   "cost factor", f"<= {LM_FACTOR_TARGET:g}x", factor <= LM_FACTOR_TARGET,
                   f"LM step {_ms(lm_ms)} ms, latent step {_ms(ms[name])} ms")

    chain = (f"encoder + {cfg.refine_steps} refine steps" if cfg.posterior_init == "encoder"
             else f"K1={cfg.posterior_steps}")
    return [
        against_lm("latent step", f"Learner.step ({chain}, K0={cfg.prior_steps}, fp32)"),
        part("posterior chain", f"posterior chain ({chain}, as the step runs it)"),
        part("one chain step", "one chain step (forward and backward to z)"),
        part("RNN half", "of which the RNN (forward and backward to z)", chain_step_ms, "one chain step"),
        part("projection half", "of which the vocabulary projection and log-softmax (value and gradient to the "
             "RNN's outputs)", chain_step_ms, "one chain step"),
        lever("projection half, bf16", "projection half", "the same projection on bf16 operands"),
        part("generator update", "generator update (forward, backward, Adam)"),
        part("prior chain", f"prior chain (K0={cfg.prior_steps})"),
        part("energy update", "energy update"),
        lever("one chain step, bf16", "one chain step", "lever: one chain step with chain_precision=bf16"),
        lever("latent step, bf16", "latent step", "lever: Learner.step with chain_precision=bf16"),
        against_lm("latent step, bf16", f"Learner.step ({chain}, chain_precision=bf16)"),
    ]
