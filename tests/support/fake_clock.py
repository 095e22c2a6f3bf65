"""A clock for deadline tests: it moves only when the code under test sleeps (or a stand-in
moves `t`, as a call that uses its whole timeout would), so nothing really sleeps."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class FakeClock:
    t: float = 0.0
    sleeps: list[float] = field(default_factory=list)

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.t += seconds
