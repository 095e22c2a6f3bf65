"""The group's health checks, as Google's checkers send them, against the real Debian nginx with
the project's proxy config in front of the vLLM stand-in: GET /health answers 200 without a
key, and the same prober gets nothing else.

The request is what an HTTP health check sends (docs/facts/gcp.md, "Health checks"): HTTP/1.1,
`GET <requestPath>`, a Host header with the address it probes, the `GoogleHC/1.0` user agent,
no credentials; 200 is the only healthy answer. tests/test_gcp_group.py checks that both
health checks the group declares ask port 8000 and `/health`.
"""

from __future__ import annotations

import socket

import pytest
import requests

from infra import gcp_catalog
from infra.proxy_config import HEALTH_ONLY_RANGES, REPLICA_HEADER, render_proxy_config
from tests.support.nginx import run_proxy
from tests.support.vllm_standin import StandinConfig, run_standin

KEY = "group-health-check-key-0123456789abcdef"
LB_IP = "203.0.113.10"


def probe(port: int, method: str, path: str) -> tuple[int, bytes]:
    """One request the way a Google health checker writes it; returns status and raw reply."""
    request = (
        f"{method} {path} HTTP/1.1\r\n"
        f"Host: {LB_IP}:8000\r\n"
        "User-Agent: GoogleHC/1.0\r\n"
        "Connection: close\r\n"
        "\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(request)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    status = int(reply.split(b" ", 2)[1])
    return status, reply


@pytest.fixture
def proxied():
    with (
        run_standin(StandinConfig(api_key=KEY)) as vllm,
        run_proxy(upstream=f"127.0.0.1:{vllm.port}", api_key=KEY) as proxy,
    ):
        yield vllm, proxy


def test_the_checkers_request_for_health_gets_200_without_a_key(proxied) -> None:
    vllm, proxy = proxied
    for _ in range(3):  # a checker probes again and again, each on a new connection
        status, _ = probe(proxy.port, "GET", "/health")
        assert status == 200
    assert set(vllm.paths()) == {"/health"}


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("GET", "/metrics"),
        ("POST", "/invocations"),
        ("GET", "/health/../metrics"),
        ("GET", "/healthz"),
        ("POST", "/health"),
    ],
)
def test_the_same_prober_gets_nothing_else(proxied, method: str, path: str) -> None:
    vllm, proxy = proxied
    status, _ = probe(proxy.port, method, path)
    assert status in (401, 403, 404, 405), (method, path, status)
    assert all(p == "/health" for p in vllm.paths()), vllm.paths()


def test_from_googles_ranges_only_health_is_answered_even_with_the_key() -> None:
    """Two of Google's health-check ranges are also where any customer's Google proxy load
    balancer connects from, so a key used from there must not work: the allowlist decides who
    may use the key. The test client (127.0.0.1) stands in for such an address."""
    with (
        run_standin(StandinConfig(api_key=KEY)) as vllm,
        run_proxy(
            upstream=f"127.0.0.1:{vllm.port}", api_key=KEY, health_only_ranges=("127.0.0.1/32",)
        ) as proxy,
    ):
        assert probe(proxy.port, "GET", "/health")[0] == 200
        keyed = {"Authorization": f"Bearer {KEY}"}
        for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions")):
            r = requests.request(method, f"{proxy.url}{path}", headers=keyed, json={}, timeout=5)
            assert r.status_code == 403, (method, path)
            assert r.json() == {"error": "Forbidden"}
        assert set(vllm.paths()) == {"/health"}


def test_key_holders_elsewhere_are_served_and_told_which_replica_answered(proxied) -> None:
    _, proxy = proxied
    r = requests.get(
        f"{proxy.url}/v1/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=5
    )
    assert r.status_code == 200
    assert r.headers[REPLICA_HEADER] == socket.gethostname()
    # /health, open to everyone the firewall lets in, does not name the machine.
    assert REPLICA_HEADER.encode().lower() not in probe(proxy.port, "GET", "/health")[1].lower()


def test_health_only_ranges_must_be_networks() -> None:
    with pytest.raises(ValueError):
        render_proxy_config(health_only_ranges=("35.191.0.0/16; allow all",))
    conf = render_proxy_config()
    assert "deny 35.191.0.0/16;" in conf
    # No geo block: nginx builds without the geo module (some pods' nginx) must start it.
    directives = [
        line.split()[0]
        for line in conf.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    assert "geo" not in directives
    assert set(HEALTH_ONLY_RANGES) == set(gcp_catalog.HEALTH_CHECK_RANGES)
