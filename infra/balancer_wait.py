"""`pulumi up` of a group returns only when a replica of what was declared serves through the
balancer, or fails saying why.

"Serves through the balancer" is Google's own view, read through the Compute API (the deployer
needs no route to port 8000, which the allowlist may not give it): the backend service's
`getHealth` reports the replica HEALTHY (its balancer health check, GET /health through the
proxy, passes), and `listManagedInstances` shows that replica runs the current template. A
replica of an older template does not count, so after a change `pulumi up` waits for the new
version, not for the replicas still serving the old one. At the deadline it fails with what
the group reports (the instances' states and the errors of their last creation attempts, e.g.
`ZONE_RESOURCE_POOL_EXHAUSTED` or `quotaExceeded`) and the health the balancer sees.

The deadline is the group's autohealing delay (the replica's own ready deadline plus its
watchdog, docs/scale-out.md), the same rule as the single VM's. Facts relied on
(docs/facts/pulumi.md, "Dynamic providers"): the engine ignores `custom_timeouts` for dynamic
resources, so the deadline is this code's own, tested with an injected clock; each API call is
bounded by what is left of it; no client is captured at pickling (a session per call,
infra/compute_api.py).
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
    COMPUTE_URL,
    HttpComputeApi,
    call_timeouts,
    credentials_hint,
    describe,
    worth_waiting_out,
)

POLL_S = 15.0


class ServingFailed(Exception):
    """No replica of the current template served by the deadline; the message says why."""


class GroupApi(Protocol):
    def post_json(self, path: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]: ...


@dataclass(frozen=True)
class GroupTarget:
    project: str
    region: str
    group: str
    backend: str
    template: str  # the current template's self link (a `?uniqueId=` suffix is ignored)
    deadline_s: float
    poll_s: float = POLL_S

    @property
    def group_path(self) -> str:
        return f"projects/{self.project}/regions/{self.region}/instanceGroupManagers/{self.group}"

    @property
    def group_url(self) -> str:
        return (
            f"{COMPUTE_URL}/projects/{self.project}/regions/{self.region}/instanceGroups/"
            f"{self.group}"
        )


def _name(url: str) -> str:
    return url.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1]


def check_once(
    api: GroupApi, target: GroupTarget, timeout_s: Callable[[], float]
) -> tuple[str | None, str]:
    """(name of a HEALTHY replica of the current template or None, what the group reports).
    `timeout_s()` bounds each call by what is then left of the deadline."""
    managed = api.post_json(f"{target.group_path}/listManagedInstances", {}, timeout_s())
    health = api.post_json(
        f"projects/{target.project}/regions/{target.region}/backendServices/"
        f"{target.backend}/getHealth",
        {"group": target.group_url},
        timeout_s(),
    )
    healthy = {
        _name(h.get("instance", ""))
        for h in health.get("healthStatus") or []
        if h.get("healthState") == "HEALTHY"
    }
    current = _name(target.template)
    states: list[str] = []
    for m in managed.get("managedInstances") or []:
        name = _name(m.get("instance") or m.get("name") or "?")
        template = _name((m.get("version") or {}).get("instanceTemplate", ""))
        if template == current and name in healthy:
            return name, f"{name} is HEALTHY"
        errors = ((m.get("lastAttempt") or {}).get("errors") or {}).get("errors") or []
        codes = ", ".join(str(e.get("code")) for e in errors)
        states.append(
            f"{name}: {m.get('instanceStatus', 'not created')}, action "
            f"{m.get('currentAction', '?')}, {'current' if template == current else 'old'} "
            f"template, {'HEALTHY' if name in healthy else 'not healthy'}"
            + (f", last attempt: {codes}" if codes else "")
        )
    return None, "; ".join(states) or "the group has no instances yet"


def wait_until_serving(
    api: GroupApi,
    target: GroupTarget,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> str:
    """Poll until a replica of the current template is HEALTHY behind the balancer; returns
    its name. Raises ServingFailed at the deadline, which holds when the API stalls too."""
    deadline = clock() + target.deadline_s
    report = "no answer from the Compute API yet"
    while True:
        left = deadline - clock()
        if left <= 0:
            raise ServingFailed(
                f"no replica of group {target.group} running the current template served "
                f"through the balancer within {target.deadline_s:.0f}s. The group reports: "
                f"{report}. Each replica's log says why (docs/scale-out.md, 'Rules')"
            )
        try:
            replica, report = check_once(api, target, call_timeouts(deadline, clock))
        except (requests.RequestException, ValueError) as err:
            if not worth_waiting_out(err):
                raise ServingFailed(
                    f"the Compute API refused to show group {target.group} or backend service "
                    f"{target.backend} in {target.region} ({describe(err)}). Check that "
                    + credentials_hint(target.project)
                ) from None
            report = f"the Compute API did not answer ({describe(err)})"
            replica = None
        if replica is not None:
            return replica
        sleep(max(0.0, min(target.poll_s, deadline - clock())))


class BalancerWaitProvider(dynamic.ResourceProvider):
    """Waits in create and in update (a new template: a roll). Nothing to delete."""

    def __init__(self, api: GroupApi | None = None) -> None:
        self.api = api

    def create(self, props: dict[str, Any]) -> dynamic.CreateResult:
        replica = wait_until_serving(self.api or HttpComputeApi(), _target(props))
        return dynamic.CreateResult(
            id_=f"{props['group']}-serving", outs={**props, "replica": replica}
        )

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> dynamic.DiffResult:
        keys = [k for k in _INPUTS if olds.get(k) != news.get(k)]
        return dynamic.DiffResult(changes=bool(keys), replaces=[], delete_before_replace=False)

    def update(self, _id: str, _olds: dict[str, Any], news: dict[str, Any]) -> dynamic.UpdateResult:
        replica = wait_until_serving(self.api or HttpComputeApi(), _target(news))
        return dynamic.UpdateResult(outs={**news, "replica": replica})


_INPUTS = ("project", "region", "group", "backend", "template", "deadline_s")


def _target(props: dict[str, Any]) -> GroupTarget:
    return GroupTarget(
        project=props["project"],
        region=props["region"],
        group=props["group"],
        backend=props["backend"],
        template=props["template"],
        deadline_s=float(props["deadline_s"]),
    )


class BalancerWait(dynamic.Resource):
    """Created after the group and the balancer; `replica` is the one that answered first."""

    replica: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        *,
        project: str,
        region: str,
        group: pulumi.Input[str],
        backend: pulumi.Input[str],
        template: pulumi.Input[str],
        deadline_s: int,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__(
            BalancerWaitProvider(),
            name,
            {
                "project": project,
                "region": region,
                "group": group,
                "backend": backend,
                "template": template,
                "deadline_s": deadline_s,
                "replica": None,
            },
            opts,
        )
