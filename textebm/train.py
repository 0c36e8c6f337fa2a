"""The learning loop: maximum likelihood with short-run Langevin chains (Pang et al. 2020, Alg. 1).

Per minibatch x (`Learner.step`):
  1. z+ ~ p(z | x)            posterior chain (K1 steps from noise; or refine steps from an encoder's guess)
  2. generator step            on  -mean log p_beta(x | z+)
  3. z- ~ p_alpha(z)           prior chain (K0 steps)
  4. energy step               on  -(mean f(z+) - mean f(z-)), optionally with a penalty on f^2
                               and with z+ warmed by a few plain-Langevin steps (`energy_penalty`,
                               `energy_warm_steps`: an energy that stays in balance, docs/inference.md)
The VAE baseline (`model=vae`, `VAELearner`) replaces 1-4 by one step of the decoder and its encoder
together on the ELBO with free bits and an annealed KL weight (textebm/vae.py); the loop, its
records, validation and checkpoints are the same.
Chains run with dropout off; the updates with dropout on. A non-finite z, energy, loss or gradient
skips the step (or stops the run, `nonfinite_policy=stop`), and is logged: nothing trains on NaN.
Under torchrun each process takes a shard of every batch (textebm/parallel.py); chain noise is
drawn per global row, so the result does not depend on the number of processes.
"""

from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from textebm.batches import EncodedSplit, epoch_batches, pad
from textebm.compiling import compile_model
from textebm.config import Config
from textebm.diagnostics import latent_usage, prior_chain_bias
from textebm.errors import NonFiniteError, UserError
from textebm.io import atomic_write_text, remove_stale_temp_files
from textebm.langevin import Shard, deferred_checks, gaussian_noise
from textebm.likelihood import annealed_log_partition
from textebm.model import LatentEBMTextModel
from textebm.parallel import Parallel, wrap
from textebm.runs import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from textebm.vae import RESET_SEED, free_bits, gaussian_kl, kl_figures, kl_weight, posterior_kl, reset_weights

VALIDATION_SEED = 1234  # validation draws its own noise, so it never shifts the training RNG


def make_optimizers(model: LatentEBMTextModel, cfg: Config) -> dict[str, torch.optim.Optimizer]:
    betas = (cfg.adam_beta1, 0.999)
    optimizers = {"generator": torch.optim.Adam(model.decoder.parameters(), lr=cfg.generator_lr, betas=betas)}
    if model.prior.is_ebm:
        optimizers["energy"] = torch.optim.Adam(model.prior.parameters(), lr=cfg.energy_lr, betas=betas)
    if model.encoder is not None:
        optimizers["encoder"] = torch.optim.Adam(model.encoder.parameters(), lr=cfg.generator_lr, betas=betas)
    return optimizers


class Learner:
    """A model with its optimizers, its chain-noise generator and (under torchrun) its DDP wrappers."""

    def __init__(self, model: LatentEBMTextModel, cfg: Config, device, parallel: Parallel = Parallel()):
        self.model, self.cfg, self.device, self.parallel = model, cfg, torch.device(device), parallel
        self.optimizers = make_optimizers(model, cfg)
        self.chain_rng = torch.Generator(device=self.device).manual_seed(cfg.seed)
        if cfg.compile:  # in place, so that the chains (which call model.decoder and model.prior) use it too
            compile_model(model)
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16")
        self.decoder = wrap(model.decoder, parallel, self.device)
        self.energy = wrap(model.prior, parallel, self.device) if model.prior.is_ebm else None
        self.encoder = wrap(model.encoder, parallel, self.device) if model.encoder is not None else None

    def step(self, tokens: torch.Tensor, shard: Shard | None = None) -> dict:
        """One learning iteration on this process's rows `tokens` of a global batch. Returns sums
        over those rows (nll_sum, energy_gap_sum) and gradient norms. Raises NonFiniteError, on every
        process alike, before non-finite numbers reach an update."""
        with self.autocast:
            return self._step(tokens, shard)

    def _step(self, tokens: torch.Tensor, shard: Shard | None) -> dict:
        """The chains run and every loss is backpropagated before any update: the decisions on finite
        numbers and the step's figures then cost one host sync (`_apply`). Nothing reads what an
        earlier update changed, so this computes what updating in Alg. 1's order computes; except the
        warm chain (`energy_warm_steps`), which reads the updated decoder: the decoder's update, and a
        second sync, come before it then."""
        model, cfg = self.model, self.cfg
        shard = shard or Shard(0, tokens.shape[0], tokens.shape[0])
        scale = self.parallel.world / shard.total  # DDP averages over processes: this makes it a mean over rows
        checks, figures, names = [], {}, []
        model.eval()  # chains see the model without dropout
        z_pos = self._chain(checks, "posterior chain", lambda: model.posterior_sample(
            tokens, generator=self.chain_rng, shard=shard, amortized=True))
        if self.encoder is not None:
            guess_error = 0.5 * (self.encoder(tokens) - z_pos).pow(2).sum()
            norms = self._backward(checks, guess_error * scale, ("encoder",), cfg.generator_clip)
            figures["encoder_grad_norm"] = norms[0]
            names.append("encoder")
        figures.update(self.generator_backward(checks, tokens, z_pos, scale))
        names.append("generator")
        if self.energy is None:
            return self._apply(checks, figures, names)
        metrics = {}
        if cfg.energy_warm_steps:
            metrics = self._apply(checks, figures, names)
            checks, figures, names = [], {}, []
            model.eval()
            z_pos = self._chain(checks, "warm posterior chain", lambda: model.warm_posterior(
                tokens, z_pos, cfg.energy_warm_steps, cfg.energy_warm_step_size, self.chain_rng, shard))
        model.eval()
        z_neg = self._chain(checks, "prior chain",
                            lambda: model.prior_sample(tokens.shape[0], generator=self.chain_rng, shard=shard))
        figures.update(self.energy_backward(checks, z_pos, z_neg, scale))
        return {**metrics, **self._apply(checks, figures, [*names, "energy"])}

    def generator_backward(self, checks: list, tokens: torch.Tensor, z_pos: torch.Tensor, scale: float) -> dict:
        """The decoder's gradient of -log p_beta(x | z+), summed over rows and scaled to a mean (dropout on)."""
        self.model.train()
        log_lik = self.decoder(z_pos, tokens)
        norm = self._backward(checks, -log_lik.sum() * scale, ("generator",), self.cfg.generator_clip)[0]
        return {"gen_grad_norm": norm, "nll_sum": -log_lik.detach().sum()}

    def energy_backward(self, checks: list, z_pos: torch.Tensor, z_neg: torch.Tensor, scale: float) -> dict:
        """f's gradient of -(mean f(z+) - mean f(z-)): raise f where the posterior puts codes, lower it
        where the prior chain wanders (the maximum-likelihood gradient of the prior). With
        `energy_penalty` lambda > 0, lambda * (f(z+)^2 + f(z-)^2) is added, as energy-based models of
        images do: it keeps f near 0 at both kinds of codes and so bounds how sharp f can become."""
        f = self.energy(torch.cat([z_pos, z_neg]))  # one call: DDP wants one forward per backward
        gap = f[: len(z_pos)].sum() - f[len(z_pos):].sum()
        loss = -gap
        if self.cfg.energy_penalty:
            loss = loss + self.cfg.energy_penalty * f.pow(2).sum()
        norm = self._backward(checks, loss * scale, ("energy",), self.cfg.energy_clip)[0]
        return {"ebm_grad_norm": norm, "energy_gap_sum": gap.detach()}

    def generator_update(self, tokens: torch.Tensor, z_pos: torch.Tensor, scale: float) -> dict:
        """One Adam step of the decoder on its own (`generator_backward`, its check, the step)."""
        checks = []
        return self._apply(checks, self.generator_backward(checks, tokens, z_pos, scale), ["generator"])

    def energy_update(self, z_pos: torch.Tensor, z_neg: torch.Tensor, scale: float) -> dict:
        """One Adam step of f on its own (`energy_backward`, its check, the step)."""
        checks = []
        return self._apply(checks, self.energy_backward(checks, z_pos, z_neg, scale), ["energy"])

    def _chain(self, checks: list, what: str, run) -> torch.Tensor:
        """z from the chain `run`, its finite-check added to `checks` (not made here)."""
        with deferred_checks() as flags:
            z = run()
        if flags:
            checks.append((f"{what} produced non-finite z", torch.stack(flags).all()))
        return z

    def _backward(self, checks: list, loss: torch.Tensor, names: tuple[str, ...], clip: float) -> list[torch.Tensor]:
        """One backward pass of `loss` into the named optimizers' parameters, each clipped to `clip` on its
        own: their gradient norms (on the device). Whether the loss and the norms are finite goes to `checks`."""
        what = " and ".join(names)
        optimizers = [self.optimizers[name] for name in names]
        for optimizer in optimizers:
            optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norms = [torch.nn.utils.clip_grad_norm_([p for group in optimizer.param_groups for p in group["params"]], clip)
                 for optimizer in optimizers]
        checks.append((f"{what} loss is not finite", torch.isfinite(loss.detach())))
        checks.append((f"{what} gradient is not finite", torch.stack([torch.isfinite(n) for n in norms]).all()))
        return norms

    def _apply(self, checks: list, figures: dict, names: list[str]) -> dict:
        """The one host sync: every check, agreed by all processes, and the figures come back together.
        A failed check raises NonFiniteError (the first in the order they were made) with no update
        made; otherwise one Adam step of each named optimizer. Returns the figures as numbers."""
        flags = self.parallel.all_min(torch.stack([flag.reshape(()) for _, flag in checks]).float())
        values = torch.cat([flags, torch.stack([value.reshape(()).float() for value in figures.values()])]).tolist()
        failed = [message for (message, _), ok in zip(checks, values) if not ok]
        if failed:
            for name in names:
                self.optimizers[name].zero_grad(set_to_none=True)
            raise NonFiniteError(failed[0])
        for name in names:
            self.optimizers[name].step()
        return dict(zip(figures, values[len(checks):]))

    def state(self) -> dict:
        """What a checkpoint needs beyond weights: optimizer states and every RNG (all processes')."""
        return {"optimizers": {name: opt.state_dict() for name, opt in self.optimizers.items()},
                "chain_rng": self.chain_rng.get_state(), "rng_ranks": self.parallel.gather(rng_state())}

    def load_state(self, checkpoint: dict) -> None:
        self.model.load_state_dict(checkpoint["model"])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(checkpoint["optimizers"][name])
        extra = checkpoint.get("extra", {})
        self.chain_rng.set_state(extra["chain_rng"].cpu() if "chain_rng" in extra else self.chain_rng.get_state())
        ranks = extra.get("rng_ranks", [checkpoint["rng"]])
        set_rng_state(ranks[self.parallel.rank] if len(ranks) == self.parallel.world else checkpoint["rng"])


class VAELearner(Learner):
    """The VAE baseline's update (textebm/vae.py): one reparameterised draw z ~ q(z | x) per sentence,
    then one Adam step of the decoder and the encoder together on

        -log p(x | z) + w * sum_i max(free_bits, KL_i),

    w the KL weight of `vae.kl_weight` (0 during autoencoder pretraining, then annealed to 1). The
    first update after `ae_pretrain_steps` resets the decoder (weights and Adam state) before it
    runs. The learner counts its updates, restored from the checkpoint's step on resume."""

    def __init__(self, model, cfg: Config, device, parallel: Parallel = Parallel()):
        super().__init__(model, cfg, device, parallel)
        self.updates = 0

    def _step(self, tokens: torch.Tensor, shard: Shard | None) -> dict:
        model, cfg = self.model, self.cfg
        shard = shard or Shard(0, tokens.shape[0], tokens.shape[0])
        scale = self.parallel.world / shard.total
        metrics = {}
        if cfg.ae_pretrain_steps and self.updates == cfg.ae_pretrain_steps:
            self.reset_decoder()
            metrics["decoder_reset"] = True
        weight = kl_weight(self.updates, cfg)
        self.updates += 1
        model.train()
        mean, log_var = self.encoder(tokens)
        std = (0.5 * log_var).exp()
        z = mean + std * gaussian_noise(tokens.shape[0], mean.shape[1], self.device, self.chain_rng, shard)
        log_lik = self.decoder(z, tokens)
        kl_rows = gaussian_kl(mean, std, model.prior.sigma)
        # the global batch's mean KL_i, summed over processes in fp64 on the device
        batch_kl = self.parallel.all_sum(kl_rows.detach().sum(0).double()).float() / shard.total
        loss = -log_lik.sum() * scale
        if weight > 0:  # (a KL weight of 0 leaves the KL out: q's variance may shrink freely while pretraining)
            loss = loss + weight * free_bits(kl_rows.sum(0) * scale, cfg.free_bits, batch_kl)
        checks, names = [], ["generator", "encoder"]
        gen_norm, enc_norm = self._backward(checks, loss, tuple(names), cfg.generator_clip)
        figures = self._apply(checks, {
            "gen_grad_norm": gen_norm, "encoder_grad_norm": enc_norm, "nll_sum": -log_lik.detach().sum(),
            "kl": batch_kl.sum(), "kl_floored": batch_kl.clamp(min=cfg.free_bits).sum(),
            "kl_dims_above_floor": (batch_kl > cfg.free_bits).sum()}, names)
        figures["kl_dims_above_floor"] = int(figures["kl_dims_above_floor"])
        return {**metrics, **figures, "kl_weight": weight}

    def reset_decoder(self) -> None:
        """Li et al.'s switch: the decoder starts again from fresh random weights (`vae.reset_weights`, a
        draw of their own, not the initial weights) and a fresh Adam state; the encoder keeps what
        pretraining taught it."""
        reset_weights(self.model.decoder, self.cfg.seed + RESET_SEED)
        self.optimizers["generator"].state.clear()

    def load_state(self, checkpoint: dict) -> None:
        super().load_state(checkpoint)
        self.updates = int(checkpoint["step"])


def make_learner(model: LatentEBMTextModel, cfg: Config, device, parallel: Parallel = Parallel()) -> Learner:
    """The learner of the config's model: Langevin-chain maximum likelihood, or the VAE's ELBO."""
    return (VAELearner if cfg.model == "vae" else Learner)(model, cfg, device, parallel)


VALID_AU_SENTENCES = 64  # validation sentences whose per-unit sensitivity is measured (d decoder passes each)
VALID_AIS_CHAINS, VALID_AIS_STEPS = 500, 500  # the exact sampler the prior chain is held against (seconds)
GAP_GROWTH_VALIDATIONS = 4  # the energy gap is taken to run away when it rose over this many validations ...
GAP_GROWTH_NATS = 3.0  # ... by more than this in all
COLLAPSE_GAP = 0.02  # nats/token: below this the decoder is taken to ignore z ...
COLLAPSE_VALIDATIONS = 3  # ... when it stays below for this many validations in a row
TEXT_CHAIN = Config()  # the measured text defaults of the posterior chain, which the warning suggests


def validate(model: LatentEBMTextModel, split: EncodedSplit, cfg: Config, device) -> dict:
    """Per-token NLL of the validation split given posterior z and given prior z, and whether z is used.

    The gap between the two NLLs is the posterior-collapse signal: if z from the prior explains the
    sentences as well as z inferred from them, the decoder ignores z. Mutual information and active
    units come from `textebm.diagnostics` (they read 0 for a decoder that ignores z)."""
    model.eval()
    generator = torch.Generator(device=device).manual_seed(VALIDATION_SEED)
    sentences = split.sentences[: cfg.valid_batches * cfg.batch_size] if cfg.valid_batches else split.sentences
    figures = latent_usage(model, sentences, model.pad_id, batch_size=cfg.batch_size, generator=generator,
                           au_sentences=VALID_AU_SENTENCES)
    record = {"valid_nll_posterior": figures["nll_posterior"], "valid_nll_prior": figures["nll_prior"],
              "valid_gap": figures["gap"], "valid_mutual_information": figures["mutual_information"],
              "valid_active_units": figures["active_units"],
              "valid_ppl_posterior": math.exp(min(figures["nll_posterior"], 50.0)),
              "valid_tokens": figures["tokens"]}
    if cfg.model == "vae":  # the ELBO's two terms per sentence (z+ one draw from q: its reconstruction term)
        kl = kl_figures(posterior_kl(model, sentences, cfg.batch_size), cfg.free_bits)
        reconstruction = figures["nll_posterior"] * figures["tokens"] / figures["sentences"]
        record.update({"valid_kl": kl["kl_per_sentence"], "valid_kl_dims_above_floor": kl["kl_dims_above_floor"],
                       "valid_elbo": -reconstruction - kl["kl_per_sentence"]})
    if model.prior.is_ebm:  # the prior chain against AIS's exact sampler; AIS's log Z comes with it
        reference = annealed_log_partition(model.prior, VALID_AIS_CHAINS, VALID_AIS_STEPS, generator=generator)
        bias = prior_chain_bias(model, VALID_AIS_CHAINS, reference, generator=generator)
        record.update({"valid_log_z": reference.log_z, "valid_log_z_ess": reference.ess,
                       **{f"valid_{key}": value for key, value in bias.items() if not isinstance(value, str)}})
    return record


def collapse_warning(gaps: list[float], cfg: Config) -> str | None:
    """One message when the last COLLAPSE_VALIDATIONS validation gaps all lie below COLLAPSE_GAP."""
    recent = gaps[-COLLAPSE_VALIDATIONS:]
    if len(recent) < COLLAPSE_VALIDATIONS or max(recent) >= COLLAPSE_GAP:
        return None
    head = (f"warning: the decoder ignores z (posterior collapse): the validation gap between prior-z and "
            f"posterior-z NLL has stayed below {COLLAPSE_GAP} nats/token for {COLLAPSE_VALIDATIONS} validations "
            f"({', '.join(f'{g:.3f}' for g in recent)}). ")
    if cfg.model == "vae":
        return head + (f"The KL term pulls q(z|x) onto the prior faster than the decoder learns to read z: a "
                       f"higher free_bits floor (now {cfg.free_bits:g} nats per dimension), a longer kl_anneal_steps "
                       f"(now {cfg.kl_anneal_steps}) or autoencoder pretraining (ae_pretrain_steps, now "
                       f"{cfg.ae_pretrain_steps}) keep z in use: docs/training.md")
    return head + (f"Likely cause: a posterior chain too short or too noisy "
            f"to find codes that explain the sentence (now {cfg.posterior_steps} steps of "
            f"{cfg.posterior_step_size:g}, noise scale {cfg.posterior_noise:g}); large, nearly noiseless steps "
            f"(the default --set posterior_step_size={TEXT_CHAIN.posterior_step_size:g} --set "
            f"posterior_noise={TEXT_CHAIN.posterior_noise:g}), or more of them (posterior_steps), let z carry "
            "the sentence: docs/inference.md")


def energy_gap_warning(gaps: list[float], cfg: Config) -> str | None:
    """One message when the mean energy gap f(z+) - f(z-) between validations rose at every one of the
    last GAP_GROWTH_VALIDATIONS validations and by more than GAP_GROWTH_NATS in all: the energy is
    sharpening faster than the prior chain follows (docs/inference.md)."""
    recent = gaps[-GAP_GROWTH_VALIDATIONS:]
    if len(recent) < GAP_GROWTH_VALIDATIONS or any(b <= a for a, b in zip(recent, recent[1:])):
        return None
    if recent[-1] - recent[0] <= GAP_GROWTH_NATS:
        return None
    return (f"warning: the energy gap f(z+) - f(z-) keeps growing ({', '.join(f'{g:.2f}' for g in recent)} over the "
            f"last {GAP_GROWTH_VALIDATIONS} validations): the prior chain ({cfg.prior_steps} steps of "
            f"{cfg.prior_step_size:g}) no longer reaches where f puts its mass, and the latent tends to carry less "
            f"from here. Settings that bound it: energy_penalty (now {cfg.energy_penalty:g}), energy_warm_steps "
            f"(now {cfg.energy_warm_steps}), energy_lr (now {cfg.energy_lr:g}): docs/inference.md")


@dataclass
class TrainResult:
    step: int
    stopped_by: str  # "max_steps" | "max_minutes" | "max_epochs" | "interrupt"
    last_validation: dict = field(default_factory=dict)


class _StopRequest:
    """Ctrl-C / SIGTERM: finish the current step, save, exit. A second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self.previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for sig in self.previous:
                signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: no signal handling
            self.previous = {}
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


class Logger:
    """Appends metrics to RUN/metrics.jsonl and messages to RUN/train.log (and the terminal)."""

    def __init__(self, folder: Path, echo, enabled: bool = True):
        self.folder, self.echo, self.enabled = Path(folder), echo, enabled

    def metrics(self, record: dict) -> None:
        if not self.enabled:
            return
        with open(self.folder / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def message(self, text: str) -> None:
        if not self.enabled:
            return
        with open(self.folder / "train.log", "a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
        self.echo(text)


def truncate_metrics(folder: Path, step: int) -> None:
    """On resume, forget records written after the checkpoint: they will be written again."""
    path = Path(folder) / "metrics.jsonl"
    if path.is_file():
        kept = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except ValueError:  # a line cut short by a kill
                continue
        atomic_write_text(path, "".join(line + "\n" for line in kept))


def train(model: LatentEBMTextModel, cfg: Config, train_split: EncodedSplit, valid_split: EncodedSplit,
          folder: Path, vocab, device, max_steps: int | None = None, max_minutes: float | None = None,
          resume: bool = False, progress: bool = True, echo=print, parallel: Parallel = Parallel()) -> TrainResult:
    """Train until max_steps / max_minutes / max_epochs, checkpointing every `checkpoint_every` steps.

    Under torchrun every process calls this; only the main process writes files."""
    from tqdm.auto import tqdm

    folder, device = Path(folder), torch.device(device)
    main = parallel.is_main
    log = Logger(folder, echo if main else (lambda text: None), enabled=main)
    learner = make_learner(model, cfg, device, parallel)
    step = 0
    if resume:
        checkpoint = load_checkpoint(folder, device)
        learner.load_state(checkpoint)
        step = int(checkpoint["step"])
        if main:
            truncate_metrics(folder, step)
            remove_stale_temp_files(folder)
        log.message(f"resumed from step {step}")

    lengths = [len(s) for s in train_split.sentences]
    per_epoch = math.ceil(len(lengths) / cfg.batch_size)
    total = cfg.max_epochs * per_epoch if cfg.max_epochs else None
    if max_steps is not None:
        total = max_steps if total is None else min(total, max_steps)
    if total is None and max_minutes is None:
        raise UserError("training has no end: give --max-steps, --max-minutes or a positive max_epochs")
    total = total if total is not None else 10**12
    stopped_by = "max_steps" if max_steps is not None and total == max_steps else "max_epochs"
    started, skipped_in_a_row, last_valid, validated_at = time.monotonic(), 0, {}, -1
    gaps, warned_collapse = [], False
    energy_gaps, gap_since_validation, warned_gap = [], [], False
    epoch, batches = -1, []

    def checkpoint_now():
        state = learner.state()  # a collective call under torchrun: every process takes part
        if main:
            save_checkpoint(folder, model, learner.optimizers, step,
                            {"chain_rng": state["chain_rng"], "rng_ranks": state["rng_ranks"]})

    def run_validation(kind: str):
        nonlocal last_valid, validated_at, warned_collapse, warned_gap
        validated_at = step
        if main:
            try:
                last_valid = validate(model, valid_split, cfg, device)
            except NonFiniteError as err:
                log.message(f"step {step} {kind}: validation skipped: {err}")
                parallel.barrier()
                return
            if gap_since_validation:  # the training steps' mean energy gap since the last validation
                last_valid["train_energy_gap"] = sum(gap_since_validation) / len(gap_since_validation)
                gap_since_validation.clear()
            log.metrics({"step": step, "epoch": step / per_epoch, "kind": kind, **last_valid})
            samples = model.generate(cfg.num_log_samples, max_length=min(cfg.max_length, 40),
                                     generator=torch.Generator(device=device).manual_seed(VALIDATION_SEED))
            line = (f"step {step} {kind}: valid NLL/token posterior {last_valid['valid_nll_posterior']:.3f} "
                    f"prior {last_valid['valid_nll_prior']:.3f}")
            if model.has_latent:
                line += (f" gap {last_valid['valid_gap']:.3f}; MI {last_valid['valid_mutual_information']:.2f} nats, "
                         f"active units {last_valid['valid_active_units']}/{model.prior.latent_dim}")
            if "valid_kl" in last_valid:
                line += (f"; KL {last_valid['valid_kl']:.2f} nats ({last_valid['valid_kl_dims_above_floor']} "
                         f"dimensions above the {cfg.free_bits:g} floor), ELBO {last_valid['valid_elbo']:.2f}")
            if "valid_prior_chain_bias_f" in last_valid:
                line += (f"; prior chain mean f {last_valid['valid_prior_chain_mean_f']:.2f} vs exact "
                         f"{last_valid['valid_exact_mean_f']:.2f} "
                         f"(bias {last_valid['valid_prior_chain_bias_f']:+.2f}), log Z {last_valid['valid_log_z']:.2f}")
            log.message(line)
            for row in samples.tolist():
                log.message(f"  sample: {vocab.decode(row)}")
            gaps.append(last_valid["valid_gap"])
            warning = None if warned_collapse or not model.has_latent else collapse_warning(gaps, cfg)
            if warning:
                warned_collapse = True
                log.message(warning)
            if "train_energy_gap" in last_valid:
                energy_gaps.append(last_valid["train_energy_gap"])
                warning = None if warned_gap else energy_gap_warning(energy_gaps, cfg)
                if warning:
                    warned_gap = True
                    log.message(warning)
        parallel.barrier()

    bar = tqdm(total=total if total < 10**12 else None, initial=step, disable=not (progress and main),
               unit="step", dynamic_ncols=True)
    with _StopRequest() as stop:
        while step < total:
            out_of_time = max_minutes is not None and time.monotonic() - started > 60 * max_minutes
            if parallel.any(stop.requested or out_of_time, device):
                stopped_by = "max_minutes" if out_of_time and not stop.requested else "interrupt"
                break
            if step // per_epoch != epoch:
                epoch = step // per_epoch
                batches = epoch_batches(lengths, cfg.batch_size, cfg.seed, epoch)
            index = batches[step % per_epoch]
            shard = parallel.shard(len(index))
            tokens = pad([train_split.sentences[i] for i in index[shard.start:shard.stop]], model.pad_id).to(device)
            tic = time.perf_counter()
            try:
                metrics = learner.step(tokens, shard)
                skipped_in_a_row = 0
            except NonFiniteError as err:
                skipped_in_a_row += 1
                log.message(f"step {step + 1}: {err}; step skipped ({skipped_in_a_row} in a row)")
                log.metrics({"step": step + 1, "kind": "skipped", "reason": str(err)})
                if cfg.nonfinite_policy == "stop" or skipped_in_a_row >= cfg.max_skipped_steps:
                    checkpoint_now()
                    raise UserError(f"training stopped at step {step + 1}: {err} (non-finite numbers, "
                                    f"{skipped_in_a_row} step(s) in a row); try smaller step sizes or "
                                    "learning rates") from None
                step += 1
                continue
            seconds = time.perf_counter() - tic
            if metrics.pop("decoder_reset", False):
                log.message(f"step {step + 1}: autoencoder pretraining done ({cfg.ae_pretrain_steps} steps): "
                            "decoder reset, the ELBO with free bits from here")
            num_tokens = int((tokens[:, 1:] != model.pad_id).sum())
            nll, num_tokens, gap = parallel.sum([metrics.pop("nll_sum"), num_tokens,
                                                 metrics.pop("energy_gap_sum", 0.0)], device)
            step += 1
            bar.update(1)
            record = {"step": step, "epoch": step / per_epoch, "kind": "train", "nll_token": nll / num_tokens,
                      "nll_sentence": nll / len(index), "tokens_per_s": num_tokens / seconds, **metrics}
            if learner.energy is not None:
                record["energy_gap"] = gap / len(index)
                gap_since_validation.append(record["energy_gap"])
            postfix = {"nll": f"{record['nll_token']:.3f}", "f_gap": f"{record.get('energy_gap', 0.0):.3f}",
                       "tok_s": f"{record['tokens_per_s']:.0f}"}
            if "kl" in record:  # the VAE: its ELBO per sentence and the KL term's weight
                record["elbo"] = -record["nll_sentence"] - record["kl"]
                postfix.update(kl=f"{record['kl']:.2f}", w=f"{record['kl_weight']:.2f}")
                del postfix["f_gap"]
            if model.has_latent and "valid_gap" in last_valid:  # the last validation's latent-usage figures
                postfix.update(z_gap=f"{last_valid['valid_gap']:.3f}",
                               mi=f"{last_valid['valid_mutual_information']:.1f}", au=last_valid["valid_active_units"])
            if "valid_prior_chain_bias_f" in last_valid:
                postfix["bias"] = f"{last_valid['valid_prior_chain_bias_f']:+.2f}"
            bar.set_postfix(postfix, refresh=False)
            if step % cfg.log_every == 0 or step == 1:
                log.metrics(record)
            if step % per_epoch == 0:
                run_validation("epoch")
            elif cfg.valid_every and step % cfg.valid_every == 0:
                run_validation("valid")
            if step % cfg.checkpoint_every == 0:
                checkpoint_now()
    bar.close()
    if stopped_by != "interrupt" and validated_at != step:
        run_validation("final")
    checkpoint_now()
    log.message(f"stopped at step {step} ({stopped_by}); checkpoint saved in {folder}")
    return TrainResult(step, stopped_by, last_valid)
