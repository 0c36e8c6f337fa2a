"""The VAE baseline (`model=vae`): the toolkit's decoder with an LSTM encoder q(z | x) and the ELBO.

q(z | x) = N(mu(x), diag sigma(x)^2): an LSTM of the decoder's sizes reads `<s> w1 ... wn </s>`, and
a linear map of its last state gives mu and log sigma^2. The prior is N(0, sigma_p^2 I)
(`prior_sigma`), so prior draws and generation are exact. Per sentence,

    ELBO(x) = E_q[log p(x | z)] - KL(q(z | x) || p(z)),   KL = sum_i KL_i in closed form,

learned with one reparameterised draw z = mu + sigma * eps per sentence. Three guards against
posterior collapse, as text VAEs use them:
- free bits (Kingma et al. 2016): the KL term is sum_i max(lambda, KL_i) with KL_i the batch
  mean of dimension i's KL, so a dimension carrying less than lambda nats is not pushed lower;
- KL annealing: the term's weight rises linearly from 0 to 1 over `kl_anneal_steps` steps;
- autoencoder pretraining (Li et al. 2019, "A Surprisingly Effective Fix for Deep Latent Variable
  Modeling of Text"): `ae_pretrain_steps` steps with KL weight 0, then the decoder's weights are
  reset (the encoder keeps what it learned) and the annealed, free-bits ELBO takes over.

The model answers the calls the toolkit makes of any model (`posterior_sample`, `posterior_chains`,
`infer_code`, `variational_posterior`): its posterior codes come from q, not from Langevin chains.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from textebm.config import Config
from textebm.model.decoder import rnn_precision
from textebm.model.langevin import Shard, gaussian_noise
from textebm.model.latent_ebm import LatentEBMTextModel


class GaussianEncoder(nn.Module):
    """q(z | x): an LSTM over the sentence; its state at the last real token -> (mu, log sigma^2)."""

    def __init__(self, vocab_size: int, embedding_dim: int, hidden_dim: int, latent_dim: int, pad_id: int = 0):
        super().__init__()
        self.pad_id = pad_id
        self.embed = nn.Embedding(vocab_size, embedding_dim, padding_idx=pad_id)
        self.rnn = nn.LSTM(embedding_dim, hidden_dim, batch_first=True)
        self.to_gaussian = nn.Linear(hidden_dim, 2 * latent_dim)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mu, log sigma^2), each (batch, latent), for padded `tokens` (batch, time); fp32 under any
        autocast, as the decoder's RNN (`rnn_precision`)."""
        with rnn_precision(tokens.device):
            hidden, _ = self.rnn(self.embed(tokens))
            last = (tokens != self.pad_id).sum(dim=1).clamp(min=1) - 1
            state = hidden[torch.arange(tokens.shape[0], device=tokens.device), last]
            mu, log_var = self.to_gaussian(state).chunk(2, dim=-1)
            return mu, log_var


def gaussian_kl(mu: torch.Tensor, std: torch.Tensor, prior_sigma: float) -> torch.Tensor:
    """KL(N(mu, std^2) || N(0, prior_sigma^2)) per dimension, in closed form: shape mu.shape."""
    ratio = (std / prior_sigma).pow(2)
    return 0.5 * (ratio + (mu / prior_sigma).pow(2) - 1.0 - ratio.log())


def free_bits(kl: torch.Tensor, floor: float, batch_mean: torch.Tensor | None = None) -> torch.Tensor:
    """sum_i max(floor, KL_i) for per-dimension KLs averaged over a batch, `kl` (latent,): a dimension
    below the floor contributes the constant floor, so no gradient pushes its KL lower.

    Under data parallelism `kl` is this process's share of the global batch mean (it sums to that
    mean over processes) and `batch_mean` the global mean itself, which decides the floored dimensions."""
    mean = kl.detach() if batch_mean is None else batch_mean
    return torch.where(mean > floor, kl, torch.full_like(kl, floor)).sum()


def kl_weight(step: int, cfg: Config) -> float:
    """The KL term's weight at the update after `step` completed ones: 0 during autoencoder pretraining,
    then rising linearly from 0 to 1 over `kl_anneal_steps` (1 at once when that is 0)."""
    after = step - cfg.ae_pretrain_steps
    if after < 0:
        return 0.0
    return 1.0 if cfg.kl_anneal_steps == 0 else min(1.0, after / cfg.kl_anneal_steps)


RESET_SEED = 7919  # added to the run's seed for the decoder reset: fresh weights, not a copy of the initial ones


def reset_weights(module: nn.Module, seed: int) -> None:
    """Fresh initial weights for every layer of `module`, as its constructor draws them, from a CPU
    generator seeded with `seed` outside the training RNG: the same weights on every process and on
    resume, and the training RNG stream is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.random.default_generator.manual_seed(seed)
        for layer in module.modules():
            if hasattr(layer, "reset_parameters"):
                fresh = copy.deepcopy(layer).cpu()
                fresh.reset_parameters()
                layer.load_state_dict(fresh.state_dict())


class VAETextModel(LatentEBMTextModel):
    """The decoder and the Gaussian prior of `LatentEBMTextModel` (prior=gaussian), with q(z | x)
    for inference: every posterior code the toolkit asks for is a draw from q (or its mean)."""

    def __init__(self, config: Config, vocab_size: int, pad_id: int, bos_id: int, eos_id: int):
        super().__init__(config, vocab_size, pad_id, bos_id, eos_id)
        self.encoder = GaussianEncoder(vocab_size, config.embedding_dim, config.hidden_dim, config.latent_dim, pad_id)

    def variational_posterior(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | x) as (mean, std), each (batch, latent)."""
        mu, log_var = self.encoder(tokens)
        return mu, (0.5 * log_var).exp()

    def posterior_sample(self, tokens: torch.Tensor, steps: int | None = None, step_size: float | None = None,
                         generator: torch.Generator | None = None, trajectory: list | None = None,
                         shard: Shard | None = None, amortized: bool = False,
                         projection: str | None = None) -> torch.Tensor:
        """z ~ q(z | x), one per sentence (the chain settings, `projection` among them, have no meaning here
        and are ignored)."""
        with torch.no_grad():
            mean, std = self.variational_posterior(tokens)
            return mean + std * gaussian_noise(tokens.shape[0], mean.shape[1], mean.device, generator, shard)

    def posterior_chains(self, tokens: torch.Tensor, num_chains: int, steps: int | None = None,
                         generator: torch.Generator | None = None, projection: str | None = None) -> torch.Tensor:
        """`num_chains` independent draws from q per sentence: (batch, num_chains, latent) (no chain: `steps`
        and `projection` do not apply)."""
        with torch.no_grad():
            mean, std = self.variational_posterior(tokens)
            eps = torch.randn(mean.shape[0], num_chains, mean.shape[1], device=mean.device, generator=generator)
            return mean.unsqueeze(1) + std.unsqueeze(1) * eps

    def infer_code(self, tokens: torch.Tensor, chains: int = 1, generator: torch.Generator | None = None,
                   steps: int | None = None) -> torch.Tensor:
        """Each sentence's code: the mean of q(z | x), (batch, latent); deterministic."""
        with torch.no_grad():
            return self.variational_posterior(tokens)[0]

    def describe_inference(self, chains: int = 1, posterior_steps: int | None = None) -> str:
        return "the encoder's mean of q(z|x)"
