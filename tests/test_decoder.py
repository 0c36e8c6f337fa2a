"""The decoder: teacher-forced likelihood and the cell-level decoding step agree with nn.LSTM/nn.GRU."""

import pytest
import torch

from textebm.decoder import Decoder
from textebm.precision import StepProducts


@pytest.mark.parametrize("cell,layers", [("lstm", 1), ("lstm", 2), ("gru", 1), ("gru", 2)])
def test_cell_level_step_matches_teacher_forced_forward(cell, layers):
    torch.manual_seed(0)
    decoder = Decoder(vocab_size=50, embedding_dim=8, hidden_dim=12, latent_dim=4, num_layers=layers,
                      cell=cell, dropout=0.0).eval()
    z = torch.randn(3, 4)
    tokens = torch.randint(4, 50, (3, 7))
    with torch.no_grad():
        reference = decoder.logits(z, tokens)  # nn.LSTM / nn.GRU over the whole sequence
        z_gates, state = decoder.start_decoding(z)
        stepped = []
        for t in range(tokens.shape[1]):
            logits, state = decoder.step(tokens[:, t], z_gates, state, StepProducts(decoder))
            stepped.append(logits)
    torch.testing.assert_close(torch.stack(stepped, dim=1), reference, rtol=1e-5, atol=1e-5)


def test_log_likelihood_ignores_padding_and_sums_tokens():
    torch.manual_seed(0)
    decoder = Decoder(vocab_size=20, embedding_dim=8, hidden_dim=8, latent_dim=2, pad_id=0).eval()
    z = torch.randn(1, 2)
    short = torch.tensor([[1, 5, 6, 2]])
    padded = torch.tensor([[1, 5, 6, 2, 0, 0]])
    with torch.no_grad():
        ll_short, ll_padded = decoder.log_likelihood(z, short), decoder.log_likelihood(z, padded)
        logp = decoder.logits(z, short[:, :-1]).log_softmax(-1)
    expected = logp[0, 0, 5] + logp[0, 1, 6] + logp[0, 2, 2]
    torch.testing.assert_close(ll_short, ll_padded)
    torch.testing.assert_close(ll_short[0], expected)
