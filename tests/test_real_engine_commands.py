"""The commands people run, through the real Pulumi CLI (tests/support/pulumi_cli.py):
`python -m scripts.deploy runpod` to a ready stack, `python -m scripts.smoke_test --stack runpod`
reading the real outputs, and the leak finder reading the real `pulumi stack export`.

The pods' endpoints are the project's nginx proxy (Debian's nginx, tests/support/nginx.py) in
front of the vLLM stand-in (tests/support/vllm_standin.py): RUNPOD_PROXY_URL_TEMPLATE points the
provider there, so the provider's readiness check and the smoke test meet a real proxy and a
stand-in vLLM, while the RunPod emulator plays the API. The API key comes from config (the
`random` plugin cannot be built here: docs/testing.md, "Real engine").
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra import serving
from tests.support.nginx import run_proxy
from tests.support.pulumi_cli import PulumiWorkspace, requires_cli
from tests.support.runpod_emulator import RunpodEmulator
from tests.support.runpod_testing import ENDPOINT_KEY, RUNPOD_KEY
from tests.support.vllm_standin import StandinConfig, run_standin

pytest_plugins = ["tests.support.runpod_fixtures"]
pytestmark = [requires_cli, pytest.mark.timeout(900)]

PYTHON = (sys.executable,)


@pytest.fixture
def emulator(real_time_emulator: RunpodEmulator) -> RunpodEmulator:
    return real_time_emulator


@pytest.fixture
def pod_endpoint() -> Iterator[str]:
    """What every pod serves: the project's proxy, keyed with the stack's key, before vLLM."""
    model = serving.DEFAULT_MODEL  # the served name defaults to the model
    with (
        run_standin(StandinConfig(api_key=None, models=(model,))) as vllm,
        run_proxy(upstream=f"127.0.0.1:{vllm.port}", api_key=ENDPOINT_KEY) as proxy,
    ):
        yield proxy.url


@pytest.fixture
def ws(tmp_path: Path, emulator: RunpodEmulator, pod_endpoint: str) -> PulumiWorkspace:
    env = emulator.env() | {"RUNPOD_PROXY_URL_TEMPLATE": pod_endpoint}
    workspace = PulumiWorkspace.create(tmp_path, extra_env=env)
    workspace.copy_stack_file("runpod")
    return workspace


def deploy(ws: PulumiWorkspace) -> tuple[int, str]:
    result = ws.run(
        "-m", "scripts.deploy", "runpod", "--yes", check=False, argv0=PYTHON, timeout=600
    )
    return result.code, result.output


def test_deploy_smoke_test_and_leak_finder_on_a_real_stack(
    ws: PulumiWorkspace, emulator: RunpodEmulator
):
    # A new user: no passphrase, no RunPod key. deploy makes the stack and a passphrase file,
    # then stops before anything is billed, saying how to set the key.
    ws.passphrase = None
    code, out = deploy(ws)
    assert code == 1, out
    assert "no RunPod API key" in out, out
    passphrase_file = ws.home / ".config" / "llm-endpoint" / "passphrase"
    assert passphrase_file.stat().st_mode & 0o777 == 0o600
    ws.extra_env["PULUMI_CONFIG_PASSPHRASE_FILE"] = str(passphrase_file)

    # Keys set, and a bad value: the real engine stops at preview with our message.
    ws.run("config", "set", "--stack", "runpod", "--secret", "runpodApiKey", stdin=RUNPOD_KEY)
    ws.run("config", "set", "--stack", "runpod", "--secret", "apiKey", stdin=ENDPOINT_KEY)
    cloud = "llm-endpoint:runpod.cloud"
    ws.run("config", "set", "--stack", "runpod", "--path", cloud, "PRIVATE")
    code, out = deploy(ws)
    assert code == 1, out
    assert "runpod.cloud" in out and "PRIVATE" in out and "Traceback" not in out, out
    assert emulator.live_pods() == []

    ws.run("config", "set", "--stack", "runpod", "--path", cloud, "SECURE")
    code, out = deploy(ws)
    assert code == 0, out
    assert "deployed." in out
    [pod_id] = emulator.live_pods()
    for secret in (ENDPOINT_KEY, RUNPOD_KEY):
        assert secret not in out

    # The smoke test reads endpoint, key and model from the real `pulumi stack output`.
    smoke = ws.run("-m", "scripts.smoke_test", "--stack", "runpod", "--json", argv0=PYTHON)
    report = json.loads(smoke.stdout)
    assert [c["status"] for c in report["checks"]] == ["PASS"] * 7, smoke.output
    assert ENDPOINT_KEY not in smoke.output

    # The leak finder reads the real `pulumi stack export`: the stack's pod is known, a stray
    # one of the same stack is not, and only the stray one is deleted.
    stray = emulator.add_pod("llm-endpoint-runpod-0-0badf00d")
    finder = ("-m", "scripts.runpod_pods", "--stack", "runpod", "--min-age-minutes", "0")
    listed = ws.run(*finder, check=False, argv0=PYTHON)
    assert listed.code == 1, listed.output
    rows = {line.split()[0]: line for line in listed.stdout.splitlines() if line.strip()}
    assert "UNKNOWN" in rows[stray] and "known" in rows[pod_id], listed.stdout
    deleted = ws.run(*finder, "--delete-unknown", "--yes", argv0=PYTHON)
    assert f"deleted {stray}" in deleted.stdout
    assert emulator.live_pods() == [pod_id]
    assert RUNPOD_KEY not in listed.output + deleted.output

    ws.run("destroy", "--yes", "--stack", "runpod")
    assert emulator.live_pods() == []
