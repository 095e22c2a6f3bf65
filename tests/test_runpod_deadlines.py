"""Every wait ends within its deadline plus one poll, even when the API stalls (each call takes
the client's whole timeout, then fails) or answers 429 to everything: the API calls made during
a wait are bounded by its deadline (RunpodClient.deadline). Fake time throughout."""

from __future__ import annotations

from typing import Any

import pytest
from pulumi.dynamic import CreateResult

from infra.runpod import lifecycle
from infra.runpod.errors import DeleteError, RunpodError
from infra.runpod.provider import RunpodPodProvider
from tests.support.runpod_emulator import FakeClock, RunpodEmulator
from tests.support.runpod_testing import pod_inputs

pytest_plugins = ["tests.support.runpod_fixtures"]

STALL_S = 30.0  # the client's timeout: what one stalled call costs
# One poll: a stalled status call, the health probe, and the sleep between polls.
ONE_POLL_S = STALL_S + lifecycle.POLL_INTERVAL_S


def _create(provider: RunpodPodProvider, **overrides: Any) -> CreateResult:
    created: CreateResult = provider.create(provider.check({}, pod_inputs(**overrides)).inputs)
    return created


@pytest.mark.parametrize("fault", ["stall", "429"])
def test_readiness_wait_ends_at_its_deadline_when_the_api_stops_answering(
    provider, emulator: RunpodEmulator, clock: FakeClock, fault: str
):
    emulator.faults.stall_methods = frozenset({"GET"})  # the POST gets through; polls do not
    if fault == "stall":
        emulator.faults.stall_s = STALL_S
    else:
        emulator.faults.always_429 = True
        emulator.faults.retry_after_s = 7
    start = clock.now()
    with pytest.raises(RunpodError) as err:
        _create(provider, readyTimeoutMinutes=5)
    message = str(err.value)
    assert "was not serving within 5 minutes" in message
    assert "status unknown" in message
    # The wait gave up within its deadline plus one poll; the delete that followed (its
    # confirmation polls stall too) within its own deadline plus one poll.
    waited = next(t for t, m, p in emulator.timeline if m == "DELETE") - start
    print(f"wait ended {waited - 5 * 60:.0f} s after its deadline")
    assert 5 * 60 <= waited <= 5 * 60 + ONE_POLL_S
    assert clock.now() - start <= 5 * 60 + lifecycle.DELETE_TIMEOUT_S + 2 * ONE_POLL_S
    # What the delete could confirm is said plainly (the pod may still bill), never "done".
    assert "Deleting it FAILED" in message or "has been deleted" in message


def test_delete_ends_at_its_deadline_when_the_api_stalls(provider, emulator, clock):
    created = _create(provider)
    emulator.faults.stall_methods = frozenset({"GET"})
    emulator.faults.stall_s = STALL_S
    start = clock.now()
    with pytest.raises(DeleteError) as err:
        provider.delete(created.id, created.outs)
    assert clock.now() - start <= lifecycle.DELETE_TIMEOUT_S + ONE_POLL_S
    assert "may still be billing" in str(err.value)


def test_without_a_deadline_one_stalled_call_would_take_minutes(emulator, clock):
    """The bound above is the deadline's doing: the same stalled GET, outside any wait, runs
    all its attempts (5 x 30 s plus back-off)."""
    from infra.runpod.client import RunpodClient
    from tests.support.runpod_testing import RUNPOD_KEY

    pod_id = emulator.add_pod("llm-endpoint-x-0-0123abcd")
    emulator.faults.stall_s = STALL_S
    start = clock.now()
    with RunpodClient(RUNPOD_KEY, sleep=clock.sleep, now=clock.now) as client:
        with pytest.raises(RunpodError):
            client.get_pod(pod_id)
        unbounded = clock.now() - start
        start = clock.now()
        with client.deadline(clock.now() + 40), pytest.raises(RunpodError):
            client.get_pod(pod_id)
        bounded = clock.now() - start
    assert unbounded >= 5 * STALL_S
    assert bounded <= 40 + STALL_S
    emulator.faults.stall_s = 0
    emulator.pods[pod_id].deleted_at = clock.now()  # not a leak: the test's own pod
