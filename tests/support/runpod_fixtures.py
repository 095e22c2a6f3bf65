"""Fixtures for the RunPod tests: the emulator with a fake clock shared with the provider, and
the after-test checks (no pod left running unless allowed, no contract violation, no secret in
captured logs or output). Load with `pytest_plugins = ["tests.support.runpod_fixtures"]`."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from infra.runpod.provider import RunpodPodProvider
from tests.support.runpod_emulator import FakeClock, RunpodEmulator
from tests.support.runpod_testing import RUNPOD_KEY, SECRETS, Leaks, configured


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
) -> Iterator[RunpodEmulator]:
    caplog.set_level("DEBUG")
    with RunpodEmulator(api_key=RUNPOD_KEY, clock=clock) as emu:
        for k, v in emu.env().items():
            monkeypatch.setenv(k, v)
        monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
        yield emu
        live = set(emu.live_pods())
        assert live <= leaks.allowed, f"pods left running: {live - leaks.allowed}"
        assert emu.violations == [], emu.violations
        assert emu.unsafe_starts == [], "a stock image started without the proxy"
    out = capsys.readouterr()
    for secret in SECRETS:
        assert secret not in caplog.text, "a secret reached the logs"
        assert secret not in out.out + out.err, "a secret reached stdout/stderr"


@pytest.fixture
def provider(clock: FakeClock, emulator: RunpodEmulator) -> RunpodPodProvider:
    return configured(RunpodPodProvider(now=clock.now, sleep=clock.sleep))
