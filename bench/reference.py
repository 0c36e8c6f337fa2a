"""Plain reference implementations the benchmarks measure the library against.

Written independently of textebm's own code paths, in the most straightforward PyTorch: they share
the model's weights (so that both sides do the same arithmetic) but none of its tricks: sampling
calls `nn.LSTM` once per token on `cat(embedding, z)`, and the training iteration is the plain
short-run chain of Pang et al. (2020), Alg. 1, with two Adam steps. They are the "before" of every
ratio in the suite, so they must stay plain: do not optimise them.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# --- sampling -------------------------------------------------------------------------------------

def initial_state(decoder, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(h0, c0) of a one-layer LSTM decoder: tanh of a linear map of z, split into h and c."""
    layers, hidden = decoder.rnn.num_layers, decoder.rnn.hidden_size
    state = torch.tanh(decoder.z_to_state(z)).view(z.shape[0], 2, layers, hidden)
    return state[:, 0].transpose(0, 1).contiguous(), state[:, 1].transpose(0, 1).contiguous()


def sample_per_token(decoder, z: torch.Tensor, bos_id: int, length: int, greedy: bool = False,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """`length` tokens per latent code, one `nn.LSTM` call per token on cat(embedding, z), softmax
    and `torch.multinomial` (or argmax). No early stop: every sentence gets `length` tokens."""
    with torch.no_grad():
        h, c = initial_state(decoder, z)
        token = torch.full((z.shape[0],), bos_id, dtype=torch.long, device=z.device)
        out = []
        for _ in range(length):
            x = torch.cat([decoder.embed(token), z], dim=-1).unsqueeze(1)
            y, (h, c) = decoder.rnn(x, (h, c))
            logits = decoder.out(y[:, 0])
            if greedy:
                token = logits.argmax(dim=-1)
            else:
                token = torch.multinomial(torch.softmax(logits, dim=-1), 1, generator=generator)[:, 0]
            out.append(token)
        return torch.stack(out, dim=1)


def langevin_plain(log_density, z: torch.Tensor, steps: int, step_size: float) -> torch.Tensor:
    """z <- z + s^2/2 grad log pi(z) + s eps, `steps` times, gradient by autograd each step."""
    for _ in range(steps):
        z = z.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(log_density(z).sum(), z)
        z = z + 0.5 * step_size**2 * grad + step_size * torch.randn_like(z)
    return z.detach()


def prior_log_density(prior, z: torch.Tensor) -> torch.Tensor:
    """f(z) - |z|^2 / (2 sigma^2) of the tilted-Gaussian prior, per example."""
    return prior.f(z).squeeze(-1) - z.pow(2).sum(dim=-1) / (2 * prior.sigma**2)


def generate_plain(model, n: int, length: int, prior_steps: int, prior_step_size: float) -> torch.Tensor:
    """The whole sampling pipeline the plain way: prior chain from N(0, sigma^2 I), then per-token sampling."""
    z = model.prior.sigma * torch.randn(n, model.prior.latent_dim)
    with torch.enable_grad():
        z = langevin_plain(lambda v: prior_log_density(model.prior, v), z, prior_steps, prior_step_size)
    return sample_per_token(model.decoder, z, model.bos_id, length)


# --- training -------------------------------------------------------------------------------------

def log_likelihood(decoder, z: torch.Tensor, tokens: torch.Tensor, pad_id: int) -> torch.Tensor:
    """log p(x | z) per sentence, teacher-forced through `nn.LSTM` over the whole sequence."""
    inputs, targets = tokens[:, :-1], tokens[:, 1:]
    emb = decoder.drop(decoder.embed(inputs))
    x = torch.cat([emb, z.unsqueeze(1).expand(-1, inputs.shape[1], -1)], dim=-1)
    hidden, _ = decoder.rnn(x, initial_state(decoder, z))
    logits = decoder.out(decoder.drop(hidden))
    nll = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=pad_id, reduction="none")
    return -nll.sum(dim=1)


class PlainTrainer:
    """One learning iteration of the paper's Alg. 1 in the plain way: a K1-step posterior chain, an
    Adam step of the decoder, a K0-step prior chain, an Adam step of the energy prior."""

    def __init__(self, model, cfg):
        self.model, self.cfg = model, cfg
        betas = (cfg.adam_beta1, 0.999)
        self.gen_opt = torch.optim.Adam(model.decoder.parameters(), lr=cfg.generator_lr, betas=betas)
        self.ebm_opt = torch.optim.Adam(model.prior.parameters(), lr=cfg.energy_lr, betas=betas)

    def step(self, tokens: torch.Tensor) -> float:
        model, cfg, pad = self.model, self.cfg, self.model.pad_id
        prior, decoder = model.prior, model.decoder
        n = tokens.shape[0]

        model.eval()
        z0 = prior.sigma * torch.randn(n, prior.latent_dim)
        with torch.enable_grad():
            z_pos = langevin_plain(lambda z: prior_log_density(prior, z) + log_likelihood(decoder, z, tokens, pad),
                                   z0, cfg.posterior_steps, cfg.posterior_step_size)

        model.train()
        loss = -log_likelihood(decoder, z_pos, tokens, pad).mean()
        self.gen_opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), cfg.generator_clip)
        self.gen_opt.step()

        model.eval()
        z0 = prior.sigma * torch.randn(n, prior.latent_dim)
        with torch.enable_grad():
            z_neg = langevin_plain(lambda z: prior_log_density(prior, z), z0, cfg.prior_steps, cfg.prior_step_size)
        energy_loss = -(prior.f(z_pos).mean() - prior.f(z_neg).mean())
        self.ebm_opt.zero_grad()
        energy_loss.backward()
        torch.nn.utils.clip_grad_norm_(prior.parameters(), cfg.energy_clip)
        self.ebm_opt.step()
        return loss.item()


class PlainLanguageModelStep:
    """A plain teacher-forced language-model step of the same decoder (forward, backward, Adam), with
    a fixed z: what training would cost without any Langevin chain."""

    def __init__(self, model, cfg):
        self.model, self.cfg = model, cfg
        self.opt = torch.optim.Adam(model.decoder.parameters(), lr=cfg.generator_lr, betas=(cfg.adam_beta1, 0.999))

    def step(self, tokens: torch.Tensor, z: torch.Tensor) -> float:
        decoder = self.model.decoder
        decoder.train()
        loss = -log_likelihood(decoder, z, tokens, self.model.pad_id).mean()
        self.opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(decoder.parameters(), self.cfg.generator_clip)
        self.opt.step()
        return loss.item()
