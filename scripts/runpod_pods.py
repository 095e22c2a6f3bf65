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

Without --stack or --known-ids the pods are listed, not judged (nothing says which are in use);
the output suggests the --stack options for the stacks named in the pods. A TERMINATED pod is
gone and no longer bills: it is shown as such, never as unknown. --delete-unknown without --yes
asks first, so it needs a terminal: in cron, pass --yes (it is refused otherwise, before anything
is read). An unreachable API fails within seconds, saying so.

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
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

from infra.runpod import journal
from infra.runpod.client import API_BASE_URL_ENV, API_KEY_ENV, RunpodClient
from infra.runpod.errors import KEY_HELP, RunpodError, TransportError, redact
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
NOT_JUDGED = "not judged"
GONE = "terminated (not billing)"
PROG = "python -m scripts.runpod_pods"
# Listing: one retry, and the whole listing within this long. A cron job that cannot reach
# RunPod should say so at once; the next run tries again. (Deletes keep the client's patience.)
LIST_ATTEMPTS = 2
LIST_TIMEOUT_S = 10.0
LIST_DEADLINE_S = 15.0


class UsageError(Exception):
    pass


@dataclass
class PodRow:
    id: str
    name: str
    status: str
    cost_per_hour: float
    verdict: str  # "known", "UNKNOWN", "other stack", TOO_YOUNG, GONE or NOT_JUDGED


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
    known: set[str] | None,
    *,
    now: float,
    min_age_s: float,
    interrupted: frozenset[str] = frozenset(),
) -> list[PodRow]:
    """`now` is wall-clock epoch seconds. A pod whose age is unknown counts as too young.
    `known` None: nothing says which pods are in use, so none is judged (except the journal's
    orphans). `interrupted`: names of pods whose create was killed (the journal's orphans)."""
    patterns = [stack_pattern(s) for s in stacks]
    rows = []
    for pod in pods:
        name = str(pod.get("name", ""))
        if not is_project_pod(name):
            continue
        pod_id = str(pod["id"])
        if pod.get("status") == "TERMINATED":
            verdict = GONE
        elif known is None:
            verdict = INTERRUPTED if name in interrupted else NOT_JUDGED
        elif pod_id in known:
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


def stacks_named_in(rows: Sequence[PodRow]) -> list[str]:
    """Stack names as pod names carry them (`llm-endpoint-<stack>-<n>-<hex>`; a slug of the
    stack name, which is the name itself for the usual lowercase names)."""
    names = {r.name.removeprefix(PROJECT_PREFIX).rsplit("-", 2)[0] for r in rows}
    return sorted(names)


def command(*args: str) -> str:
    return " ".join([PROG, *(shlex.quote(a) for a in args)])


def render(rows: Sequence[PodRow], out: TextIO, argv: Sequence[str] = ()) -> None:
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
            f"Delete them with: {command(*argv, '--delete-unknown')}",
            file=out,
        )
    unjudged = [r for r in rows if r.verdict == NOT_JUDGED]
    if unjudged:
        stacks = [a for s in stacks_named_in(unjudged) for a in ("--stack", s)]
        print(
            f"{len(unjudged)} pod(s) not judged: name the stacks whose pods are in use, e.g. "
            f"{command(*stacks)} (the stacks in these pods' names), or, where the Pulumi CLI "
            f"is not installed, {command('--known-ids', 'ID', '...')} with every stack's "
            "runpod_pod_ids.",
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
    interactive: Callable[[], bool] = sys.stdin.isatty,
    out: TextIO = sys.stdout,
    sleep: Callable[[float], None] = time.sleep,
    now: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    err = sys.stderr if out is sys.stdout else out
    try:
        _refuse_before_reading(args, argv, interactive)
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
        judged = bool(args.stack) or args.known_ids is not None
        orphans = {e.name: e for e in journal.orphans(PROJECT_PREFIX)}
        rows = classify(
            list_pods(key, sleep=sleep, now=now),
            args.stack,
            known if judged else None,
            now=wall(),
            min_age_s=max(0.0, args.min_age_minutes) * 60,
            interrupted=frozenset(orphans),
        )
        render(rows, out, argv)
        unknown = [r for r in rows if r.verdict in DELETABLE]
        if not unknown or not args.delete_unknown:
            return 1 if unknown else 0
        if not args.yes and not _confirmed(ask, len(unknown)):
            print("Nothing deleted.", file=out)
            return 1
        return _delete(key, unknown, orphans, out, err, sleep=sleep, now=now)
    except UsageError as e:
        print(f"runpod_pods: {e}", file=err)
        return 2
    except RunpodError as e:
        print(f"runpod_pods: {e}", file=err)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
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
    return parser


def _delete(
    key: str,
    rows: Sequence[PodRow],
    orphans: dict[str, journal.Entry],
    out: TextIO,
    err: TextIO,
    *,
    sleep: Callable[[float], None],
    now: Callable[[], float],
) -> int:
    with RunpodClient(key, sleep=sleep, now=now) as client:
        lifecycle = PodLifecycle(client, now=now, sleep=sleep)
        failed = 0
        for row in rows:
            try:
                lifecycle.delete(row.id)
                print(f"deleted {row.id} ({row.name})", file=out)
                if row.name in orphans:
                    journal.note_recovered(orphans[row.name], [row.id])
            except RunpodError as e:
                failed += 1
                print(f"FAILED to delete {row.id}: {redact(str(e), [key])}", file=err)
        return 1 if failed else 0


def _refuse_before_reading(
    args: argparse.Namespace, argv: Sequence[str], interactive: Callable[[], bool]
) -> None:
    if args.delete_unknown and not args.stack and args.known_ids is None:
        raise UsageError(
            "--delete-unknown needs --stack or --known-ids, to know which pods are in use"
        )
    if args.delete_unknown and not args.yes and not interactive():
        raise UsageError(
            "--delete-unknown asks before deleting, and there is no terminal to ask (cron?). "
            f"Nothing was read or deleted. To delete without asking: {command(*argv, '--yes')}"
        )


def _confirmed(ask: Callable[[str], str], count: int) -> bool:
    try:
        answer = ask(f"Delete {count} unknown pod(s)? Type 'yes' to confirm: ")
    except EOFError:  # the terminal closed the input: that is not a yes
        return False
    return answer.strip().lower() == "yes"


def list_pods(key: str, *, sleep: Callable[[float], None], now: Callable[[], float]) -> list[Any]:
    """Every pod of the account, or a UsageError within LIST_DEADLINE_S saying the API could
    not be reached (one retry, no long back-off: cron runs again)."""
    client = RunpodClient(
        key, sleep=sleep, now=now, timeout_s=LIST_TIMEOUT_S, attempts=LIST_ATTEMPTS
    )
    with client, client.deadline(now() + LIST_DEADLINE_S):
        try:
            return client.list_pods()
        except TransportError as e:
            raise UsageError(
                f"cannot reach the RunPod API at {client.base_url} ({e}). Check the network "
                f"(and {API_BASE_URL_ENV}, if set); nothing was judged or deleted"
            ) from None


if __name__ == "__main__":
    sys.exit(main())
