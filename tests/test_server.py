"""The HTTP server, called over real HTTP: uvicorn on a free loopback port, httpx as the client."""

from __future__ import annotations

import json
import threading
import time

import httpx
import pytest
from server_fixtures import answers_while_held, client, live_server, train_tiny_run

from server import batcher
from server.app import create_app
from server.launch import _server
from textebm.errors import UserError
from textebm.generation.sampling import SamplingOptions, generate_text
from textebm.model.runs import load_run


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    return train_tiny_run(tmp_path_factory.mktemp("server") / "tiny")


@pytest.fixture(scope="module")
def base(tiny_run):
    app = create_app(tiny_run, max_n=16, max_length=50, max_prior_steps=100)
    with live_server(app) as url:
        yield url


@pytest.fixture()
def http(base):
    with client(base) as c:
        yield c


def test_generate_returns_sentences_and_how_to_reproduce(http, tiny_run):
    r = http.post("/generate", json={"n": 4, "seed": 11, "temperature": 0.9, "top_k": 10})
    assert r.status_code == 200, r.text
    data = r.json()
    assert len(data["sentences"]) == 4 and all(isinstance(s, str) for s in data["sentences"])
    assert data["seed"] == 11 and data["took_ms"] >= 0
    assert data["model_step"] == 20
    request = data["request"]
    assert request == {"n": 4, "max_length": 40, "temperature": 0.9, "top_k": 10, "top_p": 1.0,
                       "greedy": False, "seed": 11, "prior_steps": 5}
    # The resolved request, POSTed back, gives the same sentences.
    again = http.post("/generate", json=request).json()
    assert again["sentences"] == data["sentences"]


def test_seed_is_deterministic_and_matches_the_library(http, tiny_run):
    body = {"n": 5, "seed": 1234, "max_length": 30, "top_p": 0.9}
    first = http.post("/generate", json=body).json()["sentences"]
    second = http.post("/generate", json=body).json()["sentences"]
    other = http.post("/generate", json={**body, "seed": 1235}).json()["sentences"]
    assert first == second
    assert first != other
    loaded = load_run(tiny_run, "cpu")
    expected = generate_text(loaded.model, loaded.vocab, 5, SamplingOptions(max_length=30, top_p=0.9), 1234)
    assert first == expected  # the same as `textebm sample --seed 1234 -n 5 --top-p 0.9 --max-length 30`


def test_without_seed_the_server_picks_one_that_reproduces(http):
    data = http.post("/generate", json={"n": 3}).json()
    assert isinstance(data["seed"], int)
    again = http.post("/generate", json={"n": 3, "seed": data["seed"]}).json()
    assert again["sentences"] == data["sentences"]


def test_concurrent_requests_are_batched_without_changing_their_sentences(tiny_run, monkeypatch):
    """Requests that wait together share one decode (one `generate_for_requests` call), yet each gets its lone
    answer. The first request's decode is held until the 23 others wait behind it, so that they wait together
    however the threads are scheduled; 59 sentences fit one batch of 64."""
    bodies = [{"n": 1 + i % 4, "seed": 500 + i, "max_length": 10 + 3 * (i % 5)} for i in range(24)]
    with live_server(create_app(tiny_run, max_n=16, max_length=50, max_batch_sentences=64)) as url:
        with client(url) as c:
            alone = [c.post("/generate", json=b).json() for b in bodies]
        batches: list = []
        release, started, _ = _blocked_generation(monkeypatch, batches)
        results: list = [None] * len(bodies)

        def call(i):
            with client(url) as c:
                results[i] = c.post("/generate", json=bodies[i]).json()

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(bodies))]
        try:
            threads[0].start()
            assert started.wait(10)
            for t in threads[1:]:
                t.start()
            with client(url) as c:
                _wait_for_queued(c, len(bodies) - 1)
        finally:
            release.set()
        for t in threads:
            t.join(60)
    assert all(a["batch_requests"] == 1 for a in alone)
    seeds = [sorted(part.seed for part in batch) for batch in batches]
    assert seeds == [[500], [b["seed"] for b in bodies[1:]]], "the waiting requests were not decoded as one batch"
    assert [r["batch_requests"] for r in results] == [1] + [len(bodies) - 1] * (len(bodies) - 1)
    assert [r["sentences"] for r in results] == [a["sentences"] for a in alone]


def test_an_app_decodes_at_its_precision_as_the_library_does(tiny_run):
    body, options = {"n": 40, "seed": 3}, SamplingOptions()
    with live_server(create_app(tiny_run, precision="int8")) as url, client(url) as c:
        assert c.get("/info").json()["precision"] == "int8"
        served = c.post("/generate", json=body).json()["sentences"]

    def library(precision: str) -> list[str]:
        loaded = load_run(tiny_run, "cpu", precision=precision)
        return generate_text(loaded.model, loaded.vocab, 40, options, 3)

    int8 = library("int8")
    assert int8 != library("fp32")  # so that the next line tells the precisions apart
    assert served == int8


def test_health_and_info(http):
    health = http.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    info = http.get("/info").json()
    assert info["vocab_size"] > 10 and info["latent_dim"] == 8 and info["prior"] == "ebm"
    assert info["step"] == 20 and info["version"] == __import__("textebm").__version__
    assert info["corpus"].endswith("tiny-corpus.txt")
    assert info["limits"]["max_n"] == 16 and info["limits"]["max_length"] == 50
    assert info["config"]["hidden_dim"] == 32
    assert info["auth"] is False


def test_openapi_and_docs_are_served(http):
    schema = http.get("/openapi.json").json()
    props = schema["components"]["schemas"]["GenerateRequest"]["properties"]
    assert set(props) == {"n", "max_length", "temperature", "top_k", "top_p", "greedy", "seed", "prior_steps"}
    assert props["n"]["maximum"] == 16
    assert http.get("/docs").status_code == 200


@pytest.mark.parametrize("body, field", [
    ({"n": "3"}, "n"),
    ({"n": 3.5}, "n"),
    ({"n": True}, "n"),
    ({"n": 0}, "n"),
    ({"n": -2}, "n"),
    ({"n": 17}, "n"),
    ({"n": 10**30}, "n"),
    ({"max_length": 51}, "max_length"),
    ({"max_length": 0}, "max_length"),
    ({"temperature": -1}, "temperature"),
    ({"temperature": 0}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_p": -0.1}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"greedy": "yes"}, "greedy"),
    ({"greedy": 1}, "greedy"),
    ({"seed": -1}, "seed"),
    ({"seed": 2**64}, "seed"),
    ({"seed": "7"}, "seed"),
    ({"prior_steps": -1}, "prior_steps"),
    ({"prior_steps": 101}, "prior_steps"),
    ({"temperatur": 1.0}, "temperatur"),
    ({"n": 2, "extra": {"nested": True}}, "extra"),
])
def test_bad_fields_get_422_naming_the_field(http, body, field):
    r = http.post("/generate", json=body)
    assert r.status_code == 422, r.text
    data = r.json()
    assert data["detail"].startswith(f"{field}: ")
    assert [e["field"] for e in data["errors"]] == [field]


@pytest.mark.parametrize("raw, field", [
    ('{"temperature": NaN}', "temperature"),
    ('{"temperature": Infinity}', "temperature"),
    ('{"top_p": -Infinity}', "top_p"),
    ('{"temperature": 1e999}', "temperature"),
])
def test_non_finite_numbers_get_422(http, raw, field):
    r = http.post("/generate", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["detail"].startswith(f"{field}: ")


@pytest.mark.parametrize("raw, status, start", [
    ('{"n": 3,', 400, "body: malformed JSON"),
    ("not json at all", 400, "body: malformed JSON"),
    ("[1, 2]", 422, "body: "),
    ("3", 422, "body: "),
    ("", 422, "body: "),
])
def test_malformed_bodies_get_4xx(http, raw, status, start):
    r = http.post("/generate", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert r.json()["detail"].startswith(start)


def test_oversized_body_gets_413(http):
    big = json.dumps({"n": 1, "padding": "x" * 20000})
    r = http.post("/generate", content=big, headers={"content-type": "application/json"})
    assert r.status_code == 413
    assert "body" in r.json()["detail"]

    def chunks():  # no Content-Length: the limit is counted as the body streams in
        for _ in range(40):
            yield b"x" * 1024

    r = http.post("/generate", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413


def test_wrong_method_and_path_are_4xx(http):
    assert http.get("/generate").status_code == 405
    assert http.get("/nope").status_code == 404


def test_playground_page_is_self_contained(http):
    page = http.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert 'id="generate"' in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        r = http.get(asset)
        assert r.status_code == 200
        assert "http://" not in r.text and "https://" not in r.text
    assert "https://" not in page.text and "http://" not in page.text


def test_slow_generation_never_blocks_health(tiny_run, monkeypatch):
    """While a generation is held on the worker thread, /health and /info answer (`answers_while_held`)."""
    release, started, _ = _blocked_generation(monkeypatch)
    with live_server(create_app(tiny_run)) as url:
        done = threading.Event()

        def call():
            with client(url) as c:
                assert c.post("/generate", json={"n": 2, "seed": 1}).status_code == 200
            done.set()

        worker = threading.Thread(target=call)
        worker.start()
        try:
            answers_while_held(url, started, done, "generation")
        finally:
            release.set()
        worker.join(30)
        assert done.is_set(), "the held generation did not complete once released"


def test_queue_full_gets_503_with_retry_after(tiny_run, monkeypatch):
    """queue_size=2: one request decoding (blocked), two waiting, the next is refused with 503."""
    real = batcher.generate_for_requests
    release, started = threading.Event(), threading.Event()

    def blocked(*args, **kwargs):
        started.set()
        release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr(batcher, "generate_for_requests", blocked)
    with live_server(create_app(tiny_run, queue_size=2)) as url:
        statuses: list[int] = []

        def call(seed):
            with client(url) as c:
                statuses.append(c.post("/generate", json={"n": 1, "seed": seed, "temperature": 0.5 + seed}).status_code)

        first = threading.Thread(target=call, args=(0,))
        first.start()
        assert started.wait(10)
        waiting = [threading.Thread(target=call, args=(i,)) for i in (1, 2)]
        for t in waiting:
            t.start()
        with client(url) as c:
            deadline = time.monotonic() + 10
            while c.get("/health").json()["queued"] < 2:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            r = c.post("/generate", json={"n": 1, "seed": 9})
            assert r.status_code == 503
            assert int(r.headers["retry-after"]) >= 1
            assert "busy" in r.json()["detail"]
        release.set()
        for t in [first, *waiting]:
            t.join(30)
        assert sorted(statuses) == [200, 200, 200]


def _blocked_generation(monkeypatch, batches: list | None = None):
    """Generation that waits for `release`; `started` is set and each batch's temperature noted as it starts
    (and its requests, `Request`s, appended to `batches` when given)."""
    real = batcher.generate_for_requests
    release, started, temperatures = threading.Event(), threading.Event(), []

    def blocked(model, parts, options):
        temperatures.append(options.temperature)
        if batches is not None:
            batches.append(list(parts))
        started.set()
        release.wait(30)
        return real(model, parts, options)

    monkeypatch.setattr(batcher, "generate_for_requests", blocked)
    return release, started, temperatures


def _wait_for_queued(c, count: int) -> None:
    deadline = time.monotonic() + 10
    while c.get("/health").json()["queued"] != count:
        assert time.monotonic() < deadline, f"the queue never held {count}"
        time.sleep(0.02)


def test_a_client_that_leaves_gives_up_its_place(tiny_run, monkeypatch):
    """A request whose client disconnects while it waits never reaches the model, frees its place at
    once, and counts as 499 (ten abandoned requests made the next small one wait 11 s)."""
    release, started, temperatures = _blocked_generation(monkeypatch)
    with live_server(create_app(tiny_run)) as url:
        outcomes = []

        def call(temperature, timeout):
            with httpx.Client(base_url=url, timeout=timeout) as c:
                try:
                    r = c.post("/generate", json={"n": 1, "seed": 1, "temperature": temperature})
                    outcomes.append(r.status_code)
                except httpx.ReadTimeout:
                    outcomes.append("left")

        running = threading.Thread(target=call, args=(1.0, 60))
        running.start()
        assert started.wait(10)
        leaving = threading.Thread(target=call, args=(0.7, 1.5))
        leaving.start()
        with client(url) as c:
            _wait_for_queued(c, 1)
            leaving.join(10)
            _wait_for_queued(c, 0)  # while the first still runs
            release.set()
            running.join(30)
            metrics = c.get("/metrics").text
    assert sorted(outcomes, key=str) == [200, "left"]
    assert temperatures == [1.0], "the abandoned request reached the model"
    left = [line for line in metrics.splitlines() if line.startswith("textebm_requests_total{")
            and 'code="499"' in line and 'endpoint="/generate"' in line]
    assert left and left[0].endswith(" 1.0"), metrics


def test_at_shutdown_waiting_and_running_requests_get_503_at_once(tiny_run, monkeypatch):
    """`textebm serve`'s server closes the batcher when shutdown begins: the waiting requests were cancelled
    by uvicorn when its grace ended, each a 500 with a traceback in the log. The running one is answered
    503 too, at once, even by a job that never checks for a stop (this one is held outside the model's
    loops; tests/test_server_cancel.py shows a real job stopping within a step)."""
    release, started, _ = _blocked_generation(monkeypatch)
    app = create_app(tiny_run)
    holder = {}

    def make_server(config):
        holder["server"] = _server(config, app)
        return holder["server"]

    with live_server(app, make_server=make_server) as url:
        answers = {}

        def call(temperature):
            with client(url) as c:
                try:
                    r = c.post("/generate", json={"n": 1, "seed": 1, "temperature": temperature})
                    answer = (r.status_code, r.json()["detail"] if r.status_code == 503 else r.text)
                except httpx.HTTPError as err:
                    answer = ("no answer", repr(err))
                answers[temperature] = (*answer, release.is_set())  # answered before the held job was let go?

        threads = [threading.Thread(target=call, args=(1.0,))]
        threads[0].start()
        assert started.wait(10)
        threads += [threading.Thread(target=call, args=(t,)) for t in (0.7, 0.8)]
        for t in threads[1:]:
            t.start()
        try:
            with client(url) as c:
                _wait_for_queued(c, 2)
            holder["server"].should_exit = True  # what SIGTERM sets
            for t in threads:
                t.join(10)  # a hang guard: the answers need no release
        finally:
            release.set()
        for t in threads:
            t.join(30)
    for temperature in (1.0, 0.7, 0.8):
        code, detail, released = answers[temperature]
        assert code == 503 and detail.startswith("server shutting down"), answers
        assert not released, f"the request at temperature {temperature} was answered only once its job was let go"


def test_request_bodies_that_are_not_json_objects_are_named(tiny_run):
    with live_server(create_app(tiny_run)) as url, client(url) as c:
        r = c.post("/generate", content=b'{"n": 1}', headers={"Content-Type": "application/x-www-form-urlencoded"})
        assert r.status_code == 415  # curl -d without a JSON content type: it was a 422 about a dictionary
        assert r.json()["detail"] == ("body: send JSON with Content-Type: application/json "
                                      "(not application/x-www-form-urlencoded)")
        r = c.post("/score", content='{"sentences": ["café"]}'.encode("latin-1"),
                   headers={"Content-Type": "application/json"})
        assert r.status_code == 400 and r.json()["detail"].startswith("body: not UTF-8 (")
        r = c.post("/generate", content="[" * 5000 + "]" * 5000, headers={"Content-Type": "application/json"})
        assert r.status_code in (400, 413) and r.json()["detail"].startswith("body: ")
        r = c.post("/generate", headers={"Content-Type": "application/json"})
        assert r.status_code == 422
        assert r.json()["detail"] == "body: required: a JSON object ({} for every default)"
        assert c.post("/generate", json={}).status_code == 200
        assert c.head("/health").status_code == 200 and c.head("/").status_code == 200


def test_the_api_key_must_be_printable_ascii(tiny_run):
    # "sécret" never matched: the header arrives as bytes read as Latin-1, the key was compared as UTF-8
    for key in ("sécret", "tab\tkey"):
        with pytest.raises(UserError, match="printable ASCII"):
            create_app(tiny_run, api_key=key)


def test_api_key_is_required_when_set(tiny_run):
    with live_server(create_app(tiny_run, api_key="s3cret")) as url, client(url) as c:
        body = {"n": 1, "seed": 3}
        r = c.post("/generate", json=body)
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        assert "API key" in r.json()["detail"]
        assert c.post("/generate", json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.post("/generate", json=body, headers={"X-API-Key": "s3cret-not"}).status_code == 401
        assert c.get("/info").status_code == 401
        assert c.post("/generate", json=body, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert c.post("/generate", json=body, headers={"X-API-Key": "s3cret"}).status_code == 200
        assert c.get("/info", headers={"X-API-Key": "s3cret"}).json()["auth"] is True
        assert c.get("/health").status_code == 200  # liveness stays open for probes
        assert c.get("/").status_code == 200  # the page holds no secret; it asks for the key


def test_cors_is_off_unless_asked(tiny_run, base):
    origin = {"Origin": "http://example.test"}
    with client(base) as c:
        r = c.get("/health", headers=origin)
        assert "access-control-allow-origin" not in r.headers
    with live_server(create_app(tiny_run, cors_origins=["http://example.test"])) as url, client(url) as c:
        r = c.get("/health", headers=origin)
        assert r.headers["access-control-allow-origin"] == "http://example.test"
        r = c.get("/health", headers={"Origin": "http://other.test"})
        assert "access-control-allow-origin" not in r.headers


def test_create_app_rejects_bad_runs_and_limits(tmp_path, tiny_run):
    with pytest.raises(UserError, match="does not exist"):
        create_app(tmp_path / "missing")
    with pytest.raises(UserError, match="not a textebm run"):
        create_app(tmp_path)
    with pytest.raises(UserError, match="max_n"):
        create_app(tiny_run, max_n=0)


def test_damaged_checkpoint_fails_at_start_up_not_per_request(tmp_path, tiny_run):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(tiny_run, broken)
    (broken / "model.safetensors").write_bytes(b"not a checkpoint")
    app = create_app(broken)
    with pytest.raises(RuntimeError, match="start"):
        with live_server(app, startup_timeout=30):
            pass
    assert isinstance(app.state.startup_error, UserError)
    assert "corrupt" in str(app.state.startup_error)



def test_an_app_served_on_two_loops_waits_on_each_loops_own_stopping_event(tiny_run):
    # one Event for the app's life belonged to the first loop: on the next, a body in pieces got a false 503
    from fastapi.testclient import TestClient

    app = create_app(tiny_run)
    events = []
    for _ in range(2):
        with TestClient(app) as c:
            events.append(app.state.stopping)
            assert c.post("/generate", json={"n": 1, "seed": 3}).status_code == 200
    assert events[0] is not None and events[1] is not None and events[0] is not events[1]
