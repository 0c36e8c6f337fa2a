"""The vocabulary shortlist that stands in for log p(x | z) on AIS's path (textebm/inference/shortlist.py)."""

from __future__ import annotations

import pytest
import torch

from textebm.config import Config
from textebm.inference.shortlist import Shortlist
from textebm.model.latent_ebm import LatentEBMTextModel

VOCAB = 40
TOKENS = torch.tensor([[1, 5, 6, 7, 2, 0], [1, 3, 2, 0, 0, 0], [1, 9, 9, 4, 11, 2]])


def _decoder():
    torch.manual_seed(0)
    config = Config(embedding_dim=8, hidden_dim=16, latent_dim=4, energy_hidden=8, dropout=0.0)
    model = LatentEBMTextModel(config, VOCAB, 0, 1, 2).eval()
    with torch.no_grad():
        model.decoder.z_to_state.weight.mul_(4.0)  # z moves the logits, so a far code meets other words
    return model.decoder


def _rows(decoder, centre: torch.Tensor, spread: float, chains: int = 3):
    z = centre.repeat_interleave(chains, 0) + spread * torch.randn(len(centre) * chains, centre.shape[1],
                                                                   generator=torch.Generator().manual_seed(1))
    exact, exact_grad = decoder.log_likelihood_and_grad(z, TOKENS.repeat_interleave(chains, 0))
    return z, exact, exact_grad


def test_the_stand_in_is_exact_at_its_centre_and_only_near_it_with_a_short_list():
    decoder = _decoder()
    centre = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    shortlist = Shortlist(decoder, TOKENS, centre, k=2, rows_per_sentence=3)
    assert (shortlist.sizes < VOCAB).all() and (shortlist.sizes >= 3).all()  # each sentence's own words at least
    z, exact, exact_grad = _rows(decoder, centre, 0.0)
    values, grad = shortlist.value_and_grad(decoder, z, TOKENS.repeat_interleave(3, 0), 0)
    torch.testing.assert_close(values, exact, rtol=0, atol=1e-4)  # the rest's first-order term is exact there
    torch.testing.assert_close(grad, exact_grad, rtol=1e-4, atol=1e-4)
    z, exact, _ = _rows(decoder, centre, 2.0)
    values, _ = shortlist.value_and_grad(decoder, z, TOKENS.repeat_interleave(3, 0), 0)
    assert (values - exact).abs().max() > 1e-2  # away from the centre it is a stand-in, not the likelihood


def test_a_shortlist_of_every_word_is_the_likelihood_everywhere_in_fp32_and_near_it_in_bf16():
    decoder = _decoder()
    centre = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    z, exact, exact_grad = _rows(decoder, centre, 2.0)
    full = Shortlist(decoder, TOKENS, centre, k=VOCAB, rows_per_sentence=3)
    assert (full.sizes == VOCAB).all()
    values, grad = full.value_and_grad(decoder, z, TOKENS.repeat_interleave(3, 0), 0)
    torch.testing.assert_close(values, exact, rtol=0, atol=1e-4)
    torch.testing.assert_close(grad, exact_grad, rtol=1e-4, atol=1e-4)
    low = Shortlist(decoder, TOKENS, centre, k=VOCAB, rows_per_sentence=3, low=True)
    values, grad = low.value_and_grad(decoder, z, TOKENS.repeat_interleave(3, 0), 0)
    assert not torch.equal(values, exact) and (values - exact).abs().max() < 0.1  # bf16 operands, fp32 sums


def test_the_stand_in_gives_its_gradient_under_a_callers_inference_mode():
    decoder = _decoder()
    centre = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    z, _, _ = _rows(decoder, centre, 1.0)
    shortlist = Shortlist(decoder, TOKENS, centre, k=8, rows_per_sentence=3)
    expected = shortlist.value_and_grad(decoder, z, TOKENS.repeat_interleave(3, 0), 0)
    with torch.inference_mode():
        got = shortlist.value_and_grad(decoder, z.clone(), TOKENS.repeat_interleave(3, 0), 0)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_sentences_are_scored_from_any_first_one_and_partial_sentences_are_refused():
    decoder = _decoder()
    centre = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    shortlist = Shortlist(decoder, TOKENS, centre, k=3, rows_per_sentence=2)
    z = centre.repeat_interleave(2, 0) + 0.5
    rows = TOKENS.repeat_interleave(2, 0)
    whole, _ = shortlist.value_and_grad(decoder, z, rows, 0)
    last, _ = shortlist.value_and_grad(decoder, z[4:], rows[4:], 2)  # the third sentence's two rows alone
    torch.testing.assert_close(last, whole[4:])
    with pytest.raises(ValueError, match="not whole sentences"):
        shortlist.value_and_grad(decoder, z[:3], rows[:3], 0)
    with pytest.raises(ValueError, match="not whole sentences"):
        shortlist.value_and_grad(decoder, z[2:], rows[2:], 2)  # past the last sentence
    with pytest.raises(ValueError, match="at least one word"):
        Shortlist(decoder, TOKENS, centre, k=0, rows_per_sentence=2)


@pytest.mark.cuda
@pytest.mark.parametrize("low", [False, True])
def test_the_stand_in_on_a_gpu_is_the_cpus(low):
    decoder = _decoder()
    centre = torch.randn(3, 4, generator=torch.Generator().manual_seed(0))
    z, rows = centre.repeat_interleave(3, 0) + 0.5, TOKENS.repeat_interleave(3, 0)
    values, grad = Shortlist(decoder, TOKENS, centre, k=3, rows_per_sentence=3, low=low).value_and_grad(
        decoder, z, rows, 0)
    decoder = decoder.to("cuda")
    shortlist = Shortlist(decoder, TOKENS.cuda(), centre.cuda(), k=3, rows_per_sentence=3, low=low)
    on_gpu, grad_on_gpu = shortlist.value_and_grad(decoder, z.cuda(), rows.cuda(), 0)
    torch.testing.assert_close(on_gpu.cpu(), values, rtol=1e-3, atol=1e-2 if low else 1e-3)
    torch.testing.assert_close(grad_on_gpu.cpu(), grad, rtol=1e-2, atol=1e-2 if low else 1e-3)
