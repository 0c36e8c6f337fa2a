"""Latent-usage diagnostics read 0 for a decoder that ignores z, and large values for one that uses it."""

from __future__ import annotations

import pytest
import torch

from textebm.inference.diagnostics import (
    AU_THRESHOLD,
    LatentUsage,
    information_rate,
    latent_usage,
    latent_usage_batch,
    posterior_information,
    prior_chain_bias,
    unit_sensitivity,
)


def _usage(model, tokens, chain_steps=20):
    """As validation measures it, with a short noisy chain that barely leaves its random start."""
    generator = torch.Generator().manual_seed(0)
    z_post = model.posterior_sample(tokens, steps=chain_steps, generator=generator)
    usage = LatentUsage()
    usage.add(int((tokens[:, 1:] != model.pad_id).sum()), *latent_usage_batch(model, tokens, z_post, 4, generator))
    return usage.summary()


def test_a_decoder_that_ignores_z_reads_zero(latent_model):
    model, tokens = latent_model(0.0, 48)
    for steps in (0, 3, 20):  # however far the chain went
        figures = _usage(model, tokens, steps)
        assert abs(figures["gap"]) < 1e-6
        assert abs(figures["mutual_information"]) < 1e-4
        assert figures["active_units"] == 0 and max(map(abs, figures["unit_sensitivity"])) < 1e-4


def test_a_decoder_that_is_a_function_of_z_reads_large(latent_model):
    model, tokens = latent_model(5.0, 48)
    model.config.posterior_step_size, model.config.posterior_noise = 0.5, 0.1  # a chain that finds good codes
    figures = _usage(model, tokens)
    assert figures["gap"] > 0.2
    assert figures["mutual_information"] > 1.0
    assert figures["active_units"] >= 6  # of 8


def test_unit_sensitivity_finds_the_units_the_decoder_reads(latent_model):
    model, tokens = latent_model(5.0, 48)
    emb = model.config.embedding_dim
    with torch.no_grad():  # cut units 5, 6, 7 off the decoder
        model.decoder.z_to_state.weight[:, 5:].zero_()
        model.decoder.rnn.weight_ih_l0[:, emb + 5:].zero_()
    g = torch.Generator().manual_seed(1)
    z_post, z_prior = torch.randn(48, 8, generator=g), torch.randn(48, 8, generator=g)
    per_unit = unit_sensitivity(model.decoder, tokens, z_post, z_prior).abs().mean(0)  # random codes: either sign
    assert torch.all(per_unit[5:].abs() < 1e-4)
    assert torch.all(per_unit[:5].abs() > AU_THRESHOLD)


def test_information_rate_is_the_mean_log_likelihood_above_log_px():
    log_lik = torch.tensor([[-10.0, -12.0], [-5.0, -5.0]])
    log_px = torch.tensor([-13.0, -5.0])
    assert information_rate(log_lik, log_px).tolist() == pytest.approx([2.0, 0.0])


@pytest.mark.parametrize("step_size, steps, flagged", [(0.5, 200, True), (0.1, 800, False)])
def test_the_prior_chain_bias_flags_a_too_large_step_on_a_sharp_tilt(latent_model, quadratic_tilt, step_size, steps,
                                                                    flagged):
    """On exp(f) N(0, I) = N(a/p, I/p), p = 4, the unadjusted chain of step s has stationary variance
    1 / (p (1 - p s^2 / 4)) per coordinate: at s = 0.5 a third wider, mean f about 2 nats too low in 16
    dimensions; at s = 0.1 (run long enough to mix) 1% wider, 0.1 nats."""
    model, _ = latent_model(1.0)
    a = torch.zeros(16)
    a[:4] = 6.0
    model.prior = quadratic_tilt(a, 3.0)
    model.config.prior_step_size, model.config.prior_steps, model.config.prior_noise = step_size, steps, 1.0
    bias = prior_chain_bias(model, 2000, ais_chains=1000, ais_steps=300, generator=torch.Generator().manual_seed(0))
    p = model.prior.precision
    exact_mean_f = float(a @ a) / p - 1.5 * (float(a @ a) / p**2 + 16 / p)
    assert abs(bias["exact_mean_f"] - exact_mean_f) < 0.3  # the exact sampler is exact
    assert bias["prior_chain_biased"] is flagged
    inflation = 1 / (1 - p * step_size**2 / 4) - 1
    expected = -1.5 * 16 / p * inflation  # mean f under the chain's wider law, minus the exact mean f
    assert abs(bias["prior_chain_bias_f"] - expected) < 0.4, (bias, expected)


def test_the_prior_chain_bias_is_none_for_the_gaussian_prior(latent_model):
    model, _ = latent_model(1.0)
    model.prior.f = None
    assert prior_chain_bias(model, 10) is None


@pytest.mark.parametrize("prior", ["gaussian", "ebm"])
def test_the_mutual_information_of_a_decoder_that_ignores_z_is_near_zero_at_the_defaults(latent_model, prior):
    from textebm.evaluation.held_out import EvaluationOptions
    from textebm.inference.likelihood import importance_sampled_log_likelihood, partition_function

    model, tokens = latent_model(0.0, 16)
    if prior == "gaussian":
        model.prior.f = None
    options = EvaluationOptions(checkpoint="").check()
    report, _ = partition_function(model.prior, 200, 200, 1000, torch.Generator().manual_seed(0))
    res = importance_sampled_log_likelihood(model, tokens, report["log_z"], options.num_chains,
                                            options.num_is_samples, torch.Generator().manual_seed(1),
                                            anneal_steps=options.anneal_steps)
    information = posterior_information(res)
    assert information.abs().max() <= 0.5, information
    assert information.abs().mean() < 0.1


def test_active_units_are_judged_on_the_first_sentences_exactly_not_whole_batches(latent_model):
    # the last batch was taken whole: with batches of 4 and 5 sentences asked for, 8 were counted
    model, tokens = latent_model(5.0, 12)
    sentences = [[int(t) for t in row if t != model.pad_id] for row in tokens]
    figures = latent_usage(model, sentences, model.pad_id, num_prior=2, batch_size=4,
                           generator=torch.Generator().manual_seed(0), au_sentences=5)
    assert figures["active_units_sentences"] == 5 and figures["sentences"] == 12
