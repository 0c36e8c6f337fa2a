"""Schemathesis fuzzes the live server from its own /openapi.json: valid requests are answered
(2xx, fitting the response schema), invalid ones get 4xx, and nothing ever gets a 5xx.

Bounded: 40 examples each for schema-conforming and schema-violating requests over all
operations. (schemathesis' `from_fixture` pytest integration fails under pytest 9, so the
strategies are driven by Hypothesis directly.)"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from server_fixtures import live_server, train_tiny_run

from server.app import create_app


@pytest.fixture(scope="module")
def fuzz_base(tmp_path_factory):
    run = train_tiny_run(tmp_path_factory.mktemp("fuzz") / "tiny")
    # Small limits keep each generated request cheap; the fuzzer still explores right up to them.
    with live_server(create_app(run, max_n=8, max_length=30, max_prior_steps=20)) as url:
        yield url


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_openapi_fuzz(fuzz_base, mode):
    schema = schemathesis.openapi.from_url(f"{fuzz_base}/openapi.json")
    operations = [op.ok().label for op in schema.get_all_operations()]
    assert {"POST /generate", "GET /health", "GET /info"} <= set(operations)
    seen: list[int] = []

    @given(case=schema.as_strategy(mode))
    @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
    def check(case):
        response = case.call_and_validate(base_url=fuzz_base)
        seen.append(response.status_code)
        assert response.status_code < 500, response.text
        if mode is GenerationMode.NEGATIVE and case.operation.label == "POST /generate":
            assert 400 <= response.status_code < 500, (case.body, response.text)

    check()
    assert len(seen) >= 20
    if mode is GenerationMode.POSITIVE:
        assert 200 in seen
