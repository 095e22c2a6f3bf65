"""Checks 1 and 2: is the endpoint reachable, and does `GET /health` answer 200?

With `--wait`, both are retried with backoff until the deadline, because a fresh VM first
refuses connections (nothing listens yet), then answers 502/503 from the proxy while vLLM
loads the model (docs/facts/vllm.md ("Sizes"): cold start on a fresh A100 VM is estimated at
10-20 min).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from scripts.smoke_test import hints
from scripts.smoke_test.results import CheckResult, Status
from scripts.smoke_test.target import Target
from scripts.smoke_test.transport import Failure, Resolver, classify, dns_failure

STARTING_STATUSES = frozenset({502, 503})
FIRST_DELAY_S = 2.0
BACKOFF = 1.5
MAX_DELAY_S = 15.0

Clock = Callable[[], float]
Sleep = Callable[[float], None]
Progress = Callable[[str], None]


@dataclass(frozen=True)
class Readiness:
    reachability: CheckResult
    health: CheckResult
    ready: bool  # /health answered 200
    not_ready: bool  # no HTTP answer, or still starting: exit code 3
    waited_s: float
    attempts: int


@dataclass(frozen=True)
class _Attempt:
    failure: Failure | None
    status: int | None
    elapsed: float

    @property
    def retryable(self) -> bool:
        if self.failure is not None:
            return self.failure.retryable
        return self.status in STARTING_STATUSES

    def describe(self) -> str:
        if self.failure is not None:
            return self.failure.summary
        if self.status in STARTING_STATUSES:
            return f"still starting (GET /health -> {self.status})"
        return f"GET /health -> {self.status}"


def _probe(session: requests.Session, target: Target, timeout: float) -> _Attempt:
    started = time.perf_counter()
    try:
        # stream=True: only the status counts, and an unread body cannot hold the probe up.
        with session.get(
            f"{target.base_url}/health", timeout=timeout, allow_redirects=False, stream=True
        ) as response:
            status = response.status_code
    except requests.RequestException as err:
        return _Attempt(classify(err, target, timeout), None, time.perf_counter() - started)
    return _Attempt(None, status, time.perf_counter() - started)


def check_ready(
    session: requests.Session,
    target: Target,
    *,
    timeout: float,
    wait_s: float,
    resolver: Resolver,
    clock: Clock,
    sleep: Sleep,
    progress: Progress,
) -> Readiness:
    start = clock()
    deadline = start + wait_s
    attempt_no = 0
    if not target.is_ip:
        try:
            resolver(target.host, target.port)
        except OSError:
            return _result(_Attempt(dns_failure(target), None, 0.0), target, 1, 0.0, wait_s)
    delay = FIRST_DELAY_S
    while True:
        attempt_no += 1
        attempt = _probe(session, target, timeout)
        if attempt.status == 200 or not attempt.retryable or wait_s <= 0:
            break
        remaining = deadline - clock()
        if remaining <= 0:
            break
        pause = min(delay, remaining)
        progress(
            f"waiting for {target.base_url}: {attempt.describe()}; attempt {attempt_no}, "
            f"{clock() - start:.0f}s of {wait_s:g}s, next try in {pause:.0f}s"
        )
        sleep(pause)
        delay = min(delay * BACKOFF, MAX_DELAY_S)
    return _result(attempt, target, attempt_no, clock() - start, wait_s)


def _result(
    attempt: _Attempt, target: Target, attempts: int, waited: float, wait_s: float
) -> Readiness:
    tried = f" after {attempts} attempts over {waited:.0f}s" if attempts > 1 else ""
    data = {"attempts": attempts, "waited_s": round(waited, 3)}
    if attempt.failure is not None:
        return _unreachable(attempt.failure, attempt.elapsed, tried, data, wait_s, waited, attempts)
    reach = CheckResult(
        1,
        "reachability",
        "Reachable",
        Status.PASS,
        attempt.elapsed,
        f"HTTP answer from {target.netloc}" + tried,
        data=data,
    )
    status = attempt.status
    if status == 200:
        health = CheckResult(2, "health", "GET /health is 200", Status.PASS, attempt.elapsed, "200")
        return Readiness(reach, health, True, False, waited, attempts)
    if status in STARTING_STATUSES:
        hint = (
            "The proxy is up but vLLM is not ready yet: it is still pulling the image or "
            "loading the model (10-20 min on a first start). "
            + (
                "Run again with --wait 1200 to keep trying."
                if wait_s <= 0
                else f"It did not become ready within --wait {wait_s:g}s; check "
                f"{hints.vllm_logs(target)}."
            )
        )
        health = CheckResult(
            2,
            "health",
            "GET /health is 200",
            Status.FAIL,
            attempt.elapsed,
            f"still starting: {status}" + tried,
            hint,
            "not-ready",
        )
        return Readiness(reach, health, False, True, waited, attempts)
    health = CheckResult(
        2,
        "health",
        "GET /health is 200",
        Status.FAIL,
        attempt.elapsed,
        f"answered {status}, expected 200",
        "Something other than the deployment's proxy answers on this port, or the proxy does "
        "not pass /health to vLLM. Check the IP and port.",
        "unexpected-status",
    )
    return Readiness(reach, health, False, False, waited, attempts)


def _unreachable(
    failure: Failure,
    elapsed: float,
    tried: str,
    data: dict[str, Any],
    wait_s: float,
    waited: float,
    attempts: int,
) -> Readiness:
    """Checks 1 and 2 when no HTTP answer came: 1 fails with the transport's reason."""
    hint = failure.hint
    if failure.retryable:
        hint += (
            " To keep trying while the VM boots, add --wait 1200."
            if wait_s <= 0
            else f" It did not become reachable within --wait {wait_s:g}s."
        )
    reach = CheckResult(
        1,
        "reachability",
        "Reachable",
        Status.FAIL,
        elapsed,
        failure.summary + tried,
        hint,
        failure.failure_class.value,
        data,
    )
    health = CheckResult(2, "health", "GET /health is 200", Status.SKIP, 0.0, "not reachable")
    return Readiness(reach, health, False, True, waited, attempts)
