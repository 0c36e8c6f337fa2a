"""The latent-space endpoints (/reconstruct, /interpolate, /score) over real HTTP: the library's
answers for the same seed, 4xx for bad input, 409 for a run without latent, and the work off the
event loop (/health answers while a long request runs; a full queue is a 503)."""

from __future__ import annotations

import json
import threading
import time

import pytest
from server_fixtures import answers_while_held, client, live_server, train_tiny_run, write_corpus

from server.app import create_app
from textebm.evaluation import anomaly
from textebm.generation import interpolation, reconstruction
from textebm.model.runs import load_run

SENTENCES = ["the cat saw a dog", "a big red car ran quickly", "the old man liked the river"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("latent") / "tiny")


@pytest.fixture(scope="module")
def loaded(tiny_run):
    return load_run(tiny_run, "cpu")


@pytest.fixture(scope="module")
def base(tiny_run):
    with live_server(create_app(tiny_run, max_n=4, max_length=30)) as url:
        yield url


@pytest.fixture()
def http(base):
    with client(base) as c:
        yield c


def test_reconstruct_answers_what_the_library_gives(http, loaded):
    r = http.post("/reconstruct", json={"sentences": SENTENCES, "seed": 5})
    assert r.status_code == 200, r.text
    data = r.json()
    expected = reconstruction.reconstruct_lines(loaded.model, loaded.vocab, SENTENCES, 1, 5)
    assert data["sentences"] == expected.rows()  # input, reconstruction, exact, sentence BLEU
    assert data["bleu"] == pytest.approx(expected.bleu)
    assert data["baseline_bleu"] == pytest.approx(expected.baseline_bleu)
    assert data["comparison"] == expected.verdict and "from prior samples" in data["comparison"]
    assert data["seed"] == 5 and data["chains"] == 1 and data["model_step"] == 20 and data["truncated"] == 0
    assert data["inference"] == "the posterior chain (3 Langevin steps from noise)"


def test_interpolate_answers_what_the_library_gives(http, loaded):
    body = {"from": SENTENCES[0], "to": SENTENCES[1], "points": 4, "chains": 2, "seed": 9, "max_length": 12}
    r = http.post("/interpolate", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    path = interpolation.interpolate(loaded.model, loaded.vocab, SENTENCES[0], SENTENCES[1], 4, 2, 9, 12)
    assert [(p["t"], p["sentence"]) for p in data["points"]] == path
    assert [p["t"] for p in data["points"]] == pytest.approx([0, 1 / 3, 2 / 3, 1])
    assert data["seed"] == 9 and data["chains"] == 2


def test_score_answers_what_the_library_gives(http, loaded):
    r = http.post("/score", json={"sentences": SENTENCES[:2], "num_chains": 3, "seed": 2})
    assert r.status_code == 200, r.text
    data = r.json()
    expected = anomaly.score_lines(loaded.model, loaded.vocab, SENTENCES[:2], 3, 2)
    assert [s["per_token"] for s in data["scores"]] == pytest.approx(expected.per_token)
    assert [s["tokens"] for s in data["scores"]] == expected.tokens == [6, 7]
    assert [s["sentence"] for s in data["scores"]] == SENTENCES[:2]


def test_without_a_seed_the_server_picks_one_that_reproduces(http):
    first = http.post("/reconstruct", json={"sentences": SENTENCES[:1]}).json()
    again = http.post("/reconstruct", json={"sentences": SENTENCES[:1], "seed": first["seed"]}).json()
    assert again["sentences"] == first["sentences"] and again["baseline_bleu"] == first["baseline_bleu"]


@pytest.mark.parametrize("path, body, field", [
    ("/reconstruct", {}, "sentences"),
    ("/reconstruct", {"sentences": []}, "sentences"),
    ("/reconstruct", {"sentences": "the cat"}, "sentences"),
    ("/reconstruct", {"sentences": ["the cat", "   "]}, "sentences.1"),
    ("/reconstruct", {"sentences": ["\u001c\u00a0"]}, "sentences.0"),
    ("/reconstruct", {"sentences": [""]}, "sentences.0"),
    ("/reconstruct", {"sentences": [3]}, "sentences.0"),
    ("/reconstruct", {"sentences": ["a"] * 5}, "sentences"),
    ("/reconstruct", {"sentences": ["a " * 501]}, "sentences.0"),
    ("/reconstruct", {"sentences": ["a"], "chains": 0}, "chains"),
    ("/reconstruct", {"sentences": ["a"], "chains": 17}, "chains"),
    ("/reconstruct", {"sentences": ["a"], "seed": -1}, "seed"),
    ("/reconstruct", {"sentences": ["a"], "colour": "red"}, "colour"),
    ("/interpolate", {"to": "a b"}, "from"),
    ("/interpolate", {"from": "a b", "to": " "}, "to"),
    ("/interpolate", {"from": "a", "to": "b", "points": 1}, "points"),
    ("/interpolate", {"from": "a", "to": "b", "points": 5}, "points"),
    ("/interpolate", {"from": "a", "to": "b", "max_length": 31}, "max_length"),
    ("/interpolate", {"from": "a", "to": "b", "chains": 2.5}, "chains"),
    ("/interpolate", {"source": "a", "from": "a", "to": "b"}, "source"),
    ("/score", {"sentences": ["a"], "num_chains": "4"}, "num_chains"),
    ("/score", {"sentences": ["a"], "num_chains": True}, "num_chains"),
    ("/score", {"sentences": [None]}, "sentences.0"),
])
def test_bad_fields_get_422_naming_the_field(http, path, body, field):
    r = http.post(path, json=body)
    assert r.status_code == 422, r.text
    data = r.json()
    assert data["detail"].startswith(f"{field}: ")
    assert [e["field"] for e in data["errors"]] == [field]


def test_a_blank_sentence_is_named_as_such(http):
    r = http.post("/score", json={"sentences": [" \t "]})
    assert r.json()["detail"] == "sentences.0: must hold a word (it is blank)"


@pytest.mark.parametrize("path", ["/reconstruct", "/interpolate", "/score"])
def test_malformed_and_oversized_bodies(http, path):
    r = http.post(path, content='{"sentences": [', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["detail"].startswith("body: malformed JSON")
    big = json.dumps({"sentences": ["x" * 900] * 20})  # 18 KB: over the 16 KiB limit
    r = http.post(path, content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "body" in r.json()["detail"]
    assert http.get(path).status_code == 405


def test_a_run_without_latent_refuses_reconstruction_and_interpolation(tmp_path):
    from textebm.cli import main

    corpus = write_corpus(tmp_path / "corpus.txt")
    run = tmp_path / "lm"
    assert main(["train", "--corpus", str(corpus), "--out", str(run), "--preset", "cpu", "--set", "prior=none",
                 "--set", "embedding_dim=16", "--set", "hidden_dim=32", "--max-steps", "2", "--no-progress"]) == 0
    with live_server(create_app(run)) as url, client(url) as c:
        for path, body in (("/reconstruct", {"sentences": ["the cat"]}), ("/interpolate", {"from": "a", "to": "b"})):
            r = c.post(path, json=body)
            assert r.status_code == 409, r.text
            assert r.json()["detail"].startswith(f"{path[1:]}: the run was trained with prior=none")
        assert c.post("/score", json={"sentences": ["the cat"]}).status_code == 200  # -log p(x), exact


def _held(monkeypatch, module, name: str):
    """`module.name` (a library function a latent job calls) made to wait for `release` on the worker
    thread; `started` is set when it begins. The twin of test_server.py's `_blocked_generation`."""
    real = getattr(module, name)
    release, started = threading.Event(), threading.Event()

    def blocked(*args, **kwargs):
        started.set()
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, blocked)
    return release, started


def test_a_long_reconstruction_never_blocks_health(tiny_run, monkeypatch):
    """While a reconstruction is held on the worker thread, /health and /info answer (`answers_while_held`)."""
    release, started = _held(monkeypatch, reconstruction, "reconstruct_lines")
    with live_server(create_app(tiny_run)) as url:
        done = threading.Event()
        statuses: list[int] = []

        def call():
            with client(url) as c:
                statuses.append(c.post("/reconstruct", json={"sentences": SENTENCES, "seed": 1}).status_code)
            done.set()

        worker = threading.Thread(target=call)
        worker.start()
        try:
            answers_while_held(url, started, done, "reconstruction")
        finally:
            release.set()
        worker.join(30)
        assert done.is_set() and statuses == [200]


def test_a_request_asks_at_most_max_batch_chains(tiny_run):
    # 64 sentences x 16 chains held the model for 108 s while everything else waited
    with live_server(create_app(tiny_run, max_n=8, max_batch_sentences=16)) as url, client(url) as c:
        sentences = ["the cat saw a dog"] * 8
        r = c.post("/score", json={"sentences": sentences, "num_chains": 4, "seed": 1})
        assert r.status_code == 422
        assert r.json()["detail"] == ("score: 8 sentences x 4 chains = 32 chains, more than one request may ask of "
                                      "this server (16, its --max-batch): send fewer sentences or chains per request")
        r = c.post("/reconstruct", json={"sentences": sentences[:2], "chains": 9, "seed": 1})
        assert r.status_code == 422 and r.json()["detail"].startswith("reconstruct: 2 sentences x 9 chains = 18")
        r = c.post("/interpolate", json={"from": "a cat", "to": "a dog", "chains": 9, "seed": 1})
        assert r.status_code == 422 and r.json()["detail"].startswith("interpolate: 2 sentences x 9 chains")
        assert c.post("/score", json={"sentences": sentences[:4], "num_chains": 4, "seed": 1}).status_code == 200
        assert c.post("/interpolate", json={"from": "a cat", "to": "a dog", "chains": 8, "seed": 1}).status_code == 200


def test_latent_requests_share_the_queue_bound(tiny_run, monkeypatch):
    """queue_size=1: one score running (blocked), one waiting, the next refused with 503 + Retry-After."""
    release, started = _held(monkeypatch, anomaly, "score_lines")
    with live_server(create_app(tiny_run, queue_size=1)) as url:
        statuses: list[int] = []

        def call():
            with client(url) as c:
                statuses.append(c.post("/score", json={"sentences": ["the cat"], "seed": 1}).status_code)

        threads = [threading.Thread(target=call)]
        threads[0].start()
        assert started.wait(10)
        threads.append(threading.Thread(target=call))
        threads[1].start()
        with client(url) as c:
            deadline = time.monotonic() + 10
            while c.get("/health").json()["queued"] < 1:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            r = c.post("/reconstruct", json={"sentences": ["the cat"]})
            assert r.status_code == 503 and int(r.headers["retry-after"]) >= 1
            assert c.post("/generate", json={"n": 1}).status_code == 503  # one bound for every request
        release.set()
        for t in threads:
            t.join(30)
        assert statuses == [200, 200]


def test_the_api_key_guards_the_latent_endpoints(tiny_run):
    with live_server(create_app(tiny_run, api_key="k3y")) as url, client(url) as c:
        body = {"sentences": ["the cat"], "seed": 1}
        assert c.post("/reconstruct", json=body).status_code == 401
        assert c.post("/score", json=body, headers={"X-API-Key": "k3y"}).status_code == 200
        bearer = {"Authorization": "Bearer k3y"}
        assert c.post("/interpolate", json={"from": "a", "to": "b"}, headers=bearer).status_code == 200
