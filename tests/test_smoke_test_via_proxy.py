"""The smoke test against the real thing clients meet: Debian's nginx running the project's
rendered proxy config, in front of a vLLM stand-in that leaves everything open. The proxy alone
must make every check pass."""

from __future__ import annotations

from tests.support.nginx import run_proxy
from tests.support.vllm_standin import PROXY_BLOCKED_PATHS, StandinConfig, run_standin
from tests.test_smoke_test import KEY, guard_dns, smoke

__all__ = ["guard_dns", "smoke"]  # fixtures shared with test_smoke_test.py


def test_proxy_makes_an_open_vllm_pass(smoke):
    # vLLM as bare as it gets: no key at all, /invocations, /metrics, /tokenize open.
    # Streamed events leave vLLM 50 ms apart, to see whether nginx passes them on at once.
    config = StandinConfig(api_key=None, chunk_delay=0.05)
    with (
        run_standin(config) as vllm,
        run_proxy(upstream=f"127.0.0.1:{vllm.port}", api_key=KEY) as proxy,
    ):
        run = smoke([proxy.url, "--json"])
        # The smoke test stops reading at [DONE]; the stand-in logs the stream just after.
        assert vllm.wait_for_request("/v1/chat/completions").status == 200
        reached_vllm = set(vllm.paths())
        access_log = proxy.access_log()
    assert run.code == 0, run.out
    report = run.report()
    assert [c["status"] for c in report["checks"]] == ["PASS"] * 7
    assert report["checks"][2]["data"] == {"without_key": 401, "wrong_key": 401}
    assert report["checks"][3]["data"] == {
        "/invocations": "403",
        "/metrics": "401",  # for key holders only
        "/tokenize": "403",
    }
    # The proxy refused them itself: they never reached vLLM.
    assert not reached_vllm & PROXY_BLOCKED_PATHS - {"/metrics"}
    assert "/metrics" not in reached_vllm  # asked without the key
    assert {"/health", "/v1/models", "/v1/completions", "/v1/chat/completions"} <= reached_vllm
    # Unbuffered: the first token arrived long before the ~0.45 s stream was over.
    stream = report["checks"][6]
    assert stream["data"]["done"] is True
    assert stream["data"]["time_to_first_token_s"] < stream["duration_s"] / 2
    assert KEY not in access_log


def test_proxy_with_wrong_key_is_refused(smoke):
    with (
        run_standin(StandinConfig(api_key=None)) as vllm,
        run_proxy(upstream=f"127.0.0.1:{vllm.port}", api_key="the-deployed-key") as proxy,
    ):
        run = smoke([proxy.url])
    assert run.code == 1
    assert "the key was refused (401)" in run.line(5)


def test_proxy_while_vllm_is_down_is_still_starting(smoke):
    # vLLM not listening yet: nginx answers 502 on /health, which means "still starting".
    with run_standin(StandinConfig()) as vllm:
        upstream = f"127.0.0.1:{vllm.port}"
    with run_proxy(upstream=upstream, api_key=KEY) as proxy:
        run = smoke([proxy.url])
    assert run.code == 3
    assert "still starting: 502" in run.line(2)


def test_smoke_test_names_the_replica_the_proxy_says_answered(smoke):
    """Behind a group's balancer each answer may come from another replica; the proxy names
    its machine (X-LLM-Endpoint-Replica, the host name) and the completion check reports it."""
    import socket

    with (
        run_standin(StandinConfig(api_key=KEY)) as vllm,
        run_proxy(upstream=f"127.0.0.1:{vllm.port}", api_key=KEY) as proxy,
    ):
        run = smoke([proxy.url, "--json"])
    assert run.code == 0, run.out
    completion = next(c for c in run.report()["checks"] if c["name"] == "completion")
    assert completion["data"]["replica"] == socket.gethostname()
    assert f"answered by replica {socket.gethostname()}" in completion["detail"]
