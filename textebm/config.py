"""Typed configuration as plain data: one dataclass, presets in `textebm/presets/*.toml`, `--set` overrides.

Every default lives here (and is listed in the README); presets only override. The resolved
config is saved as `config.json` in each run folder.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from dataclasses import dataclass, fields
from importlib import resources
from typing import Any

from textebm.errors import UserError

# Every vocabulary's first ids, in this order (textebm.data.vocab); vocab_size counts them.
SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")

# Seeds are signed 64-bit integers: torch's generators fail above 2**64 - 1 ("Overflow when unpacking long
# long"), and training adds offsets to the seed (seed + step, seed + RESET_SEED), which the headroom keeps in range.
MAX_SEED = 2**63 - 1
# Longest sentence a command or the server decodes: far past any corpus's lines (Yahoo's documents are cut at
# 200), and short enough that a model that never ends a sentence stops within seconds, not after hours.
MAX_DECODE_LENGTH = 2000
# Most Langevin steps a chain may be asked for (commands, `--set`, the library; the server's own limit is lower):
# far past any run's K (tens to hundreds), short of the list of 10**12 step sizes that exhausted memory.
MAX_CHAIN_STEPS = 100_000
# Largest layer width, batch or sentence length, number of layers: far past any model here, short of the sizes
# torch cannot even unpack (2**63), which ended in a C++ traceback.
MAX_SIZE = 1_000_000
# Most chains (or points, sentences) asked of one call at once: each is a row of every batch.
MAX_CHAINS = 10_000
# Most sentences one call generates (`sample -n`, evaluate's samples): a file of some 500 MB; more is several calls.
MAX_SAMPLES = 10_000_000
# Sentences decoded together by default (`sample --batch-size`; the server's blocks of one request's rows).
SAMPLE_BATCH_SIZE = 256

STEP_SCHEDULES = ("constant", "linear", "geometric")


def step_schedule(start: float, end: float, steps: int, shape: str = "constant") -> list[float]:
    """Per-step sizes s_1 ... s_K: `start` throughout (constant), or from `start` to `end` evenly
    (linear) or by a constant ratio (geometric)."""
    if shape not in STEP_SCHEDULES:
        raise ValueError(f"step schedule must be one of {', '.join(STEP_SCHEDULES)}, not {shape!r}")
    if shape == "constant" or steps < 2:
        return [start] * steps
    if shape == "linear":
        return [start + (end - start) * k / (steps - 1) for k in range(steps)]
    return [start * (end / start) ** (k / (steps - 1)) for k in range(steps)]


@dataclass
class Config:
    # the model: the latent EBM prior learned with Langevin chains, or the VAE baseline (textebm/model/vae.py)
    model: str = "latent_ebm"  # latent_ebm | vae (an LSTM encoder q(z|x), the ELBO; its prior defaults to gaussian)
    # data
    corpus: str = "ptb"
    tokenizer: str = "word"  # word | treebank | sentencepiece
    vocab_size: int = 0  # 0: keep every training word (word/treebank); SentencePiece needs > 0
    min_freq: int = 1
    lowercase: bool = False
    max_length: int = 100  # tokens per training sentence (longer lines are truncated and counted)
    train_split: str = "train"  # development only: train on another split (printed in the config)
    # generator p(x|z)
    cell: str = "lstm"  # lstm | gru
    num_layers: int = 1
    embedding_dim: int = 512
    hidden_dim: int = 1024
    dropout: float = 0.3
    latent_dim: int = 32
    # prior p(z) ~ exp(f(z)) N(0, sigma^2 I)
    prior: str = "ebm"  # ebm | gaussian | none (no latent: a plain LSTM/GRU language model, the baseline)
    prior_sigma: float = 1.0
    energy_hidden: int = 200
    energy_layers: int = 2
    # short-run Langevin (textebm/model/langevin.py; the text settings are measured in docs/inference.md)
    prior_steps: int = 60
    prior_step_size: float = 0.4
    prior_noise: float = 1.0  # noise scale c of the prior chain (1: plain Langevin)
    posterior_steps: int = 20
    posterior_step_size: float = 0.5  # the first step's size (every step's, when the schedule is constant)
    posterior_step_schedule: str = "constant"  # constant | linear | geometric (from step_size to step_size_end)
    posterior_step_size_end: float = 0.05  # the last step's size (linear/geometric schedules)
    posterior_noise: float = 0.1  # noise scale c of the posterior chain (1: plain Langevin, 0: gradient ascent)
    posterior_init: str = "noise"  # noise (the paper's short-run chain) | encoder (amortized guess, refined)
    refine_steps: int = 5  # posterior steps from the encoder's guess (posterior_init=encoder)
    encoder_dim: int = 128  # embedding/hidden width of that encoder
    # the VAE baseline (model=vae): its encoder has the decoder's embedding_dim and hidden_dim
    free_bits: float = 0.25  # lambda: the KL term is sum_i max(lambda, KL_i), KL_i averaged over the batch (nats)
    kl_anneal_steps: int = 2000  # the KL weight rises linearly from 0 to 1 over this many steps (0: 1 throughout)
    ae_pretrain_steps: int = 0  # steps with KL weight 0 before the decoder is reset (Li et al. 2019; 0: off)
    # learning
    batch_size: int = 64
    generator_lr: float = 1e-3
    energy_lr: float = 1e-4  # 3e-4 fits the prior faster but starves the latent (docs/inference.md)
    generator_clip: float = 5.0
    energy_clip: float = 1.0
    energy_penalty: float = 0.0  # lambda of lambda * mean(f(z+)^2 + f(z-)^2) in the energy's loss (0: off)
    energy_warm_steps: int = 0  # noise-1 posterior steps from z+ for the energy's codes only (0: the cold z+)
    energy_warm_step_size: float = 0.1  # their step size
    adam_beta1: float = 0.5
    max_epochs: int = 40
    precision: str = "fp32"  # fp32 | bf16 (torch.autocast for chains and updates)
    compile: bool = False  # torch.compile the vocabulary projection and the energy's gradient pass (eager fallback)
    chain_precision: str = "fp32"  # fp32 | bf16 | auto (the posterior chain's vocabulary projection only; auto:
    # bf16 where the device has it in hardware, devices.bf16_native)
    nonfinite_policy: str = "skip"  # skip | stop
    max_skipped_steps: int = 20  # consecutive non-finite steps before the run stops anyway
    seed: int = 0
    # bookkeeping
    preset: str = ""  # the preset this config was resolved from (recorded; not a setting)
    log_every: int = 20
    valid_every: int = 0  # steps between validations besides each epoch's end (0: epochs only)
    checkpoint_every: int = 200  # steps; a kill loses at most this many
    valid_batches: int = 0  # 0: the whole validation split
    num_log_samples: int = 5
    tensorboard: bool = True  # TensorBoard events in RUN/tensorboard/ when the tensorboard package is installed

    def validate(self) -> Config:
        choices = {
            "model": MODELS,
            "tokenizer": ("word", "treebank", "sentencepiece"),
            "cell": ("lstm", "gru"),
            "prior": ("ebm", "gaussian", "none"),
            "nonfinite_policy": ("skip", "stop"),
            "posterior_init": ("noise", "encoder"),
            "precision": ("fp32", "bf16"),
            "chain_precision": ("fp32", "bf16", "auto"),
            "posterior_step_schedule": STEP_SCHEDULES,
        }
        for key, allowed in choices.items():
            if getattr(self, key) not in allowed:
                raise UserError(f"{key} must be one of {', '.join(allowed)}, not {getattr(self, key)!r}")
        positive = ["embedding_dim", "hidden_dim", "latent_dim", "num_layers", "batch_size", "max_length",
                    "energy_hidden", "energy_layers", "encoder_dim", "log_every", "checkpoint_every",
                    "max_skipped_steps"]
        for key in positive:
            if getattr(self, key) < 1:
                raise UserError(f"{key} must be at least 1, not {getattr(self, key)}")
        for key in ["embedding_dim", "hidden_dim", "latent_dim", "energy_hidden", "encoder_dim", "batch_size",
                    "max_length", "num_layers", "energy_layers"]:  # past torch's 64-bit sizes: a C++ traceback
            if getattr(self, key) > MAX_SIZE:
                raise UserError(f"{key} goes up to {MAX_SIZE:,}, not {getattr(self, key)}")
        for key in ["prior_steps", "posterior_steps", "vocab_size", "min_freq", "valid_batches",
                    "num_log_samples", "max_epochs", "valid_every", "seed", "refine_steps", "energy_warm_steps",
                    "kl_anneal_steps", "ae_pretrain_steps"]:
            if getattr(self, key) < 0:
                raise UserError(f"{key} must not be negative, not {getattr(self, key)}")
        for key in ["prior_sigma", "prior_step_size", "posterior_step_size", "posterior_step_size_end",
                    "generator_lr", "energy_lr", "generator_clip", "energy_clip", "energy_warm_step_size"]:
            value = getattr(self, key)
            if not (math.isfinite(value) and value > 0):
                raise UserError(f"{key} must be a positive number, not {value}")
        for key in ["prior_noise", "posterior_noise", "energy_penalty", "free_bits"]:
            value = getattr(self, key)
            if not (math.isfinite(value) and value >= 0):
                raise UserError(f"{key} must be a number >= 0, not {value}")
        for key in ["prior_steps", "posterior_steps", "refine_steps", "energy_warm_steps"]:
            if getattr(self, key) > MAX_CHAIN_STEPS:
                raise UserError(f"{key} goes up to {MAX_CHAIN_STEPS}, not {getattr(self, key)}")
        if self.seed > MAX_SEED:
            raise UserError(f"seed must be at most 2**63 - 1, not {self.seed}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"dropout must be in [0, 1), not {self.dropout}")
        if not 0.0 <= self.adam_beta1 < 1.0:  # NaN fails this too (torch's Adam refused it, after the run folder)
            raise UserError(f"adam_beta1 must be in [0, 1), not {self.adam_beta1}")
        if self.prior == "none" and self.posterior_init == "encoder":
            raise UserError("posterior_init=encoder needs a latent: prior=none has none")
        if self.model == "vae":
            if self.prior != "gaussian":
                raise UserError(f"model=vae has the Gaussian prior N(0, sigma^2 I): prior={self.prior} is not "
                                "implemented for it (drop --set prior, or set prior=gaussian)")
            if self.posterior_init != "noise":
                raise UserError("model=vae infers z with its own encoder: posterior_init applies to model=latent_ebm")
        if self.tokenizer == "sentencepiece" and self.vocab_size < 8:
            raise UserError(f"tokenizer=sentencepiece needs a vocab_size of at least 8 (e.g. --vocab-size 8000), "
                            f"not {self.vocab_size}")
        if 0 < self.vocab_size <= len(SPECIAL_TOKENS):
            # the size counts <pad>, <s>, </s> and <unk>: a smaller one left no room for a word (and kept them all)
            raise UserError(f"vocab_size must be 0 (no limit) or at least {len(SPECIAL_TOKENS) + 1} (the "
                            f"{len(SPECIAL_TOKENS)} special tokens and one word), not {self.vocab_size}")
        return self

    def posterior_step_sizes(self, steps: int | None = None) -> list[float]:
        """The posterior chain's per-step sizes for `steps` steps (default K1)."""
        return step_schedule(self.posterior_step_size, self.posterior_step_size_end,
                             self.posterior_steps if steps is None else steps, self.posterior_step_schedule)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Config:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(f"unknown config key(s): {', '.join(unknown)}")
        types = {f.name: f.type for f in fields(cls)}
        return cls(**{key: _typed(key, types[key], value) for key, value in data.items()}).validate()


def _typed(key: str, kind: str, value: Any) -> Any:
    """`value` as the field's type (an int where a float is asked becomes one), else a UserError:
    a config.json edited by hand must fail in one line, not deep inside torch."""
    accepted, name = {"int": (int, "an integer"), "float": ((int, float), "a number"), "str": (str, "a string"),
                      "bool": (bool, "true or false")}[kind]
    if not isinstance(value, accepted) or (isinstance(value, bool) and kind != "bool"):
        raise UserError(f"config key {key} must be {name}, not {value!r}")
    return float(value) if kind == "float" else value


MODELS = ("latent_ebm", "vae")
# Defaults that follow from the model (below a preset's or --set's value): the VAE's prior is Gaussian.
MODEL_DEFAULTS = {"vae": {"prior": "gaussian"}}
# A preset's choice of how the latent EBM infers z: dropped, unless --set names it, for a model that has no
# such inference (prior=none: no latent; model=vae: its own encoder), so one size preset serves every model.
LATENT_EBM_INFERENCE = ("posterior_init", "chain_precision")


def preset_names() -> list[str]:
    files = resources.files("textebm.presets").iterdir()
    return sorted(f.name[:-5] for f in files if f.name.endswith(".toml"))


def load_preset(name: str) -> dict[str, Any]:
    if name not in preset_names():
        raise UserError(f"unknown preset {name!r}; available: {', '.join(preset_names())}")
    text = resources.files("textebm.presets").joinpath(f"{name}.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def parse_override(item: str) -> tuple[str, Any]:
    """`key=value` with the value converted to the field's type."""
    if "=" not in item:
        raise UserError(f"--set expects key=value, got {item!r}")
    key, raw = (s.strip() for s in item.split("=", 1))
    types = {f.name: f.type for f in fields(Config)}
    if key not in types or key == "preset":
        known = ", ".join(sorted(set(types) - {"preset", "corpus"}))
        raise UserError(f"unknown config key {key!r} in --set (presets are chosen with --preset); known keys: {known}")
    kind = types[key]
    try:
        if kind == "bool":
            if raw.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError
            return key, raw.lower() in ("true", "1", "yes")
        if kind == "int":
            return key, int(raw)
        if kind == "float":
            return key, float(raw)
    except ValueError:
        wanted = {"int": "an integer", "float": "a number", "bool": "true or false"}[kind]
        raise UserError(f"--set {key}: expected {wanted}, got {raw!r}") from None
    return key, raw


# The inference settings: a trained run can be evaluated, scored or explored with other chains than
# it trained with (`--set` of evaluate, score, interpolate); nothing else of its config may change.
CHAIN_KEYS = ("prior_steps", "prior_step_size", "prior_noise", "posterior_steps", "posterior_step_size",
              "posterior_step_schedule", "posterior_step_size_end", "posterior_noise", "chain_precision")


def with_chain_overrides(config: Config, overrides: list[str]) -> Config:
    """A copy of a run's config with `key=value` chain settings changed (CHAIN_KEYS only)."""
    values = config.to_dict()
    for item in overrides:
        key, value = parse_override(item)
        if key not in CHAIN_KEYS:
            raise UserError(f"--set {key}: only the chain settings of a trained run can change here "
                            f"({', '.join(CHAIN_KEYS)})")
        values[key] = value
    config = Config.from_dict(values)
    # a rule of training, not of validity: runs trained so before 2026-12-08 still load, sample and evaluate
    if config.posterior_init == "encoder" and config.refine_steps < 1 and config.model != "vae":
        raise UserError("posterior_init=encoder needs refine_steps of at least 1: with 0 the encoder is fitted to its "
                        "own guess and never learns")
    return config


def device_preset(corpus: str, on_cuda: bool) -> tuple[str, str]:
    """The preset a run gets when none is named, and why: the corpus's own (paper-scale) preset on a
    CUDA device, the small `cpu` preset on a CPU (the paper's sizes would take days there)."""
    own = corpus if corpus in preset_names() else "default"
    if on_cuda:
        return own, f"CUDA device: preset {own} (paper scale)"
    return "cpu", f"no CUDA device: preset cpu; --preset {own} for the paper's sizes"


def resolve_config(preset: str | None, corpus: str, overrides: list[str] = ()) -> Config:
    """Defaults, then the corpus's own preset, then the named preset over it (so a size preset such as
    `cpu` keeps the corpus's max_length, vocabulary and lowercasing), then `--set` overrides; keys that
    none sets take the model's defaults (MODEL_DEFAULTS) before the general ones, and a preset's
    LATENT_EBM_INFERENCE keys apply to the latent EBM only."""
    own = corpus if corpus in preset_names() else "default"
    preset = own if preset is None else preset
    values: dict[str, Any] = {"corpus": corpus}
    values.update(load_preset(own))
    values.update(load_preset(preset))
    values["corpus"], values["preset"] = corpus, preset
    overridden = set()
    for item in overrides:
        key, value = parse_override(item)
        if key == "corpus":  # it replaced --corpus FILE without a word
            raise UserError(f"--set corpus={value}: the corpus is chosen with --corpus, not --set")
        values[key] = value
        overridden.add(key)
    if values.get("model", Config.model) == "vae" or values.get("prior", Config.prior) == "none":
        for key in set(LATENT_EBM_INFERENCE) - overridden:
            values.pop(key, None)
    for key, value in MODEL_DEFAULTS.get(values.get("model", Config.model), {}).items():
        values.setdefault(key, value)
    config = Config.from_dict(values)
    # a rule of training, not of validity: runs trained so before 2026-12-08 still load, sample and evaluate
    if config.posterior_init == "encoder" and config.refine_steps < 1 and config.model != "vae":
        raise UserError("posterior_init=encoder needs refine_steps of at least 1: with 0 the encoder is fitted to its "
                        "own guess and never learns")
    return config
