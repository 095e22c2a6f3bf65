"""The vLLM stand-in behaves as docs/facts/vllm.md records, so tests built on it mean something."""

from __future__ import annotations

import itertools
import json
import statistics
import time

import pytest
import requests

from tests.support.vllm_standin import (
    DEFAULT_API_KEY,
    DEFAULT_MODEL,
    PROXY_BLOCKED_PATHS,
    StandinConfig,
    run_standin,
)

GOOD = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}


@pytest.mark.parametrize("path", ["/v1/models", "/v1x", "/v2/anything", "/inference/x", "/cohere"])
def test_guarded_prefixes_need_the_key(path):
    with run_standin() as vllm:
        missing = requests.get(vllm.url + path, timeout=5)
        wrong = requests.get(vllm.url + path, headers={"Authorization": "Bearer no"}, timeout=5)
        basic = requests.get(
            vllm.url + path, headers={"Authorization": f"Basic {DEFAULT_API_KEY}"}, timeout=5
        )
    for response in (missing, wrong, basic):
        assert response.status_code == 401
        assert response.json() == {"error": "Unauthorized"}
    assert [r.auth for r in vllm.requests] == ["absent", "invalid", "invalid"]


def test_bearer_scheme_is_case_insensitive_and_options_is_never_checked():
    with run_standin() as vllm:
        lower = requests.get(
            vllm.url + "/v1/models",
            headers={"Authorization": f"bEaReR {DEFAULT_API_KEY}"},
            timeout=5,
        )
        options = requests.options(vllm.url + "/v1/models", timeout=5)
    assert lower.status_code == 200
    assert options.status_code != 401


@pytest.mark.parametrize("path", ["/health", "/ping", "/version", "/metrics"])
def test_open_get_paths_answer_without_key(path):
    with run_standin() as vllm:
        assert requests.get(vllm.url + path, timeout=5).status_code == 200


@pytest.mark.parametrize("path", ["/tokenize", "/invocations"])
def test_open_post_paths_answer_without_key(path):
    with run_standin() as vllm:
        response = requests.post(vllm.url + path, json={"prompt": "a b c"}, timeout=5)
    assert response.status_code == 200


def test_models_shape_and_auth_log_redacts_the_key():
    with run_standin(StandinConfig(max_model_len=4096)) as vllm:
        body = requests.get(vllm.url + "/v1/models", headers=GOOD, timeout=5).json()
    assert body["object"] == "list"
    assert [(m["id"], m["object"], m["owned_by"], m["max_model_len"]) for m in body["data"]] == [
        (DEFAULT_MODEL, "model", "vllm", 4096)
    ]
    (logged,) = vllm.requests
    assert logged.headers["Authorization"] == "<redacted>"
    assert DEFAULT_API_KEY not in repr(logged)
    assert logged.auth == "valid"


def test_metrics_values_are_settable():
    with run_standin() as vllm:
        vllm.set_metrics(num_requests_running=3, generation_tokens_total=42)
        text = requests.get(vllm.url + "/metrics", timeout=5).text
    assert 'vllm:num_requests_running{engine="0",model_name="' in text
    running = [line for line in text.splitlines() if line.startswith("vllm:num_requests_running")]
    assert running[0].endswith(" 3")
    tokens = [line for line in text.splitlines() if line.startswith("vllm:generation_tokens_total")]
    assert tokens[0].endswith(" 42")
    assert "vllm:num_requests_waiting{" in text
    assert "vllm:request_success_total{" in text


def test_stream_flushes_chunks_one_by_one_and_ends_with_done():
    config = StandinConfig(chunk_delay=0.05, stream_chunks=("a", "b", "c"))
    with run_standin(config) as vllm:
        response = requests.post(
            vllm.url + "/v1/chat/completions",
            headers=GOOD,
            json={"model": DEFAULT_MODEL, "messages": [], "stream": True},
            stream=True,
            timeout=5,
        )
        arrivals = []
        events = []
        logged_while_streaming = None
        for line in response.iter_lines():
            if line:
                arrivals.append(time.monotonic())
                events.append(line.decode())
                if logged_while_streaming is None:
                    logged_while_streaming = vllm.requests
        logged_after = vllm.requests
    assert logged_while_streaming == []  # a stream in flight is not logged yet
    assert [(r.path, r.status) for r in logged_after] == [("/v1/chat/completions", 200)]
    assert response.headers["Content-Type"].startswith("text/event-stream")
    assert events[-1] == "data: [DONE]"
    contents = [json.loads(e[6:])["choices"][0]["delta"].get("content") for e in events[:-1]]
    assert contents == ["", "a", "b", "c", ""]
    # Each event arrived on its own, not in one buffered lump. Judged on the median gap and the
    # whole spread, not the smallest gap: on a loaded machine the client may be scheduled late
    # and read two flushed events in one go, while a buffered stream has no spread at all.
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert statistics.median(gaps) >= 0.03
    assert arrivals[-1] - arrivals[0] >= 0.03 * len(gaps)


def test_variants_health_unready_wrong_model_and_refused_paths():
    with run_standin(StandinConfig.deployed(health_unready=2, models=("x",))) as vllm:
        statuses = [requests.get(vllm.url + "/health", timeout=5).status_code for _ in range(3)]
        wrong = requests.post(
            vllm.url + "/v1/completions", headers=GOOD, json={"model": "y"}, timeout=5
        )
        refused = requests.post(vllm.url + "/invocations", json={}, timeout=5)
    assert statuses == [503, 503, 200]
    assert wrong.status_code == 404
    assert refused.status_code == 403
    assert "/invocations" in PROXY_BLOCKED_PATHS
    assert "/health" not in PROXY_BLOCKED_PATHS


def test_auth_not_enforced_variant_and_ipv6():
    with run_standin(StandinConfig(api_key=None), host="::1") as vllm:
        assert vllm.url.startswith("http://[::1]:")
        assert requests.get(vllm.url + "/v1/models", timeout=5).status_code == 200


def test_slow_response_does_not_hang_shutdown():
    started = time.monotonic()
    with (
        run_standin(StandinConfig(response_delay=30)) as vllm,
        pytest.raises(requests.exceptions.ReadTimeout),
    ):
        requests.get(vllm.url + "/health", timeout=0.2)
    assert time.monotonic() - started < 5


def test_kept_alive_stream_sends_comments_and_never_done():
    config = StandinConfig(stream_keepalive=0.02, stream_chunks=("a", "b"))
    with run_standin(config) as vllm:
        response = requests.post(
            vllm.url + "/v1/chat/completions",
            headers=GOOD,
            json={"model": DEFAULT_MODEL, "messages": [], "stream": True},
            stream=True,
            timeout=5,
        )
        lines: list[str] = []
        for line in response.iter_lines():
            if line:
                lines.append(line.decode())
            if lines.count(": keep-alive") == 5:
                break
        response.close()
    assert response.status_code == 200
    contents = [json.loads(e[6:])["choices"][0]["delta"]["content"] for e in lines[:3]]
    assert contents == ["", "a", "b"]
    assert lines[3:] == [": keep-alive"] * 5  # no finish event, no usage, no [DONE]


def test_trickled_body_keeps_coming():
    config = StandinConfig(trickle_paths=frozenset({"/v1/models"}), trickle_interval=0.02)
    with run_standin(config) as vllm:
        with requests.get(vllm.url + "/v1/models", headers=GOOD, stream=True, timeout=5) as r:
            pieces = r.iter_content(chunk_size=1)
            first = [next(pieces) for _ in range(5)]
        refused = requests.get(vllm.url + "/v1/models", timeout=5)  # the 401 is not trickled
    assert r.status_code == 200
    assert r.headers["Transfer-Encoding"] == "chunked"
    assert first == [b" "] * 5
    assert refused.status_code == 401


def test_unauthorized_status_variant():
    with run_standin(StandinConfig(unauthorized_status=403)) as vllm:
        missing = requests.get(vllm.url + "/v1/models", timeout=5)
        good = requests.get(vllm.url + "/v1/models", headers=GOOD, timeout=5)
    assert (missing.status_code, missing.json()) == (403, {"error": "Forbidden"})
    assert good.status_code == 200
