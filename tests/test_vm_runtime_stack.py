"""The VM's runtime as declared by the program (under Pulumi's mocks): what a change updates,
TLS with a real handshake against the stack's CA, and the wait for serving."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests
from cryptography import x509

from infra import proxy_config
from tests.support.declared_stack import declared
from tests.support.declared_stack import runtime as doc
from tests.support.nginx import run_proxy
from tests.support.pulumi_harness import MOCK_IP
from tests.support.vllm_standin import StandinConfig, run_standin
from vm_agent import units
from vm_agent.runtime_doc import RUNTIME_KEY

# docs/facts/pulumi.md ("Instance metadata"): pulumi-gcp updates these in place; the VM
# declares nothing in metadata_startup_script, the field that replaces it.
IN_PLACE = {"metadata", "labels"}
KEY_A = "first-key-0123456789-abcdefghijklmnopqrstuv"
KEY_B = "second-key-0123456789-abcdefghijklmnopqrstu"


def changed_inputs(a: dict[str, Any], b: dict[str, Any]) -> set[str]:
    keys = set(a) | set(b)
    return {
        k for k in keys if json.dumps(a.get(k), default=str) != json.dumps(b.get(k), default=str)
    }


CHANGES: dict[str, tuple[dict[str, Any] | None, dict[str, str] | None]] = {
    "idle": ({"gcp": {"idleStopMinutes": 30}}, None),
    "deadline": ({"gcp": {"readyTimeoutMinutes": 60}}, None),
    "stop on failure": ({"gcp": {"stopOnFailure": False}}, None),
    "vllm arguments": ({"maxModelLen": 4096, "gpuMemoryUtilization": 0.8}, None),
    "model": ({"model": "Qwen/Qwen2.5-3B-Instruct"}, None),
    "key rotation": (None, {"apiKey": KEY_B}),
}


@pytest.fixture(scope="module")
def base() -> dict[str, Any]:
    return declared(None, {"apiKey": KEY_A})


@pytest.mark.parametrize("what", list(CHANGES))
def test_point1_a_change_is_an_in_place_update_of_the_instance(base: dict[str, Any], what: str):
    overrides, secrets = CHANGES[what]
    after = declared(overrides, secrets or {"apiKey": KEY_A})
    changed = changed_inputs(base["vm"], after["vm"])
    assert changed and changed <= IN_PLACE, changed
    assert "metadataStartupScript" not in after["vm"]
    meta = changed_inputs(base["vm"]["metadata"], after["vm"]["metadata"])
    assert RUNTIME_KEY in meta and meta <= {RUNTIME_KEY, "user-data"}
    # And the wait runs again for the new document (an update of the wait, not a new VM).
    assert base["waits"][0]["document"] != after["waits"][0]["document"]


def test_point1_what_each_change_tells_the_agent(base: dict[str, Any]):
    before = doc(base)
    rotated = doc(declared(None, {"apiKey": KEY_B}))
    assert rotated.secrets.api_key != before.secrets.api_key  # a new version name
    assert rotated.vllm == before.vllm  # so the agent reloads the proxy, not vLLM
    idle = doc(declared({"gcp": {"idleStopMinutes": 30}}, {"apiKey": KEY_A}))
    assert idle.idle_stop_minutes == 30 and idle.vllm == before.vllm


def test_point5_up_waits_for_the_document_it_declared(base: dict[str, Any]):
    [wait] = base["waits"]
    text = base["vm"]["metadata"][RUNTIME_KEY]
    assert wait["document"] == hashlib.sha256(text.encode()).hexdigest()
    assert wait["instance"] == base["vm"]["name"]
    assert wait["deadline_s"] == 45 * 60 + 30 * 60
    assert (wait["project"], wait["zone"]) == ("llm-endpoint-dev", "us-central1-a")
    off = declared({"gcp": {"waitForServing": False}}, {"apiKey": KEY_A})
    assert off["waits"] == []


def test_point6_tls_by_default_and_plain_http_only_when_asked(base: dict[str, Any]):
    rt = doc(base)
    assert rt.proxy.tls_cert_pem and rt.proxy.ca_cert_pem == base["outputs"]["ca_cert"]
    assert rt.secrets.tls_key and "PRIVATE KEY" not in json.dumps(base["vm"]["metadata"])
    assert "listen 8000 ssl;" in rt.proxy.nginx_conf
    assert base["outputs"]["endpoint"] == f"https://{MOCK_IP}:8000"
    assert "--ca-file llm-endpoint-ca.pem" in base["outputs"]["smoke_test_command"]
    plain = declared({"gcp": {"tls": False}}, {"apiKey": KEY_A})
    prt = doc(plain)
    assert prt.proxy.tls_cert_pem is None and prt.secrets.tls_key is None
    assert "ssl" not in prt.proxy.nginx_conf
    assert plain["outputs"]["endpoint"] == f"http://{MOCK_IP}:8000"
    assert "ca_cert" not in plain["outputs"]
    assert "--ca-file" not in plain["outputs"]["smoke_test_command"]


def test_point6_server_certificate_names_the_static_ip_and_loopback(base: dict[str, Any]):
    leaf = x509.load_pem_x509_certificates(doc(base).proxy.tls_cert_pem.encode())[0]  # type: ignore[union-attr]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in san.get_values_for_type(x509.IPAddress)} == {MOCK_IP, "127.0.0.1"}


def test_point6_real_nginx_tls_handshake_against_the_stacks_ca(
    base: dict[str, Any], tmp_path: Path
):
    rt = doc(base)
    ca = tmp_path / "ca.pem"
    ca.write_text(base["outputs"]["ca_cert"])
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    cert.write_text(rt.proxy.tls_cert_pem or "")
    key.write_text(base["tls_key"])
    key.chmod(0o600)
    tls = proxy_config.TlsFiles(str(cert), str(key))
    with (
        run_standin(StandinConfig(api_key=KEY_A)) as vllm,
        run_proxy(upstream=f"127.0.0.1:{vllm.port}", api_key=KEY_A, tls=tls) as proxy,
    ):
        url = f"https://127.0.0.1:{proxy.port}"
        handshake = subprocess.run(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{proxy.port}", "-CAfile", str(ca),
             "-verify_return_error", "-verify_ip", "127.0.0.1", "-brief"],
            input="", capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert handshake.returncode == 0, handshake.stderr
        assert "Verification: OK" in handshake.stderr
        assert requests.get(url + "/health", verify=str(ca), timeout=5).status_code == 200
        good = {"Authorization": f"Bearer {KEY_A}"}
        assert requests.get(url + "/v1/models", headers=good, verify=str(ca), timeout=5).ok
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(url + "/health", timeout=5)  # without the stack's CA: refused
        plain = requests.get(f"http://127.0.0.1:{proxy.port}/health", timeout=5)
        assert plain.status_code == 400  # plain HTTP on the TLS port is refused


def test_the_vm_proxy_config_is_valid_nginx_with_tls(base: dict[str, Any], tmp_path: Path):
    """The runtime's own nginx.conf, its container paths pointed at temporary files."""
    from tests.support.nginx import check_config

    rt = doc(base)
    text = rt.proxy.nginx_conf
    for name, content in (
        (units.TLS_CERT_NAME, rt.proxy.tls_cert_pem or ""),
        (units.TLS_KEY_NAME, base["tls_key"]),
        (units.AUTH_FILE_NAME, units.auth_include(KEY_A, "internal-key")),
    ):
        (tmp_path / name).write_text(content)
        text = text.replace(f"{units.PROXY_DIR_IN_CONTAINER}/{name}", str(tmp_path / name))
    text = text.replace("/tmp/nginx-", f"{tmp_path}/nginx-")
    result = check_config(text)
    assert result.returncode == 0, result.stderr
    assert "proxy_set_header Authorization $llm_endpoint_upstream_authorization;" in text
