"""The VAE baseline (textebm/model/vae.py): its ELBO, free bits, KL annealing and the decoder reset of
autoencoder pretraining; a tiny run through `train` (checkpoint, resume), `evaluate` (q as the
proposal, the bound), `sample`, `reconstruct` and the server."""

from __future__ import annotations

import json
import math

import pytest
import torch

from textebm.config import resolve_config
from textebm.data.batches import encode_lines, pad
from textebm.data.vocab import WordVocab
from textebm.inference.likelihood import importance_sampled_log_likelihood
from textebm.inference.vae_diagnostics import posterior_kl
from textebm.model.checkpoints import load_checkpoint
from textebm.model.langevin import gaussian_noise
from textebm.model.runs import build_model, load_run
from textebm.model.vae import RESET_SEED, VAETextModel, free_bits, gaussian_kl, kl_weight, reset_weights
from textebm.training.learner import VAELearner, make_learner

VAE = ["model=vae", "kl_anneal_steps=0", "free_bits=0"]  # the plain ELBO unless a test says otherwise


@pytest.fixture
def tiny_vae(tiny_overrides, train_lines):
    """`make(*overrides)`: an untrained tiny VAE (latent 4, no dropout) and a padded batch of 16 synthetic sentences."""

    def make(*overrides: str):
        config = resolve_config("cpu", "ptb", [*tiny_overrides, *VAE, *overrides])
        vocab = WordVocab.build(train_lines[:300])
        torch.manual_seed(0)
        model = build_model(config, vocab)
        tokens = pad(encode_lines(train_lines[:16], vocab, config.max_length).sentences, vocab.pad_id)
        return model, tokens

    return make


def _records(folder, kind="train"):
    records = [json.loads(line) for line in (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return [r for r in records if r.get("kind") == kind]


def test_the_config_makes_a_vae_of_the_presets_decoder_sizes():
    for preset in ("cpu", "ptb", "snli", "yahoo"):
        ebm, vae = resolve_config(preset, "ptb"), resolve_config(preset, "ptb", ["model=vae"])
        assert (vae.model, vae.prior, ebm.model, ebm.prior) == ("vae", "gaussian", "latent_ebm", "ebm")
        sizes = ("embedding_dim", "hidden_dim", "latent_dim", "num_layers", "cell", "dropout", "batch_size",
                 "max_length", "vocab_size", "generator_lr")
        assert [getattr(vae, k) for k in sizes] == [getattr(ebm, k) for k in sizes], preset


@pytest.mark.parametrize("items, fragment", [
    (["model=vae", "prior=ebm"], "prior=ebm is not implemented"),
    (["model=vae", "prior=none"], "prior=none"),
    (["model=vae", "posterior_init=encoder"], "own encoder"),
    (["model=vae", "free_bits=-0.1"], "free_bits"),
    (["model=vae", "kl_anneal_steps=-1"], "kl_anneal_steps"),
    (["model=vae", "ae_pretrain_steps=-5"], "ae_pretrain_steps"),
    (["model=gan"], "model must be one of"),
])
def test_bad_vae_settings_are_user_errors(items, fragment):
    from textebm.errors import UserError

    with pytest.raises(UserError, match=fragment):
        resolve_config("cpu", "ptb", items)


def test_the_kl_is_the_closed_form_of_two_gaussians():
    mu, std = torch.randn(5, 3), torch.rand(5, 3) + 0.1
    for sigma in (1.0, 0.5):
        expected = torch.distributions.kl_divergence(torch.distributions.Normal(mu, std),
                                                     torch.distributions.Normal(0.0, sigma))
        assert torch.allclose(gaussian_kl(mu, std, sigma), expected, atol=1e-6)
    assert gaussian_kl(torch.zeros(2, 3), torch.ones(2, 3), 1.0).abs().max() < 1e-7  # q = p: no KL


def test_the_training_step_is_the_elbo_of_its_closed_form_pieces(tiny_vae):
    """One step's records are -log p(x|z) at z = mu + sigma * eps (eps the learner's own draw) and the
    closed-form KL of q at the batch; -KL is also E_q[log p(z) - log q(z)] (Monte Carlo, 4,000 draws)."""
    model, tokens = tiny_vae()
    learner = make_learner(model, model.config, "cpu")
    assert isinstance(learner, VAELearner)
    eps_stream = torch.Generator().set_state(learner.chain_rng.get_state())
    with torch.no_grad():
        mean, std = model.variational_posterior(tokens)
        z = mean + std * gaussian_noise(len(tokens), mean.shape[1], None, eps_stream)
        log_lik = model.decoder.log_likelihood(z, tokens)
        kl = gaussian_kl(mean, std, model.prior.sigma).sum(1)
    metrics = learner.step(tokens)
    assert metrics["nll_sum"] == pytest.approx(-float(log_lik.sum()), rel=1e-5)
    assert metrics["kl"] == pytest.approx(float(kl.mean()), rel=1e-5) and metrics["kl"] > 0
    assert metrics["kl_weight"] == 1.0
    draws = mean + std * torch.randn(4000, *mean.shape, generator=torch.Generator().manual_seed(1))
    log_q = torch.distributions.Normal(mean, std).log_prob(draws).sum(-1)
    log_p = torch.distributions.Normal(0.0, model.prior.sigma).log_prob(draws).sum(-1)
    assert torch.allclose((log_p - log_q).mean(0), -kl, atol=0.05)


def test_free_bits_floor_each_dimension_and_stop_its_gradient():
    kl = torch.tensor([0.1, 0.3, 2.0], requires_grad=True)
    term = free_bits(kl, 0.25)
    assert float(term.detach()) == pytest.approx(0.25 + 0.3 + 2.0)
    term.backward()
    assert kl.grad.tolist() == [0.0, 1.0, 1.0]
    # a process's share of the batch mean: the global mean decides which dimensions are floored
    share = torch.tensor([0.2, 0.2, 0.2])
    assert float(free_bits(share, 0.25, batch_mean=torch.tensor([0.4, 0.1, 0.4]))) == pytest.approx(0.65)


def test_a_floor_above_every_dimension_leaves_only_the_reconstruction(tiny_vae):
    """With the floor above every dimension's KL, the KL term is a constant: one step moves the weights
    exactly as a step with KL weight 0 does, and unlike a step with the plain KL."""
    def after_one_step(*overrides):
        model, tokens = tiny_vae(*overrides)
        make_learner(model, model.config, "cpu").step(tokens)
        return torch.cat([p.detach().flatten() for p in model.parameters()])

    floored, reconstruction_only, plain = (after_one_step("free_bits=100"), after_one_step("ae_pretrain_steps=10"),
                                           after_one_step())
    assert torch.equal(floored, reconstruction_only)
    assert not torch.allclose(floored, plain)


def test_the_kl_weight_anneals_from_zero_to_one_after_pretraining():
    cfg = resolve_config("cpu", "ptb", ["model=vae", "kl_anneal_steps=4", "ae_pretrain_steps=3"])
    assert [kl_weight(step, cfg) for step in range(10)] == [0, 0, 0, 0, 0.25, 0.5, 0.75, 1, 1, 1]
    cfg = resolve_config("cpu", "ptb", ["model=vae", "kl_anneal_steps=0"])
    assert kl_weight(0, cfg) == 1.0


def test_the_collapse_warning_of_a_vae_names_its_own_remedies():
    from textebm.training.train import collapse_warning

    vae, ebm = resolve_config("cpu", "ptb", ["model=vae"]), resolve_config("cpu", "ptb")
    message = collapse_warning([0.001, 0.002, 0.001], vae)
    assert "free_bits" in message and "ae_pretrain_steps" in message and "posterior_step_size" not in message
    assert "posterior_step_size" in collapse_warning([0.001, 0.002, 0.001], ebm)


def test_pretraining_resets_the_decoder_at_the_switch(tiny_vae):
    """The first update after ae_pretrain_steps starts from fresh decoder weights and a fresh Adam state
    (so it moves each weight by at most lr from the fresh draw); the encoder keeps its pretrained weights."""
    model, tokens = tiny_vae("ae_pretrain_steps=3", "generator_lr=0.01")
    learner = make_learner(model, model.config, "cpu")
    lr = model.config.generator_lr
    for _ in range(3):
        metrics = learner.step(tokens)
        assert "decoder_reset" not in metrics and metrics["kl_weight"] == 0.0
    pretrained = {k: v.clone() for k, v in model.state_dict().items()}
    fresh = VAETextModel(model.config, model.decoder.out.out_features, 0, 1, 2).decoder
    reset_weights(fresh, model.config.seed + RESET_SEED)
    metrics = learner.step(tokens)
    assert metrics["decoder_reset"] is True
    for name, value in model.decoder.state_dict().items():
        assert (value - fresh.state_dict()[name]).abs().max() <= 1.01 * lr, name
    assert max((model.decoder.state_dict()[n] - pretrained[f"decoder.{n}"]).abs().max()
               for n in fresh.state_dict()) > 10 * lr  # far from the pretrained decoder
    for name, value in model.encoder.state_dict().items():  # one more Adam step (its 4th: a few lr at most)
        assert (value - pretrained[f"encoder.{name}"]).abs().max() <= 5 * lr, name
    steps = {name: [s["step"] for s in opt.state.values()] for name, opt in learner.optimizers.items()}
    assert set(steps) == {"generator", "encoder"}
    assert all(float(s) == 1 for s in steps["generator"]) and all(float(s) == 4 for s in steps["encoder"])


@pytest.fixture(scope="module")
def vae_corpus(tmp_path_factory, train_lines, valid_lines):
    folder = tmp_path_factory.mktemp("vae-corpus")
    for split, lines in (("train", train_lines[:300]), ("valid", valid_lines[:40]),
                         ("test", valid_lines[40:80])):
        (folder / f"{split}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder


VAE_RUN = ["model=vae", "kl_anneal_steps=10", "free_bits=0.1", "generator_lr=3e-3"]


def _train_args(folder, corpus, tiny_overrides, steps: int) -> list[str]:
    sets = [arg for item in [*tiny_overrides, *VAE_RUN] for arg in ("--set", item)]
    return ["train", "--corpus", str(corpus), "--preset", "cpu", *sets, "--out", str(folder), "--device", "cpu",
            "--threads", "1", "--no-progress", "--seed", "0", "--max-steps", str(steps)]


def _train(cli, folder, corpus, tiny_overrides, steps: int):
    return cli(*_train_args(folder, corpus, tiny_overrides, steps))


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory, vae_corpus, tiny_overrides):
    """A tiny VAE run trained for 40 steps through `textebm train` (tests must not modify it)."""
    from textebm.cli import main

    folder = tmp_path_factory.mktemp("vae-runs") / "vae"
    assert main(_train_args(folder, vae_corpus, tiny_overrides, 40)) == 0
    return folder


def test_a_tiny_vae_run_trains_and_records_its_elbo(vae_run):
    config = json.loads((vae_run / "config.json").read_text())
    assert (config["model"], config["prior"]) == ("vae", "gaussian")
    assert set(load_checkpoint(vae_run)["optimizers"]) == {"generator", "encoder"}
    train = _records(vae_run)
    assert [r["step"] for r in train] == list(range(1, 41))
    for r in train:
        assert r["elbo"] == pytest.approx(-r["nll_sentence"] - r["kl"])
        assert r["kl_weight"] == pytest.approx(min(1.0, (r["step"] - 1) / 10))
        assert r["kl_floored"] >= max(r["kl"], 0.1 * 4) - 1e-6
    assert sum(r["nll_token"] for r in train[-5:]) < sum(r["nll_token"] for r in train[:5]) - 5 * 0.5
    final = _records(vae_run, "final")[-1]
    assert final["valid_kl"] > 0 and final["valid_elbo"] < 0 and "valid_active_units" in final
    assert (vae_run / "learning_curves.png").stat().st_size > 10_000  # with the KL panel


def test_a_resumed_vae_run_continues_as_an_uninterrupted_one(cli, tmp_path, vae_corpus, tiny_overrides):
    status, _, err = _train(cli, tmp_path / "cut", vae_corpus, tiny_overrides, 15)
    assert status == 0, err
    status, out, err = cli("train", "--corpus", vae_corpus, "--out", tmp_path / "cut", "--resume", "--max-steps",
                           "25", "--device", "cpu", "--threads", "1", "--no-progress")
    assert status == 0 and "resumed from step 15" in out, err
    status, _, err = _train(cli, tmp_path / "whole", vae_corpus, tiny_overrides, 25)
    assert status == 0, err
    resumed, whole = _records(tmp_path / "cut"), _records(tmp_path / "whole")
    assert [r["step"] for r in resumed] == [r["step"] for r in whole] == list(range(1, 26))
    for a, b in zip(resumed, whole):
        for key in ("nll_token", "kl", "kl_weight"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key)


def test_evaluate_a_vae_run_with_q_as_the_proposal(cli, vae_run, vae_corpus):
    status, out, err = cli("evaluate", "--checkpoint", vae_run, "--max-sentences", "12", "--num-is-samples", "20",
                           "--fppl-samples", "0", "--threads", "1", "--device", "cpu", "--json")
    assert status == 0, err
    report = json.loads(out)
    assert report["model"] == "vae" and report["log_partition"]["log_z"] == 0.0
    sampling, vae = report["importance_sampling"], report["vae"]
    assert sampling["proposal"].startswith("q(z|x)") and sampling["defensive_share"] == 0.0
    assert 1.0 <= sampling["ess_min"] <= sampling["ess_mean"] <= 20.0
    assert report["nll_per_sentence"] <= -report["elbo_per_sentence"]  # the importance-sampled bound is tighter
    assert vae["bound_gap_per_sentence"] >= 0
    loaded = load_run(vae_run)  # the KL is q's closed form at the evaluated sentences
    lines = (vae_corpus / "test.txt").read_text(encoding="utf-8").splitlines()[:12]
    kl = posterior_kl(loaded.model, encode_lines(lines, loaded.vocab, loaded.config.max_length).sentences)
    assert vae["kl_per_sentence"] == pytest.approx(float(kl.sum(1).mean()), rel=1e-4)
    assert vae["kl_per_sentence"] == pytest.approx(sum(vae["kl_per_dimension"]), abs=1e-3)
    assert vae["kl_per_sentence"] > 0 and len(vae["kl_per_dimension"]) == 4
    assert -0.1 <= vae["mutual_information_aggregate"] <= math.log(12) + 0.1  # He et al.'s, over 12 sentences
    assert report["latent_usage"]["active_units"] >= 0 and "q(z|x)" in report["latent_usage"]["estimators"]["gap"]
    assert report["reconstruction"]["inference"] == "the encoder's mean of q(z|x)"
    status, text, err = cli("evaluate", "--checkpoint", vae_run, "--max-sentences", "4", "--num-is-samples", "5",
                            "--fppl-samples", "0", "--threads", "1", "--device", "cpu")
    assert status == 0, err
    assert "VAE: KL(q(z|x) || p(z)) per sentence" in text and "IS: proposal / draws per sentence" in text


def test_the_proposal_is_q_itself(tiny_vae):
    """A decoder that ignores z and an encoder whose q is the prior make every importance weight
    p(x) exactly: the estimate is the decoder's own likelihood, with the full sample size. A proposal
    fitted to chains (or mixed with the prior) would not give equal weights."""
    model, tokens = tiny_vae()
    emb = model.config.embedding_dim
    with torch.no_grad():
        model.decoder.z_to_state.weight.zero_()
        model.decoder.rnn.weight_ih_l0[:, emb:].zero_()
        model.encoder.to_gaussian.weight.zero_()
        model.encoder.to_gaussian.bias.zero_()
    model.eval()
    res = importance_sampled_log_likelihood(model, tokens, 0.0, num_samples=10, generator=torch.Generator())
    with torch.no_grad():
        exact = model.decoder.log_likelihood(torch.zeros(len(tokens), 4), tokens)
    assert torch.allclose(res.log_px, exact, atol=1e-4)
    assert torch.allclose(res.ess, torch.full_like(res.ess, 10.0), atol=1e-3)
    assert res.num_chains == 0 and torch.equal(res.chain_std, torch.ones_like(res.chain_std))


def test_the_code_is_the_encoder_mean(tiny_vae):
    model, tokens = tiny_vae()
    model.eval()
    mean, _ = model.variational_posterior(tokens)
    for seed in (0, 1):
        assert torch.equal(model.infer_code(tokens, 3, torch.Generator().manual_seed(seed)), mean.detach())
    draws = model.posterior_chains(tokens, 2, generator=torch.Generator().manual_seed(0))
    assert draws.shape == (16, 2, 4) and not torch.equal(draws[:, 0], draws[:, 1])


def test_sample_and_reconstruct_a_vae_run(cli, vae_run, vae_corpus):
    status, out, err = cli("sample", "--checkpoint", vae_run, "-n", "3", "--seed", "1", "--threads", "1")
    assert status == 0 and len(out.strip().splitlines()) == 3, err
    status, out, err = cli("reconstruct", "--checkpoint", vae_run, "--input", vae_corpus / "test.txt", "--json",
                           "--threads", "1")
    assert status == 0, err
    report = json.loads(out)
    assert report["inference"] == "the encoder's mean of q(z|x)" and 0 <= report["bleu"] <= 100


def test_serve_a_vae_run(vae_run):
    from server_fixtures import client, live_server

    from server.app import create_app

    with live_server(create_app(vae_run, max_n=4, max_length=20, max_prior_steps=10)) as url, client(url) as http:
        generated = http.post("/generate", json={"n": 2, "seed": 0})
        assert generated.status_code == 200, generated.text
        assert len(generated.json()["sentences"]) == 2
        rebuilt = http.post("/reconstruct", json={"sentences": ["the company said"]})
        assert rebuilt.status_code == 200, rebuilt.text


@pytest.mark.slow
def test_two_gloo_processes_train_the_vae_as_one(tmp_path, valid_lines):
    """Under torchrun the free-bits floor is decided on the global batch's KL: 2 processes give the
    records of 1 (a floor that some dimensions pass and others do not)."""
    import os
    import subprocess
    import sys

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(valid_lines[:200]) + "\n")
    sets = ["model=vae", "kl_anneal_steps=2", "free_bits=0.014", "embedding_dim=16", "hidden_dim=32", "latent_dim=8",
            "dropout=0", "batch_size=8", "log_every=1", "checkpoint_every=2"]
    common = ["-m", "textebm", "train", "--corpus", str(corpus), "--preset", "cpu",
              *[arg for item in sets for arg in ("--set", item)], "--max-steps", "6", "--no-progress", "--threads", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    launchers = {"one": [sys.executable],
                 "two": [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]}
    for name, launcher in launchers.items():
        done = subprocess.run([*launcher, *common, "--out", str(tmp_path / name)], capture_output=True, text=True,
                              env=env, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
    one, two = _records(tmp_path / "one"), _records(tmp_path / "two")
    assert [r["step"] for r in one] == [r["step"] for r in two] == list(range(1, 7))
    assert {r["kl_dims_above_floor"] for r in one} - {0, 8}, "the floor should split the dimensions"
    for a, b in zip(one, two):
        for key in ("nll_token", "kl", "kl_floored", "kl_dims_above_floor"):
            assert a[key] == pytest.approx(b[key], rel=1e-5), (a["step"], key)


def test_the_aggregate_posterior_information_meets_its_closed_form_and_its_bounds():
    """He et al. 2019's I_q(x; z): 0 when q ignores x, log N when the posteriors do not overlap, and
    (d/2) log((s^2 + t^2) / t^2) when the means are N(0, s^2 I) and every std is t (q(z) is then
    N(0, (s^2 + t^2) I) as N grows)."""
    from textebm.inference.vae_diagnostics import aggregate_posterior_information

    g = torch.Generator().manual_seed(0)
    assert abs(aggregate_posterior_information(torch.zeros(500, 4), torch.ones(500, 4), g)) < 0.05
    apart = aggregate_posterior_information(100 * torch.randn(500, 4, generator=g), torch.full((500, 4), 0.01), g)
    assert abs(apart - math.log(500)) < 0.05
    mu = torch.randn(3000, 2, generator=g)
    assert aggregate_posterior_information(mu, torch.full((3000, 2), 0.5), g) == pytest.approx(math.log(5), abs=0.05)
