"""wKL and the neural reverse perplexity of generated sentences (textebm/evaluation/protocol_metrics.py), on tiny
corpora with a tiny LSTM LM trained for a few steps."""

from __future__ import annotations

import math

import pytest
import torch

from lm_eval import word_kl
from textebm.cli.common import protocol_rows
from textebm.errors import UserError
from textebm.evaluation.protocol_metrics import PROTOCOL_TRAIN, ProtocolOptions, lm_nll_of_lines, protocol_metrics

TINY_LM = ["embedding_dim=16", "hidden_dim=32", "batch_size=16", "dropout=0.0", "generator_lr=0.01"]


def _options(**changes) -> ProtocolOptions:
    values = dict(wkl=True, neural_rppl=True, synthetic_train=160, synthetic_valid=32, epochs=4,
                  overrides=list(TINY_LM))
    values.update(changes)
    return ProtocolOptions(**values)


@pytest.fixture(scope="module")
def texts(train_lines, valid_lines):
    """Real text standing in for good samples, the real training text and a real test text."""
    return train_lines[1000:1200], train_lines[:1000], valid_lines[:40]


def test_diverse_samples_beat_a_collapsed_generator(texts):
    good, train, test = texts
    collapsed = [good[0]] * len(good)  # one sentence over and over: mode collapse
    result = protocol_metrics(good, train, test, _options(), "cpu", "ptb")
    bad = protocol_metrics(collapsed, train, test, _options(), "cpu", "ptb")
    rppl, bad_rppl = result["neural_reverse_ppl"], bad["neural_reverse_ppl"]
    assert 1 < rppl["ppl"] < bad_rppl["ppl"] / 3  # the collapsed text's LM cannot cover the test text
    assert result["wkl"]["value"] < bad["wkl"]["value"]
    assert rppl["test_words_unseen_in_synthetic"] < bad_rppl["test_words_unseen_in_synthetic"]
    # sizes and the normalisation: every test word plus one end-of-sentence per sentence
    assert rppl["train_sentences"] == 160 and rppl["valid_sentences"] == 32
    assert rppl["test_sentences"] == 40 and rppl["test_tokens"] == sum(len(s.split()) + 1 for s in test)
    assert rppl["ppl"] == pytest.approx(math.exp(rppl["nll_per_token"]))
    assert rppl["steps"] == 4 * 10 and rppl["stopped_by"] == "epochs"  # 160 / 16 = 10 steps per epoch
    assert rppl["chosen_step"] in (10, 20, 30, 40) and rppl["lm"]["hidden_dim"] == 32
    assert rppl["valid_ppl"] > 1 and rppl["chosen_epoch"] == rppl["chosen_step"] / 10
    assert result["protocol"]["matches_protocol_sizes"] is False


def test_wkl_reads_the_first_synthetic_train_sentences(texts):
    good, train, test = texts
    result = protocol_metrics(good, train, test, _options(neural_rppl=False, synthetic_train=50))
    assert result["wkl"]["sentences"] == 50
    assert result["wkl"]["value"] == pytest.approx(word_kl(good[:50], train).kl)
    assert "neural_reverse_ppl" not in result


def test_the_report_gives_the_number_of_generated_sentences_used(texts):
    # wKL alone reads what there is: 50 given, 40000 asked by default; the report said 40000
    good, train, test = texts
    result = protocol_metrics(good[:50], train, test, _options(neural_rppl=False, synthetic_train=PROTOCOL_TRAIN))
    assert result["wkl"]["sentences"] == 50
    assert result["protocol"]["synthetic_sentences"] == "50"
    assert result["protocol"]["matches_protocol_sizes"] is False
    assert ("  generated sentences", "50 (DGMVAE's: 40000 + 3000)") in protocol_rows(result)


def test_step_cap_and_kept_run_folder(texts, tmp_path):
    good, train, test = texts
    folder = tmp_path / "lm"
    result = protocol_metrics(good, train, test, _options(wkl=False, max_steps=13, keep=str(folder)), "cpu")
    rppl = result["neural_reverse_ppl"]
    assert rppl["steps"] == 13 and rppl["stopped_by"] == "max_steps" and rppl["run_folder"] == str(folder)
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    assert '"prior": "none"' in (folder / "config.json").read_text()


def test_batching_does_not_change_the_test_score(texts, monkeypatch):
    from textebm.config import resolve_config
    from textebm.data.vocab import WordVocab
    from textebm.evaluation import protocol_metrics as module
    from textebm.model.runs import build_model

    _, train, test = texts
    vocab = WordVocab.build(train + test)
    torch.manual_seed(0)
    model = build_model(resolve_config("cpu", "ptb", [*TINY_LM, "prior=none"]), vocab)
    whole, tokens = lm_nll_of_lines(model, vocab, test)
    monkeypatch.setattr(module, "SCORE_TOKENS", 50)  # many small batches
    parts, same_tokens = lm_nll_of_lines(model, vocab, test)
    assert parts == pytest.approx(whole, rel=1e-6) and tokens == same_tokens
    one, _ = lm_nll_of_lines(model, vocab, test[:1])
    assert 0 < one < whole


@pytest.mark.parametrize("changes,fragment", [
    (dict(synthetic_train=0), "--synthetic-train must be from 1 to 10,000,000"),
    (dict(epochs=0), "--rppl-epochs"),
    (dict(max_minutes=-1.0), "--rppl-minutes"),
    (dict(overrides=["prior=ebm"]), "--rppl-set prior"),
    (dict(overrides=["hidden_dim=big"]), "--rppl-set hidden_dim: expected an integer"),
    (dict(overrides=["hidden_dim=0"]), "hidden_dim must be at least 1"),
    (dict(overrides=["foo=1"]), "unknown config key 'foo' in --rppl-set \\(presets are chosen with --rppl-preset\\)"),
    (dict(preset="huge"), "unknown preset 'huge'"),
    (dict(temperature=0.0), "--synthetic-temperature"),
    (dict(keep=__file__), f"cannot write {__file__}: it is not a folder"),
])
def test_bad_options(changes, fragment):
    with pytest.raises(UserError, match=fragment.replace("-", r"\-")):
        _options(**changes).check()


def test_too_few_sentences_for_the_neural_rppl(texts):
    good, train, test = texts
    with pytest.raises(UserError, match="needs 192 generated sentences .* there are 100"):
        protocol_metrics(good[:100], train, test, _options())


def test_only_empty_generated_sentences_is_a_user_error(texts):
    _, train, test = texts
    with pytest.raises(UserError, match="wKL: the generated text has no words"):
        protocol_metrics([""] * 10, train, test, _options(neural_rppl=False, synthetic_train=10))
