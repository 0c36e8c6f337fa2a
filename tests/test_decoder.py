"""The decoder: teacher-forced likelihood and the cell-level decoding step agree with nn.LSTM/nn.GRU; the
chain's bf16 projection (chain_precision) stays close to fp32 and never reaches the update."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from textebm.generation.precision import StepProducts
from textebm.model.decoder import Decoder, projection_autocast


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


def _random_batch(vocab: int, rows: int = 8, length: int = 12) -> torch.Tensor:
    tokens = torch.randint(3, vocab, (rows, length), generator=torch.Generator().manual_seed(0))
    tokens[:, 0] = 1
    tokens[0, 8:] = 0  # one padded sentence
    return tokens


def test_fp32_projection_is_the_plain_cross_entropy_and_bf16_stays_close():
    torch.manual_seed(0)
    decoder = Decoder(vocab_size=2000, embedding_dim=32, hidden_dim=64, latent_dim=8).eval()
    z, tokens = torch.randn(8, 8), _random_batch(2000)
    with torch.no_grad():
        logits = decoder.logits(z, tokens[:, :-1])
        plain = -F.cross_entropy(logits.reshape(-1, 2000), tokens[:, 1:].reshape(-1), ignore_index=0,
                                 reduction="none").view(8, -1).sum(1)
        fp32, bf16 = decoder.log_likelihood(z, tokens), decoder.log_likelihood(z, tokens, "bf16")
    torch.testing.assert_close(fp32, plain, rtol=1e-6, atol=0)  # the fp32 likelihood to rounding
    assert bf16.dtype == torch.float32 and not torch.equal(bf16, fp32)  # it did run in bf16
    torch.testing.assert_close(bf16, fp32, rtol=0, atol=0.5)  # measured: at most 0.09 nats of ~83
    grads = []
    for projection in ("fp32", "bf16"):
        code = z.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(decoder(code, tokens, projection).sum(), code)
        grads.append(grad)
    assert F.cosine_similarity(grads[0], grads[1], dim=1).min() > 0.999  # measured: 1.0000 to four digits


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_the_projection_gradients_are_autograd_s_cross_entropy_gradients(device):
    """The projection's own backward pass (the log-probabilities turned into the gradient in place) against
    autograd through F.cross_entropy: the same gradients in the RNN's outputs, the weight and the bias;
    none in padding."""
    torch.manual_seed(0)
    decoder = Decoder(vocab_size=500, embedding_dim=16, hidden_dim=24, latent_dim=4).to(device)
    z, tokens = torch.randn(8, 4, device=device), _random_batch(500).to(device)
    hidden = decoder.hidden_states(z, tokens[:, :-1]).detach().requires_grad_(True)
    weights = (decoder.out.weight, decoder.out.bias)
    upstream = torch.randn(8, device=device)  # a weighted sum, so each sentence's gradient is scaled differently
    ours = decoder.states_log_likelihood(hidden, tokens[:, 1:])
    wanted = (hidden, *weights)
    got = torch.autograd.grad((ours * upstream).sum(), wanted)
    plain = -F.cross_entropy(F.linear(hidden, *weights).reshape(-1, 500), tokens[:, 1:].reshape(-1), ignore_index=0,
                             reduction="none").view(8, -1).sum(1)
    expected = torch.autograd.grad((plain * upstream).sum(), wanted)
    for mine, theirs in zip(got, expected):
        torch.testing.assert_close(mine, theirs, rtol=1e-4, atol=1e-6)
    assert hidden.grad is None and got[0][0, 8:].abs().max() == 0  # the padded positions get no gradient
    assert got[0].abs().sum() > 0


@pytest.mark.parametrize("block", [5, 4096])
def test_the_chains_value_and_gradient_are_autograd_s_likelihood_and_gradient(block, monkeypatch):
    """`log_likelihood_and_grad` (the projection's value and gradient made together, block by block) against
    autograd through `log_likelihood`: the same values and gradients in z in fp32, padding ignored, blocks that
    split sentences (5 rows) or hold them all; bf16 close to them."""
    import textebm.model.decoder as decoder_module

    monkeypatch.setattr(decoder_module, "BLOCK_ROWS", block)
    torch.manual_seed(0)
    decoder = Decoder(vocab_size=2000, embedding_dim=32, hidden_dim=64, latent_dim=8).eval()
    z, tokens = torch.randn(8, 8), _random_batch(2000)
    code = z.clone().requires_grad_(True)
    value = decoder.log_likelihood(code, tokens)
    (grad,) = torch.autograd.grad(value.sum(), code)
    fp32 = decoder.log_likelihood_and_grad(z, tokens)
    torch.testing.assert_close(fp32[0], value.detach(), rtol=1e-6, atol=1e-4)
    torch.testing.assert_close(fp32[1], grad, rtol=1e-4, atol=1e-5)
    bf16 = decoder.log_likelihood_and_grad(z, tokens, "bf16")
    assert not torch.equal(bf16[0], fp32[0])  # it did run in bf16
    torch.testing.assert_close(bf16[0], fp32[0], rtol=0, atol=0.5)
    assert F.cosine_similarity(bf16[1], fp32[1], dim=1).min() > 0.999
    with torch.autocast("cpu", dtype=torch.bfloat16):  # training's precision=bf16 asks for bf16 as well
        under = decoder.log_likelihood_and_grad(z, tokens)
    assert torch.equal(under[0], bf16[0]) and under[1].dtype == torch.float32
    with pytest.raises(ValueError, match="fp32, bf16"):
        decoder.log_likelihood_and_grad(z, tokens, "fp16")


@pytest.mark.parametrize("mode", [torch.no_grad, torch.inference_mode])
def test_the_chains_gradient_flows_under_a_callers_no_grad_and_inference_mode(mode):
    # inference_mode: torch's "element 0 of tensors does not require grad" from every posterior chain
    torch.manual_seed(0)
    decoder = Decoder(vocab_size=200, embedding_dim=16, hidden_dim=32, latent_dim=8).eval()
    z, tokens = torch.randn(4, 8), _random_batch(200)[:4]
    expected = decoder.log_likelihood_and_grad(z, tokens)
    with mode():
        inside = z.clone(), tokens.clone()  # tensors made under the caller's mode, as a chain's are
        got = decoder.log_likelihood_and_grad(*inside)
    assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


@pytest.mark.parametrize("block,device", [(5, "cpu"), (4096, "cpu"), pytest.param(5, "cuda", marks=pytest.mark.cuda)])
def test_the_likelihood_without_autograd_is_the_autograd_likelihood_block_by_block(block, device, monkeypatch):
    """Without autograd `log_likelihood` projects a block of token rows at a time (`projected_values`; on a
    GPU one block): the autograd path's values in fp32, padding ignored; in bf16 exactly the chains' values
    (the same blocks and rounding), which an enclosing autocast asks for too; no full-width log-softmax."""
    import textebm.model.decoder as decoder_module

    monkeypatch.setattr(decoder_module, "BLOCK_ROWS", block)
    torch.manual_seed(0)
    decoder = Decoder(vocab_size=2000, embedding_dim=32, hidden_dim=64, latent_dim=8).eval().to(device)
    z, tokens = torch.randn(8, 8, device=device), _random_batch(2000).to(device)
    with_autograd = decoder.log_likelihood(z, tokens)
    assert with_autograd.requires_grad  # the weights': the autograd path ran
    with torch.no_grad(), torch.profiler.profile() as prof:
        fp32, bf16 = decoder.log_likelihood(z, tokens), decoder.log_likelihood(z, tokens, "bf16")
    assert "aten::_log_softmax" not in {event.key for event in prof.key_averages()}
    torch.testing.assert_close(fp32, with_autograd.detach(), rtol=1e-6, atol=1e-4)
    assert torch.equal(bf16, decoder.log_likelihood_and_grad(z, tokens, "bf16")[0])
    with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16):
        assert torch.equal(decoder.log_likelihood(z, tokens), bf16)
        with pytest.raises(ValueError, match="fp32, bf16"):
            decoder.log_likelihood(z, tokens, "fp16")


def test_the_projection_refuses_a_second_backward_pass():
    """Its backward pass reuses the saved softmax in place: a second pass through the same graph must fail
    loudly, not return a wrong gradient."""
    decoder = Decoder(vocab_size=40, embedding_dim=8, hidden_dim=8, latent_dim=2)
    z = torch.randn(2, 2, requires_grad=True)
    total = decoder(z, torch.randint(3, 40, (2, 6))).sum()
    torch.autograd.grad(total, z, retain_graph=True)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(total, z)


@pytest.mark.parametrize("projection", ["fp32", "bf16"])
def test_the_chains_projection_is_one_matrix_product_not_a_copy_per_sentence(projection):
    """The chains' likelihood (weights detached) on 3-D hidden states once made matmul take its batched
    path, copying the vocabulary weight for every sentence: 14x slower under bf16, 1.4x in fp32. Neither
    the chains' call nor the likelihood's takes it."""
    torch.manual_seed(0)
    decoder = Decoder(vocab_size=300, embedding_dim=8, hidden_dim=16, latent_dim=4)
    z = torch.randn(5, 4, requires_grad=True)
    tokens = torch.randint(4, 300, (5, 9))
    with torch.profiler.profile() as prof:
        decoder.log_likelihood_and_grad(z, tokens, projection)
        torch.autograd.grad(decoder.log_likelihood(z, tokens, projection).sum(), z)
    ops = {event.key for event in prof.key_averages()}
    assert "aten::bmm" not in ops, sorted(ops)


def test_an_enclosing_autocast_still_applies_to_the_fp32_projection():
    decoder = Decoder(vocab_size=50, embedding_dim=8, hidden_dim=12, latent_dim=4).eval()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        inner = decoder.out(torch.randn(2, 12))
        with projection_autocast("fp32", inner.device):
            assert decoder.out(torch.randn(2, 12)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="fp32, bf16"):
        projection_autocast("fp16", inner.device)


def _chains(model, tokens, steps: int, seed: int = 1):
    """The posterior chain's codes with the projection in fp32 and in bf16, from the same noise."""
    codes = []
    for precision in ("fp32", "bf16"):
        model.config = dataclasses.replace(model.config, chain_precision=precision)
        codes.append(model.posterior_sample(tokens, steps=steps, generator=torch.Generator().manual_seed(seed)))
    return codes


def test_bf16_chain_codes_stay_close_to_the_fp32_chain(latent_model):
    model, tokens = latent_model(1.0)
    fp32, bf16 = _chains(model, tokens, steps=10)
    assert not torch.equal(fp32, bf16)
    assert (fp32 - bf16).abs().max() < 5e-3  # measured: 6e-4, codes of norm ~1
    # a decoder driven hard by z: the chain amplifies small differences sentence by sentence, but
    # the codes it finds explain the sentences as well (mean log p(x, z); measured: 0.08 nats)
    model, tokens = latent_model(5.0)
    fp32, bf16 = _chains(model, tokens, steps=10)
    with torch.no_grad():
        gap = (model.log_joint(tokens, bf16) - model.log_joint(tokens, fp32)).mean()
    assert abs(float(gap)) < 1.0


@pytest.mark.parametrize("native", [True, False])
def test_chain_precision_auto_runs_the_bf16_chain_only_where_bf16_is_native(latent_model, monkeypatch, native):
    import textebm.devices

    monkeypatch.setattr(textebm.devices, "_cpu_has_bf16", lambda: native)
    model, tokens = latent_model(1.0)
    fp32, bf16 = _chains(model, tokens, steps=10)
    model.config = dataclasses.replace(model.config, chain_precision="auto")
    auto = model.posterior_sample(tokens, steps=10, generator=torch.Generator().manual_seed(1))
    assert torch.equal(auto, bf16 if native else fp32)


def test_the_generator_update_stays_fp32_under_a_bf16_chain(latent_model):
    from textebm.training.learner import Learner

    model, tokens = latent_model(5.0, sentences=16)
    model.config = dataclasses.replace(model.config, chain_precision="bf16")
    learner = Learner(model, model.config, "cpu")
    seen = {}
    chain = model.posterior_sample

    def recorded_chain(*args, **kwargs):
        z = chain(*args, **kwargs)
        with torch.no_grad():  # the weights the update will read, before it changes them
            seen["fp32"] = -model.decoder.log_likelihood(z, tokens).sum().item()
            seen["bf16"] = -model.decoder.log_likelihood(z, tokens, "bf16").sum().item()
        return z

    model.posterior_sample = recorded_chain
    metrics = learner.step(tokens)
    # fp32's value (to the summation order: the update sums all logits at once, the no-grad call by blocks)
    assert metrics["nll_sum"] == pytest.approx(seen["fp32"], rel=1e-6)
    assert abs(metrics["nll_sum"] - seen["fp32"]) * 10 < abs(metrics["nll_sum"] - seen["bf16"])


def test_a_bad_chain_precision_is_a_user_error():
    from textebm.config import resolve_config, with_chain_overrides
    from textebm.errors import UserError

    with pytest.raises(UserError, match="chain_precision must be one of fp32, bf16, auto, not 'fp16'"):
        resolve_config("cpu", "ptb", ["chain_precision=fp16"])
    config = resolve_config("cpu", "ptb", ["chain_precision=bf16"])
    assert with_chain_overrides(config, ["chain_precision=fp32"]).chain_precision == "fp32"  # a chain key
