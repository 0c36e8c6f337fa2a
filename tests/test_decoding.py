"""Decoding: top-k / top-p filtering, greedy = argmax, exact sampling, batching and end of sentence."""

import pytest
import torch

from textebm.generation.decoding import choose_tokens, decode, filter_logits
from textebm.model.decoder import Decoder

NEG_INF = float("-inf")


def test_top_k_keeps_k():
    logits = torch.tensor([[1.0, 5.0, 3.0, 2.0, 4.0], [0.0, -1.0, 2.0, 1.0, 3.0]])
    kept = torch.isfinite(filter_logits(logits, top_k=2))
    assert kept.tolist() == [[False, True, False, False, True], [False, False, True, False, True]]
    assert torch.equal(filter_logits(logits, top_k=0), logits)
    assert torch.equal(filter_logits(logits, top_k=5), logits)
    assert torch.equal(filter_logits(logits, top_k=99), logits)
    out = filter_logits(logits, top_k=3)
    assert torch.equal(out[torch.isfinite(out)], logits[torch.isfinite(out)])


def test_top_k_keeps_exactly_k_among_ties():
    # bf16 logits tie often: a threshold at the k-th value kept every token tied with it (top-k 1 not greedy)
    logits = torch.tensor([[1.0, 3.0, 3.0, 3.0, 2.0], [2.0, 2.0, 2.0, 2.0, 2.0]])
    for k in (1, 2, 4):
        kept = torch.isfinite(filter_logits(logits, top_k=k))
        assert kept.sum(-1).tolist() == [k, k]
        assert kept[0, 1:4].sum() == min(k, 3)  # the tied top three first


@pytest.mark.parametrize("top_p, expected", [
    (0.3, [True, False, False, False]),   # the top token alone reaches 0.5 >= 0.3
    (0.5, [True, False, False, False]),
    (0.6, [True, True, False, False]),    # 0.5 < 0.6 <= 0.8
    (0.85, [True, True, True, False]),    # 0.8 < 0.85 <= 0.95
    (0.99, [True, True, True, True]),
    (1.0, [True, True, True, True]),
])
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, expected):
    probs = torch.tensor([0.5, 0.3, 0.15, 0.05])
    order = torch.tensor([2, 0, 3, 1])  # shuffle so the filter cannot rely on positions
    logits = probs.log()[order].unsqueeze(0)
    kept = torch.isfinite(filter_logits(logits, top_p=top_p))[0]
    assert kept.tolist() == [expected[i] for i in order.tolist()]


def test_top_k_and_top_p_together():
    logits = torch.tensor([[0.4, 0.3, 0.2, 0.1]]).log()
    # top-k 3 renormalises to 0.44, 0.33, 0.22; top-p 0.7 then keeps two
    kept = torch.isfinite(filter_logits(logits, top_k=3, top_p=0.7))[0]
    assert kept.tolist() == [True, True, False, False]


def test_greedy_choice_is_argmax():
    logits = torch.randn(50, 30, generator=torch.Generator().manual_seed(0))
    assert torch.equal(choose_tokens(logits, True, 1.0, 0, 1.0, None), logits.argmax(-1))
    # top_k=1 sampling and a vanishing temperature also give the argmax
    assert torch.equal(choose_tokens(logits, False, 1.0, 1, 1.0, torch.Generator().manual_seed(1)), logits.argmax(-1))
    assert torch.equal(choose_tokens(logits, False, 1e-4, 0, 1.0, torch.Generator().manual_seed(1)), logits.argmax(-1))


@pytest.mark.parametrize("temperature, top_p", [(1e-38, 1.0), (5e-324, 1.0), (1.0, 1e-46), (1.0, 5e-324)])
def test_the_smallest_temperature_and_top_p_give_the_argmax_not_garbage(temperature, top_p):
    # 1e-38 overflowed logits / T to inf (inf - inf = NaN: the last token every time); a top_p that
    # rounds to 0 in float32 masked every token, the top one too
    logits = torch.randn(50, 30, generator=torch.Generator().manual_seed(0))
    picks = choose_tokens(logits, False, temperature, 0, top_p, torch.Generator().manual_seed(1))
    assert torch.equal(picks, logits.argmax(-1))
    if top_p < 1:
        assert torch.isfinite(filter_logits(logits, top_p=top_p)).sum(-1).eq(1).all()


def test_sampling_follows_softmax_and_never_picks_masked_tokens():
    probs = torch.tensor([0.1, 0.2, 0.3, 0.4, 0.0])
    logits = probs.clamp_min(1e-30).log().expand(20000, 5).contiguous()
    logits[:, 4] = NEG_INF
    picks = choose_tokens(logits, False, 1.0, 0, 1.0, torch.Generator().manual_seed(0))
    freq = torch.bincount(picks, minlength=5).float() / picks.numel()
    assert freq[4] == 0
    assert torch.allclose(freq, probs, atol=0.015), freq
    # temperature 2 flattens: p^(1/2) normalised
    picks = choose_tokens(logits, False, 2.0, 0, 1.0, torch.Generator().manual_seed(1))
    freq = torch.bincount(picks, minlength=5).float() / picks.numel()
    flat = probs.sqrt() / probs.sqrt().sum()
    assert torch.allclose(freq, flat, atol=0.015), freq
    # top-k 2 keeps only tokens 2 and 3, in the ratio 3:4
    picks = choose_tokens(logits, False, 1.0, 2, 1.0, torch.Generator().manual_seed(2))
    assert set(picks.tolist()) == {2, 3}
    assert abs((picks == 3).float().mean().item() - 4 / 7) < 0.015


@pytest.fixture
def decoder():
    torch.manual_seed(0)
    return Decoder(vocab_size=12, embedding_dim=8, hidden_dim=16, latent_dim=3, num_layers=2, cell="lstm").eval()


@pytest.mark.parametrize("greedy", [True, False])
def test_decode_never_emits_padding_or_start_of_sentence(decoder, greedy):
    # never training targets, so nothing taught the model they are unlikely: a sampled <pad> vanished from the
    # printed text yet fed the decoder an input it never saw mid-sentence
    with torch.no_grad():
        decoder.out.bias[0] = 30.0  # <pad> (the decoder's pad_id) and <s> the most probable by far
        decoder.out.bias[1] = 30.0
    z = torch.randn(64, 3, generator=torch.Generator().manual_seed(0))
    out = decode(decoder, z, 1, 2, max_length=12, greedy=greedy, generator=torch.Generator().manual_seed(1))
    assert out.numel() > 0 and not torch.isin(out, torch.tensor([0, 1])).any()


def test_greedy_decode_is_argmax_of_the_teacher_forced_logits(decoder):
    bos, eos = 1, 2
    z = torch.randn(6, 3, generator=torch.Generator().manual_seed(0)) * 3
    out = decode(decoder, z, bos, eos, max_length=15, greedy=True)
    assert out.shape[0] == 6 and out.shape[1] <= 15
    inputs = torch.cat([torch.full((6, 1), bos), out], dim=1)
    with torch.no_grad():
        teacher_forced = decoder.logits
        logits = teacher_forced(z, inputs[:, :-1])
    logits[..., [decoder.pad_id, bos]] = NEG_INF  # never decoded
    argmax = logits.argmax(-1)
    for row in range(6):
        ended = False
        for t in range(out.shape[1]):
            if ended:
                assert out[row, t] == eos  # after the end, only end-of-sentence
                continue
            assert out[row, t] == argmax[row, t]
            ended = out[row, t].item() == eos


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_sampled_decode_is_reproducible_and_batched(cell):
    torch.manual_seed(1)
    decoder = Decoder(12, 8, 16, 3, num_layers=1, cell=cell).eval()
    z = torch.randn(40, 3)
    a = decode(decoder, z, 1, 2, 10, generator=torch.Generator().manual_seed(5))
    b = decode(decoder, z, 1, 2, 10, generator=torch.Generator().manual_seed(5))
    c = decode(decoder, z, 1, 2, 10, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.shape[1] <= 10


def test_decode_stops_when_every_sentence_has_ended(decoder):
    with torch.no_grad():
        decoder.out.bias.fill_(-50.0)
        decoder.out.bias[2] = 50.0  # end of sentence is certain
    out = decode(decoder, torch.zeros(4, 3), 1, 2, max_length=40, greedy=True)
    assert out.tolist() == [[2]] * 4
