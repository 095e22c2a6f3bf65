"""`llm-endpoint-leave-group` (startup/leave_group.sh.j2), run with the real bash, curl and
python3 against a loopback stand-in of the GCE metadata server and the Compute API's group
methods; several replicas run it at once where the rule is about concurrency.

The stand-in is ours (a hand-written second best: nothing here reaches Google); it answers
the requests the script makes in the shapes the API documents (docs/facts/gcp.md, "Managed
instance groups": deleteInstances; "Listing a group's instances": listManagedInstances)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import threading
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

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
SELF_LINK = "https://www.googleapis.com/compute/v1/projects/llm-endpoint-dev"
TEMPLATE = f"{SELF_LINK}/global/instanceTemplates/llm-dev-replica-tpl"
ME = "llm-dev-replica-x7q2"
# Deadline of the stand-in's barrier: only a guard so that a broken script fails the test
# instead of hanging it; nothing waits for it to pass.
BARRIER_GUARD_S = 30.0


@dataclass
class Replica:
    name: str
    zone: str = "us-central1-b"
    action: str = "NONE"
    status: str | None = "RUNNING"  # None: the VM does not exist yet (CREATING)

    @property
    def path(self) -> str:
        return f"zones/{self.zone}/instances/{self.name}"

    def managed_instance(self) -> dict[str, Any]:
        """One entry of listManagedInstances' `managedInstances[]`, as the reference shows it:
        `instance` is a URL even before the VM exists; id and status only once it does."""
        entry: dict[str, Any] = {
            "instance": f"{SELF_LINK}/{self.path}",
            "name": self.name,
            "currentAction": self.action,
            "version": {"instanceTemplate": TEMPLATE, "name": "primary"},
        }
        if self.status is not None:
            entry |= {
                "id": str(zlib.crc32(self.name.encode())),
                "instanceStatus": self.status,
                "instanceHealth": [
                    {
                        "healthCheck": f"{SELF_LINK}/regions/us-central1/healthChecks/llm-dev-heal",
                        "detailedHealthState": "HEALTHY",
                    }
                ],
            }
        return entry


@dataclass
class Call:
    method: str
    path: str
    auth: str
    body: str
    content_length: str | None


@dataclass
class GoogleStandin:
    replicas: list[Replica] = field(
        default_factory=lambda: [Replica("llm-dev-replica-a1b2"), Replica(ME)]
    )
    list_status: int = 200
    list_body: str | None = None  # replaces the list's answer (a malformed one)
    delete_status: int = 200
    # When set, each listManagedInstances answer waits until that many replicas have read the
    # group: every reader then sees the group before anyone left, the worst interleaving.
    list_barrier: threading.Barrier | None = None
    calls: list[Call] = field(default_factory=list)
    port: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def live(self) -> list[str]:
        return [r.name for r in self.replicas if r.action not in ("DELETING", "ABANDONING")]

    def zone_of(self, name: str) -> str:
        return next((r.zone for r in self.replicas if r.name == name), "us-central1-b")

    def delete(self, body: dict[str, Any]) -> None:
        # Like the group: each named instance is scheduled for deletion (currentAction
        # DELETING); an instance already going is skipped (skipInstancesOnValidationError).
        # The target size is the number of instances not on their way out (`live`).
        with self.lock:
            for r in self.replicas:
                if r.path in body["instances"] and r.action not in ("DELETING", "ABANDONING"):
                    r.action = "DELETING"

    def list_answer(self) -> str:
        with self.lock:
            answer = json.dumps({"managedInstances": [r.managed_instance() for r in self.replicas]})
        if self.list_barrier is not None:
            self.list_barrier.wait(BARRIER_GUARD_S)
        return self.list_body if self.list_body is not None else answer


def _metadata(state: GoogleStandin, path: str) -> str | None:
    # /<vm name>/computeMetadata/v1/<key>: one stand-in serves several replicas.
    vm, _, key = path.removeprefix("/").partition("/computeMetadata/v1/")
    answers = {
        "instance/name": vm,
        "instance/zone": f"projects/123456/zones/{state.zone_of(vm)}",
        "instance/service-accounts/default/token": json.dumps(
            {"access_token": TOKEN, "expires_in": 3599, "token_type": "Bearer"}
        ),
    }
    return answers.get(key)


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
            if "/computeMetadata/v1/" not in self.path:
                return self._answer(404, "{}")
            if self.headers.get("Metadata-Flavor") != "Google":
                return self._answer(403, "missing Metadata-Flavor")
            answer = _metadata(state, self.path)
            if answer is None:
                return self._answer(404, "")
            self._answer(200, answer)

        def do_POST(self) -> None:
            length = self.headers.get("Content-Length")
            body = self.rfile.read(int(length or 0)).decode()
            auth = self.headers.get("Authorization", "")
            state.calls.append(Call("POST", self.path, auth, body, length))
            if length is None:  # Google's front end wants a length on every POST
                return self._answer(411, "")
            if auth != f"Bearer {TOKEN}":
                return self._answer(401, "{}")
            if self.path == f"{GROUP_PATH}/listManagedInstances":
                if state.list_status != 200:
                    return self._answer(state.list_status, '{"error": {"code": 503}}')
                return self._answer(200, state.list_answer())
            if self.path == f"{GROUP_PATH}/deleteInstances":
                if state.delete_status != 200:
                    return self._answer(state.delete_status, '{"error": {"code": 403}}')
                state.delete(json.loads(body))
                return self._answer(200, json.dumps({"kind": "compute#operation"}))
            self._answer(404, "{}")

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


def _start(
    tmp_path: Path, google: GoogleStandin, vm: str, params: GroupParams, args: tuple[str, ...]
) -> tuple[subprocess.Popen[str], Path]:
    home = tmp_path / vm
    home.mkdir(exist_ok=True)
    script = home / "llm-endpoint-leave-group"
    script.write_text(render_leave_group(params))
    script.chmod(0o755)
    (home / "console").touch()  # the serial console exists on a VM
    poweroff = home / "poweroff"
    poweroff.write_text(f"#!/bin/sh\ntouch {home / 'powered-off'}\n")
    poweroff.chmod(0o755)
    env = {
        "PATH": "/usr/bin:/bin",
        "LLM_METADATA_URL": f"http://127.0.0.1:{google.port}/{vm}/computeMetadata/v1",
        "LLM_COMPUTE_URL": f"http://127.0.0.1:{google.port}/compute/v1",
        "LLM_LEAVE_RETRY_SECONDS": "0",
        "LLM_POWEROFF": str(poweroff),
        "LLM_CONSOLE": str(home / "console"),
    }
    process = subprocess.Popen(
        ["/bin/bash", str(script), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    return process, home


def _finish(process: subprocess.Popen[str], home: Path) -> Run:
    _, stderr = process.communicate(timeout=60)
    return Run(process.returncode, stderr, (home / "powered-off").exists())


def leave(
    tmp_path: Path, google: GoogleStandin, *args: str, vm: str = ME, params: GroupParams = PARAMS
) -> Run:
    return _finish(*_start(tmp_path, google, vm, params, args))


def leave_at_once(
    tmp_path: Path, google: GoogleStandin, vms: list[str], params: GroupParams
) -> dict[str, Run]:
    """Every VM in `vms` runs `idle` at the same moment."""
    google.list_barrier = threading.Barrier(len(vms))
    started = {vm: _start(tmp_path, google, vm, params, ("idle", "no requests")) for vm in vms}
    return {vm: _finish(*started[vm]) for vm in vms}


def deletes(google: GoogleStandin) -> list[dict[str, Any]]:
    return [json.loads(c.body) for c in google.calls if c.path == f"{GROUP_PATH}/deleteInstances"]


def lists(google: GoogleStandin) -> list[Call]:
    return [c for c in google.calls if c.path == f"{GROUP_PATH}/listManagedInstances"]


def with_min(idle_min_replicas: int) -> GroupParams:
    return dataclasses.replace(PARAMS, idle_min_replicas=idle_min_replicas)


# --- failure: unchanged by the idle rule ---


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
    assert "vLLM was not ready" in (tmp_path / ME / "console").read_text()
    assert TOKEN not in run.log


def test_failure_leaves_even_as_the_group_s_only_replica_without_reading_the_list(
    tmp_path: Path, google: GoogleStandin
) -> None:
    # A replica that cannot serve never bills in a loop: no minimum, no ranking.
    google.replicas = [Replica(ME)]
    run = leave(tmp_path, google, "failure", "startup failed")
    assert run.returncode == 0, run.log
    assert len(deletes(google)) == 1
    assert lists(google) == []


def test_failure_powers_off_only_after_the_api_refused_every_attempt(
    tmp_path: Path, google: GoogleStandin
) -> None:
    google.delete_status = 403
    run = leave(tmp_path, google, "failure", "startup failed")
    assert run.returncode == 1
    assert len(deletes(google)) == LEAVE_ATTEMPTS
    assert run.powered_off
    assert "The group may recreate this VM" in run.log


# --- idle: the rank rule ---


def test_idle_leaves_when_enough_settled_replicas_sort_before_it(
    tmp_path: Path, google: GoogleStandin
) -> None:
    google.replicas = [Replica("llm-dev-replica-a1b2", zone="us-central1-c"), Replica(ME)]
    run = leave(tmp_path, google, "idle", "no requests for 30 minutes")
    assert run.returncode == 0, run.log
    assert deletes(google) == [
        {
            "instances": ["zones/us-central1-b/instances/llm-dev-replica-x7q2"],
            "skipInstancesOnValidationError": True,
        }
    ]
    # listManagedInstances is a POST without a body, with a length (Content-Length: 0).
    assert [(c.body, c.content_length) for c in lists(google)] == [("", "0")]
    assert not run.powered_off
    assert "1 settled replica(s)" in run.log
    assert TOKEN not in run.log


def test_the_lowest_named_replica_stays_however_large_the_group(
    tmp_path: Path, google: GoogleStandin
) -> None:
    google.replicas = [
        Replica(ME),
        Replica("llm-dev-replica-y000"),
        Replica("llm-dev-replica-z999"),
    ]
    run = leave(tmp_path, google, "idle", "no requests for 30 minutes")
    assert run.returncode == 0, run.log
    assert deletes(google) == []
    assert not run.powered_off
    assert "staying (the lowest-named keep serving)" in run.log


@pytest.mark.parametrize(
    ("replicas", "idle_min"),
    [(2, 1), (3, 1), (4, 2), (3, 0)],
    ids=["2-replicas-min-1", "3-replicas-min-1", "4-replicas-min-2", "3-replicas-min-0"],
)
def test_replicas_idle_at_the_same_moment_leave_exactly_down_to_the_minimum(
    tmp_path: Path, google: GoogleStandin, replicas: int, idle_min: int
) -> None:
    # Names in another order than their zones, so the order is by name, not by zone.
    vms = [f"llm-dev-replica-{c}{c}{c}{c}" for c in "dcba"[:replicas]]
    zones = ["us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f"]
    google.replicas = [Replica(vm, zone=zone) for vm, zone in zip(vms, zones, strict=False)]
    runs = leave_at_once(tmp_path, google, vms, with_min(idle_min))
    # Every replica read the group before any of them left (the barrier), and still:
    assert all(len(c.body) == 0 for c in lists(google)) and len(lists(google)) == replicas
    assert sorted(google.live()) == sorted(vms)[:idle_min]
    left = {d["instances"][0] for d in deletes(google)}
    assert left == {
        f"zones/{r.zone}/instances/{r.name}"
        for r in google.replicas
        if r.name not in sorted(vms)[:idle_min]
    }
    assert all(run.returncode == 0 and not run.powered_off for run in runs.values())


@pytest.mark.parametrize(
    ("action", "status"),
    [
        ("DELETING", "RUNNING"),
        ("ABANDONING", "RUNNING"),
        ("CREATING", None),
        ("RECREATING", "STOPPING"),
        ("VERIFYING", "RUNNING"),
        ("NONE", "TERMINATED"),  # a preempted spot VM the group has not yet seen
        ("SOME_NEW_ACTION", "RUNNING"),
    ],
)
def test_only_settled_running_replicas_count_as_the_ones_that_stay(
    tmp_path: Path, google: GoogleStandin, action: str, status: str | None
) -> None:
    # A lower-named replica that is going, not there yet, or not known to serve does not
    # protect this one: with the minimum at 1, this replica keeps serving.
    google.replicas = [Replica("llm-dev-replica-a1b2", action=action, status=status), Replica(ME)]
    run = leave(tmp_path, google, "idle", "no requests")
    assert run.returncode == 0, run.log
    assert deletes(google) == []
    assert "only 0 settled replica(s)" in run.log


def test_idle_stays_when_a_replica_being_deleted_would_have_been_its_protector(
    tmp_path: Path, google: GoogleStandin
) -> None:
    # The group-size rule saw 3 > 1 here and left; two of the three are on their way out.
    google.replicas = [
        Replica("llm-dev-replica-a1b2", action="DELETING"),
        Replica("llm-dev-replica-b3c4", action="ABANDONING"),
        Replica(ME),
    ]
    run = leave(tmp_path, google, "idle", "no requests")
    assert deletes(google) == []
    assert google.live() == [ME]
    assert run.returncode == 0, run.log


@pytest.mark.parametrize(
    ("list_status", "list_body"),
    [(503, None), (403, None), (200, "<html>not json</html>"), (200, '{"kind": "truncated')],
)
def test_idle_stays_when_the_list_cannot_be_read(
    tmp_path: Path, google: GoogleStandin, list_status: int, list_body: str | None
) -> None:
    google.list_status, google.list_body = list_status, list_body
    run = leave(tmp_path, google, "idle", "no requests")
    assert run.returncode == 1
    assert deletes(google) == []
    assert not run.powered_off
    assert "cannot be read; staying" in run.log


def test_idle_stays_when_this_vm_is_not_in_the_list(tmp_path: Path, google: GoogleStandin) -> None:
    google.replicas = [Replica("llm-dev-replica-a1b2"), Replica("llm-dev-replica-b3c4")]
    run = leave(tmp_path, google, "idle", "no requests")
    assert run.returncode == 1
    assert deletes(google) == []
    assert "not among group llm-dev-group's instances" in run.log


def test_idle_does_not_ask_twice_while_the_group_removes_this_vm(
    tmp_path: Path, google: GoogleStandin
) -> None:
    # A second deleteInstances could lower the target size once more.
    google.replicas = [Replica("llm-dev-replica-a1b2"), Replica(ME, action="DELETING")]
    run = leave(tmp_path, google, "idle", "no requests")
    assert run.returncode == 0, run.log
    assert deletes(google) == []
    assert "already removing this VM" in run.log


def test_idle_asks_once_and_stays_when_the_leave_is_refused(
    tmp_path: Path, google: GoogleStandin
) -> None:
    # A retry minutes later would act on a list that may no longer hold; the next idle check
    # reads it again instead. Idle never powers off.
    google.delete_status = 503
    run = leave(tmp_path, google, "idle", "no requests")
    assert run.returncode == 1
    assert len(deletes(google)) == 1
    assert not run.powered_off
    assert "the next idle check decides again" in run.log


def test_the_script_passes_shellcheck(tmp_path: Path) -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: run `bash .ci/run`, which installs it"
    script = tmp_path / "leave.sh"
    script.write_text(render_leave_group(PARAMS))
    done = subprocess.run([shellcheck, str(script)], check=False, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout
