"""Anomaly scores for sentences, and the AUROC that says how well they separate two sets.

The paper scores images by the log joint log p(x, z) at posterior samples z ~ p(z | x); here a
sentence gets the same treatment: score(x) = -log p_beta(x | z) - log p_alpha(z), averaged over a
few independent posterior chains (one chain is noisy; the average is not). High score = anomalous.

The prior's log density is unnormalised (the EBM's log Z is unknown), so the score is defined up to
one constant per model: rankings by the total score are unaffected by it. The per-token score
(total / predicted tokens, `</s>` included) makes sentences of different lengths comparable (a
long sentence has a large total just because it has many words); it carries the constant as
log Z / n, which is why both are reported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from textebm.arguments import check_chains, check_count, check_lines, check_seed, check_steps
from textebm.data.batches import encode_lines, pad
from textebm.modes import eval_mode


def auroc(scores_normal: Sequence[float], scores_anomalous: Sequence[float]) -> float:
    """P(score of a random anomalous item > score of a random normal one), ties counted half: the
    Mann-Whitney U statistic over n_normal * n_anomalous. 1.0 = perfect separation, 0.5 = chance."""
    normal = torch.as_tensor(list(scores_normal), dtype=torch.float64)
    anomalous = torch.as_tensor(list(scores_anomalous), dtype=torch.float64)
    if normal.numel() == 0 or anomalous.numel() == 0:
        raise ValueError("auroc needs at least one normal and one anomalous score")
    if not (torch.isfinite(normal).all() and torch.isfinite(anomalous).all()):
        raise ValueError("auroc needs finite scores")
    ordered = torch.sort(normal).values
    below = torch.searchsorted(ordered, anomalous, right=False)  # normals strictly below each anomalous score
    not_above = torch.searchsorted(ordered, anomalous, right=True)  # ... below or equal
    wins = below.double() + 0.5 * (not_above - below).double()
    return float(wins.sum() / (normal.numel() * anomalous.numel()))


@dataclass
class SentenceScores:
    total: list[float]  # -log p(x, z) per sentence, averaged over chains (nats)
    per_token: list[float]  # total / tokens
    tokens: list[int]  # predicted tokens: words + end of sentence
    truncated: int  # lines cut to the run's max_length before scoring

    def rows(self, lines: list[str]) -> list[dict]:
        """One record per scored line (`textebm score --json` and the server's /score answer alike)."""
        return [{"sentence": s, "tokens": n, "total": t, "per_token": p}
                for s, n, t, p in zip(lines, self.tokens, self.total, self.per_token)]


def score_lines(model, vocab, lines: list[str], num_chains: int = 4, seed: int = 0, batch_size: int = 64,
                posterior_steps: int | None = None, max_length: int | None = None, progress=None) -> SentenceScores:
    """Anomaly scores of `lines`, in their order. Deterministic for a seed (and batch size).
    `progress(done, total)` is called after each batch.

    Sentences are batched by length (less padding); each batch runs `num_chains` chains per
    sentence at once as rows of one posterior chain."""
    lines, seed = check_lines(lines), check_seed(seed)
    num_chains, batch_size = check_chains("num_chains", num_chains), check_count("batch_size", batch_size)
    posterior_steps = check_steps("posterior_steps", posterior_steps)
    encoded = encode_lines(lines, vocab, max_length or model.config.max_length)
    sentences = encoded.sentences
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    generator = torch.Generator(device=model.device).manual_seed(seed)
    total = torch.empty(len(sentences), dtype=torch.float64)
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            tokens = pad([sentences[i] for i in rows], model.pad_id).to(model.device)
            total[rows] = neg_log_joint(model, tokens, num_chains, generator, posterior_steps).double().cpu()
            if progress is not None:
                progress(start + len(rows), len(order))
    counts = torch.tensor([len(s) - 1 for s in sentences], dtype=torch.float64)
    return SentenceScores(total.tolist(), (total / counts).tolist(), counts.long().tolist(), encoded.truncated)


def neg_log_joint(model, tokens: torch.Tensor, num_chains: int, generator: torch.Generator | None = None,
                  posterior_steps: int | None = None) -> torch.Tensor:
    """-log p(x, z) averaged over `num_chains` posterior samples per sentence: shape (batch,)."""
    batch = tokens.shape[0]
    z = model.posterior_chains(tokens, num_chains, posterior_steps, generator).flatten(0, 1)
    with torch.no_grad():
        log_joint = model.log_joint(tokens.repeat_interleave(num_chains, dim=0), z)
    return -log_joint.view(batch, num_chains).mean(dim=1)
