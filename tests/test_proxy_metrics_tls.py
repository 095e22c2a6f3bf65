"""Real nginx with the project's proxy config: `GET /metrics` for key holders (the one
exception to "only /health and /v1/*"), the VM's upstream key rewrite, and TLS seen by the
VM agent's own probe."""

from __future__ import annotations

import http.client
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from infra import proxy_config, serving
from tests.support.nginx import run_proxy
from tests.support.tls_certs import csr as make_csr
from tests.support.tls_certs import locally_signed, new_key_pem, self_signed_ca
from tests.support.vllm_standin import StandinConfig, run_standin
from vm_agent import units
from vm_agent.host import http_get

KEY = "metrics-key-0123456789-abcdefghijklmnopqrstu"
GOOD = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture
def stack() -> Iterator[tuple[object, object]]:
    with (
        run_standin(StandinConfig(api_key=KEY)) as vllm,
        run_proxy(upstream=f"127.0.0.1:{vllm.port}", api_key=KEY) as proxy,
    ):
        yield vllm, proxy


def raw(port: int, method: str, path: str, headers: dict[str, str] | None = None) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        return conn.getresponse().status
    finally:
        conn.close()


def test_point10_metrics_for_key_holders_only(stack) -> None:
    vllm, proxy = stack
    ok = requests.get(f"{proxy.url}/metrics", headers=GOOD, timeout=5)
    assert ok.status_code == 200
    assert "vllm:num_requests_running" in ok.text
    [seen] = [r for r in vllm.requests if r.path == "/metrics"]
    assert "Authorization" not in seen.headers  # the key stops at the proxy
    assert requests.get(f"{proxy.url}/metrics", timeout=5).status_code == 401
    wrong = {"Authorization": "Bearer not-the-key"}
    assert requests.get(f"{proxy.url}/metrics", headers=wrong, timeout=5).status_code == 401
    assert requests.post(f"{proxy.url}/metrics", headers=GOOD, timeout=5).status_code == 403


@pytest.mark.parametrize(
    "path",
    ["/metrics/", "/metrics/x", "/metrics/../health", "/metrics%2f", "//metrics", "/METRICS",
     "/metrics?x=/../invocations", "/v1/../metrics/x"],
)  # fmt: skip
def test_point10_nothing_under_metrics_reaches_vllm(stack, path: str) -> None:
    vllm, proxy = stack
    before = len(vllm.requests)
    status = raw(proxy.port, "GET", path, GOOD)
    reached = [r.path for r in vllm.requests[before:]]
    # Either refused, or answered by an allowed route with its normalised path (e.g.
    # /metrics/../health is /health): vLLM never sees a path under /metrics/.
    assert status in (200, 400, 401, 403, 404), (path, status)
    assert set(reached) <= {"/metrics", "/health"}, (path, reached)
    if status != 200:
        assert reached == [], (path, reached)


def test_vm_proxy_hands_vllm_the_internal_key_not_the_users(tmp_path: Path) -> None:
    internal = "internal-0123456789-abcdefghijklmnopqrstuvw"
    with (
        run_standin(StandinConfig(api_key=internal)) as vllm,
        run_proxy(
            upstream=f"127.0.0.1:{vllm.port}",
            auth_include_text=units.auth_include(KEY, internal),
            upstream_authorization=True,
        ) as proxy,
    ):
        r = requests.get(f"{proxy.url}/v1/models", headers=GOOD, timeout=5)
        assert r.status_code == 200
        assert [q.auth for q in vllm.requests] == ["valid"]  # vLLM saw its own key
        bad = {"Authorization": f"Bearer {internal}"}
        assert requests.get(f"{proxy.url}/v1/models", headers=bad, timeout=5).status_code == 401


def make_pki(tmp_path: Path, ips: list[str]) -> tuple[Path, proxy_config.TlsFiles]:
    ca_key = new_key_pem()
    ca = self_signed_ca(ca_key, {"commonName": "test CA"}, 24)
    server_key = new_key_pem()
    cert = locally_signed(make_csr(server_key, {"commonName": "s"}, ips), ca_key, ca, 24)
    (tmp_path / "ca.pem").write_text(ca)
    (tmp_path / "server.pem").write_text(cert + ca)
    (tmp_path / "server.key").write_text(server_key)
    return tmp_path / "ca.pem", proxy_config.TlsFiles(
        str(tmp_path / "server.pem"), str(tmp_path / "server.key")
    )


def test_agent_probe_verifies_tls_against_the_ca(tmp_path: Path) -> None:
    ca, tls = make_pki(tmp_path, ["203.0.113.10", "127.0.0.1"])
    with (
        run_standin(StandinConfig(api_key=KEY)) as vllm,
        run_proxy(upstream=f"127.0.0.1:{vllm.port}", api_key=KEY, tls=tls) as proxy,
    ):
        base = f"https://127.0.0.1:{proxy.port}"
        health = http_get(base + serving.HEALTH_PATH, {}, ca.read_text(), 5)
        models = http_get(base + serving.MODELS_PATH, GOOD, ca.read_text(), 5)
        reason = serving.not_ready_reason(
            health[0], models[0], models[1], "Qwen/Qwen2.5-7B-Instruct"
        )
        assert reason is None
        # Another CA's certificate is not accepted: the probe sees no answer at all.
        (tmp_path / "other").mkdir()
        other, _ = make_pki(tmp_path / "other", ["127.0.0.1"])
        assert http_get(base + serving.HEALTH_PATH, {}, other.read_text(), 5) == (None, None)


def test_health_checkers_do_not_get_metrics_even_with_the_key() -> None:
    with (
        run_standin(StandinConfig(api_key=KEY)) as vllm,
        run_proxy(
            upstream=f"127.0.0.1:{vllm.port}", api_key=KEY, health_only_ranges=("127.0.0.1/32",)
        ) as proxy,
    ):
        assert requests.get(f"{proxy.url}/metrics", headers=GOOD, timeout=5).status_code == 403
        assert [r.path for r in vllm.requests] == []
