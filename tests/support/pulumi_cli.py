"""Drive the real Pulumi CLI (built from Go source by .ci/pulumi-cli.sh) on a copy of the program.

- `cli_bin()` finds the built bin directory (or None), `requires_cli` skips a test, with the
  reason, where it is missing (no Go toolchain, or the build script was not run).
- `PulumiWorkspace` is a temporary copy of the program (Pulumi.yaml unchanged, the repo's .venv
  linked in) with its own HOME, PULUMI_HOME and file backend (PULUMI_BACKEND_URL, which wins
  over Pulumi.yaml's), so state, plugins and passphrase files all live in the test's directory.
- `PulumiWorkspace.run(...)` runs one `pulumi` command in its own process group with a deadline,
  and afterwards checks that no process of that group (language host, program, dynamic-provider
  host) is left: the engine must end its plugins itself. On a deadline the whole group is
  killed and the test fails with the command's output.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[2]
VERSION_FILE = PROJECT_ROOT / ".ci" / "pulumi-cli.version"
CLI_VERSION = VERSION_FILE.read_text().strip()
# What a copy of the program needs: the project file, the stack files, the code, the lock.
PROGRAM_FILES = ("Pulumi.yaml", "__main__.py", "pyproject.toml", "uv.lock")
PROGRAM_DIRS = ("infra", "scripts", "startup", "vm_agent")
PASSPHRASE = "real-engine-test-passphrase-not-a-secret"
DEFAULT_TIMEOUT_S = 240.0


def cache_bin_dir(env: Mapping[str, str] = os.environ) -> Path:
    """Where .ci/pulumi-cli.sh puts the binaries (the same rule as the script)."""
    root = env.get("LLM_ENDPOINT_CACHE")
    if not root:
        base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        root = str(Path(base) / "llm-endpoint")
    return Path(root) / f"pulumi-{CLI_VERSION}" / "bin"


def cli_bin() -> Path | None:
    bin_dir = cache_bin_dir()
    stamp = bin_dir.parent / "complete"
    if stamp.is_file() and stamp.read_text().strip() == CLI_VERSION:
        return bin_dir
    return None


def _skip_reason() -> str:
    go = "no Go toolchain on PATH" if shutil.which("go") is None else "Go is installed"
    return (
        f"real Pulumi engine not available: Pulumi CLI {CLI_VERSION} is not built in "
        f"{cache_bin_dir()} ({go}); run `bash .ci/pulumi-cli.sh` (needs Go >= 1.26)"
    )


requires_cli = pytest.mark.skipif(cli_bin() is None, reason=_skip_reason())


class PulumiError(AssertionError):
    """A `pulumi` command failed (or did not, when it should have); carries its output."""


@dataclass
class Result:
    argv: list[str]
    code: int
    stdout: str
    stderr: str

    @property
    def output(self) -> str:
        return self.stdout + self.stderr

    def json(self) -> Any:
        return json.loads(self.stdout)


@dataclass
class PulumiWorkspace:
    root: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    # None: no PULUMI_CONFIG_PASSPHRASE (a new user's machine, or a passphrase file in extra_env).
    passphrase: str | None = PASSPHRASE
    # False: no PULUMI_BACKEND_URL, so the backend comes from Pulumi.yaml or `pulumi login`.
    backend_env: bool = True
    # How long plugins the engine told to stop may take to exit before they count as left over.
    leftover_grace_s: float = 10.0

    @classmethod
    def create(cls, tmp: Path, extra_env: Mapping[str, str] | None = None) -> PulumiWorkspace:
        project = tmp / "project"
        project.mkdir(parents=True)
        for name in PROGRAM_FILES:
            shutil.copy2(PROJECT_ROOT / name, project / name)
        for name in PROGRAM_DIRS:
            shutil.copytree(
                PROJECT_ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__")
            )
        # The locked environment the tests run in; `uv sync --inexact` (run by the engine's
        # uv toolchain) finds it in sync.
        (project / ".venv").symlink_to(PROJECT_ROOT / ".venv")
        (tmp / "home" / ".pulumi-llm-endpoint").mkdir(parents=True)
        return cls(root=tmp, extra_env=dict(extra_env or {}))

    @property
    def project(self) -> Path:
        return self.root / "project"

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def state_dir(self) -> Path:
        return self.home / ".pulumi-llm-endpoint"

    def copy_stack_file(self, stack: str) -> None:
        shutil.copy2(PROJECT_ROOT / f"Pulumi.{stack}.yaml", self.project / f"Pulumi.{stack}.yaml")

    def env(self) -> dict[str, str]:
        bin_dir = cli_bin()
        assert bin_dir is not None, _skip_reason()
        keep = {
            k: v for k, v in os.environ.items() if not k.startswith(("PULUMI_", "RUNPOD_", "UV_"))
        }
        uv = shutil.which("uv")
        assert uv is not None, "uv must be on PATH (the engine's uv toolchain runs it)"
        path = os.pathsep.join([str(bin_dir), str(Path(uv).parent), keep.get("PATH", "")])
        passphrase = (
            {} if self.passphrase is None else {"PULUMI_CONFIG_PASSPHRASE": self.passphrase}
        )
        return (
            keep
            | passphrase
            | {
                "PATH": path,
                "HOME": str(self.home),
                # Pulumi expands the `~` of Pulumi.yaml's `file://~/...` from the passwd entry, not
                # from HOME (docs/facts/pulumi.md, "State backend"): point it here explicitly.
                **({"PULUMI_BACKEND_URL": self.state_dir.as_uri()} if self.backend_env else {}),
                "PULUMI_HOME": str(self.home / ".pulumi"),
                # The real user's uv cache: the copy's environment is already in it.
                "UV_CACHE_DIR": _uv_cache_dir(),
                "PULUMI_SKIP_UPDATE_CHECK": "true",
                # No plugin is fetched from the network (none could be): a missing one is an error.
                "PULUMI_DISABLE_AUTOMATIC_PLUGIN_ACQUISITION": "true",
                "PULUMI_AUTOMATION_API_SKIP_VERSION_CHECK": "true",
                "NO_COLOR": "1",
            }
            | self.extra_env
        )

    def run(
        self,
        *args: str,
        check: bool = True,
        timeout: float = DEFAULT_TIMEOUT_S,
        stdin: str | None = None,
        argv0: Sequence[str] = ("pulumi",),
    ) -> Result:
        """One command in the project copy; `argv0` may name another program (e.g. a script
        that itself runs `pulumi`). Fails the test on a non-zero exit when `check`."""
        argv = [*argv0, *args]
        env = self.env()
        if argv0 == ("pulumi",):
            argv[0] = str(Path(env["PATH"].split(os.pathsep)[0]) / "pulumi")
            argv.append("--non-interactive")
        proc = subprocess.Popen(
            argv,
            cwd=self.project,
            env=env,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc.pid)
            out, err = proc.communicate()
            raise PulumiError(
                f"`{' '.join(args)}` did not finish in {timeout:.0f}s\n{out}\n{err}"
            ) from None
        except BaseException:
            # pytest-timeout or Ctrl-C interrupted the test: take the engine and its plugins
            # down with it.
            _kill_group(proc.pid)
            raise
        leftovers = _group_survivors(proc.pid, self.leftover_grace_s)
        result = Result(argv, proc.returncode, out, err)
        if leftovers:
            _kill_group(proc.pid)
            raise PulumiError(f"`{' '.join(args)}` left processes behind: {leftovers}")
        if check and result.code != 0:
            raise PulumiError(f"`{' '.join(args)}` exited {result.code}\n{out}\n{err}")
        return result

    def stack_export(self, stack: str) -> dict[str, Any]:
        exported: dict[str, Any] = self.run("stack", "export", "--stack", stack).json()
        return exported

    def outputs(self, stack: str, show_secrets: bool = False) -> dict[str, Any]:
        args = ["stack", "output", "--json", "--stack", stack]
        outputs: dict[str, Any] = self.run(
            *args, *(["--show-secrets"] if show_secrets else [])
        ).json()
        return outputs


_uv_cache: list[str] = []


def _uv_cache_dir() -> str:
    if not _uv_cache:
        uv = shutil.which("uv")
        assert uv is not None
        done = subprocess.run([uv, "cache", "dir"], capture_output=True, text=True, check=True)
        _uv_cache.append(done.stdout.strip())
    return _uv_cache[0]


def _group_survivors(pgid: int, grace_s: float) -> list[str]:
    """Command lines of processes still in group `pgid` after a grace period (plugins the
    engine told to stop may take a moment to exit)."""
    deadline = time.monotonic() + grace_s
    while True:
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if int(fields[2]) == pgid and fields[0] != "Z":
                    cmdline = (stat.parent / "cmdline").read_bytes().replace(b"\0", b" ")
                    found.append(cmdline.decode(errors="replace").strip())
            except (OSError, IndexError, ValueError):
                continue
        if not found or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def _kill_group(pgid: int) -> None:
    """SIGKILL the group, then wait (bounded) until its processes are gone: a kill is delivered
    asynchronously, and the caller reports or asserts on what is left."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    _group_survivors(pgid, grace_s=5.0)
