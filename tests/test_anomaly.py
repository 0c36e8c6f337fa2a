"""textebm.evaluation.anomaly: the AUROC (Mann-Whitney, ties half) and the per-sentence anomaly scores."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from textebm.evaluation.anomaly import auroc, neg_log_joint, score_lines


def brute_force_auroc(normal, anomalous) -> float:
    wins = sum(1.0 if a > n else 0.5 if a == n else 0.0 for n, a in itertools.product(normal, anomalous))
    return wins / (len(normal) * len(anomalous))


def test_auroc_perfect_separation_is_one():
    assert auroc([0.1, 0.2, 0.3], [1.0, 2.0]) == 1.0


def test_auroc_reversed_is_zero():
    assert auroc([1.0, 2.0], [0.1, 0.2, 0.3]) == 0.0


def test_auroc_all_ties_is_one_half():
    assert auroc([5.0, 5.0, 5.0], [5.0, 5.0]) == 0.5


def test_auroc_hand_computed_case():
    # anomalous 2 beats 1, ties 2, loses to 3: 1.5; anomalous 4 beats all three: 3. (1.5 + 3) / 6.
    assert auroc([1.0, 2.0, 3.0], [2.0, 4.0]) == pytest.approx(0.75)


def test_auroc_matches_brute_force_with_ties():
    rng = random.Random(3)
    for _ in range(20):
        normal = [rng.randint(0, 5) for _ in range(rng.randint(1, 12))]
        anomalous = [rng.randint(0, 7) for _ in range(rng.randint(1, 12))]
        assert auroc(normal, anomalous) == pytest.approx(brute_force_auroc(normal, anomalous))


def test_auroc_rejects_empty_and_non_finite():
    with pytest.raises(ValueError):
        auroc([], [1.0])
    with pytest.raises(ValueError):
        auroc([1.0], [math.nan])


def test_score_lines_shapes_order_and_per_token(trained_run, short_lines):
    from textebm.model.runs import load_run

    loaded = load_run(trained_run)
    lines = short_lines[:6]
    scores = score_lines(loaded.model, loaded.vocab, lines, num_chains=2, seed=1, batch_size=4)
    assert len(scores.total) == len(scores.per_token) == len(scores.tokens) == 6
    for line, n, total, per_token in zip(lines, scores.tokens, scores.total, scores.per_token):
        assert n == len(loaded.vocab.encode(line)) + 1  # words + </s>
        assert math.isfinite(total) and per_token == pytest.approx(total / n)
    again = score_lines(loaded.model, loaded.vocab, lines, num_chains=2, seed=1, batch_size=4)
    assert again.total == scores.total  # same seed, same scores
    assert scores.rows(lines)[2] == {"sentence": lines[2], "tokens": scores.tokens[2], "total": scores.total[2],
                                     "per_token": scores.per_token[2]}
    with torch.inference_mode():  # as researchers wrap evaluation code: it failed inside torch
        assert score_lines(loaded.model, loaded.vocab, lines, num_chains=2, seed=1, batch_size=4).total == scores.total


def test_neg_log_joint_averages_the_chains(trained_run, short_lines):
    """With one chain per sentence repeated by hand, the mean matches the batched chains' mean."""
    import torch

    from textebm.data.batches import encode_lines, pad
    from textebm.model.runs import load_run

    loaded = load_run(trained_run)
    model = loaded.model
    tokens = pad(encode_lines(short_lines[:3], loaded.vocab, 30).sentences, model.pad_id)
    batched = neg_log_joint(model, tokens, 3, torch.Generator().manual_seed(0))
    z = model.posterior_sample(tokens.repeat_interleave(3, dim=0), generator=torch.Generator().manual_seed(0))
    manual = -model.log_joint(tokens.repeat_interleave(3, dim=0), z).view(3, 3).mean(dim=1)
    assert torch.allclose(batched, manual.detach(), atol=1e-4)
