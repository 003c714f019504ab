"""Admission and cancellation on a deliberately small server (1 slot, 1 waiting): a full server answers
429 at once; a client that hangs up (streaming or not) cancels its request and frees the slot long
before its max_tokens would have run out; /metrics reports it in Prometheus text."""

from __future__ import annotations

import threading
import time

import httpx
import pytest

from tests.server.conftest import start_server, stop_server

# A long string field keeps the model from stopping early (the grammar allows no end-of-text before it).
LONG = {"messages": [{"role": "user", "content": "Tell me a long story."}], "max_tokens": 900,
        "temperature": 1.0, "seed": 1, "response_format": {"type": "json_schema", "json_schema": {"name": "story",
        "schema": {"type": "object", "properties": {"story": {"type": "string", "minLength": 4000}},
                   "required": ["story"]}}}}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    srv = start_server(tmp_path_factory.mktemp("small") / "server.log", "--slots", "1", "--max-pending", "1")
    yield srv
    stop_server(srv)


def auth(srv) -> dict:
    return {"Authorization": f"Bearer {srv.api_key}"}


def wait_for(cond, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return False


def metric(srv, name: str) -> float:
    text = httpx.get(f"{srv.url}/metrics", timeout=10).text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name + " ")
               or line.startswith(name + "{"))


def test_streaming_client_that_hangs_up_frees_its_slot(small):
    cancelled = metric(small, "qwenvl_requests_cancelled_total")
    with httpx.Client(base_url=small.url, headers=auth(small), timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions", json={**LONG, "stream": True}) as r:
            assert r.status_code == 200
            n = 0
            for line in r.iter_lines():
                n += line.startswith("data: ")
                if n >= 3:
                    break  # hang up mid-stream
    assert wait_for(lambda: small.health()["active"] == 0, 20), small.health()
    h = small.health()
    assert h["slots_free"] == h["slots_total"] == 1
    assert metric(small, "qwenvl_requests_cancelled_total") == cancelled + 1


def test_non_streaming_client_that_hangs_up_is_cancelled(small):
    def fire():
        try:
            httpx.post(f"{small.url}/v1/chat/completions", headers=auth(small), json=LONG, timeout=1.5)
        except httpx.TimeoutException:
            pass  # the client gives up and closes the connection

    cancelled = metric(small, "qwenvl_requests_cancelled_total")
    t = threading.Thread(target=fire)
    t.start()
    t.join()
    assert wait_for(lambda: small.health()["active"] == 0, 20), small.health()
    assert metric(small, "qwenvl_requests_cancelled_total") == cancelled + 1


def test_full_server_answers_429_and_recovers(small):
    results: list[int] = []

    def long_request():
        r = httpx.post(f"{small.url}/v1/chat/completions", headers=auth(small), json={**LONG, "max_tokens": 400},
                       timeout=120)
        results.append(r.status_code)

    threads = [threading.Thread(target=long_request) for _ in range(2)]  # one runs, one waits
    for t in threads:
        t.start()
    assert wait_for(lambda: small.health()["active"] == 2, 20)
    r = httpx.post(f"{small.url}/v1/chat/completions", headers=auth(small), json={**LONG, "max_tokens": 4}, timeout=30)
    assert r.status_code == 429
    err = r.json()["error"]
    assert err["type"] == "rate_limit_error" and "busy" in err["message"]
    for t in threads:
        t.join()
    assert results == [200, 200]
    ok = httpx.post(f"{small.url}/v1/chat/completions", headers=auth(small), json={**LONG, "max_tokens": 4}, timeout=30)
    assert ok.status_code == 200


def test_metrics_are_prometheus_text(small):
    text = httpx.get(f"{small.url}/metrics", timeout=10).text
    for name in ("qwenvl_requests_total", "qwenvl_prompt_tokens_total", "qwenvl_completion_tokens_total",
                 "qwenvl_requests_waiting", "qwenvl_kv_slots_free", "qwenvl_engine_vision_hits_total",
                 "qwenvl_engine_prefix_hits_total", "qwenvl_time_to_first_token_seconds_bucket",
                 "qwenvl_request_latency_seconds_count"):
        assert name in text, name
    assert "# TYPE qwenvl_request_latency_seconds histogram" in text
