"""The learning loop: it lowers validation NLL (on the synthetic corpus), never trains on NaN, and logs/checkpoints."""

import json
import math

import pytest
import torch

from textebm.config import resolve_config
from textebm.data.batches import encode_lines, pad
from textebm.data.vocab import build_vocab
from textebm.errors import UserError
from textebm.model.checkpoints import load_checkpoint
from textebm.model.runs import build_model, create_run
from textebm.training.train import train, validate
from textebm.training.training_log import truncate_metrics

QUIET = dict(progress=False, echo=lambda text: None)


def _setup(lines, valid_lines, overrides, seed=0):
    cfg = resolve_config("cpu", "ptb", overrides)
    vocab = build_vocab(lines, cfg.tokenizer, cfg.vocab_size, cfg.min_freq, cfg.lowercase)
    train_data = encode_lines(lines, vocab, cfg.max_length)
    valid_data = encode_lines(valid_lines, vocab, cfg.max_length)
    torch.manual_seed(seed)
    return cfg, vocab, build_model(cfg, vocab), train_data, valid_data


def _records(folder, kind=None):
    lines = (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    records = [json.loads(line) for line in lines if line.strip()]
    return [r for r in records if kind is None or r.get("kind") == kind]


def test_tiny_run_lowers_validation_nll(tmp_path, train_lines, valid_lines):
    """150 steps on the synthetic corpus's 2,000 training lines (tiny LSTM, K1=3, K0=5): validation NLL
    per token (posterior z) falls from 6.96 (untrained, 1,000-word vocabulary) to 4.42 (measured)."""
    overrides = ["embedding_dim=16", "hidden_dim=32", "latent_dim=4", "energy_hidden=16", "prior_steps=5",
                 "posterior_steps=3", "batch_size=16", "dropout=0.0", "log_every=50", "checkpoint_every=1000",
                 "valid_every=0", "num_log_samples=1", "valid_batches=0", "max_length=30", "vocab_size=1000",
                 "generator_lr=3e-3"]
    cfg, vocab, model, train_data, valid_data = _setup(train_lines, valid_lines, overrides)
    before = validate(model, valid_data, cfg, "cpu")
    create_run(tmp_path, cfg, vocab)
    result = train(model, cfg, train_data, valid_data, tmp_path, vocab, "cpu", max_steps=150, **QUIET)
    after = validate(model, valid_data, cfg, "cpu")
    assert result.step == 150 and result.stopped_by == "max_steps"
    assert after["valid_tokens"] == before["valid_tokens"] > 3000
    assert after["valid_nll_posterior"] < before["valid_nll_posterior"] - 1.5, (before, after)
    assert after["valid_nll_prior"] < before["valid_nll_prior"] - 1.5
    # the run's own records say the same
    final = _records(tmp_path, "final")[-1]
    assert final["step"] == 150
    assert final["valid_nll_posterior"] == pytest.approx(after["valid_nll_posterior"], rel=1e-6)
    train_records = _records(tmp_path, "train")
    assert [r["step"] for r in train_records] == [1, 50, 100, 150]
    assert train_records[-1]["nll_token"] < train_records[0]["nll_token"] - 1.5
    assert all("energy_gap" in r for r in train_records)


def test_prior_none_trains_a_plain_language_model(tmp_path, train_lines, valid_lines):
    """The baseline: the same decoder without a latent, trained by the same loop (no chains, no energy)."""
    overrides = ["prior=none", "embedding_dim=16", "hidden_dim=32", "batch_size=16", "dropout=0.0",
                 "checkpoint_every=1000", "num_log_samples=1", "valid_batches=0", "max_length=30",
                 "vocab_size=1000", "generator_lr=3e-3"]
    cfg, vocab, model, train_data, valid_data = _setup(train_lines[:1000], valid_lines[:200], overrides)
    before = validate(model, valid_data, cfg, "cpu")
    create_run(tmp_path, cfg, vocab)
    result = train(model, cfg, train_data, valid_data, tmp_path, vocab, "cpu", max_steps=60, **QUIET)
    after = result.last_validation
    assert after["valid_nll_posterior"] == after["valid_nll_prior"]  # no latent: one exact NLL
    assert after["valid_nll_posterior"] < before["valid_nll_posterior"] - 1.0, (before, after)
    assert set(load_checkpoint(tmp_path)["optimizers"]) == {"generator"}
    assert all("energy_gap" not in r for r in _records(tmp_path, "train"))


@pytest.fixture
def small_setup(train_lines, tiny_overrides):
    def make(*extra):
        return _setup(train_lines[:300], train_lines[300:340], [*tiny_overrides, *extra])
    return make


def test_validation_is_deterministic_and_leaves_the_training_rng_alone(small_setup):
    cfg, vocab, model, train_data, valid_data = small_setup()
    torch.manual_seed(42)
    state = torch.get_rng_state()
    a = validate(model, valid_data, cfg, "cpu")
    assert torch.equal(torch.get_rng_state(), state)
    b = validate(model, valid_data, cfg, "cpu")
    assert a == b


def _poison_z(model):
    with torch.no_grad():
        model.prior.f[0].weight.fill_(float("nan"))  # grad f is NaN: every chain's z goes non-finite


def _poison_energy(model):
    with torch.no_grad():
        model.prior.f[-1].bias.fill_(float("nan"))  # f(z) is NaN, but grad f (and so z) stays finite


def _train_until_stopped(tmp_path, setup, match: str) -> list[str]:
    """Train a poisoned model until the non-finite guard stops the run (a UserError matching `match`);
    returns the names of the decoder tensors that changed meanwhile."""
    cfg, vocab, model, train_data, valid_data = setup
    before = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    create_run(tmp_path, cfg, vocab)
    with pytest.raises(UserError, match=match):
        train(model, cfg, train_data, valid_data, tmp_path, vocab, "cpu", max_steps=10, **QUIET)
    return [k for k, v in model.decoder.state_dict().items() if not torch.equal(v, before[k])]


def test_non_finite_chain_stops_the_run_without_training_on_nan(tmp_path, small_setup):
    setup = small_setup("nonfinite_policy=stop")
    _poison_z(setup[2])
    changed = _train_until_stopped(tmp_path, setup, "training stopped at step 1.*non-finite")
    assert not changed, f"a non-finite step changed the decoder: {changed}"
    assert [r["step"] for r in _records(tmp_path, "skipped")] == [1]
    assert "non-finite" in (tmp_path / "train.log").read_text(encoding="utf-8")


def test_non_finite_steps_are_skipped_then_the_run_stops(tmp_path, small_setup):
    setup = small_setup("nonfinite_policy=skip", "max_skipped_steps=3")
    _poison_z(setup[2])
    changed = _train_until_stopped(tmp_path, setup, "step 3")
    assert [r["step"] for r in _records(tmp_path, "skipped")] == [1, 2, 3]
    assert not _records(tmp_path, "train")
    assert not changed


def test_non_finite_energy_skips_the_whole_step(tmp_path, small_setup):
    """A NaN energy f(z) (finite gradient, finite z) must be caught before any update: a step that is
    logged as skipped must not have updated the generator."""
    setup = small_setup("nonfinite_policy=skip", "max_skipped_steps=2")
    _poison_energy(setup[2])
    changed = _train_until_stopped(tmp_path, setup, "step 2")
    assert [r["step"] for r in _records(tmp_path, "skipped")] == [1, 2]
    assert not changed, f"skipped steps updated the decoder: {changed}"


def test_checkpoints_every_k_steps_and_at_the_end(tmp_path, small_setup):
    cfg, vocab, model, train_data, valid_data = small_setup("checkpoint_every=4", "log_every=1")
    create_run(tmp_path, cfg, vocab)
    result = train(model, cfg, train_data, valid_data, tmp_path, vocab, "cpu", max_steps=6, **QUIET)
    assert result.step == 6
    assert load_checkpoint(tmp_path)["step"] == 6
    assert [r["step"] for r in _records(tmp_path, "train")] == [1, 2, 3, 4, 5, 6]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_the_weights_are_saved_before_the_final_validation(tmp_path, small_setup, monkeypatch):
    """A run killed during its (long) final validation keeps its training: the resume only validates."""
    cfg, vocab, model, train_data, valid_data = small_setup("checkpoint_every=100", "log_every=1")
    create_run(tmp_path, cfg, vocab)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("textebm.training.train.validate", killed)
    with pytest.raises(KeyboardInterrupt):
        train(model, cfg, train_data, valid_data, tmp_path, vocab, "cpu", max_steps=3, **QUIET)
    assert load_checkpoint(tmp_path)["step"] == 3
    monkeypatch.undo()
    result = train(model, cfg, train_data, valid_data, tmp_path, vocab, "cpu", max_steps=3, resume=True, **QUIET)
    assert result.step == 3
    assert [r["step"] for r in _records(tmp_path, "final")] == [3]
    assert [r["step"] for r in _records(tmp_path, "train")] == [1, 2, 3]


def test_training_needs_an_end(tmp_path, small_setup):
    cfg, vocab, model, train_data, valid_data = small_setup("max_epochs=0")
    create_run(tmp_path, cfg, vocab)
    with pytest.raises(UserError, match="no end"):
        train(model, cfg, train_data, valid_data, tmp_path, vocab, "cpu", **QUIET)


def test_max_epochs_ends_the_run(tmp_path, small_setup):
    cfg, vocab, model, train_data, valid_data = small_setup("max_epochs=1", "batch_size=64", "log_every=1")
    create_run(tmp_path, cfg, vocab)
    result = train(model, cfg, train_data, valid_data, tmp_path, vocab, "cpu", **QUIET)
    per_epoch = -(-len(train_data.sentences) // 64)
    assert result.step == per_epoch and result.stopped_by == "max_epochs"
    assert [r["step"] for r in _records(tmp_path, "epoch")] == [per_epoch]


def test_truncate_metrics_forgets_records_after_the_checkpoint(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "kind": "train"}) + "\n" for s in range(1, 8)), encoding="utf-8")
    truncate_metrics(tmp_path, 4)
    assert [r["step"] for r in _records(tmp_path)] == [1, 2, 3, 4]


def test_truncate_metrics_survives_a_line_cut_by_a_kill(tmp_path):
    """SIGKILL can land in the middle of an append to metrics.jsonl: resuming must still work
    (the half line belongs to a step after the checkpoint anyway)."""
    (tmp_path / "metrics.jsonl").write_text(
        json.dumps({"step": 1, "kind": "train"}) + "\n" + '{"step": 2, "kind": "tr', encoding="utf-8")
    truncate_metrics(tmp_path, 1)
    assert [r["step"] for r in _records(tmp_path)] == [1]


def test_a_damaged_line_inside_the_metrics_is_named_not_dropped(tmp_path):
    """A line cut short is the last one; one elsewhere is damage: resuming (which rewrites the file) and the
    validation history stop and name it instead of deleting the record for good."""
    from textebm.training.training_log import validation_records

    lines = [json.dumps({"step": 1, "kind": "train"}), '{"step": 2, "kind": "va',
             json.dumps({"step": 3, "kind": "valid"})]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"metrics.jsonl: line 2 is not a JSON record \(a damaged file"):
        truncate_metrics(tmp_path, 3)
    with pytest.raises(UserError, match="line 2 is not a JSON record"):
        validation_records(tmp_path)
    assert (tmp_path / "metrics.jsonl").read_text(encoding="utf-8") == "\n".join(lines) + "\n"  # left as it was


def test_collapse_warning_fires_only_on_a_lasting_small_gap():
    from textebm.training.train import COLLAPSE_GAP, collapse_warning

    cfg = resolve_config("cpu", "ptb", [])
    small = COLLAPSE_GAP / 4
    assert collapse_warning([small, small], cfg) is None  # too early to tell
    assert collapse_warning([small, 0.5, small, small], cfg) is None  # not lasting
    message = collapse_warning([0.5, small, small, small], cfg)
    assert message and "posterior collapse" in message and "posterior_noise" in message


def _warnings_of_run(tmp_path, lines, valid_lines, overrides):
    overrides = ["embedding_dim=16", "hidden_dim=32", "latent_dim=4", "energy_hidden=16", "prior_steps=5",
                 "batch_size=16", "dropout=0.0", "log_every=50", "checkpoint_every=1000", "valid_every=10",
                 "num_log_samples=1", "valid_batches=2", "max_length=30", "vocab_size=500", "generator_lr=3e-3",
                 "posterior_init=noise", *overrides]
    cfg, vocab, model, train_data, valid_data = _setup(lines[:400], valid_lines, overrides)
    create_run(tmp_path, cfg, vocab)
    messages = []
    train(model, cfg, train_data, valid_data, tmp_path, vocab, "cpu", max_steps=40, progress=False,
          echo=messages.append)
    return [m for m in messages if "posterior collapse" in m], _records(tmp_path, "valid")


def test_collapse_warning_on_a_collapsed_run_and_not_on_a_healthy_one(tmp_path, train_lines, valid_lines):
    # K1 = 0: the "posterior" codes are prior noise, so the decoder learns to ignore z.
    warned, records = _warnings_of_run(tmp_path / "collapsed", train_lines, valid_lines,
                                       ["posterior_steps=0"])
    assert len(warned) == 1, records  # once, not at every validation
    assert all(abs(r["valid_gap"]) < 0.02 for r in records), records
    assert all(r["valid_active_units"] == 0 for r in records), records
    # Large, nearly noiseless posterior steps: z explains the sentence.
    warned, records = _warnings_of_run(tmp_path / "healthy", train_lines, valid_lines,
                                       ["posterior_steps=5", "posterior_step_size=0.5", "posterior_noise=0.1"])
    assert warned == [] and records[-1]["valid_gap"] > 0.04, records  # measured: 0.06
    assert records[-1]["valid_rough_mi"] > 0.4 and records[-1]["valid_active_units"] >= 1  # 0.50, 1


def test_energy_gap_warning_fires_only_on_a_lasting_climb():
    from textebm.training.train import GAP_GROWTH_NATS, energy_gap_warning

    cfg = resolve_config("cpu", "ptb", [])
    assert energy_gap_warning([1.0, 2.0, 3.0], cfg) is None  # too early to tell
    assert energy_gap_warning([1.0, 3.0, 2.5, 6.0], cfg) is None  # not steady
    assert energy_gap_warning([1.0, 1.2, 1.4, 1.6], cfg) is None  # steady but bounded
    message = energy_gap_warning([0.5, 1.0, 2.0, 2.0 + GAP_GROWTH_NATS], cfg)
    assert message and "energy_penalty" in message and "energy_warm_steps" in message


def test_validation_holds_the_prior_chain_against_an_exact_sampler(small_setup):
    cfg, vocab, model, train_data, valid_data = small_setup()
    with torch.no_grad():  # a tilt of a few nats, so that the exact law and the chain's differ visibly
        model.prior.f[-1].weight.mul_(30.0)
    record = validate(model, valid_data, cfg, "cpu")
    # log Z and E_p[f] under p = exp(f) N(0, sigma^2 I) / Z, by importance sampling from the Gaussian
    z = model.prior.sigma * torch.randn(200_000, cfg.latent_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        f = model.prior.energy(z).double()
    log_z, mean_f = float(torch.logsumexp(f, 0) - math.log(len(f))), float((torch.softmax(f, 0) * f).sum())
    assert abs(record["valid_log_z"] - log_z) < 0.05, (record["valid_log_z"], log_z)
    scale = record["valid_prior_chain_bias_f_stderr"]  # the error of the chain's and the exact sampler's means
    assert abs(record["valid_exact_mean_f"] - mean_f) < 3 * scale, (record, mean_f)
    assert abs(record["valid_prior_chain_mean_f"] - mean_f) > 6 * scale  # the chain samples a wider law: sharp
    assert record["valid_prior_chain_biased"] is True
    cfg, vocab, model, train_data, valid_data = small_setup("prior=gaussian")
    assert not any("bias" in key or "log_z" in key for key in validate(model, valid_data, cfg, "cpu"))


def _energy_after_steps(small_setup, *overrides, steps=15):
    from textebm.training.learner import Learner

    cfg, vocab, model, train_data, valid_data = small_setup("energy_lr=1e-2", *overrides)
    learner = Learner(model, cfg, "cpu")
    tokens = pad(train_data.sentences[:16], model.pad_id)
    for _ in range(steps):
        learner.step(tokens)
    with torch.no_grad():
        z = torch.cat([model.posterior_sample(tokens), model.prior_sample(16)])
        return model.prior.energy(z).pow(2).mean().item()


def test_the_energy_penalty_keeps_f_near_zero(small_setup):
    assert _energy_after_steps(small_setup, "energy_penalty=1.0") < 0.2 * _energy_after_steps(small_setup)


def test_the_energy_learns_from_warmed_codes_and_the_decoder_from_the_cold_ones(small_setup, monkeypatch):
    from textebm.training.learner import Learner

    cfg, vocab, model, train_data, valid_data = small_setup("energy_warm_steps=2", "energy_warm_step_size=0.3")
    learner = Learner(model, cfg, "cpu")
    seen = {}
    for name in ("generator_backward", "energy_backward"):
        method = getattr(learner, name)
        monkeypatch.setattr(learner, name, lambda *args, _m=method, _n=name: (seen.setdefault(_n, args), _m(*args))[1])
    learner.step(pad(train_data.sentences[:16], model.pad_id))
    cold, warm = seen["generator_backward"][2], seen["energy_backward"][1]  # (checks, tokens, z+), (checks, z+)
    moved = (warm - cold).norm(dim=-1)
    # two noise-1 steps of 0.3 in 4 dimensions: about 0.3 * sqrt(2 * 4) = 0.85 apart
    assert 0.4 < moved.mean().item() < 1.5, moved


@pytest.mark.parametrize("prior, expected", [
    ("ebm", "NLL with posterior and prior codes on 32 sentences, rough MI, active units (32 sentences), "
            "log Z by AIS"),
    ("none", "NLL on 32 sentences")])
def test_validation_says_on_how_many_sentences_it_measures_what(train_lines, valid_lines, prior, expected):
    # it said "active units (64 sentences)" on 32, and "posterior and prior codes" for a run without codes
    from textebm.training.train import _Validation

    sizes = ["embedding_dim=16", "hidden_dim=32", "latent_dim=4", "batch_size=16", "valid_batches=2"]
    cfg, vocab, model, _, valid_data = _setup(train_lines, valid_lines, [*sizes, f"prior={prior}"])
    assert _Validation(model, valid_data, cfg, "cpu", vocab, None, None).describe().startswith(expected)
