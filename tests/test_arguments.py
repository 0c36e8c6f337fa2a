"""The library's argument checks (textebm/arguments.py), and the calls of docs/python.md that use them: a bad
argument from Python is one UserError naming it, as on the command line, not torch's error or a wrong answer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from textebm.arguments import check_count, check_lines, check_seed
from textebm.config import MAX_SEED
from textebm.errors import UserError


def test_the_checks_take_what_the_command_line_takes_and_name_what_they_refuse():
    assert check_lines(("a b", "c")) == ["a b", "c"] and check_count("chains", np.int64(3)) == 3
    assert check_seed(0) == 0 and check_seed(MAX_SEED) == MAX_SEED
    refused = ((lambda: check_lines("stocks fell"), "got one string"), (lambda: check_lines([]), "no "),
               (lambda: check_lines(["a", 3]), "string"), (lambda: check_count("points", 1, 2), "points"),
               (lambda: check_count("chains", 2.0), "chains"), (lambda: check_count("chains", True), "chains"),
               (lambda: check_seed(2**64), "seed"), (lambda: check_seed(-1), "seed"))
    for call, fragment in refused:
        with pytest.raises(UserError, match=fragment):
            call()


@pytest.fixture(scope="module")
def loaded(trained_run):
    from textebm.model.runs import load_run

    return load_run(trained_run)


def test_library_calls_refuse_bad_arguments_before_any_work(loaded):
    from textebm.evaluation.anomaly import score_lines
    from textebm.generation.interpolation import interpolate, sentence_codes
    from textebm.generation.reconstruction import reconstruct_lines
    from textebm.generation.sampling import SamplingOptions, generate_text

    model, vocab = loaded.model, loaded.vocab
    calls = {
        "got one string": lambda: sentence_codes(model, vocab, "stocks fell", 2, 0),  # was 11 one-letter lines
        "chains must be": lambda: sentence_codes(model, vocab, ["stocks fell"], 0, 0),  # torch's reshape error
        "points must be": lambda: interpolate(model, vocab, "a", "b", 0, 2, 0, 10),
        "num_chains must be": lambda: score_lines(model, vocab, ["a b"], num_chains=0),
        "seed must be": lambda: reconstruct_lines(model, vocab, ["a b"], seed=2**64),  # torch's overflow
        "no sentences": lambda: reconstruct_lines(model, vocab, []),
        "temperature must be": lambda: generate_text(model, vocab, 2, SamplingOptions(temperature=-1), 0),  # silent
        "top_p must be": lambda: generate_text(model, vocab, 2, SamplingOptions(top_p=0), 0),
        # the options' types and upper bounds: torch's TypeError, a greedy decoding of greedy="no", a
        # MemoryError of 10**12 steps, hours of a 10**7-token decoding
        "top_k \\(0: off\\) must be": lambda: SamplingOptions(top_k=1.5).validate(),
        "temperature must be a positive number, not '0.8'": lambda: SamplingOptions(temperature="0.8").validate(),
        "greedy must be True or False": lambda: SamplingOptions(greedy="no").validate(),
        "max_length must be an integer from 1 to 2000": lambda: SamplingOptions(max_length=10**7).validate(),
        "prior_steps must be an integer from 0 to 100000": lambda: SamplingOptions(prior_steps=2.5).validate(),
        "max_length must be an integer from 1": lambda: interpolate(model, vocab, "a", "b", 3, 2, 0, 10**7),
        "posterior_steps must be": lambda: reconstruct_lines(model, vocab, ["a b"], posterior_steps=-3),
        "chains must be an integer from 1 to 10000": lambda: reconstruct_lines(model, vocab, ["a b"], chains=10**11),
    }
    for fragment, call in calls.items():
        with pytest.raises(UserError, match=fragment):
            call()


def test_sentence_codes_run_in_eval_mode_and_leave_the_model_as_it_was(loaded):
    from textebm.generation.interpolation import sentence_codes

    model, vocab = loaded.model, loaded.vocab
    dropout = model.decoder.drop.p
    model.decoder.drop.p = 0.5  # the tiny run trains without dropout; a real one may not
    try:
        expected = sentence_codes(model, vocab, ["the market fell", "prices rose"], 2, 5)
        model.train()  # a model fresh from training in a notebook: dropout ran in its chains
        assert torch.equal(sentence_codes(model, vocab, ["the market fell", "prices rose"], 2, 5), expected)
        assert model.training
    finally:
        model.eval()
        model.decoder.drop.p = dropout


def test_load_run_checks_its_device_and_leaves_the_global_generator_alone(trained_run, monkeypatch):
    from textebm.model.runs import load_run

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, fragment in (("cuda", "no CUDA GPU"), ("gpu", "unknown device 'gpu'")):
        with pytest.raises(UserError, match=fragment):  # torch's AssertionError from deep inside .to()
            load_run(trained_run, device=device)
    with pytest.raises(UserError, match="a list of key=value strings"):
        load_run(trained_run, chain_overrides="posterior_steps=40")  # was read as 'p', 'o', ...
    torch.manual_seed(5)
    state = torch.get_rng_state()
    load_run(trained_run)  # the modules' initial weights drew from the caller's generator
    assert torch.equal(torch.get_rng_state(), state)
