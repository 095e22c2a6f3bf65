"""The startup script and autostop check of a group's replica, run under bash in the sandbox of
tests/test_startup_script.py (recording stubs for system commands, a fake clock). Its curl stub
knows no Compute API URL, so every call to the API fails there: these tests show the wiring
(which path a stop takes) and the fallback; tests/test_leave_group.py shows the API calls."""

from __future__ import annotations

from dataclasses import replace

from infra.group_runtime import LEAVE_ATTEMPTS, LEAVE_GROUP_PATH
from infra.startup_script import StartupParams, needs_autostop
from tests.test_leave_group import PARAMS as LEAVE_PARAMS
from tests.test_startup_script import (
    AUTOSTOP_CHECK,
    PARAMS,
    Sandbox,
    _autostop,
    _metrics,
    assert_no_secret_exposed,
    sandbox,
)

__all__ = ["sandbox"]  # the fixture, used by name below

GROUP = LEAVE_PARAMS
GROUP_PARAMS = replace(PARAMS, group=GROUP)
DELETE_URL = (
    "https://compute.googleapis.com/compute/v1/projects/llm-endpoint-dev/regions/us-central1/"
    "instanceGroupManagers/llm-dev-group/deleteInstances"
)


def _api_calls(run_calls: list[list[str]], url: str) -> list[list[str]]:
    return [c for c in run_calls if c[0] == "curl" and c[-1] == url]


def test_a_replica_that_fails_at_startup_leaves_its_group_before_any_power_off(
    sandbox: Sandbox,
) -> None:
    run = sandbox.run(GROUP_PARAMS, STUB_DRIVER="535.104.05")  # too old: startup fails
    assert run.returncode != 0
    assert (sandbox.root / LEAVE_GROUP_PATH.lstrip("/")).exists()
    # It asked the group to delete it (ATTEMPTS times, since the stub's API refuses), and
    # powered off only then, as the fallback.
    assert len(_api_calls(run.calls, DELETE_URL)) == LEAVE_ATTEMPTS
    assert run.powered_off
    first_delete = next(i for i, c in enumerate(run.calls) if c[-1:] == [DELETE_URL])
    first_poweroff = next(i for i, c in enumerate(run.calls) if c[0] == "poweroff")
    assert first_delete < first_poweroff
    assert "Leaving group llm-dev-group" in run.output
    # The access token travels on curl's stdin, never on a command line.
    assert_no_secret_exposed(run)


def test_the_watchdog_of_a_replica_leaves_the_group_instead_of_powering_off(
    sandbox: Sandbox,
) -> None:
    run = sandbox.run(GROUP_PARAMS)
    assert run.returncode == 0, run.output
    [watchdog] = run.named("systemd-run")
    assert LEAVE_GROUP_PATH in watchdog[-1] and "failure" in watchdog[-1]
    assert "poweroff" not in watchdog[-1]


def test_in_a_group_a_dead_vllm_is_left_to_autohealing_and_idle_asks_the_group(
    sandbox: Sandbox,
) -> None:
    idle = replace(GROUP_PARAMS, idle_stop_minutes=30)
    assert needs_autostop(idle) and not needs_autostop(GROUP_PARAMS)
    assert sandbox.run(idle).returncode == 0
    (sandbox.path / "console").write_text("")
    check = (sandbox.root / AUTOSTOP_CHECK).read_text()
    assert "readonly STOP_ON_FAILURE=0" in check  # the dead check is not run
    # vLLM dead for half an hour: the autostop check does nothing (autohealing replaces it).
    for minute in (1, 15, 30):
        run = _autostop(sandbox, minute, _metrics(success=5.0 + minute), dead=True)
        assert not run.powered_off
    # Idle for 30 minutes: it asks the group (the stub cannot answer) and stays up.
    run = _autostop(sandbox, 70, _metrics(success=35.0))
    assert not run.powered_off
    group_url = DELETE_URL.removesuffix("/deleteInstances")
    assert _api_calls(run.calls, group_url)
    assert "staying" in run.output


def test_a_single_vm_script_has_no_group_parts() -> None:
    from infra.startup_script import render_startup_script

    single = render_startup_script(PARAMS)
    assert "leave-group" not in single and "GROUP_MODE" not in single
    grouped = render_startup_script(GROUP_PARAMS)
    assert grouped.count("LLM_ENDPOINT_LEAVE_GROUP") == 2
    assert isinstance(GROUP_PARAMS, StartupParams)
