"""The learning loop: maximum likelihood with short-run Langevin chains (Pang et al. 2020, Alg. 1).

Per minibatch x:
  1. z+ ~ p(z | x)            posterior chain (K1 steps)
  2. generator step            on  -mean log p_beta(x | z+)
  3. z- ~ p_alpha(z)           prior chain (K0 steps)
  4. energy step               on  -(mean f(z+) - mean f(z-))
Chains run with dropout off; the updates with dropout on. A non-finite z, energy or loss skips
the step (or stops the run, `nonfinite_policy=stop`), and is logged: nothing trains on NaN.
"""

from __future__ import annotations

import json
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from textebm.batches import EncodedSplit, epoch_batches, fixed_batches, pad
from textebm.config import Config
from textebm.errors import NonFiniteError, UserError
from textebm.io import atomic_write_text
from textebm.model import LatentEBMTextModel
from textebm.runs import load_checkpoint, save_checkpoint, set_rng_state

VALIDATION_SEED = 1234  # validation draws its own noise, so it never shifts the training RNG


def make_optimizers(model: LatentEBMTextModel, cfg: Config) -> dict[str, torch.optim.Optimizer]:
    betas = (cfg.adam_beta1, 0.999)
    optimizers = {"generator": torch.optim.Adam(model.decoder.parameters(), lr=cfg.generator_lr, betas=betas)}
    if model.prior.is_ebm:
        optimizers["energy"] = torch.optim.Adam(model.prior.parameters(), lr=cfg.energy_lr, betas=betas)
    return optimizers


def _finite(*tensors: torch.Tensor) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def generator_step(model: LatentEBMTextModel, tokens: torch.Tensor, z_pos: torch.Tensor,
                   optimizer: torch.optim.Optimizer, clip: float) -> dict:
    """One Adam step on the teacher-forced NLL of x given its posterior codes z+."""
    model.train()
    log_lik = model.decoder.log_likelihood(z_pos, tokens)
    loss = -log_lik.mean()
    if not _finite(loss):
        raise NonFiniteError("generator loss is not finite")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(model.decoder.parameters(), clip)
    if not _finite(norm):
        raise NonFiniteError("generator gradient is not finite")
    optimizer.step()
    return {"nll": -log_lik.sum().item(), "gen_grad_norm": norm.item()}


def energy_step(prior, z_pos: torch.Tensor, z_neg: torch.Tensor, optimizer: torch.optim.Optimizer,
                clip: float) -> dict:
    """One Adam step on -(mean f(z+) - mean f(z-)): raise f where the posterior puts codes,
    lower it where the prior chain wanders. This is the maximum-likelihood gradient of the prior."""
    f_pos, f_neg = prior.energy(z_pos), prior.energy(z_neg)
    if not _finite(f_pos, f_neg):
        raise NonFiniteError("energy f(z) is not finite")
    loss = -(f_pos.mean() - f_neg.mean())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    norm = torch.nn.utils.clip_grad_norm_(prior.parameters(), clip)
    if not _finite(norm):
        raise NonFiniteError("energy gradient is not finite")
    optimizer.step()
    return {"energy_gap": -loss.item(), "ebm_grad_norm": norm.item()}


def train_step(model: LatentEBMTextModel, tokens: torch.Tensor, optimizers: dict, cfg: Config) -> dict:
    """One learning iteration on a padded batch (the four steps above). Non-finite numbers raise
    NonFiniteError before they reach an update."""
    model.eval()  # chains see the model without dropout
    z_pos = model.posterior_sample(tokens)
    metrics = generator_step(model, tokens, z_pos, optimizers["generator"], cfg.generator_clip)
    if model.prior.is_ebm:
        model.eval()
        z_neg = model.prior_sample(tokens.shape[0])
        metrics.update(energy_step(model.prior, z_pos, z_neg, optimizers["energy"], cfg.energy_clip))
        metrics.update(z_pos_norm=z_pos.norm(dim=1).mean().item(), z_neg_norm=z_neg.norm(dim=1).mean().item())
    return metrics


def validate(model: LatentEBMTextModel, split: EncodedSplit, cfg: Config, device) -> dict:
    """Per-token NLL of the validation split given posterior z and given prior z.

    The gap between the two is the posterior-collapse signal: if z from the prior explains the
    sentences as well as z inferred from them, the decoder ignores z."""
    model.eval()
    generator = torch.Generator(device=device).manual_seed(VALIDATION_SEED)
    batches = fixed_batches(len(split.sentences), cfg.batch_size)
    if cfg.valid_batches:
        batches = batches[: cfg.valid_batches]
    total_post = total_prior = 0.0
    tokens_seen = 0
    for index in batches:
        tokens = pad([split.sentences[i] for i in index], model.pad_id).to(device)
        z_post = model.posterior_sample(tokens, generator=generator)
        z_prior = model.prior_sample(len(index), generator=generator)
        with torch.no_grad():
            total_post -= model.decoder.log_likelihood(z_post, tokens).sum().item()
            total_prior -= model.decoder.log_likelihood(z_prior, tokens).sum().item()
        tokens_seen += int((tokens[:, 1:] != model.pad_id).sum())
    return {"valid_nll_posterior": total_post / tokens_seen, "valid_nll_prior": total_prior / tokens_seen,
            "valid_ppl_posterior": math.exp(min(total_post / tokens_seen, 50.0)), "valid_tokens": tokens_seen}


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

    def __init__(self, folder: Path, echo):
        self.folder, self.echo = Path(folder), echo

    def metrics(self, record: dict) -> None:
        with open(self.folder / "metrics.jsonl", "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def message(self, text: str) -> None:
        with open(self.folder / "train.log", "a", encoding="utf-8") as handle:
            handle.write(f"{time.strftime('%Y-%m-%d %H:%M:%S')} {text}\n")
        self.echo(text)


def truncate_metrics(folder: Path, step: int) -> None:
    """On resume, forget records written after the checkpoint: they will be written again."""
    path = Path(folder) / "metrics.jsonl"
    if path.is_file():
        kept = [line for line in path.read_text(encoding="utf-8").splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= step]
        atomic_write_text(path, "".join(line + "\n" for line in kept))


def train(model: LatentEBMTextModel, cfg: Config, train_split: EncodedSplit, valid_split: EncodedSplit,
          folder: Path, vocab, device, max_steps: int | None = None, max_minutes: float | None = None,
          resume: bool = False, progress: bool = True, echo=print) -> TrainResult:
    """Train until max_steps / max_minutes / max_epochs, checkpointing every `checkpoint_every` steps."""
    from tqdm.auto import tqdm

    folder = Path(folder)
    log = Logger(folder, echo)
    optimizers = make_optimizers(model, cfg)
    step = 0
    if resume:
        checkpoint = load_checkpoint(folder, device)
        model.load_state_dict(checkpoint["model"])
        for name, opt in optimizers.items():
            opt.load_state_dict(checkpoint["optimizers"][name])
        set_rng_state(checkpoint["rng"])
        step = int(checkpoint["step"])
        truncate_metrics(folder, step)
        log.message(f"resumed from step {step}")
    else:
        torch.manual_seed(cfg.seed)

    lengths = [len(s) for s in train_split.sentences]
    per_epoch = math.ceil(len(lengths) / cfg.batch_size)
    total = cfg.max_epochs * per_epoch if cfg.max_epochs else None
    if max_steps is not None:
        total = max_steps if total is None else min(total, max_steps)
    if total is None:
        raise UserError("training has no end: give --max-steps, --max-minutes or a positive max_epochs")
    started, skipped_in_a_row, last_valid, validated_at = time.monotonic(), 0, {}, -1
    stopped_by = "max_steps" if max_steps is not None and total == max_steps else "max_epochs"
    epoch, batches = -1, []

    def checkpoint_now():
        save_checkpoint(folder, model, optimizers, step)

    def run_validation(kind: str):
        nonlocal last_valid, validated_at
        last_valid, validated_at = validate(model, valid_split, cfg, device), step
        log.metrics({"step": step, "epoch": step / per_epoch, "kind": kind, **last_valid})
        samples = model.generate(cfg.num_log_samples, max_length=min(cfg.max_length, 40),
                                 generator=torch.Generator(device=device).manual_seed(VALIDATION_SEED))
        log.message(f"step {step} {kind}: valid NLL/token posterior {last_valid['valid_nll_posterior']:.3f} "
                    f"prior {last_valid['valid_nll_prior']:.3f}")
        for row in samples.tolist():
            log.message(f"  sample: {vocab.decode(row)}")

    bar = tqdm(total=total, initial=step, disable=not progress, unit="step", dynamic_ncols=True)
    with _StopRequest() as stop:
        while step < total:
            if stop.requested:
                stopped_by = "interrupt"
                break
            if max_minutes is not None and time.monotonic() - started > 60 * max_minutes:
                stopped_by = "max_minutes"
                break
            if step // per_epoch != epoch:
                epoch = step // per_epoch
                batches = epoch_batches(lengths, cfg.batch_size, cfg.seed, epoch)
            index = batches[step % per_epoch]
            tokens = pad([train_split.sentences[i] for i in index], model.pad_id).to(device)
            num_tokens = int((tokens[:, 1:] != model.pad_id).sum())
            tic = time.perf_counter()
            try:
                metrics = train_step(model, tokens, optimizers, cfg)
                skipped_in_a_row = 0
            except NonFiniteError as err:
                skipped_in_a_row += 1
                log.message(f"step {step + 1}: {err}; step skipped ({skipped_in_a_row} in a row)")
                log.metrics({"step": step + 1, "kind": "skipped", "reason": str(err)})
                if cfg.nonfinite_policy == "stop" or skipped_in_a_row >= cfg.max_skipped_steps:
                    checkpoint_now()
                    raise UserError(f"training stopped at step {step + 1}: {err} (non-finite numbers, "
                                    f"{skipped_in_a_row} step(s) in a row); try smaller step sizes or learning rates") from None
                step += 1
                continue
            seconds = time.perf_counter() - tic
            step += 1
            bar.update(1)
            record = {"step": step, "epoch": step / per_epoch, "kind": "train", "nll_token": metrics["nll"] / num_tokens,
                      "nll_sentence": metrics["nll"] / len(index), "tokens_per_s": num_tokens / seconds,
                      **{k: v for k, v in metrics.items() if k != "nll"}}
            bar.set_postfix(nll=f"{record['nll_token']:.3f}", gap=f"{record.get('energy_gap', 0.0):.3f}",
                            tok_s=f"{record['tokens_per_s']:.0f}", refresh=False)
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
