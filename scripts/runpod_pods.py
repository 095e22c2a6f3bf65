"""List this project's RunPod pods, flag the ones no stack knows about, and delete those on
request: the safety net against pods that bill on after a failed or interrupted run.

    python -m scripts.runpod_pods --stack runpod                  # list, flag unknown pods
    python -m scripts.runpod_pods --stack runpod --delete-unknown # ... and delete them (asks)
    python -m scripts.runpod_pods --known-ids abc123 def456 --delete-unknown --yes

Pods are recognised by name (infra/runpod/naming.py: `llm-endpoint-<stack>-<n>-<hex>`). A pod is
"known" when its id is a RunpodPod resource in `pulumi stack export --stack <stack>` (the state,
which also holds pods of a failed update that the outputs miss) or in `runpod_pod_ids` of
`pulumi stack output --json --stack <stack>`, or in --known-ids (for machines without the Pulumi
CLI: pass the ids of every stack and no --stack). With --stack, only that stack's pods are
judged; with only --known-ids, every pod of this project is. When a stack cannot be read,
nothing is judged or deleted. The RunPod key comes from RUNPOD_API_KEY, else from
`pulumi config get runpodApiKey` of the first --stack.

A pod whose create was cut short by a killed provider process (a journal entry whose process is
gone, infra/runpod/journal.py; the journal is read from where `pulumi up` runs, the project
root) is shown as INTERRUPTED CREATE and deleted with the unknown ones, whatever its age.

A pod younger than --min-age-minutes (default 30) is shown as "NEW (too young to judge)" and
never deleted: a `pulumi up` in progress has pods that no state or output records yet, for up to
the stack's `runpod.readyTimeoutMinutes` (default 20). With a longer ready timeout, pass a
larger --min-age-minutes.

Exit status: 0 nothing unknown is left running, 1 unknown pods remain, 2 usage or API error.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

from infra.runpod import journal
from infra.runpod.client import API_KEY_ENV, RunpodClient
from infra.runpod.errors import KEY_HELP, RunpodError, redact
from infra.runpod.lifecycle import PodLifecycle
from infra.runpod.naming import PROJECT_PREFIX, is_project_pod, stack_pattern

Run = Callable[..., subprocess.CompletedProcess[str]]
# Longer than the default ready timeout (20 min) plus a margin: a pod of a `pulumi up` still
# waiting for readiness is in no state or output yet.
DEFAULT_MIN_AGE_MINUTES = 30.0
TOO_YOUNG = "NEW (too young to judge)"
# A pod whose create was cut short by a killed provider process (infra/runpod/journal.py): in
# no state, whatever its age, and deleted like an unknown pod.
INTERRUPTED = "INTERRUPTED CREATE"
DELETABLE = ("UNKNOWN", INTERRUPTED)


class UsageError(Exception):
    pass


@dataclass
class PodRow:
    id: str
    name: str
    status: str
    cost_per_hour: float
    verdict: str  # "known", "UNKNOWN", "other stack" or TOO_YOUNG


def _pulumi(run: Run, *args: str) -> str:
    try:
        done = run(["pulumi", *args], capture_output=True, text=True, check=False, timeout=120)
    except FileNotFoundError:
        raise UsageError(
            "the Pulumi CLI is not installed here, so the stacks' pod ids cannot be read. Run "
            "this where `pulumi` works, or pass the ids with --known-ids (from `pulumi stack "
            "output runpod_pod_ids` of every stack)"
        ) from None
    if done.returncode != 0:
        raise UsageError(f"`pulumi {' '.join(args[:3])}` failed: {done.stderr.strip()[:300]}")
    return done.stdout


def _state_pod_ids(export: dict[str, Any]) -> set[str]:
    """Ids of the RunpodPod resources in a `pulumi stack export` (ids and types are plain text
    there; secret values stay encrypted and are not read)."""
    deployment = export.get("deployment") or {}
    resources = list(deployment.get("resources") or [])
    resources += [op.get("resource") or {} for op in deployment.get("pending_operations") or []]
    ids = set()
    for res in resources:
        kind = str(res.get("type", ""))
        outputs = res.get("outputs") or {}
        if kind.endswith(":RunpodPod") or (
            kind.startswith("pulumi-python:dynamic") and "podId" in outputs
        ):
            ids |= {str(v) for v in (res.get("id"), outputs.get("podId")) if v}
    return ids


def stack_pod_ids(run: Run, stack: str) -> set[str]:
    outputs = json.loads(_pulumi(run, "stack", "output", "--json", "--stack", stack) or "{}")
    export = json.loads(_pulumi(run, "stack", "export", "--stack", stack) or "{}")
    return {str(i) for i in outputs.get("runpod_pod_ids") or []} | _state_pod_ids(export)


def _age_s(pod: dict[str, Any], now: float) -> float | None:
    try:
        created = datetime.fromisoformat(str(pod.get("createdAt")))
    except ValueError:
        return None
    return now - created.timestamp()


def api_key(run: Run, stacks: Sequence[str]) -> str:
    key = os.environ.get(API_KEY_ENV)
    if key:
        return key
    if stacks:
        try:
            value = _pulumi(run, "config", "get", "runpodApiKey", "--stack", stacks[0]).strip()
        except UsageError:
            value = ""
        if value:
            return value
    raise UsageError(f"no RunPod API key: export {API_KEY_ENV}=... ({KEY_HELP})")


def classify(
    pods: Sequence[dict[str, Any]],
    stacks: Sequence[str],
    known: set[str],
    *,
    now: float,
    min_age_s: float,
    interrupted: frozenset[str] = frozenset(),
) -> list[PodRow]:
    """`now` is wall-clock epoch seconds. A pod whose age is unknown counts as too young.
    `interrupted`: names of pods whose create was killed (the journal's orphans)."""
    patterns = [stack_pattern(s) for s in stacks]
    rows = []
    for pod in pods:
        name = str(pod.get("name", ""))
        if not is_project_pod(name):
            continue
        pod_id = str(pod["id"])
        if pod_id in known:
            verdict = "known"
        elif patterns and not any(p.match(name) for p in patterns):
            verdict = "other stack"
        elif name in interrupted:
            verdict = INTERRUPTED
        elif (age := _age_s(pod, now)) is None or age < min_age_s:
            verdict = TOO_YOUNG
        else:
            verdict = "UNKNOWN"
        rows.append(
            PodRow(pod_id, name, str(pod.get("status")), float(pod.get("cost") or 0.0), verdict)
        )
    return rows


def render(rows: Sequence[PodRow], out: TextIO) -> None:
    if not rows:
        print("No pods of this project at RunPod.", file=out)
        return
    print(f"{'ID':<16} {'NAME':<40} {'STATUS':<13} {'$/HOUR':>7}  STATE", file=out)
    young = [r for r in rows if r.verdict == TOO_YOUNG]
    for r in rows:
        print(
            f"{r.id:<16} {r.name:<40} {r.status:<13} {r.cost_per_hour:>7.2f}  {r.verdict}",
            file=out,
        )
    unknown = [r for r in rows if r.verdict in DELETABLE]
    if unknown:
        cost = sum(r.cost_per_hour for r in unknown)
        print(
            f"{len(unknown)} pod(s) no stack knows about, costing ${cost:.2f}/hour together. "
            "Delete them with --delete-unknown.",
            file=out,
        )
    if any(r.verdict == INTERRUPTED for r in rows):
        print(
            f"{INTERRUPTED}: the provider process creating it was killed before the pod was "
            "recorded in any state (infra/runpod/journal.py); it is deleted whatever its age.",
            file=out,
        )
    if young:
        print(
            f"{len(young)} pod(s) too young to judge (a `pulumi up` may still be creating "
            "them); they are never deleted. Run this again later.",
            file=out,
        )


def main(
    argv: Sequence[str] | None = None,
    *,
    run: Run = subprocess.run,
    ask: Callable[[str], str] = input,
    out: TextIO = sys.stdout,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m scripts.runpod_pods", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--stack", action="append", default=[], help="a stack (repeatable)")
    parser.add_argument(
        "--known-ids", nargs="*", default=None, help="ids of every pod a stack owns (may be none)"
    )
    parser.add_argument("--delete-unknown", action="store_true")
    parser.add_argument("--yes", action="store_true", help="do not ask before deleting")
    parser.add_argument(
        "--min-age-minutes",
        type=float,
        default=DEFAULT_MIN_AGE_MINUTES,
        help="never judge pods younger than this (default %(default)g; keep it above the "
        "stacks' runpod.readyTimeoutMinutes)",
    )
    args = parser.parse_args(argv)
    err = sys.stderr if out is sys.stdout else out
    try:
        if args.delete_unknown and not args.stack and args.known_ids is None:
            raise UsageError(
                "--delete-unknown needs --stack or --known-ids, to know which pods are in use"
            )
        known = set(args.known_ids or [])
        unreadable = []
        for stack in args.stack:
            try:
                known |= stack_pod_ids(run, stack)
            except UsageError as e:
                unreadable.append(f"{stack}: {e}")
        if unreadable:
            # Judging pods without knowing what a stack holds could delete a serving pod.
            raise UsageError("cannot read the stacks' pods: " + "; ".join(unreadable))
        key = api_key(run, args.stack)
        orphans = {e.name: e for e in journal.orphans(PROJECT_PREFIX)}
        with RunpodClient(key, sleep=sleep) as client:
            rows = classify(
                client.list_pods(),
                args.stack,
                known,
                now=wall(),
                min_age_s=max(0.0, args.min_age_minutes) * 60,
                interrupted=frozenset(orphans),
            )
            render(rows, out)
            unknown = [r for r in rows if r.verdict in DELETABLE]
            if not unknown or not args.delete_unknown:
                return 1 if unknown else 0
            if not args.yes:
                answer = ask(f"Delete {len(unknown)} unknown pod(s)? Type 'yes' to confirm: ")
                if answer.strip().lower() != "yes":
                    print("Nothing deleted.", file=out)
                    return 1
            lifecycle = PodLifecycle(client, now=now, sleep=sleep)
            failed = 0
            for row in unknown:
                try:
                    lifecycle.delete(row.id)
                    print(f"deleted {row.id} ({row.name})", file=out)
                    if row.name in orphans:
                        journal.note_recovered(orphans[row.name], [row.id])
                except RunpodError as e:
                    failed += 1
                    print(f"FAILED to delete {row.id}: {redact(str(e), [key])}", file=err)
            return 1 if failed else 0
    except UsageError as e:
        print(f"runpod_pods: {e}", file=err)
        return 2
    except RunpodError as e:
        print(f"runpod_pods: {e}", file=err)
        return 2


if __name__ == "__main__":
    sys.exit(main())
