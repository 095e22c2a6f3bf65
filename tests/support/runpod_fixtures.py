"""Fixtures for the RunPod tests: the emulator with a fake clock shared with the provider, and
the after-test checks (no pod left running unless allowed, no contract violation, no secret in
captured logs or output). Load with `pytest_plugins = ["tests.support.runpod_fixtures"]`."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from infra.runpod.journal import JOURNAL_DIR_ENV
from infra.runpod.provider import RunpodPodProvider
from tests.support.runpod_emulator import FakeClock, RealClock, RunpodEmulator
from tests.support.runpod_testing import (
    ENDPOINT_KEY,
    HF_TOKEN,
    KEY_SECRET,
    NEW_ENDPOINT_KEY,
    RUNPOD_KEY,
    SECRETS,
    TOKEN_SECRET,
    Leaks,
    configured,
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def leaks() -> Leaks:
    return Leaks()


@pytest.fixture
def emulator(
    clock: FakeClock,
    leaks: Leaks,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunpodEmulator]:
    caplog.set_level("DEBUG")
    with RunpodEmulator(api_key=RUNPOD_KEY, clock=clock) as emu:
        for k, v in emu.env().items():
            monkeypatch.setenv(k, v)
        monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
        monkeypatch.setenv(JOURNAL_DIR_ENV, str(tmp_path_factory.mktemp("journal")))
        # What the stack's RunpodSecret resources would have made before the pods.
        emu.put_secret(KEY_SECRET, ENDPOINT_KEY)
        emu.put_secret(TOKEN_SECRET, HF_TOKEN)
        yield emu
        live = set(emu.live_pods())
        assert live <= leaks.allowed, f"pods left running: {live - leaks.allowed}"
        assert emu.violations == [], emu.violations
        assert emu.unsafe_starts == [], "a stock image started without the proxy"
        # Keys out of the pods' readable config: no pod create or update carries a value.
        for method, path, body in emu.requests:
            if path.startswith("/v2/pods") and method in ("POST", "PATCH"):
                text = json.dumps(body)
                assert ENDPOINT_KEY not in text and HF_TOKEN not in text, (method, path)
                assert NEW_ENDPOINT_KEY not in text, (method, path)
    out = capsys.readouterr()
    for secret in SECRETS:
        assert secret not in caplog.text, "a secret reached the logs"
        assert secret not in out.out + out.err, "a secret reached stdout/stderr"


@pytest.fixture
def provider(clock: FakeClock, emulator: RunpodEmulator) -> RunpodPodProvider:
    return configured(RunpodPodProvider(now=clock.now, sleep=clock.sleep))


@pytest.fixture
def real_time_emulator() -> Iterator[RunpodEmulator]:
    """The emulator on wall-clock time with instant phases, for code in other processes (the
    dynamic-provider host, the real Pulumi engine) that cannot share a fake clock."""
    with RunpodEmulator(
        api_key=RUNPOD_KEY, clock=RealClock(), provision_s=0, start_s=0, serve_after_s=0
    ) as emu:
        yield emu
        assert emu.violations == [], emu.violations
