"""`pulumi up` of a VM returns only when the VM serves what was declared, or fails saying why.

A dynamic resource (`ServingWait`) whose inputs are the instance and the sha256 of its runtime
document: created with the VM and updated whenever the document changes, it polls the VM's
guest attributes through the Compute API (`instances.getGuestAttributes`,
docs/facts/gcp.md "Guest attributes"), where the agent reports the document it is applying
and its state, until the agent reports `ready` for this very document (the agent's ready is
serving.is_ready through the proxy: /health 200 and /v1/models 200 with the key). It fails as
soon as the agent reports `failed` or `powered-off` for it, or the instance stops, or the
deadline passes, with the agent's reason and the tail of its serial console: the deployer
needs the Compute API only, no route to port 8000. `gcp.waitForServing: false` leaves it out.

Facts relied on (docs/facts/pulumi.md, "Dynamic providers"): the engine ignores
`custom_timeouts` for dynamic resources, so the deadline is this code's own, tested with an
injected clock; methods run on a pool of threads of the provider host, so no client is
captured at pickling: a session is made per call (infra/compute_api.py).

The deadline holds when the API stalls: each call is bounded by what is left of it (at least
MIN_CALL_S), and only the serial-console read for the failure message runs past it, for at
most DIAGNOSTIC_TIMEOUT_S. An answer worth waiting out (no connection, a timeout, 429, 5xx,
a garbled body) is retried at the next poll and named in the message if the deadline comes;
one that waiting cannot change (401, 403, the instance not found) fails the wait at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pulumi
import requests
from pulumi import dynamic

from infra.compute_api import (
    CALL_TIMEOUT_S,
    COMPUTE_READONLY_SCOPE,
    HttpComputeApi,
    call_timeouts,
    credentials_hint,
    describe,
    worth_waiting_out,
)
from vm_agent.runtime_doc import GUEST_NAMESPACE

POLL_S = 15.0
CONSOLE_TAIL_LINES = 25
DIAGNOSTIC_TIMEOUT_S = 10.0


class ServingFailed(Exception):
    """The VM reported it cannot serve, stopped, or the deadline passed; the message says why."""


class ComputeApi(Protocol):
    def get_json(
        self, path: str, params: dict[str, str], timeout_s: float = CALL_TIMEOUT_S
    ) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Target:
    project: str
    zone: str
    instance: str
    document: str  # sha256 of the runtime document
    deadline_s: float

    @property
    def path(self) -> str:
        return f"projects/{self.project}/zones/{self.zone}/instances/{self.instance}"


def guest_state(api: ComputeApi, target: Target, timeout_s: float) -> dict[str, str]:
    try:
        body = api.get_json(
            f"{target.path}/getGuestAttributes", {"queryPath": f"{GUEST_NAMESPACE}/"}, timeout_s
        )
    except requests.HTTPError as err:
        if err.response is None or err.response.status_code != 404:
            raise
        body = {}  # the agent has written nothing under the namespace yet
    items = (body.get("queryValue") or {}).get("items") or []
    return {str(i.get("key")): str(i.get("value", "")) for i in items if isinstance(i, dict)}


def console_tail(api: ComputeApi, target: Target) -> str:
    """The agent's and cloud-init's last lines from serial port 1 (never a secret: the agent
    writes none there)."""
    try:
        body = api.get_json(f"{target.path}/serialPort", {"port": "1"}, DIAGNOSTIC_TIMEOUT_S)
    except Exception as err:
        return f"(serial console unreadable: {err})"
    lines = [
        line
        for line in str(body.get("contents", "")).splitlines()
        if "llm-endpoint" in line or "cloud-init" in line
    ]
    return "\n".join(lines[-CONSOLE_TAIL_LINES:])


def wait_for_serving(
    api: ComputeApi,
    target: Target,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, str]:
    """Polls until the agent reports ready for `target.document`; raises ServingFailed."""
    deadline = clock() + target.deadline_s
    call_timeout = call_timeouts(deadline, clock)
    state: dict[str, str] = {}
    trouble = ""
    while True:
        try:
            status = str(api.get_json(target.path, {}, call_timeout()).get("status", "UNKNOWN"))
            state = guest_state(api, target, call_timeout()) if status == "RUNNING" else state
            trouble = ""
        except (requests.RequestException, ValueError) as err:
            if not worth_waiting_out(err):
                raise _failure(api, target, _refused(target, err), state) from None
            status, trouble = "UNKNOWN", f" (the Compute API's last answer: {describe(err)})"
        if _verdict(api, target, status, state):
            return state
        if clock() >= deadline:
            minutes = target.deadline_s / 60
            what = f"not serving within {minutes:.0f} minutes{trouble}"
            raise _failure(api, target, what, state)
        sleep(min(POLL_S, max(deadline - clock(), 0.0)))


def _verdict(api: ComputeApi, target: Target, status: str, state: dict[str, str]) -> bool:
    """True once the agent serves this document; raises ServingFailed when it never will."""
    current = state.get("document") == target.document
    if current and state.get("state") == "ready":
        return True
    if status in ("STOPPING", "TERMINATED", "SUSPENDED"):
        what = f"the VM is {status} (its agent last said: {state.get('state', 'nothing')})"
        raise _failure(api, target, what, state)
    if current and state.get("state") in ("failed", "powered-off"):
        raise _failure(api, target, f"the VM reports {state['state']}", state)
    return False


def _refused(target: Target, err: Exception) -> str:
    return (
        f"the Compute API refused to show instance {target.instance} in {target.zone} "
        f"({describe(err)}). Check that it exists and that {credentials_hint(target.project)}"
    )


def _failure(api: ComputeApi, target: Target, what: str, state: dict[str, str]) -> ServingFailed:
    reason = state.get("reason") or "no report from the VM's agent yet"
    return ServingFailed(
        f"{target.instance}: {what}: {reason}. Serial console (llm-endpoint lines):\n"
        f"{console_tail(api, target)}\nSee docs/troubleshooting.md."
    )


def _target(props: dict[str, Any]) -> Target:
    return Target(
        props["project"], props["zone"], props["instance"], props["document"],
        float(props["deadline_s"]),
    )  # fmt: skip


class ServingWaitProvider(dynamic.ResourceProvider):
    """create/update wait; delete does nothing (the VM goes with its own resource)."""

    def __init__(self, api: ComputeApi | None = None) -> None:
        self.api = api

    def _wait(self, props: dict[str, Any]) -> dict[str, Any]:
        # It only reads (instances.get, getGuestAttributes, serialPort): the read-only scope.
        api = self.api or HttpComputeApi(scope=COMPUTE_READONLY_SCOPE)
        state = wait_for_serving(api, _target(props))
        return {**props, "state": state.get("state", ""), "reason": state.get("reason", "")}

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        return dynamic.CreateResult(id_=f"{props['instance']}-serving", outs=self._wait(props))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        keys = ("project", "zone", "instance", "document", "deadline_s")
        changed = [k for k in keys if olds.get(k) != news.get(k)]
        return dynamic.DiffResult(changes=bool(changed), replaces=[], delete_before_replace=False)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        return dynamic.UpdateResult(outs=self._wait(news))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        return None


class ServingWait(dynamic.Resource):
    state: pulumi.Output[str]
    reason: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        project: pulumi.Input[str],
        zone: pulumi.Input[str],
        instance: pulumi.Input[str],
        document: pulumi.Input[str],
        deadline_s: int,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "project": project, "zone": zone, "instance": instance, "document": document,
            "deadline_s": deadline_s, "state": None, "reason": None,
        }  # fmt: skip
        super().__init__(ServingWaitProvider(), name, props, opts)
