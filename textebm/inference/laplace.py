"""The importance-sampling proposal for the latent EBM: a Laplace approximation of p(z | x).

p(z | x) ∝ p(x | z) exp(f(z)) N(z; 0, sigma^2 I). The tempered posterior chain (the run's own, noise
scale well below 1) ends near a mode but its spread is not the posterior's (tenfold too narrow at
the text defaults), so its samples give a location, not a shape. The shape comes from the curvature
of log p(x, z) at the mode:

1. start: the best end (highest log p(x, z)) of `num_chains` tempered chains per sentence;
2. `newton_steps` times: the negative Hessian P of log p(x, z) (d x d, by forward differences of
   the autograd gradient, symmetrised: d + 1 gradient rows per sentence, one batched call, any
   device, no double backward through the RNN; central differences took 2d rows for a precision
   the proposal does not need), then a Newton step z + P^{-1} grad, with the best of the step
   lengths 1, 1/2, ..., 1/16, 0 (a line search by forward passes only);
3. the proposal: at the final point, with scale matrix P^{-1} from the last Hessian, a mixture of
   the Gaussian (share 1 - `heavy_share`, default 0.7) and a multivariate Student-t (nu = 5,
   share 0.3). The Gaussian is the Laplace approximation itself (on a Gaussian posterior every
   weight is equal); the Student-t's heavier tails bound each weight by p(x, z) / (0.3 t(z)), so
   a Hessian that misjudges a direction costs efficiency, not an unbounded weight. On the
   closed-form model the mixture keeps about 88% of the draws effective, a pure Student-t 49%.

P's eigenvalues are floored at MIN_PRECISION / sigma^2 (a direction where log p(x, z) is flat or
convex, e.g. far from the mode, gets a proposal at most 1/sqrt(MIN_PRECISION) times the prior's
width). For the linear-Gaussian model of `textebm.inference.closed_form` the Hessian is exact and constant,
one Newton step lands on the mode, and the proposal is the posterior up to its Student-t tails.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from textebm.model.decoder import MAX_ROWS

LOG_PI = math.log(math.pi)
MIN_PRECISION = 0.25  # the floor of the proposal's precision, in units of 1 / sigma^2
DIFFERENCE_STEP = 1e-2  # the forward-difference step of the Hessian, in units of z
STEP_LENGTHS = (1.0, 0.5, 0.25, 0.125, 0.0625, 0.0)  # the Newton step's line search


def log_joint(model, tokens: torch.Tensor, z: torch.Tensor, max_rows: int = MAX_ROWS,
              projection: str = "fp32") -> torch.Tensor:
    """log p(x | z) + log p_alpha(z) up to log Z, per row (no gradient), in chunks of `max_rows`, the
    decoder's vocabulary projection in `projection` (fp32, or bf16 where a value only ranks or weighs)."""
    with torch.no_grad():
        return torch.cat([model.prior.log_density(z[s:s + max_rows])
                          + model.decoder.log_likelihood(z[s:s + max_rows], tokens[s:s + max_rows], projection)
                          for s in range(0, z.shape[0], max_rows)])


def log_joint_grad(model, tokens: torch.Tensor, z: torch.Tensor, max_rows: int = MAX_ROWS) -> torch.Tensor:
    """grad_z [log p(x | z) + log p_alpha(z)] per row (fp32), in chunks of `max_rows`."""
    with torch.no_grad():  # both parts are written-out gradients: none of them joins a graph
        return torch.cat([model.prior.grad_log_density(z[s:s + max_rows])
                          + model.decoder.log_likelihood_and_grad(z[s:s + max_rows], tokens[s:s + max_rows])[1]
                          for s in range(0, z.shape[0], max_rows)])


def negative_hessian(model, tokens: torch.Tensor, z: torch.Tensor, max_rows: int = MAX_ROWS,
                     step: float = DIFFERENCE_STEP) -> tuple[torch.Tensor, torch.Tensor]:
    """(-Hessian (B, d, d), gradient (B, d)) of log p(x, z) at z (B, d): forward differences of the
    gradient along each axis, symmetrised (exact for a quadratic); the gradient is the one at z."""
    b, d = z.shape
    shifts = step * torch.eye(d, dtype=z.dtype, device=z.device)
    points = torch.cat([z.unsqueeze(1), z.unsqueeze(1) + shifts], 1)  # (B, 1 + d, d): z, then z + h e_j
    grads = log_joint_grad(model, tokens.repeat_interleave(d + 1, 0), points.reshape(-1, d), max_rows)
    grads = grads.view(b, d + 1, d)  # [sentence, point, component i]
    hessian = (grads[:, 1:] - grads[:, :1]) / step  # [b, j, i] = d g_i / d z_j
    return -0.5 * (hessian + hessian.transpose(1, 2)), grads[:, 0]


@dataclass
class LaplaceProposal:
    """A multivariate Student-t (or, nu = inf, Gaussian) per sentence: location (B, d), and the scale
    matrix's eigenvectors (B, d, d) and eigenvalues of its inverse, the precision (B, d)."""

    mean: torch.Tensor
    vectors: torch.Tensor
    precisions: torch.Tensor
    nu: float
    heavy_share: float = 1.0  # the Student-t's share of a mixture with the Gaussian
    heavy_scale: float = 1.0  # the Student-t's scale matrix is heavy_scale^2 times the Gaussian's

    @property
    def std(self) -> torch.Tensor:
        """Marginal standard deviations of the scale matrix (B, d): sqrt(diag(V diag(1/lambda) V^T))."""
        return (self.vectors.pow(2) / self.precisions.unsqueeze(1)).sum(-1).sqrt()

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """(B, n, d) draws."""
        b, d = self.mean.shape
        eps = torch.randn(b, n, d, device=self.mean.device, generator=generator, dtype=self.mean.dtype)
        scaled = (eps * self.precisions.rsqrt().unsqueeze(1)) @ self.vectors.transpose(1, 2)
        if math.isfinite(self.nu):  # chi^2_nu as a sum of nu squared normals (integer nu): seeded like the rest
            chi2 = torch.randn(b, n, int(self.nu), device=self.mean.device, generator=generator,
                               dtype=self.mean.dtype).pow(2).sum(-1, keepdim=True)
            heavy = torch.rand(b, n, 1, device=self.mean.device, generator=generator) < self.heavy_share
            scaled = torch.where(heavy, scaled * (self.nu / chi2).sqrt() * self.heavy_scale, scaled)
        return self.mean.unsqueeze(1) + scaled

    def log_density(self, z: torch.Tensor) -> torch.Tensor:
        """log q(z) for z (B, n, d): shape (B, n)."""
        d = self.mean.shape[1]
        whitened = (z - self.mean.unsqueeze(1)) @ self.vectors * self.precisions.sqrt().unsqueeze(1)
        distance = whitened.pow(2).sum(-1)
        half_log_det = 0.5 * self.precisions.log().sum(-1, keepdim=True)
        gaussian = half_log_det - 0.5 * distance - 0.5 * d * math.log(2 * math.pi)
        if not math.isfinite(self.nu) or self.heavy_share == 0:
            return gaussian
        nu = self.nu
        const = math.lgamma((nu + d) / 2) - math.lgamma(nu / 2) - 0.5 * d * (math.log(nu) + LOG_PI)
        student = (const + half_log_det - d * math.log(self.heavy_scale)
                   - 0.5 * (nu + d) * torch.log1p(distance / (nu * self.heavy_scale**2)))
        if self.heavy_share == 1:
            return student
        return torch.logaddexp(student + math.log(self.heavy_share), gaussian + math.log1p(-self.heavy_share))


def remeasured_precision(model, tokens: torch.Tensor, z: torch.Tensor, vectors: torch.Tensor, values: torch.Tensor,
                         directions: int, max_rows: int = MAX_ROWS, step: float = DIFFERENCE_STEP):
    """Another point's precision from a neighbour's: P = V diag(values) V^T (float64, eigenvalues ascending)
    re-measured at z (B, d) along its `directions` stiffest eigenvectors, by forward differences of the
    gradient (directions + 1 gradient rows per row of z); the rest of P (the flatter directions, where the
    prior's curvature dominates) is kept. Returns (values, vectors, gradient at z) of the symmetrised result."""
    b, d = z.shape
    directions = min(directions, d)  # all of them: the Hessian measured afresh
    stiff = vectors[:, :, d - directions:]  # (B, d, k)
    points = torch.cat([z.unsqueeze(1), z.unsqueeze(1) + step * stiff.transpose(1, 2).to(z.dtype)], 1)
    grads = log_joint_grad(model, tokens.repeat_interleave(directions + 1, 0), points.reshape(-1, d), max_rows)
    grads = grads.view(b, directions + 1, d)
    measured = -(grads[:, 1:] - grads[:, :1]).double() / step @ vectors  # (B, k, d): rows (P v_i)^T V
    inner = torch.diag_embed(values)  # P in V's basis, its last k rows and columns replaced by the measurement
    inner[:, d - directions:, :] = measured
    inner[:, :, d - directions:] = measured.transpose(1, 2)
    block = measured[:, :, d - directions:]
    inner[:, d - directions:, d - directions:] = 0.5 * (block + block.transpose(1, 2))
    new_values, new_vectors = torch.linalg.eigh(vectors @ inner @ vectors.transpose(1, 2))
    floor = MIN_PRECISION / model.prior.sigma**2
    return new_values.abs().clamp_min(floor), new_vectors, grads[:, 0]


def newton_step(model, tokens: torch.Tensor, z: torch.Tensor, grad: torch.Tensor, vectors: torch.Tensor,
                values: torch.Tensor, max_rows: int = MAX_ROWS, projection: str = "fp32") -> torch.Tensor:
    """z + t P^{-1} grad for each row (P = vectors diag(values) vectors^T, float64), with t the best of
    STEP_LENGTHS by log p(x, z) (a line search by forward passes only, in `projection`): (B, d)."""
    b, d = z.shape
    direction = ((grad.double().unsqueeze(1) @ vectors).squeeze(1) / values).unsqueeze(1) @ vectors.transpose(1, 2)
    direction = direction.squeeze(1).to(z.dtype)
    lengths = torch.tensor(STEP_LENGTHS, dtype=z.dtype, device=z.device)
    candidates = z.unsqueeze(1) + lengths.view(1, -1, 1) * direction.unsqueeze(1)  # (B, L, d)
    scores = log_joint(model, tokens.repeat_interleave(len(STEP_LENGTHS), 0), candidates.reshape(-1, d),
                       max_rows, projection).view(b, -1)
    scores = torch.nan_to_num(scores, nan=-math.inf)
    return candidates[torch.arange(b, device=z.device), scores.argmax(1)]


def laplace_proposal(model, tokens: torch.Tensor, start: torch.Tensor, newton_steps: int = 1, nu: float = 5.0,
                     heavy_share: float = 0.3, heavy_scale: float = 1.0, max_rows: int = MAX_ROWS,
                     projection: str = "fp32") -> LaplaceProposal:
    """The proposal of the module docstring for a batch of sentences, from the codes `start` (B, d); the
    Newton step's line search in `projection` (the Hessian's gradient rows are always fp32)."""
    if newton_steps < 1:
        raise ValueError(f"newton_steps must be at least 1, not {newton_steps}")
    if not (nu == math.inf or (nu >= 1 and float(nu).is_integer())):
        raise ValueError(f"nu must be a positive integer or inf, not {nu}")
    floor = MIN_PRECISION / model.prior.sigma**2
    z = start.detach()
    for _ in range(newton_steps):
        precision, grad = negative_hessian(model, tokens, z, max_rows)
        values, vectors = torch.linalg.eigh(precision.double())
        values = values.abs().clamp_min(floor)  # saddle-free: uphill along a direction of negative curvature too
        z = newton_step(model, tokens, z, grad, vectors, values, max_rows, projection)
    return LaplaceProposal(z, vectors.to(z.dtype), values.to(z.dtype), nu, heavy_share, heavy_scale)


def best_chain_end(model, tokens: torch.Tensor, codes: torch.Tensor, max_rows: int = MAX_ROWS) -> torch.Tensor:
    """Per sentence, the chain end (codes (B, C, d)) with the highest log p(x, z): (B, d)."""
    b, c, d = codes.shape
    scores = log_joint(model, tokens.repeat_interleave(c, 0), codes.reshape(-1, d), max_rows).view(b, c)
    scores = torch.nan_to_num(scores, nan=-math.inf)
    return codes[torch.arange(b, device=codes.device), scores.argmax(1)]


def laplace_mixture(model, tokens: torch.Tensor, codes: torch.Tensor, newton_steps: int = 1,
                    max_rows: int = MAX_ROWS, evidence_share: float = 0.5, directions: int | None = None,
                    projection: str = "fp32"):
    """A mixture of Laplace Gaussians per sentence, one per chain end (codes (B, C, d)): an
    `annealing.MixtureReference`. A component's weight is `evidence_share` of its share of the Laplace
    evidence, log p(x, z*) + (d/2) log 2 pi - (1/2) log det P (the mass a Gaussian of that curvature
    holds), plus the rest spread evenly: the evidence favours the heavier modes, and the even part
    bounds every importance weight by C / (1 - evidence_share) times the weight under that component
    alone, where the evidence misjudges a mode (an end between two modes, a Hessian that is not the
    mode's). Ends that found the same mode give the same component, each with its share.

    `directions` (default None: every end its own Hessian, d + 1 gradient rows each): the best end by
    log p(x, z) gets its own Hessian, and each other end the best end's re-measured along its
    `directions` stiffest eigenvectors (`remeasured_precision`, directions + 1 rows per Newton step):
    the modes of one sentence differ in their curvature mostly where the decoder is stiff.

    `projection`: the decoder's projection wherever a value of log p(x, z) only ranks or weighs (the best
    end, the line search, the evidence: "bf16" halves their cost where it is native; any weights make a
    valid reference for AIS); the Hessians' gradient rows are always fp32 (in bf16 their differences
    are mostly rounding: docs/evaluate-command.md, evaluator 11)."""
    from textebm.inference.annealing import MixtureReference

    if not 0.0 <= evidence_share < 1.0:
        raise ValueError(f"evidence_share must be in [0, 1), not {evidence_share}")
    b, c, d = codes.shape
    if directions is not None and directions < 1:
        raise ValueError(f"directions must be at least 1, not {directions}")
    own = c if directions is None or directions >= d else 1  # all d directions: each end's own Hessian
    if own < c:  # the best end first
        scores = torch.nan_to_num(log_joint(model, tokens.repeat_interleave(c, 0), codes.reshape(-1, d), max_rows,
                                            projection), nan=-math.inf).view(b, c)
        codes = codes.gather(1, scores.argsort(1, descending=True).unsqueeze(-1).expand(b, c, d))
    fitted = laplace_proposal(model, tokens.repeat_interleave(own, 0), codes[:, :own].reshape(-1, d), newton_steps,
                              max_rows=max_rows, projection=projection)
    means = fitted.mean.view(b, own, d)
    vectors, precisions = fitted.vectors.view(b, own, d, d), fitted.precisions.view(b, own, d)
    if own < c:
        rest = c - own
        rows = tokens.repeat_interleave(rest, 0)
        best_vectors = vectors[:, 0].double().repeat_interleave(rest, 0)
        best_values = precisions[:, 0].double().repeat_interleave(rest, 0)
        z = codes[:, own:].reshape(-1, d).detach()
        for _ in range(newton_steps):
            values, others, grad = remeasured_precision(model, rows, z, best_vectors, best_values, directions, max_rows)
            z = newton_step(model, rows, z, grad, others, values, max_rows, projection)
        means = torch.cat([means, z.view(b, rest, d)], 1)
        vectors = torch.cat([vectors, others.to(vectors.dtype).view(b, rest, d, d)], 1)
        precisions = torch.cat([precisions, values.to(precisions.dtype).view(b, rest, d)], 1)
    # (d/2) log 2 pi and log Z are the same for every component: only the shares are needed
    evidence = (log_joint(model, tokens.repeat_interleave(c, 0), means.reshape(-1, d), max_rows, projection).view(b, c)
                - 0.5 * precisions.log().sum(-1))
    evidence = torch.nan_to_num(evidence.double(), nan=-math.inf)
    weights = evidence_share * torch.softmax(evidence, 1) + (1 - evidence_share) / c
    matrices = vectors * precisions.rsqrt().unsqueeze(-2)
    return MixtureReference(means, matrices.contiguous(), weights.log())
