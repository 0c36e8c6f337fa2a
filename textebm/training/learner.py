"""What one minibatch does to the model: maximum likelihood with short-run Langevin chains (Pang et
al. 2020, Alg. 1). `textebm.training.train` runs it over the epochs.

Per minibatch x (`Learner.step`):
  1. z+ ~ p(z | x)            posterior chain (K1 steps from noise; or refine steps from an encoder's guess)
  2. generator step            on  -mean log p_beta(x | z+)
  3. z- ~ p_alpha(z)           prior chain (K0 steps)
  4. energy step               on  -(mean f(z+) - mean f(z-)), optionally with a penalty on f^2
                               and with z+ warmed by a few plain-Langevin steps (`energy_penalty`,
                               `energy_warm_steps`: an energy that stays in balance, docs/inference.md)
The VAE baseline (`model=vae`, `VAELearner`) replaces 1-4 by one step of the decoder and its encoder
together on the ELBO with free bits and an annealed KL weight (textebm/model/vae.py).
Chains run with dropout off; the updates with dropout on. A non-finite z, energy, loss or gradient
skips the step (or stops the run, `nonfinite_policy=stop`): nothing trains on NaN.
Under torchrun each process takes a shard of every batch (textebm/training/parallel.py); chain noise is
drawn per global row, so the result does not depend on the number of processes.
"""

from __future__ import annotations

import torch

from textebm.config import Config
from textebm.errors import NonFiniteError, UserError
from textebm.model.checkpoints import restore_rng, rng_state
from textebm.model.langevin import Shard, deferred_checks, gaussian_noise
from textebm.model.latent_ebm import LatentEBMTextModel
from textebm.model.vae import RESET_SEED, free_bits, gaussian_kl, kl_weight, reset_weights
from textebm.training.compiling import compile_model
from textebm.training.parallel import Parallel, wrap


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
        # No cast cache: before torch 2.10 a weight's bf16 copy cached under no_grad (a chain's energy) was
        # reused by the update's forward without its graph, losing that weight's gradient (pytorch#112583).
        self.autocast = torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.precision == "bf16",
                                       cache_enabled=False)
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

    def load_state(self, checkpoint: dict) -> list[str]:
        """The checkpoint's state (loaded on the CPU: load_state_dict places it); returns the lines that
        say what could not be restored as saved (textebm.model.checkpoints.restore_rng)."""
        try:
            self.model.load_state_dict(checkpoint["model"])
        except RuntimeError as err:  # a config.json edited by hand, or another run's checkpoint
            detail = " ".join(str(err).split())[:300]
            raise UserError(f"the checkpoint's weights do not fit the run's config: {detail}") from None
        for name, opt in self.optimizers.items():
            opt.load_state_dict(checkpoint["optimizers"][name])
        return restore_rng(checkpoint, self.chain_rng, self.parallel.rank, self.parallel.world,
                           self.cfg.seed + int(checkpoint["step"]))


class VAELearner(Learner):
    """The VAE baseline's update (textebm/model/vae.py): one reparameterised draw z ~ q(z | x) per sentence,
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

    def load_state(self, checkpoint: dict) -> list[str]:
        self.updates = int(checkpoint["step"])
        return super().load_state(checkpoint)


def make_learner(model: LatentEBMTextModel, cfg: Config, device, parallel: Parallel = Parallel()) -> Learner:
    """The learner of the config's model: Langevin-chain maximum likelihood, or the VAE's ELBO."""
    return (VAELearner if cfg.model == "vae" else Learner)(model, cfg, device, parallel)
