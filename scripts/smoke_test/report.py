"""The smoke test's report: a table for people, JSON for machines, neither with the key."""

from __future__ import annotations

import io
import json
import textwrap
from dataclasses import dataclass
from typing import Any, TextIO

from scripts.smoke_test.results import CheckResult, ExitCode, Status

REDACTED = "[redacted]"
# Keys shorter than this are refused (a usage error) and never redacted: a short string turns up
# inside ordinary words, and replacing it there garbles the output while showing where the key's
# characters are. The deployments' keys are 32 or more characters (infra/config.py).
MIN_KEY_LENGTH = 16
_RESULT_WORDS = {
    ExitCode.OK: "PASS",
    ExitCode.CHECK_FAILED: "FAIL",
    ExitCode.NOT_READY: "NOT READY",
}


@dataclass
class Report:
    endpoint: str
    expected_model: str | None
    checks: list[CheckResult]
    exit_code: int
    waited_s: float = 0.0
    stack: dict[str, Any] | None = None

    @property
    def result_word(self) -> str:
        unreachable = bool(self.checks) and self.checks[0].status is Status.FAIL
        if self.exit_code == ExitCode.NOT_READY and unreachable:
            return "NOT REACHABLE"
        return _RESULT_WORDS[self.exit_code]

    def to_json(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "expected_model": self.expected_model,
            "result": self.result_word.lower().replace(" ", "-"),
            "exit_code": self.exit_code,
            "waited_s": round(self.waited_s, 3),
            "stack": self.stack,
            "checks": [
                {
                    "number": c.number,
                    "name": c.name,
                    "title": c.title,
                    "status": c.status.value,
                    "duration_s": round(c.duration_s, 4),
                    "detail": c.detail,
                    "hint": c.hint,
                    "failure_class": c.failure_class,
                    "data": c.data,
                }
                for c in self.checks
            ],
        }

    def table(self) -> str:
        model = self.expected_model or "the one model it serves"
        lines = [f"Smoke test of {self.endpoint} (model: {model})"]
        if self.stack:
            lines.append(
                f"From stack {self.stack['name']}: endpoint {self.stack['index']} of "
                f"{self.stack['count']} (0-based; --index N picks another)"
            )
        lines.append(f"{'#':<2} {'Check':<26} {'Result':<6} {'Time':>7}  Detail")
        for c in self.checks:
            took = "" if c.status is Status.SKIP else f"{c.duration_s:.2f}s"
            detail = c.detail
            if c.status is Status.FAIL and c.failure_class:
                detail += f" [{c.failure_class}]"
            lines.append(f"{c.number:<2} {c.title:<26} {c.status.value:<6} {took:>7}  {detail}")
            if c.hint and c.status is Status.FAIL:
                lines.extend(
                    textwrap.wrap(
                        c.hint, width=100, initial_indent="   hint: ", subsequent_indent=" " * 9
                    )
                )
        passed = sum(c.status is Status.PASS for c in self.checks)
        lines.append(
            f"Result: {self.result_word}, {passed} of {len(self.checks)} checks "
            f"passed (exit {self.exit_code})"
        )
        return "\n".join(lines) + "\n"

    def render(self, as_json: bool) -> str:
        if as_json:
            return json.dumps(self.to_json(), indent=2) + "\n"
        return self.table()


class RedactingWriter(io.TextIOBase):
    """A text stream that replaces every whole occurrence of a known secret before it reaches
    `target`. All of the smoke test's output goes through one, so the key cannot leak through a
    message, an exception text or argparse's complaints. Secrets shorter than MIN_KEY_LENGTH
    are left alone (the command refuses such keys before it prints anything else)."""

    def __init__(self, target: TextIO, secrets: set[str]) -> None:
        super().__init__()
        self.target = target
        self.secrets = secrets  # shared and extended as secrets become known

    def write(self, text: str) -> int:
        for secret in sorted(self.secrets, key=len, reverse=True):
            if len(secret) >= MIN_KEY_LENGTH:
                text = text.replace(secret, REDACTED)
        self.target.write(text)
        return len(text)

    def flush(self) -> None:
        self.target.flush()

    def isatty(self) -> bool:
        return self.target.isatty()
