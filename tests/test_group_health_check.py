"""The group's health checks, as Google's checkers send them, against the real Debian nginx with
the project's proxy config in front of the vLLM stand-in: GET /health answers 200 without a
key, and the same prober gets nothing else; over TLS with the certificate the group declares
(under Pulumi's mocks) as over plain HTTP.

The request is what an HTTP health check sends (docs/facts/gcp.md, "Health checks"): HTTP/1.1,
`GET <requestPath>`, a Host header with the address it probes, the `GoogleHC/1.0` user agent,
no credentials; 200 is the only healthy answer. An HTTPS check sends the same after a TLS
handshake that verifies nothing. tests/test_gcp_group.py checks that both health checks the
group declares ask port 8000 and `/health`, over HTTPS unless gcp.tls is false.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from infra import gcp_catalog
from infra.proxy_config import HEALTH_ONLY_RANGES, REPLICA_HEADER, TlsFiles, render_proxy_config
from tests.support.declared_stack import declared_config, group_stack, runtime
from tests.support.nginx import run_proxy
from tests.support.vllm_standin import StandinConfig, run_standin

KEY = "group-health-check-key-0123456789abcdef"
LB_IP = "203.0.113.10"


FORWARDING_RULE = "gcp:compute/forwardingRule:ForwardingRule"


def probe(port: int, method: str, path: str, *, tls: bool = False) -> tuple[int, bytes]:
    """One request the way a Google health checker writes it; returns status and raw reply.
    With `tls`, first a handshake as an HTTPS checker does it: no certificate check, and no
    SNI (the checker probes an address, not a name)."""
    request = (
        f"{method} {path} HTTP/1.1\r\n"
        f"Host: {LB_IP}:8000\r\n"
        "User-Agent: GoogleHC/1.0\r\n"
        "Connection: close\r\n"
        "\r\n"
    ).encode()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        conn = _unverified_tls().wrap_socket(raw) if tls else raw
        conn.sendall(request)
        reply = b""
        while chunk := conn.recv(65536):
            reply += chunk
    status = int(reply.split(b" ", 2)[1])
    return status, reply


def _unverified_tls() -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@pytest.fixture(scope="module")
def group_tls(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """What a group with TLS (the default) declares: the stack's CA, the replicas' certificate
    chain and key as files nginx and openssl read, and the balancer's address."""
    found = declared_config(*group_stack())
    directory = tmp_path_factory.mktemp("group-tls")
    proxy = runtime(found).proxy
    files = {"ca.pem": proxy.ca_cert_pem, "server.pem": proxy.tls_cert_pem}
    files["server.key"] = found["tls_key"]
    for name, text in files.items():
        (directory / name).write_text(text or "")
    (directory / "server.key").chmod(0o600)
    return {
        "ca": directory / "ca.pem",
        "tls": TlsFiles(str(directory / "server.pem"), str(directory / "server.key")),
        "lb_ip": found["inputs"][FORWARDING_RULE]["gcp-lb"]["ipAddress"],
    }


@pytest.fixture(params=["http", "https"])
def proxied(request: pytest.FixtureRequest):
    """The proxy as a replica runs it: plain (gcp.tls: false) or with the group's TLS."""
    tls = request.getfixturevalue("group_tls")["tls"] if request.param == "https" else None
    with (
        run_standin(StandinConfig(api_key=KEY)) as vllm,
        run_proxy(upstream=f"127.0.0.1:{vllm.port}", api_key=KEY, tls=tls) as proxy,
    ):
        yield vllm, proxy, tls is not None


def test_the_checkers_request_for_health_gets_200_without_a_key(proxied) -> None:
    vllm, proxy, tls = proxied
    for _ in range(3):  # a checker probes again and again, each on a new connection
        status, _ = probe(proxy.port, "GET", "/health", tls=tls)
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
    vllm, proxy, tls = proxied
    status, _ = probe(proxy.port, method, path, tls=tls)
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


def test_key_holders_elsewhere_are_served_and_told_which_replica_answered(
    proxied, group_tls: dict[str, Any]
) -> None:
    _, proxy, tls = proxied
    url = f"https://127.0.0.1:{proxy.port}" if tls else proxy.url
    r = requests.get(
        f"{url}/v1/models",
        headers={"Authorization": f"Bearer {KEY}"},
        verify=str(group_tls["ca"]) if tls else True,
        timeout=5,
    )
    assert r.status_code == 200
    assert r.headers[REPLICA_HEADER] == socket.gethostname()
    # /health, open to everyone the firewall lets in, does not name the machine.
    health = probe(proxy.port, "GET", "/health", tls=tls)[1]
    assert REPLICA_HEADER.encode().lower() not in health.lower()


def _openssl_verifies(port: int, ca: Path, ip: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-CAfile", str(ca),
         "-verify_return_error", "-verify_ip", ip, "-brief"],
        input="", capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_every_replica_presents_a_certificate_for_the_balancers_address(
    group_tls: dict[str, Any],
) -> None:
    """A client of the balancer checks the replica's certificate against the stack's CA and the
    balancer's IP (openssl, the real handshake); an address the certificate does not name (a
    replica's own ephemeral one) fails, so clients must go through the balancer."""
    with (
        run_standin(StandinConfig(api_key=KEY)) as vllm,
        run_proxy(upstream=f"127.0.0.1:{vllm.port}", api_key=KEY, tls=group_tls["tls"]) as p,
    ):
        ok = _openssl_verifies(p.port, group_tls["ca"], group_tls["lb_ip"])
        assert ok.returncode == 0, ok.stderr
        assert "Verification: OK" in ok.stderr
        other = _openssl_verifies(p.port, group_tls["ca"], "198.51.100.77")
        assert other.returncode != 0
        assert "IP address mismatch" in other.stderr


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
