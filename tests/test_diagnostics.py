"""Latent-usage diagnostics read 0 for a decoder that ignores z, and large values for one that uses it."""

from __future__ import annotations

import pytest
import torch

from textebm.diagnostics import AU_THRESHOLD, LatentUsage, information_rate, latent_usage_batch, unit_sensitivity


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
