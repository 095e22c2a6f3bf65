"""The emulator itself: it enforces RunPod's OpenAPI contract and runs on its own."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from tests.support.runpod_emulator import FakeClock, RunpodEmulator

ROOT = Path(__file__).resolve().parents[1]
KEY = "emulator-key-for-this-test-000000"


def test_requests_outside_the_contract_get_422_and_are_recorded():
    with RunpodEmulator(api_key=KEY, clock=FakeClock()) as emu:
        auth = {"Authorization": f"Bearer {KEY}"}
        bad = {"name": "x", "image": "i:1", "gpu": {"id": "NVIDIA A100 80GB PCIe"}, "bogus": 1}
        answer = requests.post(f"{emu.base_url}/v2/pods", json=bad, headers=auth, timeout=10)
        assert answer.status_code == 422
        assert answer.headers["Content-Type"] == "application/problem+json"
        assert "bogus" in " ".join(answer.json()["errors"])
        assert len(emu.violations) == 1 and "bogus" in emu.violations[0]
        assert emu.pods == {}
        unauthenticated = requests.get(f"{emu.base_url}/v2/pods", timeout=10)
        assert unauthenticated.status_code == 401


def test_pod_states_follow_the_shared_clock():
    clock = FakeClock()
    with RunpodEmulator(api_key=KEY, clock=clock) as emu:
        pod = emu.pods[emu.add_pod("llm-endpoint-x-0-00000000")]
        seen = []
        for _ in range(4):
            seen.append((emu.status_of(pod), emu.serving(pod)))
            clock.advance(40)
        assert seen == [
            ("PROVISIONING", False),
            ("STARTING", False),
            ("RUNNING", False),
            ("RUNNING", True),
        ]
        emu.pods.clear()


def test_runs_on_its_own_as_a_module():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.support.runpod_emulator",
            "--port",
            str(port),
            "--api-key",
            KEY,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert (
            proc.stdout.readline().strip()
            == f"export RUNPOD_API_BASE_URL='http://127.0.0.1:{port}'"
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                answer = requests.get(
                    f"http://127.0.0.1:{port}/v2/catalog/gpus",
                    headers={"Authorization": f"Bearer {KEY}"},
                    timeout=5,
                )
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert answer.status_code == 200
        assert "NVIDIA A100 80GB PCIe" in [g["id"] for g in answer.json()["gpus"]]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
