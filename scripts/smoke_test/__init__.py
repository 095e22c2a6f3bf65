"""Smoke test for a deployed endpoint: `python -m scripts.smoke_test TARGET`.

The flags, checks and exit codes are described in docs/smoke-test.md.

Modules: `target` (parse TARGET), `stack` (read Pulumi stack outputs), `transport` (HTTP session
and failure classes), `readiness` (checks 1-2 and --wait), `checks` (checks 3-7), `report`
(table, JSON, redaction), `cli` (argument parsing and `main`).
"""

from scripts.smoke_test.cli import main

__all__ = ["main"]
