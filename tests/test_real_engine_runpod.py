"""The RunPod stack through the real Pulumi engine (built from Go source by .ci/pulumi-cli.sh),
with the local file backend and a passphrase in a temporary HOME, against the RunPod emulator
on loopback (tests/support/runpod_emulator.py, reached through RUNPOD_API_BASE_URL).

What the mocks cannot show and these do: `pulumi config set --path/--secret` as the CLI writes
them, the `uv` toolchain of Pulumi.yaml, the dynamic provider as the engine launches it
(`pulumi-resource-pulumi-python`, pickled provider, Configure with the stack config), the
engine's diff/replace decisions, refresh, destroy, outputs as `pulumi stack output` prints them
and secrets encrypted in the state. The stack's apiKey comes from config: the `random` provider
plugin (which would generate it) cannot be built here (docs/testing.md, "Real engine").
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import requests

from tests.support.pulumi_cli import PulumiWorkspace, requires_cli
from tests.support.runpod_emulator import DEFAULT_CATALOG, RunpodEmulator
from tests.support.runpod_testing import ENDPOINT_KEY, NEW_ENDPOINT_KEY, RUNPOD_KEY

pytest_plugins = ["tests.support.runpod_fixtures"]
pytestmark = [requires_cli, pytest.mark.timeout(900)]

POD_TYPE = "pulumi-python:dynamic/llm-endpoint:RunpodPod"
SECRET_TYPE = "pulumi-python:dynamic/llm-endpoint:RunpodSecret"
SECRETS = (ENDPOINT_KEY, RUNPOD_KEY, NEW_ENDPOINT_KEY)
A100_PCIE = DEFAULT_CATALOG[0]


@pytest.fixture
def emulator(real_time_emulator: RunpodEmulator) -> RunpodEmulator:
    return real_time_emulator


@pytest.fixture
def ws(tmp_path: Path, emulator: RunpodEmulator) -> PulumiWorkspace:
    workspace = PulumiWorkspace.create(tmp_path, extra_env=emulator.env())
    workspace.copy_stack_file("runpod")
    return workspace


def init_stack(ws: PulumiWorkspace, stack: str = "runpod", **paths: str) -> None:
    """`pulumi stack init` and the config a user sets: a `--path` key inside the runpod object
    and `--secret` keys (read from stdin, as a user types them, so never on a command line)."""
    if stack != "runpod":
        text = (ws.project / "Pulumi.runpod.yaml").read_text()
        (ws.project / f"Pulumi.{stack}.yaml").write_text(text)
    ws.run("stack", "init", stack)
    for path, value in {"runpod.dataCenterIds[0]": "US-KS-2", **paths}.items():
        ws.run("config", "set", "--stack", stack, "--path", f"llm-endpoint:{path}", value)
    ws.run("config", "set", "--stack", stack, "--secret", "runpodApiKey", stdin=RUNPOD_KEY)
    ws.run("config", "set", "--stack", stack, "--secret", "apiKey", stdin=ENDPOINT_KEY)


def plan(ws: PulumiWorkspace, stack: str = "runpod") -> dict[str, list[str]]:
    """The engine's plan from `pulumi preview --json`: operation -> resource names."""
    preview = ws.run("preview", "--json", "--stack", stack).json()
    ops: dict[str, list[str]] = {}
    for step in preview.get("steps", []):
        ops.setdefault(step["op"], []).append(step["urn"].rsplit("::", 1)[-1])
    return ops


def pod_resources(export: dict[str, Any]) -> list[dict[str, Any]]:
    resources = export["deployment"].get("resources") or []
    return [r for r in resources if r["type"] == POD_TYPE]


def assert_no_secret_in(text: str, where: str) -> None:
    for secret in SECRETS:
        assert secret not in text, f"a secret is in plain text in {where}"


def test_config_set_writes_path_keys_and_encrypted_secrets(ws: PulumiWorkspace):
    init_stack(ws)
    stack_file = (ws.project / "Pulumi.runpod.yaml").read_text()
    assert_no_secret_in(stack_file, "Pulumi.runpod.yaml")
    assert "secure:" in stack_file
    # --path set one key inside the object and kept the shipped ones next to it.
    config = ws.run("config", "--json", "--stack", "runpod").json()
    runpod = config["llm-endpoint:runpod"]["objectValue"]
    assert runpod["dataCenterIds"] == ["US-KS-2"]
    assert runpod["gpuTypeIds"] == ["NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB"]
    assert config["llm-endpoint:apiKey"]["secret"] is True
    assert config["llm-endpoint:runpodApiKey"]["secret"] is True


def test_preview_up_update_replace_refresh_destroy(ws: PulumiWorkspace, emulator: RunpodEmulator):
    init_stack(ws)

    # preview: the component and one pod to create, nothing made yet.
    ops = plan(ws)
    # The stack, the component, the account secret holding the endpoint key, one pod.
    assert sorted(ops["create"]) == ["llm-endpoint-runpod", "runpod", "runpod-0", "runpod-api-key"]
    preview = ws.run("preview", "--stack", "runpod").output
    assert "runpod_cost_per_hour" in preview
    assert emulator.live_pods() == []

    # up: one pod placed on the first GPU type, ready, outputs as the CLI prints them.
    ws.run("up", "--yes", "--stack", "runpod")
    [pod_id] = emulator.live_pods()
    outputs = ws.outputs("runpod")
    assert outputs["runpod_pod_ids"] == [pod_id]
    assert outputs["runpod_endpoints"] == [
        emulator.proxy_url_template.format(pod_id=pod_id, port=8000)
    ]
    assert outputs["runpod_cost_per_hour"] == A100_PCIE.secure_price
    assert outputs["api_key"] == "[secret]"
    assert ws.outputs("runpod", show_secrets=True)["api_key"] == ENDPOINT_KEY
    export_text = ws.run("stack", "export", "--stack", "runpod").stdout
    assert_no_secret_in(export_text, "pulumi stack export")
    assert_no_secret_in(_state_files_text(ws), "the state directory")
    resources = ws.stack_export("runpod")["deployment"]["resources"]
    [pod] = pod_resources(ws.stack_export("runpod"))
    [secret] = [r for r in resources if r["type"] == SECRET_TYPE]
    assert _is_ciphertext(pod["inputs"]["apiKey"]) and _is_ciphertext(pod["outputs"]["apiKey"])
    assert _is_ciphertext(secret["inputs"]["value"]) and _is_ciphertext(secret["outputs"]["value"])
    # The key reached RunPod as an account secret, not in the pod's environment.
    assert [s["value"] for s in emulator.secrets.values()] == [ENDPOINT_KEY]
    assert ENDPOINT_KEY not in str(emulator.pods[pod_id].body)

    # An in-place change (vLLM arguments): the same pod, restarted with the new command.
    ws.run("config", "set", "--stack", "runpod", "maxModelLen", "4096")
    assert plan(ws).get("update") == ["runpod-0"]
    ws.run("up", "--yes", "--stack", "runpod")
    assert emulator.live_pods() == [pod_id]
    assert "4096" in str(emulator.pods[pod_id].container)

    # A replacing change (secure -> community cloud): a new pod, the old one deleted.
    ws.run("config", "set", "--stack", "runpod", "--path", "llm-endpoint:runpod.cloud", "COMMUNITY")
    ops = plan(ws)
    assert "replace" in ops and ops["replace"] == ["runpod-0"], ops
    ws.run("up", "--yes", "--stack", "runpod")
    [replacement] = emulator.live_pods()
    assert replacement != pod_id
    assert ws.outputs("runpod")["runpod_cost_per_hour"] == A100_PCIE.community_price

    # Deleted behind Pulumi's back (through the API, as the console does): refresh drops it
    # from the state, up makes a new one.
    gone = requests.delete(
        f"{emulator.base_url}/v2/pods/{replacement}",
        headers={"Authorization": f"Bearer {RUNPOD_KEY}"},
        timeout=10,
    )
    assert gone.status_code in (200, 204)
    assert emulator.live_pods() == []
    ws.run("refresh", "--yes", "--stack", "runpod")
    assert pod_resources(ws.stack_export("runpod")) == []
    ws.run("up", "--yes", "--stack", "runpod")
    [recreated] = emulator.live_pods()
    assert recreated not in (pod_id, replacement)
    assert ws.outputs("runpod")["runpod_pod_ids"] == [recreated]

    # destroy: every pod gone in the emulator; stack rm removes the stack.
    ws.run("destroy", "--yes", "--stack", "runpod")
    assert emulator.live_pods() == []
    assert emulator.secrets == {}
    ws.run("stack", "rm", "--yes", "runpod")
    stacks = ws.run("stack", "ls", "--json").json()
    assert [s["name"] for s in stacks] == []


def _is_ciphertext(value: Any) -> bool:
    return isinstance(value, dict) and "ciphertext" in value


def _state_files_text(ws: PulumiWorkspace) -> str:
    return "\n".join(p.read_text(errors="replace") for p in ws.state_dir.rglob("*") if p.is_file())


def test_create_with_no_capacity_anywhere_fails_clearly_and_leaves_no_pod(
    ws: PulumiWorkspace, emulator: RunpodEmulator
):
    emulator.faults.no_capacity = {(offer.id, None) for offer in emulator.catalog}
    init_stack(ws)
    up = ws.run("up", "--yes", "--stack", "runpod", check=False)
    assert up.code != 0
    assert "capacity" in up.output.lower(), up.output
    assert_no_secret_in(up.output, "the output of pulumi up")
    assert emulator.live_pods() == []
    assert pod_resources(ws.stack_export("runpod")) == []


def test_pod_that_never_gets_healthy_fails_at_its_deadline_and_is_deleted(
    ws: PulumiWorkspace, emulator: RunpodEmulator
):
    # The shortest ready deadline the config allows (1 minute), in real time: the provider's
    # own clock is the only one a dynamic provider has under the engine.
    emulator.faults.never_healthy = True
    init_stack(ws, **{"runpod.readyTimeoutMinutes": "1"})
    up = ws.run("up", "--yes", "--stack", "runpod", check=False, timeout=400)
    assert up.code != 0
    assert "ready" in up.output.lower(), up.output
    assert_no_secret_in(up.output, "the output of pulumi up")
    assert len(emulator.pods) == 1
    assert emulator.live_pods() == []
    assert pod_resources(ws.stack_export("runpod")) == []
