"""Training cost: one full learning iteration of `textebm.train.Learner.step` against plain references.

Two references, run interleaved with the candidate in the same process:
- the plain short-run chain iteration of bench/reference.py (K1=20 posterior steps, two Adam steps,
  K0=60 prior steps): issue 5's target is 3x fewer seconds per iteration than this;
- one teacher-forced language-model step of the same decoder: the iteration's cost over it is the
  issue's second figure (the goal beyond the issue: training tokens/s at half a plain LM's).
The candidate's config takes `--set key=value` overrides, so variants (e.g. a faster posterior)
are measured with the same command; the references keep the paper's plain settings.
"""

from __future__ import annotations

import copy

import torch

from bench import Row, build_model, interleave, median
from bench import reference as ref
import textebm.train as library

FULL = dict(vocab=10_000, batch=64, words=21, pool=4,
            sizes=["embedding_dim=256", "hidden_dim=512", "latent_dim=32", "batch_size=64",
                   "posterior_steps=20", "prior_steps=60"])
QUICK = dict(vocab=300, batch=4, words=5, pool=2,
             sizes=["embedding_dim=16", "hidden_dim=32", "latent_dim=4", "batch_size=4",
                    "posterior_steps=2", "prior_steps=3"])
SPEEDUP_TARGET = 3.0
LM_SHARE_GOAL = 0.5  # training tokens/s over a plain LM's: the goal beyond issue 5


def token_batches(spec: dict, vocab: int) -> list[torch.Tensor]:
    """Random sentences `<s> w1..wn </s>` of equal length (n+1 predicted tokens each), fixed seed."""
    gen = torch.Generator().manual_seed(0)
    out = []
    for _ in range(spec["pool"]):
        words = torch.randint(4, vocab, (spec["batch"], spec["words"]), generator=gen)
        bos = torch.full((spec["batch"], 1), 1)
        eos = torch.full((spec["batch"], 1), 2)
        out.append(torch.cat([bos, words, eos], dim=1))
    return out


def candidate_step(model, cfg):
    """The library's learning iteration (`textebm.train.Learner.step`) as a function of a token batch."""
    return library.Learner(model, cfg, model.device).step


def run(quick: bool, repeats: int, overrides: list[str] = ()) -> list[Row]:
    spec = QUICK if quick else FULL
    base_model, base_cfg = build_model(spec["sizes"], spec["vocab"])
    cand_model, cand_cfg = build_model(spec["sizes"] + list(overrides), spec["vocab"])
    cand_model.eos_id = 2  # training data ends sentences with id 2
    batches = token_batches(spec, spec["vocab"])
    tokens_per_batch = int(batches[0][:, 1:].numel())

    plain = ref.PlainTrainer(copy.deepcopy(base_model), base_cfg)
    lm = ref.PlainLanguageModelStep(copy.deepcopy(base_model), base_cfg)
    cand_step = candidate_step(cand_model, cand_cfg)
    z_lm = torch.randn(spec["batch"], base_cfg.latent_dim, generator=torch.Generator().manual_seed(1))
    counters = {"plain": 0, "cand": 0, "lm": 0}

    def next_batch(who: str) -> torch.Tensor:
        counters[who] += 1
        return batches[counters[who] % len(batches)]

    seconds = interleave({
        "plain_chain": lambda: plain.step(next_batch("plain")),
        "train_step": lambda: cand_step(next_batch("cand")),
        "lm_step": lambda: lm.step(next_batch("lm"), z_lm),
    }, repeats, warmup=0 if quick else 1)
    t_plain, t_cand, t_lm = (median(seconds[k]) for k in ("plain_chain", "train_step", "lm_step"))
    rate = lambda t: tokens_per_batch / t  # noqa: E731
    chains = f"K1={base_cfg.posterior_steps}, K0={base_cfg.prior_steps}"
    variant = ("candidate overrides: " + " ".join(overrides)) if overrides else "candidate: default config"
    shape = f"batch {spec['batch']} x {spec['words'] + 1} tokens"
    speedup = t_plain / t_cand
    return [
        Row("training", f"train_step vs plain chain iteration ({chains}), {shape}", "tokens/s",
            rate(t_plain), rate(t_cand), speedup, "speed-up", f">= {SPEEDUP_TARGET:g}x",
            speedup >= SPEEDUP_TARGET, f"{variant}; s/iteration {t_plain:.3f} -> {t_cand:.3f}", seconds),
        Row("training", f"train_step cost over one teacher-forced LM step, {shape}", "tokens/s",
            rate(t_lm), rate(t_cand), t_cand / t_lm, "cost factor",
            f"goal <= {1 / LM_SHARE_GOAL:g}x (beyond issue 5)", None,
            f"{variant}; tokens/s share of the LM step {t_lm / t_cand:.1%}; s/step LM {t_lm:.3f}, iteration {t_cand:.3f}",
            {}),
        Row("training", f"plain chain cost over one teacher-forced LM step, {shape}", "tokens/s",
            rate(t_lm), rate(t_plain), t_plain / t_lm, "cost factor", "", None,
            f"the paper's plain iteration ({chains}); tokens/s share of the LM step {t_lm / t_plain:.1%}", {}),
    ]
