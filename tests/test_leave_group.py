"""`llm-endpoint-leave-group` (startup/leave_group.sh.j2), run with the real bash and curl
against a loopback stand-in of the GCE metadata server and the Compute API's group methods.

The stand-in is ours (a hand-written second best: nothing here reaches Google); it answers
the requests the script makes in the shapes the API documents (docs/facts/gcp.md, "Managed
instance groups": deleteInstances, targetSize)."""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from infra.group_runtime import LEAVE_ATTEMPTS, GroupParams, render_leave_group

PARAMS = GroupParams(
    project="llm-endpoint-dev",
    region="us-central1",
    group="llm-dev-group",
    base_instance_name="llm-dev-replica",
    idle_min_replicas=1,
)
TOKEN = "ya29.stand-in-access-token-value"
GROUP_PATH = (
    "/compute/v1/projects/llm-endpoint-dev/regions/us-central1/instanceGroupManagers/llm-dev-group"
)


@dataclass
class GoogleStandin:
    target_size: int = 2
    api_status: int = 200
    calls: list[tuple[str, str, str, str]] = field(default_factory=list)  # method, path, auth, body
    port: int = 0


def _handler(state: GoogleStandin) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def _answer(self, status: int, body: str) -> None:
            data = body.encode()
            self.send_response(status)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path.startswith("/computeMetadata/v1/"):
                if self.headers.get("Metadata-Flavor") != "Google":
                    return self._answer(403, "missing Metadata-Flavor")
                answers = {
                    "instance/name": "llm-dev-replica-x7q2",
                    "instance/zone": "projects/123456/zones/us-central1-b",
                    "instance/service-accounts/default/token": json.dumps(
                        {"access_token": TOKEN, "expires_in": 3599, "token_type": "Bearer"}
                    ),
                }
                key = self.path.removeprefix("/computeMetadata/v1/")
                return self._answer(200, answers[key]) if key in answers else self._answer(404, "")
            self._api("GET", json.dumps({"name": "llm-dev-group", "targetSize": state.target_size}))

        def do_POST(self) -> None:
            self._api("POST", json.dumps({"kind": "compute#operation", "status": "RUNNING"}))

        def _api(self, method: str, ok_body: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length).decode()
            auth = self.headers.get("Authorization", "")
            state.calls.append((method, self.path, auth, body))
            if auth != f"Bearer {TOKEN}":
                return self._answer(401, "{}")
            if state.api_status != 200:
                return self._answer(state.api_status, '{"error": {"code": 403}}')
            self._answer(200, ok_body)

    return Handler


@pytest.fixture
def google() -> Iterator[GoogleStandin]:
    state = GoogleStandin()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state
    server.shutdown()


@dataclass
class Run:
    returncode: int
    log: str
    powered_off: bool


def leave(tmp_path: Path, google: GoogleStandin, *args: str) -> Run:
    script = tmp_path / "llm-endpoint-leave-group"
    script.write_text(render_leave_group(PARAMS))
    script.chmod(0o755)
    (tmp_path / "console").touch()  # the serial console exists on a VM
    marker = tmp_path / "powered-off"
    poweroff = tmp_path / "poweroff"
    poweroff.write_text(f"#!/bin/sh\ntouch {marker}\n")
    poweroff.chmod(0o755)
    env = {
        "PATH": "/usr/bin:/bin",
        "LLM_METADATA_URL": f"http://127.0.0.1:{google.port}/computeMetadata/v1",
        "LLM_COMPUTE_URL": f"http://127.0.0.1:{google.port}/compute/v1",
        "LLM_LEAVE_RETRY_SECONDS": "0",
        "LLM_POWEROFF": str(poweroff),
        "LLM_CONSOLE": str(tmp_path / "console"),
    }
    done = subprocess.run(
        ["/bin/bash", str(script), *args],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return Run(done.returncode, done.stderr, marker.exists())


def deletes(google: GoogleStandin) -> list[dict[str, object]]:
    return [
        json.loads(body)
        for method, path, _, body in google.calls
        if method == "POST" and path == f"{GROUP_PATH}/deleteInstances"
    ]


def test_failure_deletes_this_vm_from_its_group_and_does_not_power_off(
    tmp_path: Path, google: GoogleStandin
) -> None:
    run = leave(tmp_path, google, "failure", "vLLM was not ready within 45 minutes")
    assert run.returncode == 0, run.log
    assert deletes(google) == [
        {
            "instances": ["zones/us-central1-b/instances/llm-dev-replica-x7q2"],
            "skipInstancesOnValidationError": True,
        }
    ]
    assert not run.powered_off
    assert "vLLM was not ready within 45 minutes" in run.log
    assert "left group llm-dev-group" in run.log
    # The reason reaches the serial console too (it outlives the VM in Cloud Logging).
    assert "vLLM was not ready" in (tmp_path / "console").read_text()
    assert TOKEN not in run.log


def test_failure_powers_off_only_after_the_api_refused_every_attempt(
    tmp_path: Path, google: GoogleStandin
) -> None:
    google.api_status = 403
    run = leave(tmp_path, google, "failure", "startup failed")
    assert run.returncode == 1
    assert len(deletes(google)) == LEAVE_ATTEMPTS
    assert run.powered_off
    assert "The group may recreate this VM" in run.log


def test_idle_leaves_while_the_group_is_above_the_minimum(
    tmp_path: Path, google: GoogleStandin
) -> None:
    google.target_size = 3
    run = leave(tmp_path, google, "idle", "no requests for 30 minutes")
    assert run.returncode == 0, run.log
    assert len(deletes(google)) == 1
    assert not run.powered_off


def test_idle_stays_at_the_minimum(tmp_path: Path, google: GoogleStandin) -> None:
    google.target_size = PARAMS.idle_min_replicas
    run = leave(tmp_path, google, "idle", "no requests for 30 minutes")
    assert run.returncode == 0, run.log
    assert deletes(google) == []
    assert not run.powered_off
    assert "staying" in run.log


def test_idle_never_powers_off_when_the_api_is_unreachable(
    tmp_path: Path, google: GoogleStandin
) -> None:
    google.api_status = 503
    run = leave(tmp_path, google, "idle", "no requests")
    assert run.returncode == 1
    assert deletes(google) == []
    assert not run.powered_off


def test_the_script_passes_shellcheck(tmp_path: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: run `bash .ci/run`, which installs it"
    script = tmp_path / "leave.sh"
    script.write_text(render_leave_group(PARAMS))
    done = subprocess.run([shellcheck, str(script)], check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
