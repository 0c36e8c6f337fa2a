"""Training cost: one full learning iteration of `textebm.training.learner.Learner.step` against plain references.

Two references, run interleaved with the candidate in the same process:
- the plain short-run chain iteration of bench/reference.py (K1=20 posterior steps, two Adam steps,
  K0=60 prior steps): issue 5's target is 3x fewer seconds per iteration than this;
- one teacher-forced language-model step of the same decoder: the iteration's cost over it is the
  issue's second figure (the goal beyond the issue: training tokens/s at half a plain LM's).
Two candidates: the library with the paper's chain, and its amortized option (posterior_init=encoder,
the one the 3x target is for; its quality at equal iterations: docs/training.md). `--set
key=value` overrides apply to the candidates; the references keep the paper's plain settings.
"""

from __future__ import annotations

import copy
import itertools

import torch

from bench import Row, build_model, interleave, median
from bench import reference as ref
from textebm.training.learner import Learner

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
    """The library's learning iteration (`textebm.training.learner.Learner.step`) as a function of a token batch."""
    return Learner(model, cfg, model.device).step


def variants(overrides: list[str]) -> dict[str, list[str]]:
    """The candidates: the library with the paper's chain (plus any --set), and, unless --set already
    chose the posterior's initialisation, the amortized option (an encoder's guess, refined)."""
    out = {"paper's chain": list(overrides)}
    if not any(item.split("=")[0].strip() == "posterior_init" for item in overrides):
        out["amortized"] = [*overrides, "posterior_init=encoder"]
    return out


def run(quick: bool, repeats: int, overrides: list[str] = ()) -> list[Row]:
    spec = QUICK if quick else FULL
    base_model, base_cfg = build_model(spec["sizes"], spec["vocab"])
    batches = token_batches(spec, spec["vocab"])
    tokens_per_batch = int(batches[0][:, 1:].numel())

    def feed(step):
        """`step` on the next batch of the pool (each contender cycles through the same batches)."""
        pool = itertools.cycle(batches)
        return lambda: step(next(pool))

    plain = ref.PlainTrainer(copy.deepcopy(base_model), base_cfg)
    lm = ref.PlainLanguageModelStep(copy.deepcopy(base_model), base_cfg)
    z_lm = torch.randn(spec["batch"], base_cfg.latent_dim, generator=torch.Generator().manual_seed(1))
    contenders = {"plain_chain": feed(plain.step), "lm_step": feed(lambda tokens: lm.step(tokens, z_lm))}
    configs = {}
    for name, extra in variants(list(overrides)).items():
        model, cfg = build_model(spec["sizes"] + extra, spec["vocab"])
        model.eos_id = 2  # training data ends sentences with id 2
        contenders[name] = feed(candidate_step(model, cfg))
        configs[name] = (extra, cfg)
    seconds = interleave(contenders, repeats, warmup=0 if quick else 1)
    t_plain, t_lm = median(seconds["plain_chain"]), median(seconds["lm_step"])
    rate = lambda t: tokens_per_batch / t  # noqa: E731
    chains = f"K1={base_cfg.posterior_steps}, K0={base_cfg.prior_steps}"
    shape = f"batch {spec['batch']} x {spec['words'] + 1} tokens"
    rows = []
    for name, (extra, cfg) in configs.items():
        t = median(seconds[name])
        speedup = t_plain / t
        amortized = cfg.posterior_init == "encoder"
        what = (f"encoder guess + {cfg.refine_steps} refine steps" if amortized
                else f"K1={cfg.posterior_steps} from noise")
        settings = f"candidate --set: {' '.join(extra)}" if extra else "candidate: default config"
        quality = ("; equal-iteration quality: docs/training.md" if amortized else "")
        rows.append(Row(
            "training", f"Learner.step ({name}: {what}) vs plain chain iteration ({chains}), {shape}", "tokens/s",
            rate(t_plain), rate(t), speedup, "speed-up", f">= {SPEEDUP_TARGET:g}x" if amortized else "",
            (speedup >= SPEEDUP_TARGET) if amortized else None,
            f"{settings}; s/iteration {t_plain:.3f} -> {t:.3f}{quality}", {"plain_chain": seconds["plain_chain"],
                                                                              name: seconds[name]}))
        rows.append(Row(
            "training", f"Learner.step ({name}) cost over one teacher-forced LM step, {shape}", "tokens/s",
            rate(t_lm), rate(t), t / t_lm, "cost factor", f"goal <= {1 / LM_SHARE_GOAL:g}x (beyond issue 5)", None,
            f"tokens/s share of the LM step {t_lm / t:.1%}; s/step LM {t_lm:.3f}, iteration {t:.3f}",
            {"lm_step": seconds["lm_step"]}))
    rows.append(Row(
        "training", f"plain chain cost over one teacher-forced LM step, {shape}", "tokens/s",
        rate(t_lm), rate(t_plain), t_plain / t_lm, "cost factor", "", None,
        f"the paper's plain iteration ({chains}); tokens/s share of the LM step {t_lm / t_plain:.1%}", {}))
    return rows
