"""GET /metrics: Prometheus text that counts the requests made, behind the API key like /info."""

from __future__ import annotations

import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from server_fixtures import WORDS, client, live_server

import server.batcher
from server.app import create_app
from textebm.config import Config
from textebm.data.vocab import WordVocab
from textebm.model.checkpoints import save_checkpoint
from textebm.model.runs import build_model, create_run

KEY = "sesame"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """An untrained tiny run (counting requests needs no trained model)."""
    folder = tmp_path_factory.mktemp("metrics") / "tiny"
    torch.manual_seed(0)
    config = Config(embedding_dim=8, hidden_dim=16, latent_dim=3, energy_hidden=8, prior_steps=3, max_length=20)
    vocab = WordVocab.build([" ".join(WORDS)])
    create_run(folder, config, vocab)
    save_checkpoint(folder, build_model(config, vocab), {}, step=0)
    return folder


def scrape(http) -> dict:
    """{(sample name, sorted labels): value} of one /metrics answer."""
    r = http.get("/metrics", headers={"X-API-Key": KEY})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def requests_of(samples: dict, endpoint: str, method: str, code: int) -> float:
    key = ("textebm_requests_total", (("code", str(code)), ("endpoint", endpoint), ("method", method)))
    return samples.get(key, 0.0)


def test_metrics_count_the_requests_made(tiny_run):
    app = create_app(tiny_run, api_key=KEY, max_n=8, max_body_bytes=1024)
    auth = {"Authorization": f"Bearer {KEY}"}
    with live_server(app) as base, client(base) as http:
        assert http.get("/metrics").status_code == 401  # the same key rule as /info
        for n in (3, 2):
            assert http.post("/generate", json={"n": n, "seed": n}, headers=auth).status_code == 200
        assert http.post("/generate", json={"n": 99}, headers=auth).status_code == 422
        assert http.post("/generate", json={"n": 1}).status_code == 401
        assert http.post("/generate", content=b"x" * 2000, headers=auth).status_code == 413
        assert http.get("/no/such/path").status_code == 404
        for made_up in ("SCAN1", "SCAN2"):
            assert http.request(made_up, "/health").status_code == 405
        assert http.get("/health").status_code == 200
        samples = scrape(http)
        again = scrape(http)

    assert requests_of(samples, "/generate", "POST", 200) == 2
    for code in (422, 401, 413):
        assert requests_of(samples, "/generate", "POST", code) == 1
    assert requests_of(samples, "other", "GET", 404) == 1  # not the raw path
    assert requests_of(samples, "/health", "GET", 200) == 1
    assert requests_of(samples, "/health", "other", 405) == 2  # made-up methods: one label value
    assert not [key for key in samples if ("method", "SCAN1") in key[1]]
    assert requests_of(samples, "/metrics", "GET", 401) == 1
    assert requests_of(again, "/metrics", "GET", 200) == 1  # the first scrape, counted once answered
    assert samples[("textebm_request_duration_seconds_count", (("endpoint", "/generate"),))] == 5
    assert samples[("textebm_sentences_generated_total", ())] == 5
    assert samples[("textebm_batch_sentences_count", ())] == 2  # one batch per request: they came one by one
    assert samples[("textebm_batch_sentences_sum", ())] == 5
    assert samples[("textebm_batch_requests_sum", ())] == 2
    assert samples[("textebm_queue_depth", ())] == 0
    assert samples[("textebm_busy", ())] == 0


def test_a_failing_generation_counts_as_a_5xx(tiny_run, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("the model broke")

    monkeypatch.setattr(server.batcher, "generate_for_requests", broken)
    app = create_app(tiny_run)
    with live_server(app) as base:
        with client(base) as http:
            assert http.post("/generate", json={"n": 2, "seed": 1}).status_code == 500
        with client(base) as http:  # (uvicorn closes a connection whose request raised)
            samples = scrape(http)  # no key set: open, like /info
    assert requests_of(samples, "/generate", "POST", 500) == 1
    assert samples[("textebm_sentences_generated_total", ())] == 0
