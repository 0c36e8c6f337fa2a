"""textebm.generation.reconstruction: a decoder whose z carries the sentence reconstructs it (BLEU 100, every
sentence exact, far above the prior-sample baseline); the same decoder with its paths from z cut
scores exactly its baseline. The models are the conftest's small latent models (`latent_model`)."""

from __future__ import annotations

import pytest
import torch

from textebm.data.batches import encode_lines, pad
from textebm.data.vocab import WordVocab
from textebm.generation.decoding import decode
from textebm.generation.reconstruction import bleu, exact_share, reconstruct, reconstruct_lines


@pytest.fixture
def vocab(train_lines):
    return WordVocab.build(train_lines[:500])  # the vocabulary `latent_model` builds its models with


@pytest.fixture
def memorising(latent_model, vocab, train_lines):
    """A z-driven model: the decoder fit (teacher forcing, 150 Adam steps, about a second) to
    reproduce 8 short synthetic sentences, each from its own random code, so that p(x | z) names the
    sentence and its posterior sits near that code. Its posterior chain runs 10 steps (the `cpu`
    preset's K1), enough to find the code from noise. Returns (model, encoded sentences)."""
    model, _ = latent_model(1.0)
    assert len(vocab) == model.decoder.out.out_features
    lines = [line for line in train_lines[:500] if 4 <= len(line.split()) <= 10][:8]
    sentences = encode_lines(lines, vocab, 30).sentences
    tokens = pad(sentences, model.pad_id)
    codes = torch.randn(len(lines), model.prior.latent_dim, generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.Adam(model.decoder.parameters(), lr=1e-2)
    for _ in range(150):
        loss = -model.decoder.log_likelihood(codes, tokens).mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.config.posterior_steps = 10
    ids = decode(model.decoder, codes, model.bos_id, model.eos_id, 31, greedy=True)
    assert [vocab.decode(r) for r in ids.tolist()] == [vocab.decode(s) for s in sentences], "the fit failed"
    return model, sentences


def test_a_z_driven_model_reconstructs_its_sentences(memorising, vocab):
    model, sentences = memorising
    result = reconstruct(model, vocab, sentences, seed=0, batch_size=3)  # 3 batches, sorted by length
    assert result.outputs == result.inputs  # every sentence, in the input order
    assert result.bleu == pytest.approx(100.0) and result.exact_match == 1.0
    assert result.baseline_bleu < 50 and result.baseline_exact_match < 0.5
    assert "above the baseline" in result.verdict
    rows = result.rows()
    assert all(r["exact"] and r["bleu"] == pytest.approx(100.0) for r in rows)


def test_a_decoder_that_ignores_z_scores_exactly_its_prior_sample_baseline(memorising, vocab):
    model, sentences = memorising
    emb = model.config.embedding_dim
    with torch.no_grad():  # cut every path from z to the output, as `latent_model(0.0)` does
        model.decoder.z_to_state.weight.zero_()
        model.decoder.rnn.weight_ih_l0[:, emb:].zero_()
    result = reconstruct(model, vocab, sentences, seed=1, batch_size=3)
    assert len(set(result.outputs)) == 1  # one sentence, whatever the code
    assert result.outputs == result.baseline
    assert result.bleu > 0  # it shares words with the inputs: the equality below is not 0 == 0
    assert result.bleu == pytest.approx(result.baseline_bleu, abs=1e-9)
    assert result.exact_match == result.baseline_exact_match <= 1 / len(sentences)
    assert "no better than a decoder that ignores z" in result.verdict
    summary = result.summary()
    assert summary["num_sentences"] == 8 and summary["bleu_above_baseline"] == pytest.approx(0.0, abs=1e-9)


def test_same_seed_same_result_and_references_through_the_vocabulary(latent_model, vocab, train_lines):
    model, _ = latent_model(5.0)
    known = train_lines[0].split()[:3]  # words of the vocabulary
    lines = [" ".join([*known, "xyzzy-not-a-word", *known]), " ".join(known[:2])]
    first = reconstruct_lines(model, vocab, lines, seed=4)
    assert first.inputs == [" ".join([*known, "<unk>", *known]), " ".join(known[:2])]
    again = reconstruct_lines(model, vocab, lines, seed=4)
    assert (again.outputs, again.baseline, again.bleu) == (first.outputs, first.baseline, first.bleu)
    assert first.truncated == 0 and reconstruct_lines(model, vocab, ["a " * 40], seed=4).truncated == 1


def test_the_code_is_the_mean_of_posterior_samples(latent_model):
    model, tokens = latent_model(5.0, sentences=4)
    z = model.infer_code(tokens, 3, torch.Generator().manual_seed(2))
    samples = model.posterior_chains(tokens, 3, generator=torch.Generator().manual_seed(2))
    assert z.shape == (4, model.prior.latent_dim)
    assert torch.allclose(z, samples.mean(dim=1))


def test_bleu_and_exact_share():
    refs = ["the cat sat on the mat", "a b c d"]
    assert bleu(refs, refs) == pytest.approx(100.0)
    assert bleu(refs, ["dog", "e f g h"]) < 1.0
    assert 0 < bleu(refs, ["the cat sat on a mat", "a b c d"]) < 100
    assert exact_share(refs, ["the cat sat on the mat", "a b c"]) == 0.5
    assert bleu(refs, ["", ""]) == 0.0
