"""The latent-space EBM prior model: a decoder p_beta(x | z) and a tilted-Gaussian prior p_alpha(z).

This is the object the rest of the toolkit talks to: training asks it for posterior and prior
samples, sampling and the server ask it to `generate`, evaluation asks for `log_joint`.

With `prior="none"` the latent has zero dimensions: the same decoder is then a plain LSTM/GRU
language model (the baseline a user would otherwise train), and every chain is empty.
"""

from __future__ import annotations

import torch
from torch import nn

from textebm.config import Config
from textebm.devices import resolve_chain_precision
from textebm.generation.decoding import decode
from textebm.model.decoder import Decoder
from textebm.model.encoder import InitEncoder
from textebm.model.energy import EnergyPrior
from textebm.model.langevin import Shard, posterior_chain, prior_chain
from textebm.modes import eval_mode
from textebm.randomness import RowStreams


class LatentEBMTextModel(nn.Module):
    def __init__(self, config: Config, vocab_size: int, pad_id: int, bos_id: int, eos_id: int):
        super().__init__()
        self.config = config
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        latent_dim = 0 if config.prior == "none" else config.latent_dim
        self.decoder = Decoder(vocab_size, config.embedding_dim, config.hidden_dim, latent_dim,
                               config.num_layers, config.cell, config.dropout, pad_id)
        self.prior = EnergyPrior(latent_dim, config.energy_hidden, config.energy_layers,
                                 config.prior_sigma, config.prior)
        self.encoder = (InitEncoder(vocab_size, config.encoder_dim, latent_dim, pad_id)
                        if config.posterior_init == "encoder" else None)
        self.decoding_precision, self.decoding_products = "fp32", None  # fp32: the decoder's own weights

    def set_decoding_precision(self, precision: str) -> None:
        """Decode (`generate`) with the step's matrix products in fp32, bf16 or int8, converted once now
        from the current weights (`textebm.generation.precision`); chains and likelihoods stay fp32."""
        from textebm.generation.precision import decoding_products

        self.decoding_products = decoding_products(self.decoder, precision)
        self.decoding_precision = precision

    @property
    def device(self) -> torch.device:
        return self.decoder.out.weight.device

    @property
    def has_latent(self) -> bool:
        return self.prior.latent_dim > 0

    def posterior_sample(self, tokens: torch.Tensor, steps: int | None = None, step_size: float | None = None,
                         generator: torch.Generator | None = None, trajectory: list | None = None,
                         shard: Shard | None = None, amortized: bool = False,
                         projection: str | None = None) -> torch.Tensor:
        """z+ ~ p(z | x) for a batch of sentences, by the short-run posterior chain from noise (K1 steps);
        with `amortized=True` and an encoder, by `refine_steps` steps from the encoder's guess. The
        step sizes follow the config's schedule over however many steps run, unless `step_size` is given;
        the noise scale is the config's `posterior_noise`, the projection's precision `projection` or else
        the config's `chain_precision` (`auto`: bf16 where the device does it in hardware)."""
        cfg = self.config
        if not self.has_latent:
            steps = 0
        z0 = None
        if amortized and self.encoder is not None:
            with torch.no_grad():
                z0 = self.encoder(tokens)
            steps = cfg.refine_steps if steps is None else steps
        steps = cfg.posterior_steps if steps is None else steps
        sizes = cfg.posterior_step_sizes(steps) if step_size is None else step_size
        if projection is None:
            projection = resolve_chain_precision(cfg.chain_precision, tokens.device)
        return posterior_chain(self.prior, self.decoder, tokens, steps, sizes, generator, trajectory, shard, z0,
                               cfg.posterior_noise, projection)

    def warm_posterior(self, tokens: torch.Tensor, z: torch.Tensor, steps: int, step_size: float,
                       generator: torch.Generator | None = None, shard: Shard | None = None) -> torch.Tensor:
        """`steps` plain Langevin steps (noise scale 1) on log p(x, z) from the codes `z`: the tempered
        chain's near-mode codes moved towards samples of the posterior itself (temperature 1)."""
        return posterior_chain(self.prior, self.decoder, tokens, steps, step_size, generator, None, shard, z, 1.0)

    def posterior_chains(self, tokens: torch.Tensor, num_chains: int, steps: int | None = None,
                         generator: torch.Generator | None = None, projection: str | None = None) -> torch.Tensor:
        """`num_chains` independent posterior samples per sentence, run as one batch: (batch, num_chains, latent);
        `projection` as `posterior_sample`'s."""
        z = self.posterior_sample(tokens.repeat_interleave(num_chains, dim=0), steps=steps, generator=generator,
                                  projection=projection)
        return z.view(tokens.shape[0], num_chains, -1)

    def infer_code(self, tokens: torch.Tensor, chains: int = 1, generator: torch.Generator | None = None,
                   steps: int | None = None) -> torch.Tensor:
        """Each sentence's code by the model's own inference, (batch, latent): the mean of `chains`
        posterior samples, refined from the encoder's guess when the run has one (`amortized`). The
        one place reconstruction and interpolation ask for a code; a model with another inference
        (a VAE's encoder mean) answers here."""
        z = self.posterior_sample(tokens.repeat_interleave(chains, dim=0), steps=steps, generator=generator,
                                  amortized=True)
        return z.view(tokens.shape[0], chains, -1).mean(dim=1)

    def describe_inference(self, chains: int = 1, posterior_steps: int | None = None) -> str:
        """How `infer_code` finds a code, in words (for reports)."""
        cfg = self.config
        if self.encoder is not None:
            steps = cfg.refine_steps if posterior_steps is None else posterior_steps
            how = f"the encoder's guess refined by {steps} posterior Langevin steps"
        else:
            steps = cfg.posterior_steps if posterior_steps is None else posterior_steps
            how = f"the posterior chain ({steps} Langevin steps from noise)"
        return how + ("" if chains == 1 else f", mean of {chains} samples")

    def variational_posterior(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """q(z | x) as (mean, std) for a model that has one (the VAE); None here: this model's
        posterior samples come from Langevin chains."""
        return None

    def prior_sample(self, n: int, steps: int | None = None, step_size: float | None = None,
                     generator: torch.Generator | None = None, trajectory: list | None = None,
                     shard: Shard | None = None) -> torch.Tensor:
        """z- ~ p_alpha(z), by the short-run prior chain; exact draws (no chain) for the Gaussian prior."""
        cfg = self.config
        if not self.prior.is_ebm:
            steps = 0
        return prior_chain(self.prior, n, cfg.prior_steps if steps is None else steps,
                           cfg.prior_step_size if step_size is None else step_size,
                           self.device, generator, trajectory, shard, cfg.prior_noise)

    def log_joint(self, tokens: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p_beta(x | z) + log p_alpha(z) up to the prior's normalising constant, shape (batch,)."""
        return self.decoder.log_likelihood(z, tokens) + self.prior.log_density(z)

    def generate(self, n: int, max_length: int = 40, greedy: bool = False, temperature: float = 1.0,
                 top_k: int = 0, top_p: float = 1.0, prior_steps: int | None = None,
                 generator: torch.Generator | RowStreams | None = None) -> torch.Tensor:
        """Sentences from the model: prior chain, then decoding. Token ids (n, <= max_length)."""
        with eval_mode(self):
            z = self.prior_sample(n, steps=prior_steps, generator=generator)
            return decode(self.decoder, z, self.bos_id, self.eos_id, max_length, greedy,
                          temperature, top_k, top_p, generator, self.decoding_products)
