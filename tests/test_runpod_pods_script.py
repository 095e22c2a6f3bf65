"""scripts/runpod_pods.py (the leak finder) against the RunPod emulator."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from scripts import runpod_pods
from tests.support.runpod_emulator import RealClock, RunpodEmulator
from tests.support.runpod_testing import RUNPOD_KEY, Leaks

pytest_plugins = ["tests.support.runpod_fixtures"]
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def fleet(emulator: RunpodEmulator, leaks: Leaks, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("RUNPOD_API_KEY", RUNPOD_KEY)
    pods = {
        "known0": emulator.add_pod("llm-endpoint-runpod-0-0a1b2c3d"),
        "known1": emulator.add_pod("llm-endpoint-runpod-1-0a1b2c3e"),
        "leaked": emulator.add_pod("llm-endpoint-runpod-1-deadbeef"),
        "other": emulator.add_pod("llm-endpoint-runpod-eu-0-12345678"),  # stack "runpod-eu"
        "foreign": emulator.add_pod("my-notebook"),
    }
    leaks.allowed |= {v for k, v in pods.items() if k != "leaked"}
    return pods


POD_TYPE = "pulumi-python:dynamic/llm-endpoint:RunpodPod"


def export_of(state_ids: list[str], creating: bool = False) -> dict[str, Any]:
    """A `pulumi stack export` document holding these RunpodPod resources."""
    resources: list[dict[str, Any]] = [
        {
            "urn": "urn:pulumi:runpod::llm-endpoint::pulumi:pulumi:Stack::x",
            "type": "pulumi:pulumi:Stack",
        }
    ]
    resources += [
        {"urn": f"urn:x::{i}", "type": POD_TYPE, "id": i, "outputs": {"podId": i}}
        for i in state_ids
    ]
    return {"version": 3, "deployment": {"resources": resources, "pending_operations": []}}


def pulumi_outputs(by_stack: dict[str, list[str]], state: dict[str, list[str]] | None = None):
    """A fake `pulumi`: stack outputs list `by_stack`; the state holds `state` (default: the
    same ids)."""
    calls: list[list[str]] = []

    def run(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
        calls.append(argv)
        stack = argv[argv.index("--stack") + 1]
        if argv[:4] == ["pulumi", "stack", "output", "--json"]:
            body = json.dumps({"runpod_pod_ids": by_stack[stack], "api_key": "[secret]"})
        else:
            assert argv[:3] == ["pulumi", "stack", "export"]
            body = json.dumps(export_of((state or by_stack)[stack]))
        return subprocess.CompletedProcess(argv, 0, body, "")

    return run, calls


def no_pulumi(argv: list[str], **_: Any) -> subprocess.CompletedProcess[str]:
    raise FileNotFoundError("pulumi")


def test_lists_pods_and_flags_the_ones_no_stack_knows(fleet, emulator):
    run, calls = pulumi_outputs({"runpod": [fleet["known0"], fleet["known1"]]})
    out = io.StringIO()
    code = runpod_pods.main(["--stack", "runpod"], run=run, out=out)
    text = out.getvalue()
    assert code == 1
    assert calls == [
        ["pulumi", "stack", "output", "--json", "--stack", "runpod"],
        ["pulumi", "stack", "export", "--stack", "runpod"],
    ]
    lines = {line.split()[0]: line for line in text.splitlines() if line[:1].isalnum()}
    assert lines[fleet["leaked"]].endswith("UNKNOWN")
    assert lines[fleet["known0"]].endswith("known")
    assert lines[fleet["other"]].endswith("other stack")
    assert fleet["foreign"] not in text  # not this project's
    assert "1 pod(s) no stack knows about, costing $1.64/hour" in text
    assert len(emulator.live_pods()) == 5
    emulator.pods.pop(fleet["leaked"])  # listing deletes nothing; tidy up for the leak check


def test_delete_unknown_asks_first_and_keeps_everything_on_no(fleet, emulator):
    run, _ = pulumi_outputs({"runpod": [fleet["known0"], fleet["known1"]]})
    questions: list[str] = []

    def ask(question: str) -> str:
        questions.append(question)
        return "no"

    out = io.StringIO()
    code = runpod_pods.main(
        ["--stack", "runpod", "--delete-unknown"],
        run=run,
        ask=ask,
        interactive=lambda: True,
        out=out,
    )
    assert code == 1
    assert questions == ["Delete 1 unknown pod(s)? Type 'yes' to confirm: "]
    assert "Nothing deleted." in out.getvalue()
    assert fleet["leaked"] in emulator.live_pods()
    emulator.pods.pop(fleet["leaked"])  # tidy up for the no-leak check


def test_delete_unknown_with_yes_deletes_only_the_unknown_pod(fleet, emulator, clock):
    run, _ = pulumi_outputs({"runpod": [fleet["known0"], fleet["known1"]]})
    out = io.StringIO()
    code = runpod_pods.main(
        ["--stack", "runpod", "--delete-unknown", "--yes"],
        run=run,
        ask=lambda q: pytest.fail("must not ask with --yes"),
        out=out,
        sleep=clock.sleep,
        now=clock.now,
    )
    assert code == 0
    assert f"deleted {fleet['leaked']}" in out.getvalue()
    assert sorted(emulator.live_pods()) == sorted(
        fleet[k] for k in ("known0", "known1", "other", "foreign")
    )


def test_young_pods_are_never_judged_or_deleted(fleet, emulator, clock):
    run, _ = pulumi_outputs({"runpod": [fleet["known0"], fleet["known1"]]})
    argv = ["--stack", "runpod", "--delete-unknown", "--yes"]
    kwargs: dict[str, Any] = {"run": run, "sleep": clock.sleep, "now": clock.now, "wall": clock.now}
    clock.advance(29 * 60)  # the fleet is 29 minutes old: a `pulumi up` may still own them
    out = io.StringIO()
    assert runpod_pods.main(argv, out=out, **kwargs) == 0
    lines = {line.split()[0]: line for line in out.getvalue().splitlines() if line[:1].isalnum()}
    assert lines[fleet["leaked"]].endswith("NEW (too young to judge)")
    assert "too young to judge" in out.getvalue() and "never deleted" in out.getvalue()
    assert fleet["leaked"] in emulator.live_pods()
    assert not [m for m, _, _ in emulator.requests if m == "DELETE"]

    clock.advance(2 * 60)  # 31 minutes: old enough
    out = io.StringIO()
    assert runpod_pods.main(argv, out=out, **kwargs) == 0
    assert f"deleted {fleet['leaked']}" in out.getvalue()
    assert fleet["leaked"] not in emulator.live_pods()

    young = emulator.add_pod("llm-endpoint-runpod-2-0badf00d")
    out = io.StringIO()
    assert runpod_pods.main([*argv, "--min-age-minutes", "0"], out=out, **kwargs) == 0
    assert f"deleted {young}" in out.getvalue()


def test_pods_in_the_state_but_not_in_the_outputs_are_known(fleet, emulator, clock):
    # A failed update: known1 is in the stack's state, but the outputs were not written.
    run, _ = pulumi_outputs(
        {"runpod": [fleet["known0"]]}, state={"runpod": [fleet["known0"], fleet["known1"]]}
    )
    out = io.StringIO()
    code = runpod_pods.main(
        ["--stack", "runpod", "--delete-unknown", "--yes"],
        run=run,
        out=out,
        sleep=clock.sleep,
        now=clock.now,
    )
    assert code == 0
    assert fleet["known1"] in emulator.live_pods()
    assert fleet["leaked"] not in emulator.live_pods()


def test_a_real_pulumi_command_on_path_is_read(fleet, emulator, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (tmp_path / "export.json").write_text(json.dumps(export_of([fleet["known0"], fleet["known1"]])))
    (tmp_path / "outputs.json").write_text(json.dumps({"runpod_pod_ids": [fleet["known0"]]}))
    fake = bin_dir / "pulumi"
    fake.write_text(
        "#!/bin/sh\n"
        f'[ "$2" = export ] && exec cat {tmp_path / "export.json"}\n'
        f'[ "$2" = output ] && exec cat {tmp_path / "outputs.json"}\n'
        "exit 3\n"
    )
    fake.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
    env |= emulator.env() | {"RUNPOD_API_KEY": RUNPOD_KEY, "PATH": f"{bin_dir}:/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "scripts.runpod_pods", "--stack", "runpod"],
        check=False,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1, done.stderr  # the leaked pod is UNKNOWN
    lines = {line.split()[0]: line for line in done.stdout.splitlines() if line[:1].isalnum()}
    assert lines[fleet["known1"]].endswith("known")  # from the state, not the outputs
    assert lines[fleet["leaked"]].endswith("UNKNOWN")
    emulator.pods.pop(fleet["leaked"])


def test_without_pulumi_cli_nothing_is_judged_and_the_message_says_what_to_do(fleet, emulator):
    out = io.StringIO()
    code = runpod_pods.main(
        ["--stack", "runpod", "--delete-unknown", "--yes"], run=no_pulumi, out=out
    )
    assert code == 2
    assert "Pulumi CLI is not installed" in out.getvalue()
    assert "--known-ids" in out.getvalue()
    assert not [m for m, _, _ in emulator.requests if m == "DELETE"]
    emulator.pods.pop(fleet["leaked"])


def test_known_ids_judge_every_project_pod(fleet, emulator, clock):
    keep = [fleet["known0"], fleet["known1"], fleet["other"]]
    out = io.StringIO()
    code = runpod_pods.main(
        ["--known-ids", *keep, "--delete-unknown"],
        run=no_pulumi,
        ask=lambda q: "yes",
        interactive=lambda: True,
        out=out,
        sleep=clock.sleep,
        now=clock.now,
    )
    assert code == 0
    assert fleet["leaked"] not in emulator.live_pods()
    assert set(keep) <= set(emulator.live_pods())


def test_missing_key_says_where_to_get_one(emulator, monkeypatch):
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    out = io.StringIO()
    code = runpod_pods.main(["--known-ids", "x"], run=no_pulumi, out=out)
    assert code == 2
    assert "RUNPOD_API_KEY" in out.getvalue()
    assert emulator.requests == []


def test_runs_as_a_module_against_the_emulator():
    with RunpodEmulator(api_key=RUNPOD_KEY, clock=RealClock(), provision_s=0, start_s=0) as emu:
        leaked = emu.add_pod("llm-endpoint-ci-0-cafef00d")
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
        env |= emu.env() | {"RUNPOD_API_KEY": RUNPOD_KEY, "PATH": "/usr/bin:/bin"}
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "scripts.runpod_pods",
                "--known-ids",
                "--delete-unknown",
                "--yes",
                "--min-age-minutes",
                "0",
            ],
            check=False,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert f"deleted {leaked}" in done.stdout
        assert emu.live_pods() == []
        assert RUNPOD_KEY not in done.stdout + done.stderr


# --- in cron: no terminal, no arguments, gone pods, no network -------------------------------


def _suggested(text: str, after: str) -> list[str]:
    """The arguments of the command the output suggests after `after`."""
    import shlex

    line = next(line for line in text.splitlines() if after in line)
    suggestion = line.split(after, 1)[1].split(" (the stacks")[0].rstrip(".")
    words = shlex.split(suggestion)
    assert words[:3] == ["python", "-m", "scripts.runpod_pods"], words
    return words[3:]


def test_delete_unknown_without_yes_and_terminal_is_refused_before_anything(fleet, emulator):
    run, calls = pulumi_outputs({"runpod": [fleet["known0"], fleet["known1"]]})
    out = io.StringIO()
    code = runpod_pods.main(
        ["--stack", "runpod", "--delete-unknown"],
        run=run,
        ask=lambda q: pytest.fail("must not ask without a terminal"),
        interactive=lambda: False,
        out=out,
    )
    assert code == 2
    assert "there is no terminal to ask (cron?)" in out.getvalue()
    assert (
        "To delete without asking: python -m scripts.runpod_pods --stack runpod "
        "--delete-unknown --yes" in out.getvalue()
    )
    assert calls == [] and emulator.requests == []
    emulator.pods.pop(fleet["leaked"])


def test_in_cron_stdin_is_no_terminal_and_there_is_no_traceback(emulator):
    env = {k: v for k, v in os.environ.items() if not k.startswith("RUNPOD_")}
    env |= emulator.env() | {"RUNPOD_API_KEY": RUNPOD_KEY, "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "scripts.runpod_pods", "--known-ids", "--delete-unknown"],
        check=False,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and "EOFError" not in done.stderr
    assert "no terminal to ask" in done.stderr
    assert emulator.requests == []


def test_end_of_input_at_the_question_deletes_nothing(fleet, emulator):
    def eof(question: str) -> str:
        raise EOFError

    run, _ = pulumi_outputs({"runpod": [fleet["known0"], fleet["known1"]]})
    out = io.StringIO()
    code = runpod_pods.main(
        ["--stack", "runpod", "--delete-unknown"],
        run=run,
        ask=eof,
        interactive=lambda: True,
        out=out,
    )
    assert code == 1
    assert "Nothing deleted." in out.getvalue()
    assert fleet["leaked"] in emulator.live_pods()
    emulator.pods.pop(fleet["leaked"])


def test_without_arguments_pods_are_listed_not_judged_and_the_advice_is_accepted(fleet, emulator):
    out = io.StringIO()
    code = runpod_pods.main([], run=no_pulumi, out=out)
    text = out.getvalue()
    assert code == 0
    lines = {line.split()[0]: line for line in text.splitlines() if line[:1].isalnum()}
    for name in ("known0", "known1", "leaked", "other"):
        assert lines[fleet[name]].endswith("not judged")
    assert "UNKNOWN" not in text
    advice = _suggested(text, "e.g. ")
    assert advice == ["--stack", "runpod", "--stack", "runpod-eu"]
    # The suggested command runs (with both stacks readable) and judges the pods.
    run, _ = pulumi_outputs(
        {"runpod": [fleet["known0"], fleet["known1"]], "runpod-eu": [fleet["other"]]}
    )
    out = io.StringIO()
    assert runpod_pods.main(advice, run=run, out=out) == 1
    assert "UNKNOWN" in out.getvalue()
    # ... and so does the delete command it then suggests.
    delete = _suggested(out.getvalue(), "Delete them with: ")
    assert delete == [*advice, "--delete-unknown"]
    out = io.StringIO()
    code = runpod_pods.main(delete, run=run, ask=lambda q: "yes", interactive=lambda: True, out=out)
    assert code == 0
    assert f"deleted {fleet['leaked']}" in out.getvalue()


def test_a_terminated_pod_is_not_unknown_and_does_not_fail_the_run(fleet, emulator, clock):
    emulator.pods[fleet["leaked"]].deleted_at = clock.now()  # deleted: TERMINATED for 10 s
    run, _ = pulumi_outputs({"runpod": [fleet["known0"], fleet["known1"]]})
    out = io.StringIO()
    code = runpod_pods.main(["--stack", "runpod", "--delete-unknown", "--yes"], run=run, out=out)
    assert code == 0
    lines = {line.split()[0]: line for line in out.getvalue().splitlines() if line[:1].isalnum()}
    assert "TERMINATED" in lines[fleet["leaked"]]
    assert lines[fleet["leaked"]].endswith("terminated (not billing)")
    assert "no stack knows about" not in out.getvalue()
    assert not [m for m, _, _ in emulator.requests if m == "DELETE"]


def test_an_unreachable_api_fails_at_once_and_says_so(monkeypatch):
    monkeypatch.setenv("RUNPOD_API_KEY", RUNPOD_KEY)
    monkeypatch.setenv("RUNPOD_API_BASE_URL", "http://127.0.0.1:9")  # closed port
    slept: list[float] = []
    out = io.StringIO()
    code = runpod_pods.main(["--known-ids", "x"], run=no_pulumi, out=out, sleep=slept.append)
    assert code == 2
    assert "cannot reach the RunPod API at http://127.0.0.1:9" in out.getvalue()
    assert "nothing was judged or deleted" in out.getvalue()
    assert slept == [1.0]  # one retry after a second, not 15 s of back-off


def test_a_stalled_api_is_given_up_at_the_deadline(monkeypatch):
    """A server that accepts and never answers: each request ends at its timeout (shortened
    here), and the listing at its deadline on the injected clock."""
    import socket

    listener = socket.create_server(("127.0.0.1", 0))
    try:
        port = listener.getsockname()[1]
        monkeypatch.setenv("RUNPOD_API_KEY", RUNPOD_KEY)
        monkeypatch.setenv("RUNPOD_API_BASE_URL", f"http://127.0.0.1:{port}")
        monkeypatch.setattr(runpod_pods, "LIST_TIMEOUT_S", 0.2)
        fake_now = [0.0]

        def sleep(s: float) -> None:
            fake_now[0] += s

        out = io.StringIO()
        code = runpod_pods.main(
            ["--known-ids", "x"], run=no_pulumi, out=out, sleep=sleep, now=lambda: fake_now[0]
        )
    finally:
        listener.close()
    assert code == 2
    assert "cannot reach the RunPod API" in out.getvalue()
    assert "ReadTimeout" in out.getvalue()
    assert fake_now[0] <= runpod_pods.LIST_DEADLINE_S
