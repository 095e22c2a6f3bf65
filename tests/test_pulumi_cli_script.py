""".ci/pulumi-cli.sh, the build of the test-only Pulumi engine: its answer without Go, the
version it builds against the locked SDK, and the built CLI itself."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.support.pulumi_cli import (
    CLI_VERSION,
    PROJECT_ROOT,
    PulumiError,
    PulumiWorkspace,
    cli_bin,
    requires_cli,
)

SCRIPT = PROJECT_ROOT / ".ci" / "pulumi-cli.sh"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("."))


def _locked_sdk_version() -> str:
    lock = tomllib.loads((PROJECT_ROOT / "uv.lock").read_text())
    [pulumi] = [p for p in lock["package"] if p["name"] == "pulumi"]
    return str(pulumi["version"])


def test_without_go_the_script_says_so_and_builds_nothing(tmp_path: Path):
    # A PATH with bash and coreutils but no Go.
    tools = tmp_path / "bin"
    tools.mkdir()
    for tool in ("bash", "cat", "tr", "dirname", "mkdir", "rm"):
        found = shutil.which(tool)
        assert found is not None
        (tools / tool).symlink_to(found)
    env = {"PATH": str(tools), "HOME": str(tmp_path), "LLM_ENDPOINT_CACHE": str(tmp_path / "c")}
    done = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert "no Go toolchain on PATH" in done.stderr
    assert "real-engine tests will be skipped" in done.stderr
    assert not (tmp_path / "c").exists()


def test_cli_version_is_not_older_than_the_locked_sdk():
    # The proxy serves pkg/v3 at 3.274.1 but not at the SDK's 3.272.0 (docs/facts/pulumi.md,
    # "Building the CLI"); a CLI newer than the SDK is supported, an older one is not.
    assert re.fullmatch(r"\d+\.\d+\.\d+", CLI_VERSION)
    assert _version(CLI_VERSION) >= _version(_locked_sdk_version())
    assert _version(CLI_VERSION)[0] == _version(_locked_sdk_version())[0]


@requires_cli
def test_built_cli_reports_its_version_and_has_every_plugin_it_needs():
    bin_dir = cli_bin()
    assert bin_dir is not None
    names = {
        "pulumi",
        "pulumi-language-python",
        "pulumi-language-python-exec",
        "pulumi-resource-pulumi-python",
    }
    for name in names:
        assert os.access(bin_dir / name, os.X_OK), name
    done = subprocess.run(
        [str(bin_dir / "pulumi"), "version"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "PULUMI_SKIP_UPDATE_CHECK": "true", "HOME": "/nonexistent"},
    )
    assert done.stdout.strip() == f"v{CLI_VERSION}"


@requires_cli
def test_a_command_that_leaves_a_process_behind_fails_and_the_process_is_killed(tmp_path: Path):
    ws = PulumiWorkspace.create(tmp_path)
    ws.leftover_grace_s = 0.5
    marker = tmp_path / "sleeper.pid"
    with pytest.raises(PulumiError, match="left processes behind"):
        # (Its output goes elsewhere, as a plugin's does: the engine holds those pipes.)
        ws.run("-c", f"sleep 300 >/dev/null 2>&1 & echo $! > {marker}", argv0=("sh",))
    assert not _alive(int(marker.read_text()))


@requires_cli
def test_a_command_past_its_deadline_is_killed_with_its_children(tmp_path: Path):
    ws = PulumiWorkspace.create(tmp_path)
    marker = tmp_path / "sleeper.pid"
    with pytest.raises(PulumiError, match="did not finish in 1s"):
        ws.run("-c", f"sleep 300 & echo $! > {marker}; wait", argv0=("sh",), timeout=1)
    assert not _alive(int(marker.read_text()))


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie awaiting its parent counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"
