"""The smoke test's hints name the runtime's real units and commands, and VM-only hints are
not shown for RunPod pods (and the other way round)."""

from __future__ import annotations

import pathlib

import requests

from scripts.smoke_test import hints
from scripts.smoke_test.target import parse_target
from scripts.smoke_test.transport import classify

VM = parse_target("203.0.113.10")
POD = parse_target("https://abc123-8000.proxy.runpod.net")
VM_ONLY = ("journalctl", "gcloud", "allowedSourceRanges", "firewall", "guest-attributes")


def test_vm_hints_name_the_real_units_and_read_state_without_ssh() -> None:
    text = hints.vllm_logs(VM)
    assert "llm-vllm.service" in text
    assert "get-guest-attributes" in text and "--query-path=llm-endpoint/" in text
    assert "get-serial-port-output" in text


def test_pod_hints_have_nothing_of_the_vm() -> None:
    for text in (hints.vllm_logs(POD), hints.redeploy(POD)):
        assert not [w for w in VM_ONLY if w in text], text


def test_transport_hints_follow_the_target() -> None:
    for exc in (
        requests.exceptions.ConnectionError(ConnectionRefusedError(111, "refused")),
        requests.exceptions.ConnectTimeout("timed out"),
        requests.exceptions.SSLError("certificate verify failed"),
    ):
        vm, pod = classify(exc, VM, 5.0).hint, classify(exc, POD, 5.0).hint
        assert not [w for w in VM_ONLY if w in pod], pod
        assert "VM" in vm or "ca_cert" in vm or "allowedSourceRanges" in vm, vm


def test_no_hint_names_a_container_that_does_not_exist() -> None:
    source = "\n".join(p.read_text() for p in pathlib.Path("scripts/smoke_test").glob("*.py"))
    assert "docker logs vllm" not in source and "docker inspect vllm" not in source
