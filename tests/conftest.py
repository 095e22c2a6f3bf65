"""Suite-wide: the program asks the Hugging Face Hub about the model at preview
(infra/hub.py). Tests never leave loopback, so the Hub is a closed local port unless a test
points HF_ENDPOINT at its own stand-in (tests/support/hub_standin.py)."""

from __future__ import annotations

import pytest

CLOSED_LOOPBACK_PORT = "http://127.0.0.1:9"


@pytest.fixture(autouse=True)
def _hub_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_ENDPOINT", CLOSED_LOOPBACK_PORT)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
