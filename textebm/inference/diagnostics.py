"""Is the latent used? Diagnostics that read zero when the decoder ignores z, however the chains ran.

The gap and the active units compare the decoder's log-likelihood of a sentence under different
codes: a decoder whose output does not depend on z gives the same log p(x | z) for every z, so both
are exactly 0 for it, whether the posterior chains mixed or barely left their random start. (The
figures of earlier versions, Gaussians fitted to the chains' samples, read MI 5.4 nats and 10/32
active units on a decoder that ignored z: chain noise alone separated the fitted Gaussians.)

- gap (nats/token): E_x[log p(x | z+) - log p(x | z-)] / tokens, z+ from the posterior chain,
  z- from the prior. About 0 under posterior collapse.
- mutual information, the rate E_x KL(p(z | x) || p_alpha(z)) = E_x[E_{z ~ p(z|x)} log p(x | z)
  - log p(x)] (Bayes' rule inside the KL). Under the model's own joint it is I(x; z); over real
  sentences it bounds I(x; z) of the aggregate posterior from above. `evaluate` computes it soundly
  (`posterior_information`): the posterior expectation under the importance sampler's
  self-normalised weights, log p(x) its estimate (within 10% of the closed form in the tests; a few
  hundredths of a nat for a decoder that ignores z). Training's validation prints a rough
  indicator instead: log p(x | z+) at one tempered-chain code (near the mode: up to d/2 nats high)
  minus logmeanexp over a few prior draws (an estimate of log p(x) from below, far below for a used
  latent), so it reads several times too high for a used latent, and exactly 0 for an unused one.
- active units: unit i is active when replacing z+_i by the prior draw's z-_i (the other
  coordinates kept) lowers log p(x | z) by more than `AU_THRESHOLD` nats per sentence on
  average, and by more than `AU_STDERRS` standard errors of that average (so that a decoder with
  small leftover z weights does not count units by chance): the decoder's own sensitivity to that
  coordinate, not the spread of chain means.

The prior chain is checked apart (`prior_chain_bias`): its samples against an exact sampler of the
same EBM, annealed importance sampling's weighted final states. The unadjusted chain with a large
step samples a wider law than exp(f) N(0, sigma^2 I) however long it runs; generation and the
energy's update both use that chain, so its bias is reported wherever its samples are used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

AU_THRESHOLD = 0.1  # nats per sentence lost when a unit's posterior value is swapped for a prior draw
AU_STDERRS = 3.0  # ... and that loss this many standard errors above 0
PRIOR_DRAWS = 4  # prior codes per sentence: the prior-z NLL and, without importance sampling, log p(x)
BIAS_NATS = 1.0  # the prior chain is flagged when its mean f is this far from the exact sampler's ...
BIAS_STDERRS = 3.0  # ... and that difference this many standard errors from 0


def log_likelihood_rows(decoder, z: torch.Tensor, tokens: torch.Tensor, max_rows: int | None = None) -> torch.Tensor:
    """log p(x | z) for matching rows of z and tokens, in chunks of `max_rows` (memory: rows x length x vocab;
    default `Decoder.rows_per_chunk`)."""
    if max_rows is None:
        max_rows = decoder.rows_per_chunk(tokens.shape[1])
    with torch.no_grad():
        return torch.cat([decoder.log_likelihood(z[s:s + max_rows], tokens[s:s + max_rows])
                          for s in range(0, z.shape[0], max_rows)])


def unit_sensitivity(decoder, tokens: torch.Tensor, z_post: torch.Tensor, z_prior: torch.Tensor,
                     max_rows: int | None = None) -> torch.Tensor:
    """Per sentence and unit, log p(x | z+) - log p(x | z+ with unit i taken from z-): shape (B, d)."""
    b, d = z_post.shape
    swapped = z_post.unsqueeze(1).repeat(1, d, 1)  # (B, d, d): row i has unit i swapped
    eye = torch.eye(d, dtype=torch.bool, device=z_post.device)
    swapped = torch.where(eye, z_prior.unsqueeze(1).expand(-1, d, -1), swapped)
    base = log_likelihood_rows(decoder, z_post, tokens, max_rows)
    moved = log_likelihood_rows(decoder, swapped.reshape(b * d, d), tokens.repeat_interleave(d, dim=0), max_rows)
    return base.unsqueeze(1) - moved.view(b, d)


def posterior_information(res) -> torch.Tensor:
    """Per-sentence KL(p(z | x) || p_alpha(z)) = E_{z ~ p(z|x)} log p(x | z) - log p(x), from an importance-sampling
    result (`likelihood.ISResult`): the posterior expectation under its self-normalised weights, log p(x) its
    estimate. For a decoder that ignores z, log p(x | z_s) is one constant c and log p^(x) = c + log mean_s w_s /
    p(x|z), so the figure is minus the log of the weights' mean over their target, a few hundredths of a nat
    when the proposal fits (not exactly 0)."""
    weights = torch.softmax(res.log_w.double(), 1)
    return (weights * res.log_lik.double()).sum(1) - res.log_px.double()


def information_rate(log_lik_post: torch.Tensor, log_px: torch.Tensor) -> torch.Tensor:
    """Per-sentence E_{z ~ p(z|x)} log p(x | z) - log p(x): log_lik_post (B, C) at C posterior samples, log_px (B,)."""
    return log_lik_post.double().mean(1) - log_px.double()


@dataclass
class LatentUsage:
    """Running sums over validation batches; `summary()` gives the figures of the module docstring."""

    tokens: int = 0
    sentences: int = 0
    log_lik_post: float = 0.0
    log_lik_prior: float = 0.0
    rate: float = 0.0
    sensitivity: torch.Tensor | None = None  # per unit: sum over sentences
    sensitivity_sq: torch.Tensor | None = None  # per unit: sum of squares
    sensitivity_sentences: int = 0

    def add(self, num_tokens: int, log_lik_post: torch.Tensor, log_lik_prior: torch.Tensor,
            rate: torch.Tensor, sensitivity: torch.Tensor | None = None) -> None:
        """One batch: per-sentence log p(x|z+) (B,), mean log p(x|z-) (B,), rate (B,), sensitivity (B, d)."""
        self.tokens += num_tokens
        self.sentences += log_lik_post.shape[0]
        self.log_lik_post += float(log_lik_post.double().sum())
        self.log_lik_prior += float(log_lik_prior.double().sum())
        self.rate += float(rate.double().sum())
        if sensitivity is not None:
            total, squares = sensitivity.double().sum(0).cpu(), sensitivity.double().pow(2).sum(0).cpu()
            if self.sensitivity is None:
                self.sensitivity, self.sensitivity_sq = total, squares
            else:
                self.sensitivity, self.sensitivity_sq = self.sensitivity + total, self.sensitivity_sq + squares
            self.sensitivity_sentences += sensitivity.shape[0]

    def summary(self) -> dict:
        n = self.sensitivity_sentences
        if n > 1:
            per_unit = self.sensitivity / n
            stderr = ((self.sensitivity_sq / n - per_unit.pow(2)).clamp_min(0) / (n - 1)).sqrt()
            active = (per_unit > AU_THRESHOLD) & (per_unit > AU_STDERRS * stderr)
        else:
            per_unit = active = torch.zeros(0)
        return {
            "tokens": self.tokens,
            "sentences": self.sentences,
            "nll_posterior": -self.log_lik_post / self.tokens,
            "nll_prior": -self.log_lik_prior / self.tokens,
            "gap": (self.log_lik_post - self.log_lik_prior) / self.tokens,
            "mutual_information": self.rate / self.sentences,
            "active_units": int(active.sum()),
            "active_units_sentences": n,
            "unit_sensitivity": [round(float(v), 4) for v in per_unit],
        }


def latent_usage_batch(model, tokens: torch.Tensor, z_post: torch.Tensor, num_prior: int,
                       generator: torch.Generator | None = None, sensitivity: bool = True,
                       log_px: torch.Tensor | None = None, rate: torch.Tensor | None = None
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The per-sentence pieces `LatentUsage.add` takes, for one batch with posterior codes z_post (B, d).

    The rate is `rate` when given (`posterior_information`, from importance sampling), else the rough
    one-code figure log p(x | z+) - log p(x), log p(x) being `log_px` when given, else logmeanexp over
    the `num_prior` prior draws."""
    b = tokens.shape[0]
    decoder = model.decoder
    log_post = log_likelihood_rows(decoder, z_post, tokens)
    if not model.has_latent:
        zeros = log_post.new_zeros(b)
        return log_post, log_post, zeros, None
    z_prior = model.prior_sample(b * num_prior, generator=generator)
    log_prior = log_likelihood_rows(decoder, z_prior, tokens.repeat(num_prior, 1)).view(num_prior, b)
    if rate is None:
        if log_px is None:
            log_px = torch.logsumexp(log_prior.double(), 0) - math.log(num_prior)
        rate = information_rate(log_post.unsqueeze(1), log_px)
    sens = unit_sensitivity(decoder, tokens, z_post, z_prior[:b]) if sensitivity else None
    return log_post, log_prior.mean(0), rate, sens


def latent_usage(model, sentences: list[list[int]], pad_id: int, num_prior: int = PRIOR_DRAWS, batch_size: int = 32,
                 generator: torch.Generator | None = None, au_sentences: int = 64,
                 log_px: torch.Tensor | None = None, rate: torch.Tensor | None = None) -> dict:
    """Gap, mutual information and active units over id lists (in order, `batch_size` at a time), each
    sentence's posterior code from one chain of the model's own settings. `log_px` (one per sentence)
    replaces the prior-draw estimate of log p(x), `rate` (one per sentence, `posterior_information`) the
    whole rough rate; per-unit sensitivity uses the first `au_sentences`."""
    from textebm.data.batches import pad

    usage = LatentUsage()
    for start in range(0, len(sentences), batch_size):
        tokens = pad(sentences[start:start + batch_size], pad_id).to(model.device)
        z_post = model.posterior_sample(tokens, generator=generator)
        parts = latent_usage_batch(model, tokens, z_post, num_prior, generator,
                                   sensitivity=usage.sensitivity_sentences < au_sentences,
                                   log_px=None if log_px is None else log_px[start:start + batch_size],
                                   rate=None if rate is None else rate[start:start + batch_size])
        if parts[3] is not None:  # the first au_sentences exactly, not whole batches past them
            parts = (*parts[:3], parts[3][:au_sentences - usage.sensitivity_sentences])
        usage.add(int((tokens[:, 1:] != pad_id).sum()), *parts)
    return usage.summary()


def prior_chain_bias(model, num_samples: int = 1000, reference=None, ais_chains: int = 500, ais_steps: int = 500,
                     generator: torch.Generator | None = None) -> dict | None:
    """The prior chain (`model.prior_sample`, the sampler of training and generation) against an exact
    sampler of the same EBM: mean f and mean |z| of `num_samples` chain samples against the same
    means under the prior, estimated from the weighted final states of AIS (`reference`, an
    `AnnealedEstimate`, or a fresh run of `ais_chains` x `ais_steps`). `biased` when mean f differs by
    more than BIAS_NATS and BIAS_STDERRS standard errors. None for a prior without energy (exact draws)."""
    from textebm.inference.likelihood import annealed_log_partition

    prior = model.prior
    if not prior.is_ebm:
        return None
    with torch.no_grad():
        z = model.prior_sample(num_samples, generator=generator)
        f, norm = prior.energy(z).double(), z.norm(dim=-1).double()
        if reference is None:
            reference = annealed_log_partition(prior, ais_chains, ais_steps, generator=generator)
    exact_f, exact_f_se = reference.weighted_mean(reference.energies)
    exact_norm, _ = reference.weighted_mean(reference.samples.norm(dim=-1))
    bias = float(f.mean()) - exact_f
    stderr = math.hypot(float(f.std()) / math.sqrt(num_samples), exact_f_se)
    return {"prior_chain_mean_f": float(f.mean()), "exact_mean_f": exact_f, "prior_chain_bias_f": bias,
            "prior_chain_bias_f_stderr": stderr, "prior_chain_mean_norm": float(norm.mean()),
            "exact_mean_norm": exact_norm, "prior_chain_bias_norm": float(norm.mean()) - exact_norm,
            "prior_chain_biased": abs(bias) > BIAS_NATS and abs(bias) > BIAS_STDERRS * stderr,
            "exact_sampler": f"AIS weighted final states ({reference.num_chains} chains x {reference.steps} "
                             f"temperatures, ESS {reference.ess:.0f})",
            "prior_chain": f"{model.config.prior_steps} steps of {model.config.prior_step_size:g}, "
                           f"noise scale {model.config.prior_noise:g}, {num_samples} samples"}
