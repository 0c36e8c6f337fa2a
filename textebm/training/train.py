"""The learning loop: `Learner.step` (textebm/training/learner.py) over the epochs, with what a run of
hours needs around it: validation on a schedule (and the warnings it can give: the decoder ignores z, the
energy gap runs away), checkpoints that a kill or Ctrl-C leaves whole and `--resume` continues from,
the stops (`max_steps`, wall-clock and CPU-time budgets, a signal), the marks kept at CPU-time budgets
(`--keep-at`), the records of metrics.jsonl and TensorBoard, and data-parallel processes under torchrun
agreeing on all of it. The model, its records, validation and checkpoints are the same for the VAE.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from textebm.config import Config
from textebm.data.batches import EncodedSplit, epoch_batches, pad
from textebm.data.corpora import RECORD
from textebm.devices import resolve_chain_precision
from textebm.errors import NonFiniteError, UserError
from textebm.inference.diagnostics import latent_usage, prior_chain_bias
from textebm.inference.likelihood import annealed_log_partition
from textebm.inference.vae_diagnostics import kl_figures, posterior_kl
from textebm.io import atomic_write_bytes, atomic_write_text, remove_stale_temp_files
from textebm.model.checkpoints import has_checkpoint, load_checkpoint, save_checkpoint
from textebm.model.latent_ebm import LatentEBMTextModel
from textebm.model.runs import create_run
from textebm.training.learner import make_learner
from textebm.training.parallel import Parallel, check_rows_for_each
from textebm.training.training_log import Clock, TrainingLog, validation_at

VALIDATION_SEED = 1234  # validation draws its own noise, so it never shifts the training RNG


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
    units come from `textebm.inference.diagnostics` (they read 0 for a decoder that ignores z)."""
    model.eval()
    generator = torch.Generator(device=device).manual_seed(VALIDATION_SEED)
    sentences = split.sentences[: cfg.valid_batches * cfg.batch_size] if cfg.valid_batches else split.sentences
    figures = latent_usage(model, sentences, model.pad_id, batch_size=cfg.batch_size, generator=generator,
                           au_sentences=VALID_AU_SENTENCES)
    record = {"valid_nll_posterior": figures["nll_posterior"], "valid_nll_prior": figures["nll_prior"],
              "valid_gap": figures["gap"], "valid_rough_mi": figures["mutual_information"],
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
    stopped_by: str  # "max_steps" | "max_minutes" | "max_cpu_minutes" | "max_epochs" | "interrupt"
    last_validation: dict = field(default_factory=dict)


class _StopNow(Exception):
    """A stop request once the last step's weights are saved: what is left (the final validation, marks
    that fell due) is left to `--resume`."""


class _StopRequest:
    """Ctrl-C / SIGTERM: finish the current step, save, exit. A second Ctrl-C stops at once (a second
    SIGTERM does not: a cluster's preemption signals every process of the job, torchrun among them, which
    passes it on, so each process may get two); any stop request stops at once inside `at_once` (the final
    validation's computation, after the weights are saved: it takes minutes, over 20 on Yahoo, and a
    SIGTERM used to kill it silently, exit 143)."""

    def __init__(self):
        self.requested = self.at_once_now = False

    @contextlib.contextmanager
    def at_once(self):
        """Within the block a stop request, or one made before, raises _StopNow at once. Only around one
        process's own work: under torchrun an exception inside a collective call would leave the other
        processes waiting in theirs."""
        if self.requested:
            raise _StopNow
        self.at_once_now = True
        try:
            yield
        finally:
            self.at_once_now = False

    def __enter__(self):
        self.previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            for sig in self.previous:
                signal.signal(sig, self._handle)
        except ValueError:  # not the main thread: no signal handling
            self.previous = {}
        return self

    def _handle(self, signum, frame):
        if self.at_once_now:
            self.requested = True
            raise _StopNow
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)


@dataclass
class Budget:
    """When training stops, and where it keeps copies of itself on the way.

    `max_minutes` is wall-clock time of this process (a user's option); `max_cpu_minutes` is the run's
    training CPU time, counted over every resume (`Clock.cpu_seconds`: steps only, no validation), the
    budget that gives the same number of steps under any machine load. `keep_at` are CPU minutes at
    which the run is copied to RUN/marks/cpu-<M>min/ (a complete run folder, for curves of quality
    against training time from one run)."""
    max_steps: int | None = None
    max_minutes: float | None = None
    max_cpu_minutes: float | None = None
    keep_at: tuple[float, ...] = ()

    def exhausted(self, clock: Clock, started: float) -> str | None:
        if self.max_cpu_minutes is not None and clock.cpu_seconds >= 60 * self.max_cpu_minutes:
            return "max_cpu_minutes"
        if self.max_minutes is not None and time.monotonic() - started > 60 * self.max_minutes:
            return "max_minutes"
        return None


# What config.json may say otherwise on --resume than when the checkpoint was saved: how the run reports and
# checks itself. Anything else would make the continued run another run (other weights' shapes, data order,
# truncation, vocabulary), or was silently ignored (the vocabulary comes from vocab.json).
RESUMABLE_KEYS = {"log_every", "valid_every", "checkpoint_every", "valid_batches", "num_log_samples", "tensorboard",
                  "max_epochs", "nonfinite_policy", "max_skipped_steps"}


def check_config_unchanged(saved: dict | None, cfg: Config, folder: Path) -> None:
    """Refuse a config.json edited since the checkpoint was saved, naming the keys (checkpoints before
    2026-12-08 hold no config: nothing to compare). Only the keys both know are compared: a key a later
    textebm adds, or drops, is no edit."""
    if saved is None:
        return
    now = cfg.to_dict()
    changed = sorted(key for key in set(saved) & set(now) if key not in RESUMABLE_KEYS and saved[key] != now[key])
    if changed:
        listed = ", ".join(f"{key} {saved.get(key)!r} -> {now.get(key)!r}" for key in changed)
        raise UserError(f"{folder / 'config.json'} changed since the checkpoint was saved ({listed}): a resume "
                        "continues the same run; put the saved values back, or train a new run")


class EpochOrder:
    """The batches of step s: epoch s // per_epoch's order (a pure function of seed and epoch), cached.
    An epoch's partial batch with fewer than `least` rows (the data-parallel processes) is left out: it
    would leave a process no rows, and DDP needs every process in every step."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, least: int = 1):
        self.lengths, self.batch_size, self.seed, self.least = lengths, batch_size, seed, least
        check_rows_for_each(batch_size, len(lengths), least)  # (a run resumed with more processes)
        full, partial = divmod(len(lengths), batch_size)
        self.per_epoch = full + (partial >= least)
        self.epoch, self.batches = -1, []

    def batch(self, step: int) -> list[int]:
        if step // self.per_epoch != self.epoch:
            self.epoch = step // self.per_epoch
            self.batches = [batch for batch in epoch_batches(self.lengths, self.batch_size, self.seed, self.epoch)
                            if len(batch) >= self.least]
        return self.batches[step % self.per_epoch]


class _Skips:
    """A step whose numbers went non-finite is skipped and logged; `nonfinite_policy=stop`, or
    `max_skipped_steps` in a row, saves a checkpoint and stops the run."""

    def __init__(self, cfg: Config, log: TrainingLog, checkpoint):
        self.cfg, self.log, self.checkpoint, self.in_a_row = cfg, log, checkpoint, 0

    def count(self, failure: str | None, step: int) -> bool:
        """True when step `step` failed (and was skipped)."""
        if failure is None:
            self.in_a_row = 0
            return False
        self.in_a_row += 1
        self.log.message(f"step {step}: {failure}; step skipped ({self.in_a_row} in a row)")
        self.log.metrics({"step": step, "kind": "skipped", "reason": failure})
        if self.cfg.nonfinite_policy == "stop" or self.in_a_row >= self.cfg.max_skipped_steps:
            self.checkpoint()
            raise UserError(f"training stopped at step {step}: {failure} (non-finite numbers, {self.in_a_row} "
                            "step(s) in a row); try smaller step sizes or learning rates")
        return True


def mark_folder(folder: Path, cpu_minutes: float) -> Path:
    return Path(folder) / "marks" / f"cpu-{cpu_minutes:g}min"


class _Validation:
    """Validation as training runs it: the record, the console lines, samples, and the two warnings
    (the decoder ignores z; the energy gap runs away), each given once."""

    def __init__(self, model, valid_split: EncodedSplit, cfg: Config, device, vocab, log: TrainingLog,
                 parallel: Parallel):
        self.model, self.split, self.cfg, self.device, self.vocab = model, valid_split, cfg, device, vocab
        self.log, self.parallel = log, parallel
        self.last, self.at = {}, -1
        self.gaps, self.energy_gaps, self.gap_since = [], [], []
        self.warned_collapse = self.warned_gap = False

    def state(self) -> dict:
        """What later validations read of the earlier ones: saved with each checkpoint, so that a resumed run
        reports its first validation's training energy gap, and warns, as an uninterrupted one does."""
        return {"gaps": list(self.gaps), "energy_gaps": list(self.energy_gaps), "gap_since": list(self.gap_since),
                "warned_collapse": self.warned_collapse, "warned_gap": self.warned_gap}

    def load_state(self, state: dict) -> None:
        self.gaps, self.energy_gaps, self.gap_since = list(state["gaps"]), list(state["energy_gaps"]), list(
            state["gap_since"])
        self.warned_collapse, self.warned_gap = bool(state["warned_collapse"]), bool(state["warned_gap"])

    def describe(self) -> str:
        """What a validation computes (it takes minutes on a CPU: the console says so before it starts)."""
        cfg, sentences = self.cfg, len(self.split.sentences)
        if cfg.valid_batches:
            sentences = min(sentences, cfg.valid_batches * cfg.batch_size)
        if not self.model.has_latent:
            return f"NLL on {sentences} sentences"
        what = (f"NLL with posterior and prior codes on {sentences} sentences, rough MI, active units "
                f"({min(sentences, VALID_AU_SENTENCES)} sentences)")
        if self.model.prior.is_ebm:
            what += f", log Z by AIS ({VALID_AIS_CHAINS} chains x {VALID_AIS_STEPS} steps) and the prior chain's bias"
        return what

    def run(self, kind: str, step: int, per_epoch: int, stop: _StopRequest | None = None) -> bool:
        """Validate (rank 0; the others wait); with `stop`, a stop request ends the computation at once
        (`_StopRequest.at_once`). Every process leaves through the same barrier either way; returns
        whether it was stopped part-way."""
        self.at, stopped = step, False
        if self.parallel.is_main:
            try:
                with stop.at_once() if stop is not None else contextlib.nullcontext():
                    self._report(kind, step, per_epoch)
            except _StopNow:
                stopped = True
        self.parallel.barrier()
        return stopped

    def _report(self, kind: str, step: int, per_epoch: int) -> None:
        model, cfg, log = self.model, self.cfg, self.log
        if kind == "final":
            log.message(f"step {step} final: validating: {self.describe()} ...")
        try:
            record = validate(model, self.split, cfg, self.device)
        except NonFiniteError as err:
            log.message(f"step {step} {kind}: validation skipped: {err}")
            return
        if self.gap_since:  # the training steps' mean energy gap since the last validation
            record["train_energy_gap"] = sum(self.gap_since) / len(self.gap_since)
            self.gap_since.clear()
        self.last = record
        log.metrics({"step": step, "epoch": step / per_epoch, "kind": kind, **record})
        log.message(validation_line(record, step, kind, model, cfg))
        samples = model.generate(cfg.num_log_samples, max_length=min(cfg.max_length, 40),
                                 generator=torch.Generator(device=self.device).manual_seed(VALIDATION_SEED))
        for row in samples.tolist():
            log.message(f"  sample: {self.vocab.decode(row)}")
        self.gaps.append(record["valid_gap"])
        warning = None if self.warned_collapse or not model.has_latent else collapse_warning(self.gaps, cfg)
        if warning:
            self.warned_collapse = True
            log.message(warning)
        if "train_energy_gap" in record:
            self.energy_gaps.append(record["train_energy_gap"])
            warning = None if self.warned_gap else energy_gap_warning(self.energy_gaps, cfg)
            if warning:
                self.warned_gap = True
                log.message(warning)


def validation_line(record: dict, step: int, kind: str, model, cfg: Config) -> str:
    line = (f"step {step} {kind}: valid NLL/token posterior {record['valid_nll_posterior']:.3f} "
            f"prior {record['valid_nll_prior']:.3f}")
    if model.has_latent:
        line += (f" gap {record['valid_gap']:.3f}; rough MI {record['valid_rough_mi']:.2f} nats "
                 "(one code, log p(x) from 4 prior draws; evaluate's is sound), "
                 f"active units {record['valid_active_units']}/{model.prior.latent_dim}")
    if "valid_kl" in record:
        line += (f"; KL {record['valid_kl']:.2f} nats ({record['valid_kl_dims_above_floor']} "
                 f"dimensions above the {cfg.free_bits:g} floor), ELBO {record['valid_elbo']:.2f}")
    if "valid_prior_chain_bias_f" in record:
        line += (f"; prior chain mean f {record['valid_prior_chain_mean_f']:.2f} vs exact "
                 f"{record['valid_exact_mean_f']:.2f} "
                 f"(bias {record['valid_prior_chain_bias_f']:+.2f}), log Z {record['valid_log_z']:.2f}")
    return line


def train_record(step: int, per_epoch: int, metrics: dict, nll: float, num_tokens: int, rows: int,
                 seconds: float, energy_gap: float | None) -> dict:
    """One training step's record: NLL per token and sentence, speed, gradient norms, the energy gap."""
    record = {"step": step, "epoch": step / per_epoch, "kind": "train", "nll_token": nll / num_tokens,
              "nll_sentence": nll / rows, "tokens_per_s": num_tokens / seconds, **metrics}
    if energy_gap is not None:
        record["energy_gap"] = energy_gap / rows
    if "kl" in record:  # the VAE: its ELBO per sentence
        record["elbo"] = -record["nll_sentence"] - record["kl"]
    return record


def progress_postfix(record: dict, last_valid: dict, has_latent: bool) -> dict:
    """The progress bar's figures: this step's NLL, energy gap (or the VAE's KL) and speed, and the last
    validation's latent-usage figures."""
    postfix = {"nll": f"{record['nll_token']:.3f}", "f_gap": f"{record.get('energy_gap', 0.0):.3f}",
               "tok_s": f"{record['tokens_per_s']:.0f}"}
    if "kl" in record:
        postfix.update(kl=f"{record['kl']:.2f}", w=f"{record['kl_weight']:.2f}")
        del postfix["f_gap"]
    if has_latent and "valid_gap" in last_valid:
        postfix.update(z_gap=f"{last_valid['valid_gap']:.3f}", rough_mi=f"{last_valid['valid_rough_mi']:.1f}",
                       au=last_valid["valid_active_units"])
    if "valid_prior_chain_bias_f" in last_valid:
        postfix["bias"] = f"{last_valid['valid_prior_chain_bias_f']:+.2f}"
    return postfix


def train(model: LatentEBMTextModel, cfg: Config, train_split: EncodedSplit, valid_split: EncodedSplit,
          folder: Path, vocab, device, max_steps: int | None = None, max_minutes: float | None = None,
          resume: bool = False, progress: bool = True, echo=print, parallel: Parallel = Parallel(),
          max_cpu_minutes: float | None = None, keep_at: tuple[float, ...] = ()) -> TrainResult:
    """Train until max_steps / max_minutes / max_cpu_minutes / max_epochs (`Budget`), checkpointing every
    `checkpoint_every` steps and at each `keep_at` mark.

    Under torchrun every process calls this; only the main process writes files."""
    from tqdm.auto import tqdm

    folder, device, main = Path(folder), torch.device(device), parallel.is_main
    budget = Budget(max_steps, max_minutes, max_cpu_minutes, tuple(sorted(keep_at)))
    with _StopRequest() as stop:  # from the start: a stop request during set-up ends the run at the first step
        learner = make_learner(model, cfg, device, parallel)
        step, clock, notes = 0, Clock(), []
        # A run stopped before its first checkpoint (killed, or crashed) has nothing to continue from: it
        # starts over from step 0 with its saved config, its records from the lost steps dropped (resumed_at=0).
        started_over = resume and not has_checkpoint(folder)
        if resume and not started_over:
            checkpoint = load_checkpoint(folder)
            check_config_unchanged(checkpoint.get("extra", {}).get("config"), cfg, folder)
            notes = learner.load_state(checkpoint)
            step = int(checkpoint["step"])
            clock = Clock.from_state(checkpoint.get("extra", {}).get("clock"))
        if resume and main:
            remove_stale_temp_files(folder)
        log = TrainingLog(folder, echo if main else (lambda text: None), clock, enabled=main,
                          resumed_at=step if resume else None, tensorboard=cfg.tensorboard)
        if started_over:
            log.message(f"{folder} has no checkpoint yet (stopped before its first): training it from step 0 "
                        "with its saved config")
        elif resume:
            log.message(f"resumed from step {step} ({clock.cpu_seconds / 60:.1f} CPU minutes of training so far)")
            for note in notes:
                log.message(note)
        if cfg.chain_precision == "auto" and model.has_latent:  # in train.log too: what the chains ran in, on
            # this device (a resume on another CPU may differ)
            log.message(f"chain precision: {resolve_chain_precision('auto', device)} (chain_precision=auto: bf16 "
                        f"where {device.type} has it in hardware)")
        if log.tensorboard_folder and not resume:
            log.message(f"TensorBoard events: {log.tensorboard_folder} (tensorboard --logdir {folder})")

        order = EpochOrder([len(s) for s in train_split.sentences], cfg.batch_size, cfg.seed, parallel.world)
        per_epoch = order.per_epoch
        total = cfg.max_epochs * per_epoch if cfg.max_epochs else None
        if max_steps is not None:
            total = max_steps if total is None else min(total, max_steps)
        if total is None and max_minutes is None and max_cpu_minutes is None:
            raise UserError("training has no end: give --max-steps, --max-minutes, --max-cpu-minutes or a positive "
                            "max_epochs")
        total = total if total is not None else 10**12
        stopped_by = "max_steps" if max_steps is not None and total == max_steps else "max_epochs"
        if resume and step >= total:
            log.message(f"the run is at step {step}, already at its {stopped_by} limit ({total} steps in all): "
                        "nothing to train")
        # a mark is kept once its mark.json (written last) exists: a folder killed before it is redone
        marks = [m for m in budget.keep_at if not (mark_folder(folder, m) / "mark.json").is_file()]
        validation = _Validation(model, valid_split, cfg, device, vocab, log, parallel)
        if resume and not started_over:
            if "validation" in checkpoint.get("extra", {}):  # (checkpoints before 2026-12-07 have none)
                validation.load_state(checkpoint["extra"]["validation"])
            # validated at its last step already: a resume with no step left does not validate again
            done = parallel.broadcast(validation_at(folder, step) if main else None)
            if done is not None:
                validation.at, validation.last = step, done
        started, skips = time.monotonic(), _Skips(cfg, log, lambda: checkpoint_now())

        def checkpoint_now(into: Path = folder):
            state = learner.state()  # a collective call under torchrun: every process takes part
            if main:
                save_checkpoint(into, model, learner.optimizers, step, {
                    "chain_rng": state["chain_rng"], "rng_ranks": state["rng_ranks"], "clock": clock.state(),
                    "validation": validation.state(), "config": cfg.to_dict()})

        def keep_mark(cpu_minutes: float):
            checkpoint_now()
            if main:  # a complete run folder: config, vocabulary, checkpoint, and when it was taken
                mark = mark_folder(folder, cpu_minutes)
                create_run(mark, cfg, vocab)
                if (folder / RECORD).is_file():  # the run's record of its corpus, as it is
                    atomic_write_bytes(mark / RECORD, (folder / RECORD).read_bytes())
                checkpoint_now(mark)
                atomic_write_text(mark / "mark.json", json.dumps({"cpu_minutes": cpu_minutes, "step": step,
                                                                  **clock.stamp()}, indent=2) + "\n")
                log.message(f"step {step}: kept at {cpu_minutes:g} CPU minutes in {mark}")
            parallel.barrier()

        bar = tqdm(total=total if total < 10**12 else None, initial=step, disable=not (progress and main),
                   unit="step", dynamic_ncols=True)
        while step < total:
            out_of_budget = budget.exhausted(clock, started)
            if parallel.any(stop.requested or out_of_budget is not None, device):
                stopped_by = "interrupt" if stop.requested or out_of_budget is None else out_of_budget
                break
            with clock.training():
                index = order.batch(step)
                shard = parallel.shard(len(index))
                batch = pad([train_split.sentences[i] for i in index[shard.start:shard.stop]], model.pad_id)
                num_tokens = int((batch[:, 1:] != model.pad_id).sum())  # counted on the host: no device sync
                tokens = batch.to(device)
                tic = time.perf_counter()
                try:
                    metrics, failure = learner.step(tokens, shard), None
                except NonFiniteError as err:
                    metrics, failure = None, str(err)
                seconds = time.perf_counter() - tic
            skipped = skips.count(failure, step + 1)  # logged; stops the run (saved at `step`) when the policy says
            step += 1
            if skipped:
                continue
            if metrics.pop("decoder_reset", False):
                log.message(f"step {step}: autoencoder pretraining done ({cfg.ae_pretrain_steps} steps): "
                            "decoder reset, the ELBO with free bits from here")
            nll, num_tokens, gap = parallel.sum([metrics.pop("nll_sum"), num_tokens,
                                                 metrics.pop("energy_gap_sum", 0.0)], device)
            record = train_record(step, per_epoch, metrics, nll, num_tokens, len(index), seconds,
                                  gap if learner.energy is not None else None)
            if "energy_gap" in record:
                validation.gap_since.append(record["energy_gap"])
            bar.update(1)
            bar.set_postfix(progress_postfix(record, validation.last, model.has_latent), refresh=False)
            if step % cfg.log_every == 0 or step == 1:
                log.metrics(record)
            if step % per_epoch == 0:
                validation.run("epoch", step, per_epoch)
            elif cfg.valid_every and step % cfg.valid_every == 0:
                validation.run("valid", step, per_epoch)
            if marks and parallel.any(clock.cpu_seconds >= 60 * marks[0], device):
                keep_mark(marks.pop(0))
            elif step % cfg.checkpoint_every == 0:
                checkpoint_now()
    bar.close()
    with _StopRequest() as late:
        try:
            stopped = False
            if stopped_by != "interrupt" and validation.at != step:
                checkpoint_now()  # the final validation can outlast a session (Yahoo: over 20 minutes): the
                stopped = validation.run("final", step, per_epoch, late)  # weights are saved first
            if parallel.any(stopped or late.requested, device):  # every process takes the same way out
                raise _StopNow
            # Marks due but not kept in the loop (added to a run that had spent its time: a grid's keep_at grew),
            # decided by all processes together as in the loop: keeping one takes collective calls.
            for minutes in [m for m in marks if parallel.any(clock.cpu_seconds >= 60 * m, device)]:
                keep_mark(minutes)
            checkpoint_now()
        except _StopNow:
            stopped_by = "interrupt"
            if main:
                log.message(f"stop requested after step {step}: its checkpoint is saved; --resume runs what "
                            "was left (the final validation)")
    if main:
        log.message(f"stopped at step {step} ({stopped_by}) after {clock.cpu_seconds / 60:.1f} CPU minutes of "
                    f"training, {clock.elapsed / 60:.1f} minutes in all; checkpoint saved in {folder}")
    log.close()
    parallel.barrier()  # no process leaves before rank 0 has written: torchrun ends the others when one exits 130
    return TrainResult(step, stopped_by, validation.last)
