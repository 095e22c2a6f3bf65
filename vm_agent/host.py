"""The machine the agent acts on: files, systemd units, Docker images, the serial console.

`Host` is what the agent needs; `SystemHost` is the real thing (systemctl, docker, journalctl,
/dev/ttyS0). Tests give the agent a recording stand-in instead (tests/support/vm_agent_fakes.py).
"""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import tempfile
import urllib.error
import urllib.request
from typing import Protocol

CONSOLE = "/dev/ttyS0"  # serial port 1: `gcloud compute instances get-serial-port-output`
SYSTEMD_DIR = "/etc/systemd/system"


class HostError(Exception):
    """A host command failed; the message is safe to log (no secret is ever an argument)."""


class Host(Protocol):
    def write_file(self, path: str, content: str, mode: int, owner: int = 0) -> None: ...
    def read_file(self, path: str) -> str | None: ...
    def remove_file(self, path: str) -> None: ...
    def make_dir(self, path: str, mode: int, owner: int = 0) -> None: ...
    def install_unit(self, name: str, text: str) -> None: ...
    def start(self, unit: str) -> None: ...
    def stop(self, unit: str) -> None: ...
    def reload(self, unit: str) -> None: ...
    def unit_state(self, unit: str) -> str: ...
    def image_present(self, image: str) -> bool: ...
    def pull(self, image: str, timeout_s: float) -> None: ...
    def log_tail(self, unit: str, lines: int) -> list[str]: ...
    def console(self, line: str) -> None: ...
    def poweroff(self) -> None: ...
    def run(self, argv: list[str]) -> None: ...
    def memory_mb(self) -> int: ...
    def cpu_count(self) -> int: ...
    def missing_commands(self) -> list[str]: ...
    def http_get(
        self, url: str, headers: dict[str, str], ca_pem: str | None, timeout: float
    ) -> tuple[int | None, object]: ...


def _run(argv: list[str], timeout: float = 120) -> str:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise HostError(f"{' '.join(argv[:3])} took longer than {timeout:.0f}s") from None
    if done.returncode != 0:
        raise HostError(f"{' '.join(argv[:3])} failed ({done.returncode}): {done.stderr[-300:]}")
    return done.stdout


class SystemHost:
    """The real VM (root)."""

    def write_file(self, path: str, content: str, mode: int, owner: int = 0) -> None:
        # Atomic and never world-readable in between: a temp file with the final mode, renamed.
        directory = os.path.dirname(path)
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp-")
        try:
            os.fchmod(fd, mode)
            os.fchown(fd, owner, owner)
            with os.fdopen(fd, "w") as f:
                f.write(content)
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise

    def read_file(self, path: str) -> str | None:
        try:
            with open(path) as f:
                return f.read()
        except FileNotFoundError:
            return None

    def remove_file(self, path: str) -> None:
        if os.path.exists(path):
            os.unlink(path)

    def make_dir(self, path: str, mode: int, owner: int = 0) -> None:
        os.makedirs(path, exist_ok=True)
        os.chmod(path, mode)
        os.chown(path, owner, owner)

    def install_unit(self, name: str, text: str) -> None:
        self.write_file(f"{SYSTEMD_DIR}/{name}", text, 0o644)
        _run(["systemctl", "daemon-reload"])

    def start(self, unit: str) -> None:
        _run(["systemctl", "restart", unit])

    def stop(self, unit: str) -> None:
        _run(["systemctl", "stop", unit], timeout=120)

    def reload(self, unit: str) -> None:
        _run(["systemctl", "reload", unit])

    def unit_state(self, unit: str) -> str:
        return _run(["systemctl", "show", "--property=ActiveState", "--value", unit]).strip()

    def image_present(self, image: str) -> bool:
        try:
            _run(["docker", "image", "inspect", image])
        except HostError:
            return False
        return True

    def pull(self, image: str, timeout_s: float) -> None:
        _run(["docker", "pull", "--quiet", image], timeout=max(timeout_s, 1))

    def log_tail(self, unit: str, lines: int) -> list[str]:
        try:
            out = _run(["journalctl", "--unit", unit, "--lines", str(lines), "--no-pager",
                        "--output", "cat"])  # fmt: skip
        except HostError as err:
            return [f"(no log: {err})"]
        return out.splitlines()

    def console(self, line: str) -> None:
        print(line, flush=True)  # the journal (stdout of the unit)
        try:
            with open(CONSOLE, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass

    def poweroff(self) -> None:
        _run(["systemctl", "poweroff"])

    def run(self, argv: list[str]) -> None:
        """The runtime's stop command (a replica leaving its group)."""
        _run(argv, timeout=600)

    def memory_mb(self) -> int:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
        raise HostError("no MemTotal in /proc/meminfo")

    def cpu_count(self) -> int:
        return os.cpu_count() or 1

    def missing_commands(self) -> list[str]:
        return [c for c in ("docker", "nvidia-ctk", "nvidia-smi") if shutil.which(c) is None]

    def http_get(
        self, url: str, headers: dict[str, str], ca_pem: str | None, timeout: float
    ) -> tuple[int | None, object]:
        return http_get(url, headers, ca_pem, timeout)


def http_get(
    url: str, headers: dict[str, str], ca_pem: str | None, timeout: float
) -> tuple[int | None, object]:
    """Status and parsed JSON body (None if not JSON) of GET `url`; (None, None) when nothing
    answered. HTTPS is verified against `ca_pem` (the stack's CA)."""
    context = ssl.create_default_context(cadata=ca_pem) if ca_pem else None
    req = urllib.request.Request(url, headers=headers)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as resp:  # noqa: S310
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as err:
        status, body = err.code, err.read()
    except (urllib.error.URLError, OSError, ValueError):
        return None, None
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode(errors="replace")
