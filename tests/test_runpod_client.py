"""The REST v2 client on its own: base URL, auth, which calls are retried and how."""

from __future__ import annotations

import socket

import pytest

from infra.runpod import client as client_module
from infra.runpod.client import RunpodClient, api_base_url
from infra.runpod.errors import ApiError, AuthError, MissingApiKeyError, TransportError
from tests.support.runpod_testing import RUNPOD_KEY

pytest_plugins = ["tests.support.runpod_fixtures"]


def test_base_url_defaults_to_the_public_api_and_accepts_a_v2_suffix(monkeypatch):
    monkeypatch.delenv("RUNPOD_API_BASE_URL", raising=False)
    assert api_base_url() == "https://api.runpod.io"
    monkeypatch.setenv("RUNPOD_API_BASE_URL", "http://127.0.0.1:9/v2/")
    assert api_base_url() == "http://127.0.0.1:9"
    assert client_module.DEFAULT_API_BASE_URL + "/v2" == "https://api.runpod.io/v2"


def test_no_key_no_client():
    with pytest.raises(MissingApiKeyError) as err:
        RunpodClient("")
    assert "pulumi config set --secret runpodApiKey" in str(err.value)


def test_client_never_shows_its_key(emulator):
    with RunpodClient(RUNPOD_KEY) as client:
        assert RUNPOD_KEY not in repr(client)
        assert client.list_pods() == []
    assert emulator.requests == [("GET", "/v2/pods", None)]


def test_reads_are_retried_when_nothing_answers(clock):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: connection refused
    client = RunpodClient(RUNPOD_KEY, base_url=f"http://127.0.0.1:{port}", sleep=clock.sleep)
    with pytest.raises(TransportError) as err:
        client.get_pod("abc")
    assert clock.slept == [1.0, 2.0, 4.0, 8.0]
    assert "GET /v2/pods/abc" in str(err.value)


def test_reads_honour_retry_after(emulator, clock):
    emulator.faults.rate_limited = {"GET /v2/pods/{id}": 2}
    emulator.faults.retry_after_s = 12
    with RunpodClient(RUNPOD_KEY, sleep=clock.sleep) as client:
        assert client.get_pod("nope") is None
    assert clock.slept == [12.0, 12.0]


def test_a_create_that_fails_with_5xx_is_not_repeated_by_the_client(emulator, clock):
    emulator.faults.create_5xx_before = 1
    body = {"name": "x", "image": "i:1", "gpu": {"id": "NVIDIA A100 80GB PCIe", "count": 1}}
    with RunpodClient(RUNPOD_KEY, sleep=clock.sleep) as client, pytest.raises(ApiError) as err:
        client.create_pod(body)
    assert err.value.status == 503
    assert [m for m, _, _ in emulator.requests] == ["POST"]
    assert clock.slept == []


def test_rejected_key_is_an_auth_error_and_not_retried(emulator, clock):
    with RunpodClient("rpa_wrong", sleep=clock.sleep) as client, pytest.raises(AuthError):
        client.list_pods()
    assert len(emulator.requests) == 1
