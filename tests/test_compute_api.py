"""The Compute API client both `pulumi up` waits use (infra/compute_api.py), against a loopback
stand-in (tests/support/compute_standin.py) with a plain `requests.Session` in place of the
authorised one: what each call sends, that an error status raises, that every call has its
own session and timeout; and the single VM's wait reading guest attributes through it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from infra.compute_api import CALL_TIMEOUT_S, HttpComputeApi
from infra.serving_wait import ServingFailed, Target, wait_for_serving
from tests.support.compute_standin import ComputeStandin, Recorded, compute_standin
from tests.support.fake_clock import FakeClock

VM = "projects/p-1/zones/us-central1-a/instances/llm-dev-vm"


@pytest.fixture
def compute() -> Iterator[ComputeStandin]:
    with compute_standin({"llm-dev-vm": [(200, {"status": "RUNNING"})]}) as standin:
        yield standin


def test_get_sends_the_query_and_returns_the_json(compute: ComputeStandin) -> None:
    api = HttpComputeApi(base_url=compute.url, session=requests.Session)
    assert api.get_json(VM, {"fields": "status"}) == {"status": "RUNNING"}
    assert compute.requests == [Recorded("GET", f"/compute/v1/{VM}", {"fields": "status"}, None)]


def test_post_sends_the_json_body(compute: ComputeStandin) -> None:
    compute.answers["getHealth"] = [(200, {"healthStatus": []})]
    api = HttpComputeApi(base_url=compute.url, session=requests.Session)
    path = "projects/p-1/regions/r/backendServices/b/getHealth"
    assert api.post_json(path, {"group": "g"}, 5.0) == {"healthStatus": []}
    assert compute.requests == [Recorded("POST", f"/compute/v1/{path}", {}, {"group": "g"})]


def test_an_error_status_raises_with_the_response(compute: ComputeStandin) -> None:
    compute.answers["llm-dev-vm"] = [(403, {"error": {"code": 403, "message": "denied"}})]
    api = HttpComputeApi(base_url=compute.url, session=requests.Session)
    with pytest.raises(requests.HTTPError) as raised:
        api.get_json(VM, {})
    assert raised.value.response is not None and raised.value.response.status_code == 403


class RecordingSession(requests.Session):
    """A real session (it calls the stand-in) that notes its timeouts and its closing."""

    def __init__(self) -> None:
        super().__init__()
        self.timeouts: list[Any] = []
        self.closed = False

    def request(self, *args: Any, **kwargs: Any) -> requests.Response:
        self.timeouts.append(kwargs.get("timeout"))
        return super().request(*args, **kwargs)

    def close(self) -> None:
        self.closed = True
        super().close()


@dataclass
class Sessions:
    made: list[RecordingSession] = field(default_factory=list)

    def __call__(self) -> requests.Session:
        self.made.append(RecordingSession())
        return self.made[-1]


def test_each_call_has_its_own_session_and_timeout(compute: ComputeStandin) -> None:
    # docs/facts/pulumi.md ("Dynamic providers"): the host's threads share one provider, so
    # the client keeps no session between calls.
    sessions = Sessions()
    api = HttpComputeApi(base_url=compute.url, session=sessions)
    api.get_json(VM, {})
    api.get_json(VM, {}, timeout_s=2.5)
    assert [s.timeouts for s in sessions.made] == [[CALL_TIMEOUT_S], [2.5]]
    assert all(s.closed for s in sessions.made)


def guest(**values: str) -> dict[str, Any]:
    items = [{"namespace": "llm-endpoint", "key": k, "value": v} for k, v in values.items()]
    return {"queryValue": {"items": items}}


def test_the_vm_wait_reads_guest_attributes_through_the_client(compute: ComputeStandin) -> None:
    doc = "d" * 64
    compute.answers["getGuestAttributes"] = [
        (404, {"error": {"code": 404, "message": "nothing written yet"}}),
        (200, guest(state="ready", document=doc, reason="serving qwen")),
    ]
    api = HttpComputeApi(base_url=compute.url, session=requests.Session)
    clock = FakeClock()
    target = Target("p-1", "us-central1-a", "llm-dev-vm", doc, deadline_s=600)
    state = wait_for_serving(api, target, clock=clock.now, sleep=clock.sleep)
    assert state["reason"] == "serving qwen"
    assert clock.sleeps == [15.0]  # the 404 counted as "nothing reported yet", not a failure
    reads = [r for r in compute.requests if r.path.endswith("/getGuestAttributes")]
    assert [r.query for r in reads] == [{"queryPath": "llm-endpoint/"}] * 2


def test_only_guest_attributes_may_be_missing(compute: ComputeStandin) -> None:
    compute.answers["llm-dev-vm"] = [(404, {"error": {"code": 404, "message": "no such VM"}})]
    api = HttpComputeApi(base_url=compute.url, session=requests.Session)
    clock = FakeClock()
    target = Target("p-1", "us-central1-a", "llm-dev-vm", "d" * 64, deadline_s=600)
    with pytest.raises(ServingFailed) as failed:
        wait_for_serving(api, target, clock=clock.now, sleep=clock.sleep)
    assert "refused to show instance llm-dev-vm" in str(failed.value)
    assert "404" in str(failed.value) and clock.t == 0  # at once, not at the deadline
