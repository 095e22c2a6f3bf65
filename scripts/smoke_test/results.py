"""What a check found: the record every check returns and the report prints."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any


class Status(StrEnum):
    PASS = "PASS"  # noqa: S105 (a verdict, not a password)
    FAIL = "FAIL"
    SKIP = "SKIP"


class ExitCode:
    OK = 0
    CHECK_FAILED = 1
    USAGE = 2
    NOT_READY = 3


@dataclass
class CheckResult:
    number: int
    name: str  # stable machine name, used in --json
    title: str
    status: Status
    duration_s: float
    detail: str
    hint: str | None = None
    failure_class: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Timer:
    started: float = field(default_factory=time.perf_counter)
    stopped: float | None = None

    @property
    def elapsed(self) -> float:
        end = self.stopped if self.stopped is not None else time.perf_counter()
        return end - self.started


@contextmanager
def timed() -> Iterator[Timer]:
    timer = Timer()
    try:
        yield timer
    finally:
        timer.stopped = time.perf_counter()
