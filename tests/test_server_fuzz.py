"""Schemathesis fuzzes the live server from its own /openapi.json: valid requests are answered
(2xx, fitting the response schema), invalid ones get 4xx, and nothing ever gets a 5xx.

Bounded: per operation (/generate, the latent-space /reconstruct, /interpolate and /score, /health,
/info, /metrics), 30 examples each of schema-conforming and schema-violating requests, the same ones
on every run (derandomised: a failure reproduces). (schemathesis' `from_fixture` pytest integration
fails under pytest 9, so the strategies are driven by Hypothesis directly.)"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from server_fixtures import live_server, train_tiny_run

from server.app import create_app

OPERATIONS = ["POST /generate", "POST /reconstruct", "POST /interpolate", "POST /score", "GET /health", "GET /info",
              "GET /metrics"]


@pytest.fixture(scope="module")
def fuzz_base(tmp_path_factory):
    run = train_tiny_run(tmp_path_factory.mktemp("fuzz") / "tiny")
    # Small limits keep each generated request cheap; the fuzzer still explores right up to them.
    with live_server(create_app(run, max_n=8, max_length=30, max_prior_steps=20)) as url:
        yield url


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_base):
    return schemathesis.openapi.from_url(f"{fuzz_base}/openapi.json")


def test_every_operation_is_fuzzed(fuzz_schema):
    labels = {op.ok().label for op in fuzz_schema.get_all_operations()}
    assert labels == set(OPERATIONS), labels


# A GET without parameters has no invalid request to make: it is fuzzed with valid ones only.
CASES = [(mode, label) for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) for label in OPERATIONS
         if mode is GenerationMode.POSITIVE or label.startswith("POST")]


@pytest.mark.parametrize("mode, label", CASES)
def test_openapi_fuzz(fuzz_base, fuzz_schema, mode, label):
    method, path = label.split(" ")
    operation = fuzz_schema[path][method]
    seen: list[int] = []

    @given(case=operation.as_strategy(mode))
    @settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None,
              derandomize=True)  # the same examples on every run: a failure in CI reproduces, none comes and goes
    def check(case):
        response = case.call_and_validate(base_url=fuzz_base)
        seen.append(response.status_code)
        assert response.status_code < 500, response.text
        if mode is GenerationMode.NEGATIVE and method == "POST":
            assert 400 <= response.status_code < 500, (case.body, response.text)

    check()
    assert len(seen) >= (10 if method == "POST" else 1)  # a GET without parameters: one request to make
    if mode is GenerationMode.POSITIVE:
        assert 200 in seen
