"""Config: presets, `--set` overrides with type conversion, validation."""

import json

import pytest

from textebm.config import (
    Config,
    device_preset,
    load_preset,
    parse_override,
    preset_names,
    resolve_config,
    step_schedule,
)
from textebm.data.vocab import WordVocab
from textebm.errors import UserError


def test_presets_exist():
    names = preset_names()
    for expected in ("default", "cpu", "ptb", "snli", "yahoo"):
        assert expected in names


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_and_validates(name):
    values = load_preset(name)
    known = {f for f in Config.__dataclass_fields__}
    assert set(values) <= known, f"preset {name} has unknown keys {set(values) - known}"
    config = resolve_config(name, "ptb")
    assert isinstance(config, Config)
    for key, value in values.items():
        assert getattr(config, key) == value


def test_corpus_preset_is_the_default_for_its_corpus():
    assert resolve_config(None, "snli").max_length == 15
    assert resolve_config(None, "snli").lowercase is True
    assert resolve_config(None, "yahoo").vocab_size == 20000
    assert resolve_config(None, "/some/file.txt").to_dict() == {**Config().to_dict(), "corpus": "/some/file.txt",
                                                                 "preset": "default"}


def test_defaults_match_the_spec():
    c = Config()
    assert (c.latent_dim, c.prior_steps, c.prior_step_size, c.posterior_steps) == (32, 60, 0.4, 20)
    assert (c.energy_hidden, c.energy_layers, c.prior) == (200, 2, "ebm")


@pytest.mark.parametrize("corpus", ["snli", "yahoo"])
def test_a_size_preset_keeps_the_corpus_data_settings(corpus):
    """On a CPU (`cpu`) or at the default sizes, a corpus keeps its own max_length, vocabulary and casing."""
    own = resolve_config(None, corpus)
    for preset in ("cpu", "default"):
        config = resolve_config(preset, corpus)
        assert (config.max_length, config.vocab_size, config.lowercase) == (own.max_length, own.vocab_size,
                                                                            own.lowercase)
        assert config.preset == preset
    assert own.max_length != Config.max_length  # the corpus's preset does set them
    cpu = resolve_config("cpu", corpus)
    assert (cpu.hidden_dim, cpu.posterior_steps) == (load_preset("cpu")["hidden_dim"], 10)  # its sizes: cpu's
    assert resolve_config("cpu", corpus, ["max_length=7"]).max_length == 7  # --set still wins


def test_the_cpu_presets_amortized_inference_applies_to_the_latent_ebm_only():
    """The cpu preset infers z from an encoder's guess; the language model (no latent) and the VAE (its
    own encoder) drop that choice instead of failing on it, unless --set asks for it by name."""
    assert resolve_config("cpu", "ptb").posterior_init == "encoder"
    assert resolve_config("cpu", "ptb", ["prior=gaussian"]).posterior_init == "encoder"
    assert resolve_config("cpu", "ptb", ["posterior_init=noise"]).posterior_init == "noise"
    for model in (["prior=none"], ["model=vae"]):
        assert resolve_config("cpu", "ptb", model).posterior_init == "noise"
        with pytest.raises(UserError, match="posterior_init"):
            resolve_config("cpu", "ptb", [*model, "posterior_init=encoder"])
    assert resolve_config("default", "ptb").posterior_init == "noise"  # the paper's chain from noise


def test_the_cpu_presets_chain_precision_follows_the_hardware_for_the_latent_ebm_only():
    assert resolve_config("cpu", "ptb").chain_precision == "auto"
    assert resolve_config("cpu", "ptb", ["prior=gaussian"]).chain_precision == "auto"
    for model in (["prior=none"], ["model=vae"]):
        assert resolve_config("cpu", "ptb", model).chain_precision == "fp32"
    assert resolve_config("default", "ptb").chain_precision == "fp32"


def test_cpu_preset_is_smaller_than_default():
    cpu, default = resolve_config("cpu", "ptb"), resolve_config("default", "ptb")
    assert cpu.hidden_dim < default.hidden_dim and cpu.embedding_dim < default.embedding_dim


@pytest.mark.parametrize("item, key, value", [
    ("latent_dim=64", "latent_dim", 64),
    ("prior_step_size=0.25", "prior_step_size", 0.25),
    ("generator_lr=1e-4", "generator_lr", 1e-4),
    ("lowercase=true", "lowercase", True),
    ("lowercase=0", "lowercase", False),
    ("lowercase=Yes", "lowercase", True),
    ("cell=gru", "cell", "gru"),
    (" prior = gaussian ", "prior", "gaussian"),
    ("train_split=valid", "train_split", "valid"),
])
def test_set_converts_to_the_field_type(item, key, value):
    k, v = parse_override(item)
    assert (k, v) == (key, value)
    assert type(v) is type(value)
    assert getattr(resolve_config("cpu", "ptb", [item]), key) == value


def test_set_overrides_the_preset():
    assert resolve_config("cpu", "ptb", ["hidden_dim=7"]).hidden_dim == 7
    assert resolve_config("cpu", "ptb", ["hidden_dim=7", "hidden_dim=9"]).hidden_dim == 9


@pytest.mark.parametrize("item, fragment", [
    ("latent_dim=abc", "expected an integer"),
    ("latent_dim=1.5", "latent_dim"),
    ("prior_sigma=x", "prior_sigma"),
    ("lowercase=maybe", "lowercase: expected true or false"),
    ("no_such_key=1", "unknown config key"),
    ("latent_dim", "key=value"),
])
def test_bad_set_items_are_user_errors(item, fragment):
    with pytest.raises(UserError, match=fragment):
        resolve_config("cpu", "ptb", [item])


@pytest.mark.parametrize("item", [
    "cell=rnn", "prior=flow", "tokenizer=bpe", "latent_dim=0", "batch_size=-1", "dropout=1.0",
    "prior_step_size=0", "energy_lr=nan", "generator_lr=inf", "prior_steps=-1", "nonfinite_policy=ignore",
    "energy_penalty=-0.1", "energy_warm_steps=-1", "energy_warm_step_size=0",
    "tokenizer=sentencepiece",  # needs a vocab_size
    f"seed={2**63}",  # torch's generators fail above 2**64 - 1, and training adds offsets to the seed
    # torch's Adam refused these after the run folder was written (NaN in config.json)
    "adam_beta1=nan", "adam_beta1=1", "adam_beta1=-0.5",
    "energy_warm_steps=1000000000000",  # a MemoryError after the run folder was written
    f"latent_dim={10**23}", "hidden_dim=10000000",  # past torch's 64-bit sizes: a C++ traceback
])
def test_invalid_values_are_rejected(item):
    key = item.split("=")[0]
    with pytest.raises(UserError, match=f"^{key}(=| must| goes up to)"):  # the message names the key that was wrong
        resolve_config("cpu", "ptb", [item])


def test_an_encoder_without_refine_steps_is_refused():
    # with 0 steps the encoder is regressed onto its own guess: a gradient of 0 at every step, silently
    with pytest.raises(UserError, match="posterior_init=encoder needs refine_steps of at least 1"):
        resolve_config("cpu", "ptb", ["posterior_init=encoder", "refine_steps=0"])
    assert resolve_config("cpu", "ptb", ["posterior_init=noise", "refine_steps=0"]).refine_steps == 0
    trained = Config(posterior_init="encoder", refine_steps=0).to_dict()  # a run trained so before the rule
    assert Config.from_dict(trained).refine_steps == 0  # still loads, samples, evaluates


@pytest.mark.parametrize("size", [1, 2, 3, 4])
def test_a_vocab_size_with_no_room_for_a_word_is_refused(size):
    # 1 to 3 kept almost every word (a negative budget cut only the last few), 4 kept none
    with pytest.raises(UserError, match=f"vocab_size must be 0 \\(no limit\\) or at least 5 .*not {size}$"):
        resolve_config("cpu", "ptb", [f"vocab_size={size}"])


def test_vocab_size_0_is_no_limit_and_5_keeps_one_word():
    assert resolve_config("cpu", "ptb", ["vocab_size=0"]).vocab_size == 0
    size = resolve_config("cpu", "ptb", ["vocab_size=5"]).vocab_size
    assert WordVocab.build(["a a b c"], max_size=size).itos[4:] == ["a"]
    assert WordVocab.build(["a a b c"], max_size=0).itos[4:] == ["a", "b", "c"]


def test_prior_none_is_the_language_model_and_takes_no_encoder():
    assert resolve_config("cpu", "ptb", ["prior=none"]).prior == "none"
    with pytest.raises(UserError, match="needs a latent"):
        resolve_config("cpu", "ptb", ["prior=none", "posterior_init=encoder"])


def test_the_corpus_is_not_set_with_set():
    # --set corpus=ptb silently replaced --corpus FILE
    with pytest.raises(UserError, match="^--set corpus=ptb: the corpus is chosen with --corpus, not --set$"):
        resolve_config("cpu", "/my/text.txt", ["corpus=ptb"])


def test_unknown_preset():
    with pytest.raises(UserError, match="unknown preset 'nope'.*cpu"):
        resolve_config("nope", "ptb")


def test_from_dict_round_trip_and_unknown_keys():
    config = resolve_config("cpu", "ptb", ["latent_dim=5"])
    data = json.loads(json.dumps(config.to_dict()))
    assert Config.from_dict(data) == config
    with pytest.raises(UserError, match="unknown config key"):
        Config.from_dict({**data, "bogus": 1})


@pytest.mark.parametrize("key, value", [("hidden_dim", "abc"), ("hidden_dim", 256.0), ("hidden_dim", True),
                                        ("prior_sigma", "1"), ("cell", 3), ("compile", "yes")])
def test_a_hand_edited_value_of_the_wrong_type_is_named_in_one_line(key, value):
    # "abc" for hidden_dim failed on a comparison and 256.0 in torch, both with a traceback
    data = resolve_config("cpu", "ptb").to_dict()
    with pytest.raises(UserError, match=f"config key {key} must be (an integer|a number|a string|true or false), not"):
        Config.from_dict({**data, key: value})
    assert Config.from_dict({**data, "prior_sigma": 1}).prior_sigma == 1.0  # JSON's 1 is a float's 1.0


def test_the_preset_follows_the_device_when_none_is_named():
    assert device_preset("ptb", on_cuda=True) == ("ptb", "CUDA device: preset ptb (paper scale)")
    preset, why = device_preset("ptb", on_cuda=False)
    assert preset == "cpu" and why.startswith("no CUDA device: preset cpu") and "--preset ptb" in why
    assert device_preset("/my/text.txt", on_cuda=True)[0] == "default"
    assert resolve_config("cpu", "ptb").preset == "cpu"
    with pytest.raises(UserError, match="--preset"):
        parse_override("preset=ptb")


def test_step_schedule_shapes():
    assert step_schedule(0.5, 0.05, 3, "constant") == [0.5, 0.5, 0.5]
    assert step_schedule(0.8, 0.2, 4, "linear") == pytest.approx([0.8, 0.6, 0.4, 0.2])
    assert step_schedule(0.8, 0.05, 5, "geometric") == pytest.approx([0.8, 0.4, 0.2, 0.1, 0.05])
    assert step_schedule(0.8, 0.05, 1, "geometric") == [0.8] and step_schedule(0.8, 0.05, 0, "linear") == []
    with pytest.raises(ValueError):
        step_schedule(0.8, 0.05, 3, "cosine")
