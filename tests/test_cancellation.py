"""textebm.cancellation: `check()` is a no-op outside `cancellable`; inside, a set event stops the
long loops (Langevin chains, decoding, AIS) within one step."""

from __future__ import annotations

import threading
from unittest import mock

import pytest
import torch

from textebm import cancellation
from textebm.cancellation import Cancelled, cancellable, check
from textebm.generation.decoding import decode
from textebm.generation.sampling import SamplingOptions, generate_ids
from textebm.inference.likelihood import annealed_log_partition
from textebm.model.langevin import langevin


def test_check_is_a_no_op_without_a_token():
    check()
    assert not cancellation.requested()


def test_check_raises_only_inside_the_block_whose_event_is_set():
    event = threading.Event()
    with cancellable(event):
        check()  # not set yet
        event.set()
        assert cancellation.requested()
        with pytest.raises(Cancelled):
            check()
    check()  # outside: nothing installed
    inner = threading.Event()
    with cancellable(event), cancellable(inner):
        check()  # the innermost token rules
    assert not cancellation.requested()


def test_the_token_is_per_thread():
    event = threading.Event()
    event.set()
    seen = []
    with cancellable(event):
        worker = threading.Thread(target=lambda: seen.append(cancellation.requested()))
        worker.start()
        worker.join()
    assert seen == [False]


def test_an_event_set_from_another_thread_stops_a_langevin_chain_within_one_step():
    event, steps = threading.Event(), []

    def grad(z):
        steps.append(len(steps))
        if len(steps) == 3:  # as if a client left during the third step
            threading.Thread(target=event.set).start()
            while not event.is_set():
                pass
        return -z

    with cancellable(event), pytest.raises(Cancelled):
        langevin(grad, torch.zeros(2, 3), 1000, 0.1)
    assert len(steps) == 3


def test_decoding_and_ais_stop_at_their_next_step(latent_model):
    model, _ = latent_model(1.0)
    event = threading.Event()
    event.set()
    with cancellable(event):
        with pytest.raises(Cancelled):
            decode(model.decoder, torch.zeros(2, 8), model.bos_id, model.eos_id, 20)
        with pytest.raises(Cancelled):
            annealed_log_partition(model.prior, 4, 10, 0.1)


def test_a_step_stops_between_its_projection_blocks():
    """One posterior step at the server's request bound is seconds (2.6 s of one core on a PTB run): the
    vocabulary projection checks between its blocks of token rows, so a stop need not wait for the step."""
    from textebm.model.decoder import projected_value_and_grad

    event, blocks = threading.Event(), []
    hidden, weight, bias = torch.randn(40, 4), torch.randn(7, 4), torch.zeros(7)
    real = torch.addmm

    def counted(*args, **kwargs):
        blocks.append(1)
        if len(blocks) == 2:  # as if the client left during the second block
            event.set()
        return real(*args, **kwargs)

    with cancellable(event), pytest.raises(Cancelled), mock.patch("torch.addmm", counted):
        projected_value_and_grad(hidden, weight, bias, torch.randint(0, 7, (40,)), pad_id=0, block=8)
    assert len(blocks) == 2  # of the 5 blocks


def test_results_are_the_same_with_an_unset_token_and_without_one(latent_model):
    """The CLI never installs a token; a job inside an unset one (the server's) gives the same answer."""
    model, _ = latent_model(1.0)
    options = SamplingOptions(max_length=12, prior_steps=5)
    alone = generate_ids(model, 5, options, seed=3)
    with cancellable(threading.Event()):
        served = generate_ids(model, 5, options, seed=3)
    assert served == alone
