"""The answers the proxy gives to the whole battery, as Markdown tables (for reports and for the
closing note of issue 8):

    uv run python -m tests.support.battery_table [--nginx /path/to/nginx] > table.md

It runs the battery of tests/test_proxy_lockdown.py (every route of docs/facts/vllm-routes.json
in every path form, every method, with and without the key) against Debian's nginx with the
project's config and the upstream recorder, and prints two tables: one row per route (its own
methods, without and with the key), and one row per path-form rule, over all routes and methods.
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict
from collections.abc import Iterable

from tests.support.nginx import nginx_version
from tests.support.proxy_battery import Answer, battery, recorded_proxy, violations
from tests.support.route_inventory import load_routes

KEY = "table-key-0123456789abcdefghijklmnop"
CORE = ("/health", "/metrics", "/v1/models", "/invocations", "/v1/chat/completions")


def _outcome(answer: Answer) -> str:
    if answer.reached:
        seen = answer.reached[0]
        shown = "/v1/…" if seen.path.startswith("/v1/") and seen.path != "/v1/models" else seen.path
        return f"{answer.status} via `{seen.method} {shown}`"
    return str(answer.status)


def _kind(answer: Answer) -> str:
    """An answer in one of few words: the status, or what reached the upstream."""
    if not answer.reached:
        return str(answer.status)
    seen = answer.reached[0]
    return "upstream `GET /health`" if seen.target == "/health" else "upstream `/v1/…` (normal)"


def _summary(answers: Iterable[Answer]) -> str:
    counts = Counter(_kind(a) for a in answers)
    return ", ".join(f"{outcome} x{n}" for outcome, n in sorted(counts.items()))


def route_table(answers: list[Answer]) -> list[str]:
    rows = [
        "| route | kind | methods | without key | with key |",
        "| --- | --- | --- | --- | --- |",
    ]
    by_target = defaultdict(list)
    for a in answers:
        if a.probe.form == "route":
            by_target[a.probe.target].append(a)
    for route in load_routes():
        mine = [
            a
            for a in by_target.get(route.example, [])
            if a.probe.method in route.methods or route.kind != "http"
        ]
        cells = [
            "; ".join(f"{a.probe.method} {_outcome(a)}" for a in mine if a.probe.keyed == keyed)
            for keyed in (False, True)
        ]
        rows.append(
            f"| `{route.path}` | {route.kind} | {','.join(route.methods)} "
            f"| {cells[0]} | {cells[1]} |"
        )
    return rows


def form_table(answers: list[Answer]) -> list[str]:
    rows = ["| path form | example | without key | with key |", "| --- | --- | --- | --- |"]
    by_form: dict[str, list[Answer]] = defaultdict(list)
    for a in answers:
        by_form[a.probe.form].append(a)
    for form, mine in sorted(by_form.items()):
        example = next(
            (
                a.probe.target
                for a in mine
                if a.probe.target.startswith(("/metrics", "/health", "http", "HTTP"))
            ),
            mine[0].probe.target,
        )
        cells = [_summary(a for a in mine if a.probe.keyed == keyed) for keyed in (False, True)]
        rows.append(f"| {form} | `{example}` | {cells[0]} | {cells[1]} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--nginx", default=None)
    options = parser.parse_args()
    routes = tuple(sorted({r.example for r in load_routes()} | {"/", "/nope"}))
    probes = battery(routes, CORE)
    with recorded_proxy(KEY, nginx=options.nginx) as proxied:
        answers = proxied.fire(probes)
    version = ".".join(map(str, nginx_version(options.nginx)))
    print(
        f"nginx {version}: {len(answers)} requests, "
        f"{len(violations(answers))} violations of the property.\n"
    )
    print("\n".join(route_table(answers)))
    print()
    print("\n".join(form_table(answers)))


if __name__ == "__main__":
    main()
