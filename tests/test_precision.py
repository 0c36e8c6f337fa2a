"""Reduced-precision decoding: bf16 and int8 step products stay close to fp32, and the model decodes with them."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from textebm.errors import UserError
from textebm.generation.decoding import decode
from textebm.generation.precision import StepProducts, decoding_products
from textebm.model.decoder import Decoder


@pytest.mark.parametrize("cell, layers", [("lstm", 1), ("lstm", 2), ("gru", 2)])
def test_step_products_match_fp32_closely(cell, layers):
    torch.manual_seed(0)
    decoder = Decoder(500, 32, 64, 8, layers, cell).eval()
    z = torch.randn(16, 8)
    tokens = torch.randint(3, 500, (16,))
    with torch.no_grad():
        z_gates, state = decoder.start_decoding(z)
        exact, _ = decoder.step(tokens, z_gates, state, StepProducts(decoder))  # = nn.LSTM/GRU: test_decoder.py
        scale = exact.abs().max().item()
        for precision, tolerance in (("bf16", 0.02), ("int8", 0.05)):
            logits, new_state = decoder.step(tokens, z_gates, state, decoding_products(decoder, precision))
            assert logits.dtype == torch.float32 and all(s.dtype == torch.float32 for s in
                                                         (new_state[0] if cell == "lstm" else new_state))
            error = (logits - exact).abs().max().item()
            assert 0 < error < tolerance * scale, (precision, error, scale)


def test_greedy_decoding_mostly_agrees_across_precisions(trained_run):
    from textebm.model.runs import load_run

    loaded = load_run(trained_run)
    z = torch.randn(64, loaded.config.latent_dim, generator=torch.Generator().manual_seed(0))
    model = loaded.model
    exact = decode(model.decoder, z, model.bos_id, model.eos_id, 20, greedy=True)
    for precision in ("bf16", "int8"):
        model.set_decoding_precision(precision)
        assert model.decoding_precision == precision
        ids = model.generate(8, max_length=20, greedy=True, generator=torch.Generator().manual_seed(1))
        assert ids.shape[0] == 8
        low = decode(model.decoder, z, model.bos_id, model.eos_id, 20, greedy=True,
                     products=model.decoding_products)
        # The first token depends on one step's logits only (later ones on the path so far); near-ties
        # of a tiny model may flip a few argmaxes.
        same = (low[:, 0] == exact[:, 0]).float().mean().item()
        assert same > 0.9, (precision, same)


def test_unknown_precision_and_int8_off_the_cpu():
    decoder = Decoder(50, 8, 16, 4)
    with pytest.raises(UserError, match="precision must be one of"):
        decoding_products(decoder, "fp16")
    on_gpu = SimpleNamespace(out=SimpleNamespace(weight=SimpleNamespace(device=torch.device("cuda"))))
    with pytest.raises(UserError, match="CPU only"):
        decoding_products(on_gpu, "int8")


def test_sample_cli_decodes_at_a_precision(cli, trained_run):
    from textebm.generation.sampling import SamplingOptions, generate_text
    from textebm.model.runs import load_run

    status, out, err = cli("sample", "--checkpoint", trained_run, "-n", "40", "--precision", "int8", "--threads", "1")
    assert status == 0, err

    def library(precision: str) -> list[str]:
        loaded = load_run(trained_run, precision=precision)
        return generate_text(loaded.model, loaded.vocab, 40, SamplingOptions(), seed=0)

    int8 = library("int8")
    assert int8 != library("fp32")  # so that the next line can tell the precisions apart
    assert out.splitlines() == int8
