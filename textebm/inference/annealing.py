"""Annealed importance sampling of one sentence's posterior (Neal 2001; Wu, Burda, Salakhutdinov &
Grosse 2017 for decoder-based models): log p(x) from chains that walk from a Gaussian reference q(z)
to p(z | x) ∝ p(x | z) exp(f(z)) N(z; 0, sigma^2 I).

Each chain works in the reference's whitened coordinates u, z = m + A u with u ~ N(0, I) under q
(A = sigma I, m = 0 for the prior's reference; the Laplace approximation's mean and the square root of
its covariance otherwise). With

    l(u) = log p(x | z) + f(z) + log N(z; 0, sigma^2 I) + log |det A| - log N(u; 0, I)

(the log ratio of target to reference, both as densities of u, so that E_{u ~ N(0, I)}[exp l(u)] =
Z_alpha p(x)), the path is pi_beta(u) ∝ N(u; 0, I) exp(beta l(u)), beta from 0 to 1. Before each
move to beta_t a chain's log weight gathers (beta_t - beta_{t-1}) l(u_{t-1}); one Metropolis-adjusted
Langevin step then leaves pi_{beta_t} invariant. Every chain's exp(weight) is an unbiased estimate
of Z_alpha p(x), so logmeanexp over chains, minus log Z_alpha, estimates log p(x) (a stochastic
lower bound, by Jensen). Run backwards from an exact posterior sample, the same path gives an
unbiased estimate of 1 / (Z_alpha p(x)): the upper half of `textebm.inference.bdmc`.

A mixture of such Gaussians (`MixtureReference`, one per mode found) is a reference too: each chain
runs in the coordinates of the component it drew, with the whole mixture's density in l.

Why whitened: in z the posterior is tens of times narrower along some directions than along others;
in the Laplace reference's coordinates most directions have about unit scale. Not all: at the
posterior's draws on trained PTB runs the curvature's largest eigenvalue there is some 13-17 (median
over draws; it varies with z), so the step size falls from 1 to about 0.5 along the path
(`bench.ais_transitions`, docs/evaluate-command.md). The chains' final states, weighted by their
weights, are draws from p(z | x) itself (what the mutual information needs).

The schedule (`BETA_SCHEDULES`) follows the reference. With perfect transitions a chain's log weight has
variance about sum_t (beta_t - beta_{t-1})^2 Var_{pi_beta}(l) (`transition_variances`). From the
prior's reference Var(l) is hundreds of nats^2 near beta = 0 and small near 1, and the sigmoid's
dense ends pay for themselves (Grosse et al. 2015). From a Laplace reference Var(l) stays within a
factor of a few along the path, and equal steps come within a few per cent of the best spacing: at 60
temperatures the sigmoid's sum of squared steps is 1.43 times the linear one's, and on a trained PTB
run the linear schedule's log weights had 0.76 times the sigmoid's variance at the same CPU
(docs/evaluate-command.md, evaluator 9). What is left of that variance is the moves': with one MALA
step per temperature the chains lag behind the path, and their log weights vary eight to nine times
as much as perfect transitions on the same schedule would give.

The path may run on a cheaper likelihood below beta = 1 (`anneal(path="bf16")`: the
decoder's vocabulary projection on bf16 operands, about half a gradient row's cost where bf16 is
native): AIS allows any intermediate densities, so long as beta = 1 is the exact one, and the weights
keep their mean.

The step size is shared by a sentence's chains and follows their mean acceptance rate towards 0.65,
nudged after every temperature. (A chain steered by its own past acceptances no longer has a kernel
that depends on the present state alone, which AIS's unbiasedness assumes; steered by the group, each
chain's own share of the steering is 1 / num_chains.) `anneal(step_schedule=...)` fixes the sizes in
advance instead: BDMC's bounds take a pilot run's (`textebm.inference.bdmc`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from textebm import cancellation
from textebm.inference.shortlist import Shortlist
from textebm.model.decoder import MAX_ROWS, Decoder

# Both AIS loops (`anneal` here, and log Z's `likelihood.annealed_log_partition`) adapt their MALA step size
# alike: per temperature, log step size += STEP_ADAPTATION * (acceptance rate - TARGET_ACCEPTANCE).
TARGET_ACCEPTANCE = 0.65
STEP_ADAPTATION = 0.1
PATH_PROJECTIONS = ("fp32", "bf16")  # the decoder's projection below beta = 1 (`anneal`)


def sigmoid_schedule(steps: int, sharpness: float = 4.0) -> torch.Tensor:
    """Inverse temperatures beta_0 = 0 < ... < beta_steps = 1, dense at both ends (Grosse et al. 2015):
    a logistic curve over [-sharpness, sharpness], rescaled to [0, 1]."""
    s = torch.sigmoid(sharpness * torch.linspace(-1.0, 1.0, steps + 1, dtype=torch.float64))
    return (s - s[0]) / (s[-1] - s[0])


def linear_schedule(steps: int) -> torch.Tensor:
    """Inverse temperatures 0 = beta_0 < ... < beta_steps = 1 in equal steps: the schedule for a reference
    near the posterior (module docstring)."""
    return torch.linspace(0.0, 1.0, steps + 1, dtype=torch.float64)


BETA_SCHEDULES = {"linear": linear_schedule, "sigmoid": sigmoid_schedule}
LAPLACE_SCHEDULE = "linear"  # the schedule from a Laplace reference: evaluate's (module docstring)


@dataclass
class GaussianReference:
    """q(z) = N(m, A A^T) per sentence: z = mean + u @ matrix^T for u ~ N(0, I); mean (B, d), matrix (B, d, d)."""

    mean: torch.Tensor
    matrix: torch.Tensor

    @classmethod
    def prior(cls, sigma: float, b: int, d: int, device=None) -> GaussianReference:
        """The prior's reference N(0, sigma^2 I), for every one of b sentences."""
        eye = torch.eye(d, device=device).expand(b, d, d)
        return cls(torch.zeros(b, d, device=device), sigma * eye)

    @classmethod
    def laplace(cls, proposal) -> GaussianReference:
        """The Gaussian of a `textebm.inference.laplace.LaplaceProposal`: covariance V diag(1 / lambda) V^T."""
        return cls(proposal.mean, proposal.vectors * proposal.precisions.rsqrt().unsqueeze(1))

    @property
    def log_det(self) -> torch.Tensor:
        """log |det A| per sentence (B,)."""
        return torch.linalg.slogdet(self.matrix.double())[1].to(self.mean.dtype)

    def repeat(self, n: int) -> GaussianReference:
        """Each sentence's reference repeated for n chains (rows sentence-major)."""
        return GaussianReference(self.mean.repeat_interleave(n, 0), self.matrix.repeat_interleave(n, 0))

    def to_z(self, u: torch.Tensor) -> torch.Tensor:
        return self.mean + (self.matrix @ u.unsqueeze(-1)).squeeze(-1)

    def to_u(self, z: torch.Tensor) -> torch.Tensor:
        return torch.linalg.solve(self.matrix, (z - self.mean).unsqueeze(-1)).squeeze(-1)


@dataclass
class MixtureReference:
    """q(z) = sum_k w_k N(z; m_k, A_k A_k^T) per sentence, K components: means (B, K, d), matrices
    (B, K, d, d), log_weights (B, K) (normalised): the reference for a posterior with several modes.

    A chain draws its component k ~ w once and runs in k's whitened coordinates; its log ratio is
    l(z) = log p(x, z) - log q(z) with the whole mixture's q. That is AIS on the pair (k, z) from
    w_k q_k(z) to p(x, z) r(k | z), r(k | z) = w_k q_k(z) / q(z) the component's responsibility: the
    pair's target integrates to p(x) and every step, k held fixed, leaves its temperature's law
    invariant. So the chains' weights estimate Z_alpha p(x) as a single Gaussian's do, and a posterior
    with several modes gets chains started in each."""

    means: torch.Tensor
    matrices: torch.Tensor
    log_weights: torch.Tensor

    def draw(self, num_chains: int, generator: torch.Generator | None = None) -> tuple[GaussianReference, RowMixture]:
        """Components for `num_chains` chains per sentence (rows sentence-major): each row's own Gaussian,
        and the mixture's density for each row."""
        b, k, d = self.means.shape
        chosen = torch.multinomial(self.log_weights.exp().float(), num_chains, replacement=True, generator=generator)
        sentence = torch.arange(b, device=chosen.device).repeat_interleave(num_chains)
        chosen = chosen.reshape(-1)
        own = GaussianReference(self.means[sentence, chosen], self.matrices[sentence, chosen])
        return own, RowMixture.of(self).repeat(num_chains)


@dataclass
class RowMixture:
    """A mixture's log density, row by row (R rows, K components), in the form the log ratio needs:
    log q(z) + (d/2) log 2 pi = logsumexp_k [offsets_k - |inverses_k (z - means_k)|^2 / 2], with
    offsets_k = log w_k - log |det A_k|."""

    means: torch.Tensor  # (R, K, d)
    inverses: torch.Tensor  # (R, K, d, d): A_k^{-1}
    offsets: torch.Tensor  # (R, K)

    @classmethod
    def of(cls, mixture: MixtureReference) -> RowMixture:
        matrices = mixture.matrices.double()
        log_det = torch.linalg.slogdet(matrices)[1]
        dtype = mixture.means.dtype
        return cls(mixture.means, torch.linalg.inv(matrices).to(dtype), (mixture.log_weights - log_det).to(dtype))

    def repeat(self, n: int) -> RowMixture:
        return RowMixture(*(t.repeat_interleave(n, 0) for t in (self.means, self.inverses, self.offsets)))

    def rows(self, start: int, stop: int) -> RowMixture:
        return RowMixture(self.means[start:stop], self.inverses[start:stop], self.offsets[start:stop])

    def log_density_plus_constant(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z) + (d/2) log 2 pi per row (R,), differentiable in z (R, d)."""
        whitened = (self.inverses @ (z.unsqueeze(1) - self.means).unsqueeze(-1)).squeeze(-1)
        return torch.logsumexp(self.offsets - 0.5 * whitened.pow(2).sum(-1), 1)


def _log_ratio_and_grad(model, tokens: torch.Tensor, reference: GaussianReference, log_det: torch.Tensor,
                        u: torch.Tensor, max_rows: int, mixture: RowMixture | None = None,
                        likelihood: str | Shortlist = "fp32") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(l(u), grad_u l(u), log p(x | z(u))) per row, the decoder in chunks of `max_rows` rows: `likelihood`
    names its vocabulary projection (`Decoder.log_likelihood_and_grad`), or is a `Shortlist` whose
    stand-in scores the rows instead (`Shortlist.value_and_grad`, in chunks of whole sentences). With a `mixture`,
    l = log p(x, z) - log q(z) for the mixture's q (`MixtureReference`); without, q is each row's own
    Gaussian, log q(z) = log N(u; 0, I) - log |det A|."""
    sigma2, d = model.prior.sigma ** 2, u.shape[1]
    shortlist = likelihood if isinstance(likelihood, Shortlist) else None
    if shortlist is not None:
        per = shortlist.rows_per_sentence
        max_rows = max(per, max_rows // per * per)
    values, grads, log_liks = [], [], []
    with torch.enable_grad():
        for s in range(0, u.shape[0], max_rows):
            rows = u[s:s + max_rows].detach().requires_grad_(True)
            z = GaussianReference(reference.mean[s:s + max_rows], reference.matrix[s:s + max_rows]).to_z(rows)
            if shortlist is None:
                log_lik, lik_grad = model.decoder.log_likelihood_and_grad(z.detach(), tokens[s:s + max_rows],
                                                                          likelihood)
            else:
                log_lik, lik_grad = shortlist.value_and_grad(model.decoder, z.detach(), tokens[s:s + max_rows],
                                                             s // per)
            rest = model.prior.energy(z) - z.pow(2).sum(-1) / (2 * sigma2) - 0.5 * d * math.log(sigma2)
            if mixture is None:
                rest = rest + log_det[s:s + max_rows] + 0.5 * rows.pow(2).sum(-1)
            else:
                rest = rest - mixture.rows(s, s + max_rows).log_density_plus_constant(z)
            # the likelihood's gradient in z enters through z(u) as a linear term: grad_u = A^T grad_z
            (grad,) = torch.autograd.grad((rest + (lik_grad * z).sum(-1)).sum(), rows)
            values.append(rest.detach() + log_lik)
            grads.append(grad)
            log_liks.append(log_lik)
    return torch.cat(values), torch.cat(grads), torch.cat(log_liks)


@dataclass
class AnnealedChains:
    """Per chain (rows sentence-major): the log weight (float64), final code, log p(x | z) there, and the
    chain's acceptance rate; `step_sizes`, the step size each group of chains moved with at each
    temperature, (len(betas) - 1, groups). `trace` (`anneal(trace=True)`): one entry per move, tensors of length
    len(betas) - 1: "beta", the move's beta_t; "step", the mean step size it used; "acceptance", the
    share of chains that moved; "ell_variance", the mean over groups of the variance of l across a
    group's chains (groups of 2 or more) at the states whose l entered the weights at that step (those
    of beta_{t-1}): Var_{pi_beta}(l) while the chains keep up with the path (`transition_variances`)."""

    log_w: torch.Tensor
    z: torch.Tensor
    log_lik: torch.Tensor
    acceptance: torch.Tensor
    step_sizes: torch.Tensor
    trace: dict[str, torch.Tensor] | None = None


def transition_variances(betas: torch.Tensor, ell_variance: torch.Tensor) -> tuple[float, float]:
    """What a chain's log weight variance would be with perfect transitions (every state a fresh draw
    from its pi_beta), given Var_{pi_beta}(l) at each beta but the last (`AnnealedChains.trace`'s
    "ell_variance"): sum_t (beta_t - beta_{t-1})^2 Var_{beta_{t-1}}(l) on the schedule `betas` (beta_0
    first), and the least any schedule of as many steps gets, (sum_t (beta_t - beta_{t-1})
    sqrt(Var_{beta_{t-1}}(l)))^2 / T: with n(beta) temperatures per unit of beta the sum is about
    int Var / n dbeta, least (given int n = T) for n proportional to sqrt(Var). A measured variance far
    above the first says the chains lag behind the path: better transitions, not another schedule,
    are what would lower it."""
    steps, var = betas.double().diff().cpu(), ell_variance.double().cpu()
    return float((steps.pow(2) * var).sum()), float((steps * var.sqrt()).sum().pow(2) / len(steps))


def anneal(model, tokens: torch.Tensor, reference: GaussianReference, u: torch.Tensor, betas: list[float],
           step_size: float = 1.0, generator: torch.Generator | None = None, max_rows: int = MAX_ROWS,
           group: int = 1, mixture: RowMixture | None = None, trace: bool = False,
           path: str | Shortlist = "fp32", step_schedule: torch.Tensor | None = None) -> AnnealedChains:
    """Run the chains `u` (whitened, rows matching `tokens` and `reference`) through `betas` in the order
    given (rising: forward AIS; falling: reverse, whose weights then estimate 1 / (Z_alpha p(x)) with
    the sign flipped), as the module docstring says. Consecutive runs of `group` rows (a sentence's
    chains) share their step size. `mixture`: the rows' mixture reference (`MixtureReference.draw`),
    each row's `reference` then the component it drew. `trace`: record `AnnealedChains.trace` (on the
    device, no host sync per temperature). `step_schedule`: each group's step size at each temperature,
    (len(betas) - 1, groups), used as given instead of steered by the acceptances (`step_size` is then
    unused): fixed kernels, as AIS's unbiasedness assumes, e.g. another run's `step_sizes`.

    `path`, the likelihood at every temperature below 1: a name of `PATH_PROJECTIONS`, the decoder's
    vocabulary projection ("bf16": its matrix products on bf16 operands, about half the cost of a gradient
    row where bf16 is native); at beta = 1 it is always fp32. AIS allows any intermediate densities, as long as
    each move leaves its own invariant and the weights use the same ones (Neal 2001): with bf16 the
    path's pi_beta, beta < 1, is built on a slightly different log p(x | z) (logits rounded to bf16, a
    fixed function of z), the weights' last factor compares fp32's density at beta = 1 with it, and
    exp(weight) still has mean Z_alpha p(x) exactly. Or a `Shortlist`: the sentences' shortlist stand-in
    (`textebm.inference.shortlist`, its products in its own precision; rows sentence-major,
    `rows_per_sentence` each), by the same argument."""
    if u.shape[0] % group:
        raise ValueError(f"{u.shape[0]} chains do not split into groups of {group}")
    if step_schedule is not None and tuple(step_schedule.shape) != (len(betas) - 1, u.shape[0] // group):
        raise ValueError(f"step_schedule must be (temperatures - 1, groups) = ({len(betas) - 1}, "
                         f"{u.shape[0] // group}), not {tuple(step_schedule.shape)}")
    if not isinstance(path, Shortlist) and path not in PATH_PROJECTIONS:
        raise ValueError(f"path must be a Shortlist or one of {', '.join(PATH_PROJECTIONS)}, not {path!r}")

    def level(beta: float) -> str | Shortlist:  # the likelihood pi_beta is built on: exact fp32, or the path's
        return "fp32" if beta == 1.0 else path

    def log_ratio_and_grad(at: torch.Tensor, likelihood: str | Shortlist):
        return _log_ratio_and_grad(model, tokens, reference, log_det, at, max_rows, mixture, likelihood)

    log_det = reference.log_det
    steps = torch.full((u.shape[0] // group, 1), step_size, dtype=u.dtype, device=u.device)
    log_w = torch.zeros(u.shape[0], dtype=torch.float64, device=u.device)
    accepted = torch.zeros(u.shape[0], device=u.device)
    current = level(betas[0])
    ell, grad_ell, log_lik = log_ratio_and_grad(u, current)
    records, used = [], []
    for move, (previous, beta) in enumerate(zip(betas[:-1], betas[1:])):
        cancellation.check()
        if level(beta) != current:  # log pi_beta(u) - log pi_previous(u) across the change of projection
            current = level(beta)
            new_ell, grad_ell, log_lik = log_ratio_and_grad(u, current)
            log_w += beta * new_ell.double() - previous * ell.double()
            ell = new_ell
        else:
            log_w += (beta - previous) * ell.double()
        if trace:
            spread = ell.view(-1, group).var(1).mean() if group > 1 else torch.full((), math.nan, device=u.device)
        grad = beta * grad_ell - u
        if step_schedule is not None:
            steps = step_schedule[move].to(u.dtype).unsqueeze(1)
        used.append(steps.squeeze(1))
        step = steps.repeat_interleave(group, 0)
        half = 0.5 * step.pow(2)
        noise = torch.randn(u.shape, dtype=u.dtype, device=u.device, generator=generator)
        proposal = u + half * grad + step * noise
        new_ell, new_grad_ell, new_log_lik = log_ratio_and_grad(proposal, current)
        new_grad = beta * new_grad_ell - proposal
        forward = (proposal - u - half * grad).pow(2).sum(-1)
        backward = (u - proposal - half * new_grad).pow(2).sum(-1)
        log_ratio = (beta * (new_ell - ell) - 0.5 * (proposal.pow(2).sum(-1) - u.pow(2).sum(-1))
                     + (forward - backward) / (2 * step.squeeze(1).pow(2)))
        accept = torch.log(torch.rand(u.shape[0], device=u.device, generator=generator)) < log_ratio  # NaN: refused
        rows = accept.unsqueeze(1)
        u = torch.where(rows, proposal, u)
        ell, log_lik = torch.where(accept, new_ell, ell), torch.where(accept, new_log_lik, log_lik)
        grad_ell = torch.where(rows, new_grad_ell, grad_ell)
        accepted += accept.float()
        rate = accept.to(u.dtype).view(-1, group).mean(1, keepdim=True)
        if trace:
            records.append(torch.stack([steps.mean(), rate.mean(), spread.to(u.dtype)]))
        if step_schedule is None:
            steps = steps * torch.exp(STEP_ADAPTATION * (rate - TARGET_ACCEPTANCE))
    recorded = None
    if trace and records:
        step, acceptance, ell_variance = torch.stack(records).unbind(1)
        recorded = {"beta": torch.tensor(betas[1:], dtype=torch.float64), "step": step, "acceptance": acceptance,
                    "ell_variance": ell_variance}
    step_sizes = torch.stack(used) if used else steps.new_zeros(0, steps.shape[0])
    return AnnealedChains(log_w, reference.to_z(u), log_lik, accepted / max(1, len(betas) - 1), step_sizes, recorded)


def annealed_log_likelihood(model, tokens: torch.Tensor, reference: GaussianReference | MixtureReference,
                            log_z: float, num_chains: int, steps: int, step_size: float = 1.0,
                            generator: torch.Generator | None = None, max_rows: int = MAX_ROWS,
                            schedule: str = LAPLACE_SCHEDULE, trace: bool = False,
                            path_projection: str = "fp32", step_group: int | None = None,
                            path_shortlist: int = 0) -> tuple[torch.Tensor, AnnealedChains]:
    """(log p^(x) per sentence (B,), the chains (B * num_chains rows)) by forward AIS from `reference`
    (one Gaussian per sentence, or a mixture: `MixtureReference`) on the named `schedule` (`BETA_SCHEDULES`:
    "linear" for a Laplace reference, "sigmoid" for one as far from the posterior as the prior); `trace`:
    `AnnealedChains.trace`, the chains of a step group one group; `path_projection`: `anneal`'s `path` (a
    name). `step_group`: how many of a sentence's chains share a step size (`anneal`'s group; default all of them): with
    num_chains = m x step_group the sentence's chains are m independent runs of the step_group-chain
    estimator, as evaluate's check of its draws needs (`evaluation.held_out`). `path_shortlist` k > 0: the
    path below beta = 1 on each sentence's shortlist stand-in (`textebm.inference.shortlist`: the k words
    of each position with the largest logits at the reference's mean, its heaviest component's for a
    mixture), its products on bf16 operands where `path_projection` says bf16; 0, or a decoder without a
    vocabulary (`closed_form`'s): the whole likelihood."""
    if num_chains < 1 or steps < 1:
        raise ValueError(f"AIS needs at least 1 chain and 1 step, not {num_chains} and {steps}")
    if schedule not in BETA_SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(BETA_SCHEDULES)}, not {schedule!r}")
    step_group = num_chains if step_group is None else step_group
    if step_group < 1 or num_chains % step_group:
        raise ValueError(f"{num_chains} chains per sentence do not split into step groups of {step_group}")
    if path_shortlist < 0:
        raise ValueError(f"path_shortlist must be 0 (the whole vocabulary) or a number of words, not {path_shortlist}")
    if isinstance(reference, MixtureReference):
        heaviest = reference.log_weights.argmax(1)
        center = reference.means[torch.arange(tokens.shape[0], device=heaviest.device), heaviest]
        rows, mixture = reference.draw(num_chains, generator)
    else:
        center = reference.mean
        rows, mixture = reference.repeat(num_chains), None
    path: str | Shortlist = path_projection  # a decoder without a vocabulary (the closed-form stand-in) keeps it
    if path_shortlist and isinstance(model.decoder, Decoder):
        path = Shortlist(model.decoder, tokens, center, path_shortlist, num_chains, low=path_projection == "bf16")
    b, d = tokens.shape[0], rows.mean.shape[1]
    u = torch.randn(b * num_chains, d, device=rows.mean.device, generator=generator, dtype=rows.mean.dtype)
    chains = anneal(model, tokens.repeat_interleave(num_chains, 0), rows, u, BETA_SCHEDULES[schedule](steps).tolist(),
                    step_size, generator, max_rows, group=step_group, mixture=mixture, trace=trace,
                    path=path)
    log_w = chains.log_w.view(b, num_chains)
    return (torch.logsumexp(log_w, 1) - math.log(num_chains) - log_z).float(), chains
