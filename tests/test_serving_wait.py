"""`pulumi up` waits for the VM's agent to report it serves the declared document: the wait
loop against a stand-in Compute API (a Python fake answering the two calls the loop makes)
and a fake clock; the dynamic provider's diff, create and update."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
import requests

from infra.compute_api import MIN_CALL_S
from infra.serving_wait import (
    DIAGNOSTIC_TIMEOUT_S,
    ServingFailed,
    ServingWaitProvider,
    Target,
    wait_for_serving,
)
from tests.support.fake_clock import FakeClock

DOC = "d" * 64
TARGET = Target("proj", "us-central1-a", "llm-dev-vm", DOC, deadline_s=3600)


@dataclass
class FakeCompute:
    """Answers instances.get and getGuestAttributes from a timeline of (from_time, status,
    guest attributes); serialPort from `console`."""

    clock: FakeClock
    timeline: Sequence[tuple[float, str, dict[str, str]]]
    console: str = "llm-endpoint-agent: FAILED: vLLM failed 2 starts in a row\nother line\n"
    calls: list[str] = field(default_factory=list)
    # (clock when called, the call's timeout) for every call.
    timeouts: list[tuple[float, float]] = field(default_factory=list)
    # Errors the next calls raise instead of answering (a stalled call first uses its timeout).
    errors: list[Exception] = field(default_factory=list)

    def _now(self) -> tuple[str, dict[str, str]]:
        current = self.timeline[0]
        for entry in self.timeline:
            if entry[0] <= self.clock.t:
                current = entry
        return current[1], current[2]

    def get_json(
        self, path: str, params: dict[str, str], timeout_s: float = 30.0
    ) -> dict[str, Any]:
        self.calls.append(path.rsplit("/", 1)[-1])
        self.timeouts.append((self.clock.t, timeout_s))
        if self.errors and not path.endswith("/serialPort"):
            error = self.errors.pop(0)
            if isinstance(error, requests.Timeout):
                self.clock.t += timeout_s
            raise error
        status, guest = self._now()
        if path.endswith("/getGuestAttributes"):
            assert params == {"queryPath": "llm-endpoint/"}
            items = [{"namespace": "llm-endpoint", "key": k, "value": v} for k, v in guest.items()]
            return {"queryValue": {"items": items}} if items else {}
        if path.endswith("/serialPort"):
            return {"contents": self.console}
        assert path == TARGET.path
        return {"status": status}


def run(
    timeline: Sequence[tuple[float, str, dict[str, str]]],
    errors: Sequence[Exception] = (),
) -> tuple[FakeClock, FakeCompute, Any]:
    clock = FakeClock()
    api = FakeCompute(clock, timeline, errors=list(errors))
    try:
        result: Any = wait_for_serving(api, TARGET, clock=clock.now, sleep=clock.sleep)
    except ServingFailed as err:
        result = err
    return clock, api, result


def test_returns_once_the_agent_reports_ready_for_this_document() -> None:
    clock, _, result = run([
        (0, "PROVISIONING", {}),
        (60, "RUNNING", {"state": "starting", "document": DOC, "reason": "pulling"}),
        (900, "RUNNING", {"state": "ready", "document": DOC, "reason": "serving qwen"}),
    ])  # fmt: skip
    assert result["state"] == "ready"
    assert 900 <= clock.t < 900 + 16


def test_ready_for_an_older_document_is_not_enough() -> None:
    clock, _, result = run([(0, "RUNNING", {"state": "ready", "document": "old", "reason": "x"})])
    assert isinstance(result, ServingFailed)
    assert "not serving within 60 minutes" in str(result)
    assert clock.t == pytest.approx(3600)  # the deadline holds; nothing really slept


def test_fails_at_once_with_the_agents_reason_and_console_tail() -> None:
    clock, _, result = run([
        (0, "RUNNING", {"state": "starting", "document": DOC}),
        (300, "RUNNING", {"state": "powered-off", "document": DOC,
                          "reason": "vLLM failed 2 starts in a row: exited"}),
    ])  # fmt: skip
    assert isinstance(result, ServingFailed)
    text = str(result)
    assert "vLLM failed 2 starts in a row: exited" in text
    assert "llm-endpoint-agent: FAILED" in text and "other line" not in text
    assert clock.t < 320


def test_a_stopped_vm_fails_the_wait_with_the_last_report() -> None:
    _, _, result = run([
        (0, "RUNNING", {"state": "starting", "document": DOC, "reason": "loading"}),
        (100, "TERMINATED", {}),
    ])  # fmt: skip
    assert isinstance(result, ServingFailed)
    assert "the VM is TERMINATED (its agent last said: starting)" in str(result)
    assert "loading" in str(result)


def test_a_silent_agent_fails_at_the_deadline_saying_so() -> None:
    clock, api, result = run([(0, "RUNNING", {})])
    assert isinstance(result, ServingFailed)
    assert "no report from the VM's agent yet" in str(result)
    assert clock.t == pytest.approx(3600)
    assert api.calls.count("serialPort") == 1


def test_provider_diff_update_and_create() -> None:
    provider = ServingWaitProvider()
    props = {"project": "proj", "zone": "us-central1-a", "instance": "llm-dev-vm",
             "document": DOC, "deadline_s": 3600}  # fmt: skip
    same = provider.diff("id", props, dict(props))
    assert same.changes is False
    moved = provider.diff("id", props, {**props, "document": "e" * 64})
    assert moved.changes is True and not moved.replaces
    clock = FakeClock()
    ready = [(0, "RUNNING", {"state": "ready", "document": DOC, "reason": "serving"})]
    provider.api = FakeCompute(clock, ready)
    created = provider.create(props)
    assert created.id == "llm-dev-vm-serving" and (created.outs or {})["state"] == "ready"
    updated = provider.update("id", props, props)
    assert (updated.outs or {})["reason"] == "serving"


def http_error(status: int) -> requests.HTTPError:
    response = requests.Response()
    response.status_code = status
    return requests.HTTPError(f"{status} from the Compute API", response=response)


READY = [(0, "RUNNING", {"state": "ready", "document": DOC, "reason": "serving"})]


def test_answers_worth_waiting_out_are_retried_at_the_next_poll() -> None:
    errors = [requests.ConnectionError("reset"), http_error(503), http_error(429),
              ValueError("truncated JSON")]  # fmt: skip
    clock, _, result = run(READY, errors)
    assert result["state"] == "ready"
    assert clock.sleeps == [15.0] * 4  # one poll each, then the answer


def test_a_stalled_api_still_ends_at_the_deadline_naming_the_stall() -> None:
    clock, api, result = run(READY, [requests.Timeout("read timed out")] * 1000)
    assert isinstance(result, ServingFailed)
    assert "not serving within 60 minutes" in str(result)
    assert "the Compute API's last answer: Timeout: read timed out" in str(result)
    # Each call used its whole timeout, and none was given more than what was left.
    for called_at, timeout in api.timeouts[:-1]:
        assert called_at + timeout <= TARGET.deadline_s + MIN_CALL_S
    assert api.timeouts[-1][1] == DIAGNOSTIC_TIMEOUT_S  # the console tail for the message
    assert clock.t <= TARGET.deadline_s + MIN_CALL_S


@pytest.mark.parametrize("status", [401, 403, 404])
def test_an_answer_waiting_cannot_change_fails_at_once(status: int) -> None:
    clock, _, result = run(READY, [http_error(status)])
    assert isinstance(result, ServingFailed)
    assert f"{status} from the Compute API" in str(result)
    assert "roles/compute.viewer" in str(result)
    assert clock.t == 0
