"""`pulumi up` of a group waits for a replica of the current template to serve through the
balancer (infra/balancer_wait.py): the loop on an injected clock (no real sleeps), and the HTTP
calls against a loopback stand-in of the two Compute API methods it reads."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from infra.balancer_wait import GroupTarget, ServingFailed, wait_until_serving
from infra.compute_api import HttpComputeApi
from tests.support.compute_standin import ComputeStandin, compute_standin
from tests.support.fake_clock import FakeClock

LINK = "https://www.googleapis.com/compute/v1/projects/p-1/zones/us-central1-a/instances"
NEW = (
    "https://www.googleapis.com/compute/v1/projects/p-1/global/instanceTemplates/llm-dev-replica-2"
)
OLD = (
    "https://www.googleapis.com/compute/v1/projects/p-1/global/instanceTemplates/llm-dev-replica-1"
)
TARGET = GroupTarget(
    project="p-1",
    region="us-central1",
    group="llm-dev-group",
    backend="llm-dev-backend",
    template=NEW + "?uniqueId=42",
    deadline_s=3600,
)


def managed(name: str, template: str, **extra: Any) -> dict[str, Any]:
    return {
        "instance": f"{LINK}/{name}",
        "instanceStatus": "RUNNING",
        "currentAction": "NONE",
        "version": {"instanceTemplate": template},
        **extra,
    }


@dataclass
class FakeApi:
    """Answers from a list of rounds: (managed instances, healthy instance names)."""

    rounds: list[tuple[list[dict[str, Any]], list[str]]]
    clock: FakeClock
    calls: list[tuple[str, dict[str, Any], float]] = field(default_factory=list)
    stall: bool = False

    def post_json(self, path: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        self.calls.append((path, body, timeout_s))
        if self.stall:  # the call uses its whole timeout, then fails
            self.clock.t += timeout_s
            raise requests.Timeout("read timed out")
        instances, healthy = self.rounds[min((len(self.calls) - 1) // 2, len(self.rounds) - 1)]
        if path.endswith("/listManagedInstances"):
            return {"managedInstances": instances}
        return {
            "healthStatus": [{"instance": f"{LINK}/{n}", "healthState": "HEALTHY"} for n in healthy]
        }


def test_waits_until_a_replica_of_the_current_template_is_healthy() -> None:
    clock = FakeClock(1000.0)
    api = FakeApi(
        rounds=[
            ([managed("r-old", OLD), managed("r-new", NEW, currentAction="VERIFYING")], ["r-old"]),
            ([managed("r-old", OLD), managed("r-new", NEW)], ["r-old"]),
            ([managed("r-old", OLD), managed("r-new", NEW)], ["r-old", "r-new"]),
        ],
        clock=clock,
    )
    assert wait_until_serving(api, TARGET, clock=clock.now, sleep=clock.sleep) == "r-new"
    # The old template's healthy replica never counted: it took three rounds, 15 s apart.
    assert clock.sleeps == [15.0, 15.0]
    paths = [c[0] for c in api.calls[:2]]
    assert paths == [
        "projects/p-1/regions/us-central1/instanceGroupManagers/llm-dev-group/listManagedInstances",
        "projects/p-1/regions/us-central1/backendServices/llm-dev-backend/getHealth",
    ]
    assert api.calls[1][1] == {
        "group": "https://compute.googleapis.com/compute/v1/projects/p-1/regions/us-central1/"
        "instanceGroups/llm-dev-group"
    }


def test_fails_at_the_deadline_with_what_the_group_reports() -> None:
    clock = FakeClock(1000.0)
    errors = {"errors": {"errors": [{"code": "ZONE_RESOURCE_POOL_EXHAUSTED"}]}}
    api = FakeApi(
        rounds=[([managed("r-1", NEW, instanceStatus="PROVISIONING", lastAttempt=errors)], [])],
        clock=clock,
    )
    target = GroupTarget(**{**TARGET.__dict__, "deadline_s": 100})
    with pytest.raises(ServingFailed) as failed:
        wait_until_serving(api, target, clock=clock.now, sleep=clock.sleep)
    message = str(failed.value)
    assert "within 100s" in message
    assert "r-1: PROVISIONING" in message
    assert "ZONE_RESOURCE_POOL_EXHAUSTED" in message
    assert clock.t == 1100.0  # exactly the deadline: the last sleep was cut to fit


def test_the_deadline_holds_when_the_api_stalls() -> None:
    clock = FakeClock(1000.0)
    api = FakeApi(rounds=[([], [])], clock=clock, stall=True)
    target = GroupTarget(**{**TARGET.__dict__, "deadline_s": 70})
    with pytest.raises(ServingFailed) as failed:
        wait_until_serving(api, target, clock=clock.now, sleep=clock.sleep)
    assert "did not answer (Timeout" in str(failed.value)
    # Every call was bounded by what was left of the deadline, so it ends on time.
    assert clock.t <= 1070.0
    assert all(timeout <= 30.0 for _, _, timeout in api.calls)


@pytest.fixture
def compute() -> Iterator[ComputeStandin]:
    with compute_standin({
        "listManagedInstances": [(200, {"managedInstances": [managed("r-9", NEW)]})],
        "getHealth": [(200, {"healthStatus": [{"instance": f"{LINK}/r-9",
                                               "healthState": "HEALTHY"}]})],
    }) as standin:  # fmt: skip
        yield standin


def test_http_calls_against_a_loopback_compute_standin(compute: ComputeStandin) -> None:
    api = HttpComputeApi(base_url=compute.url, session=requests.Session)
    assert wait_until_serving(api, TARGET) == "r-9"
    assert [r.path for r in compute.requests] == [
        "/compute/v1/projects/p-1/regions/us-central1/instanceGroupManagers/llm-dev-group/"
        "listManagedInstances",
        "/compute/v1/projects/p-1/regions/us-central1/backendServices/llm-dev-backend/getHealth",
    ]


def test_a_passing_api_outage_is_waited_out(compute: ComputeStandin) -> None:
    compute.answers["listManagedInstances"].insert(0, (503, {"error": {"code": 503}}))
    api = HttpComputeApi(base_url=compute.url, session=requests.Session)
    clock = FakeClock()
    assert wait_until_serving(api, TARGET, clock=clock.now, sleep=clock.sleep) == "r-9"
    assert clock.sleeps == [TARGET.poll_s]


@pytest.mark.parametrize("status", [401, 403, 404])
def test_an_answer_waiting_cannot_change_fails_at_once(
    compute: ComputeStandin, status: int
) -> None:
    compute.answers["listManagedInstances"] = [(status, {"error": {"code": status}})]
    api = HttpComputeApi(base_url=compute.url, session=requests.Session)
    clock = FakeClock()
    with pytest.raises(ServingFailed) as failed:
        wait_until_serving(api, TARGET, clock=clock.now, sleep=clock.sleep)
    assert f"HTTPError: {status}" in str(failed.value)
    assert "roles/compute.viewer" in str(failed.value)
    assert clock.t == 0


def test_each_call_gets_only_what_is_left_after_the_one_before() -> None:
    """The first call of a round answers only after using most of what was left; the second
    is bounded by the rest, so the round cannot overrun the deadline by a whole call."""
    clock = FakeClock(0.0)

    @dataclass
    class SlowFirst(FakeApi):
        def post_json(self, path: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
            if path.endswith("/listManagedInstances"):
                self.clock.t += timeout_s - 0.5  # answers just in time
            return super().post_json(path, body, timeout_s)

    api = SlowFirst(rounds=[([managed("r-1", NEW)], [])], clock=clock)
    target = GroupTarget(**{**TARGET.__dict__, "deadline_s": 20})
    with pytest.raises(ServingFailed):
        wait_until_serving(api, target, clock=clock.now, sleep=clock.sleep)
    [first, second, *_] = [timeout for _, _, timeout in api.calls]
    assert (first, second) == (20.0, 1.0)  # 0.5 s left after the first: the floor of 1 s
    assert clock.t <= 20 + 1.0
