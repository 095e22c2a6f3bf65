"""Run the real Debian nginx with the project's proxy config, on loopback, for tests.

    from tests.support.nginx import run_proxy
    from tests.support.vllm_standin import StandinConfig, run_standin

    with run_standin(StandinConfig.deployed()) as vllm, run_proxy(
        upstream=f"127.0.0.1:{vllm.port}", api_key="k" * 32
    ) as proxy:
        proxy.url            # "http://127.0.0.1:<free port>"
        proxy.access_log()   # text of the access log so far
        proxy.error_log()

`run_proxy` renders `infra.proxy_config.render_proxy_config` for a prefix directory of its own
(listen 127.0.0.1:<free port>, temp files, logs and the auth include under the prefix), writes
the auth include from the key with `render_auth_include` (or takes `auth_include_text`), starts
`/usr/sbin/nginx -p <prefix> -c <conf> -e stderr -g 'daemon off; pid <prefix>/nginx.pid;'`,
waits until it accepts connections and stops it at the end of the block. `run_nginx` is the
same for any config text that listens on `port` (use `free_port()`). `run_as_uid=65534` (when
the tests run as root) starts nginx as that unprivileged user instead, owning its prefix.

CI installs nginx-light from Debian; when nginx is missing the helper fails the test with the
command to install it (a skipped proxy test would prove nothing).

Two builds: the machine's (Debian's current nginx-light, or `$LLM_TEST_NGINX`) and the oldest
the project supports, nginx 1.18 (Ubuntu 22.04's release, the base of vLLM's images), which
`.ci/old-nginx.sh` unpacks from Debian bullseye and `.ci/run` names in `$LLM_TEST_NGINX_OLD`.
`NGINX_BUILDS` lists both for `pytest.mark.parametrize` / fixture params; every helper takes
`nginx=` (default: the machine's). `-e stderr` is passed only to builds that have it (1.19.5+,
docs/facts/nginx.md, "Versions").
"""

from __future__ import annotations

import os
import random
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from infra.proxy_config import render_auth_include, render_proxy_config

NGINX = os.environ.get("LLM_TEST_NGINX", "/usr/sbin/nginx")
OLD_NGINX = os.environ.get("LLM_TEST_NGINX_OLD", "")
START_TIMEOUT_S = 10.0
_FIRST_WITH_E = (1, 19, 5)


_OLD_MISSING = (
    "nginx 1.18 is not available: run `bash .ci/old-nginx.sh DIR` and set "
    "LLM_TEST_NGINX_OLD=DIR/bin/nginx (`bash .ci/run` does both)"
)


def nginx_binary(binary: str | None = None) -> str:
    if binary == _OLD_MISSING:
        raise RuntimeError(_OLD_MISSING)
    binary = binary or NGINX
    if not os.access(binary, os.X_OK):
        raise RuntimeError(
            f"{binary} not found: install Debian's nginx (apt-get install nginx-light) or run "
            "`bash .ci/run`, which does"
        )
    return binary


@cache
def nginx_version(binary: str | None = None) -> tuple[int, ...]:
    """(1, 22, 1) for nginx 1.22.1, from `nginx -v`."""
    done = subprocess.run(
        [nginx_binary(binary), "-v"], capture_output=True, text=True, timeout=30, check=True
    )
    found = re.search(r"nginx/(\d+)\.(\d+)\.(\d+)", done.stderr)
    if found is None:
        raise RuntimeError(f"cannot read the version of {binary}: {done.stderr!r}")
    return tuple(int(part) for part in found.groups())


def _old_build() -> Any:
    """The oldest supported nginx as a pytest param; without it, a param that skips (or, under
    CI=true, fails) with the command that provides it."""
    if OLD_NGINX:
        return pytest.param(OLD_NGINX, id="nginx-oldest")
    if os.environ.get("CI") == "true":
        return pytest.param(_OLD_MISSING, id="nginx-oldest")  # nginx_binary raises
    return pytest.param(_OLD_MISSING, id="nginx-oldest", marks=pytest.mark.skip(_OLD_MISSING))


NGINX_BUILDS = [pytest.param(NGINX, id="nginx-machine"), _old_build()]


def free_port() -> int:
    """A port on 127.0.0.1 for a server the test starts afterwards (nginx, a pod's bootstrap).
    Not one the kernel hands out for port 0: those come from its ephemeral range, which every
    outgoing connection on the machine draws from too, so one could take the port before the
    server binds it (seen under load: "Address already in use"). Below that range only other
    listeners compete, and the port is picked at random among thousands."""
    low = _ephemeral_low()
    rng = random.Random()  # noqa: S311 (spreading test ports, not a secret)
    for _ in range(200):
        port = rng.randrange(_LOWEST_TEST_PORT, low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port on 127.0.0.1 in {_LOWEST_TEST_PORT}-{low - 1}")


_LOWEST_TEST_PORT = 20000


def _ephemeral_low() -> int:
    """The low end of Linux's ephemeral port range (32768 by default, and if unreadable)."""
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    return max(low, _LOWEST_TEST_PORT + 1000)


@dataclass
class RunningNginx:
    port: int
    prefix: Path
    conf_path: Path
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _read(self, name: str) -> str:
        path = self.prefix / name
        return path.read_text(errors="replace") if path.exists() else ""

    def access_log(self) -> str:
        return self._read("access.log")

    def error_log(self) -> str:
        return self._read("error.log") + self._read("stderr.log")


def check_config(conf_text: str, *, nginx: str | None = None) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on `conf_text` in a throwaway prefix (include paths must exist)."""
    prefix = Path(tempfile.mkdtemp(prefix="llm-nginx-t-"))
    try:
        conf = prefix / "nginx.conf"
        conf.write_text(conf_text)
        binary = nginx_binary(nginx)
        args = _prefix_args(binary, prefix, conf, f"pid {prefix}/nginx.pid;")
        return subprocess.run(
            [binary, "-t", *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    finally:
        shutil.rmtree(prefix, ignore_errors=True)


def _prefix_args(binary: str, prefix: Path, conf: Path, directives: str) -> list[str]:
    """Everything under `prefix`, errors to stderr: no system path is read or written (before
    1.19.5 there is no -e: nginx tries its built-in error log until the config's applies)."""
    early_log = ["-e", "stderr"] if nginx_version(binary) >= _FIRST_WITH_E else []
    return ["-p", str(prefix), "-c", str(conf), *early_log, "-g", directives]


@contextmanager
def run_nginx(
    write_files: Callable[[Path], str],
    port: int,
    *,
    run_as_uid: int | None = None,
    nginx: str | None = None,
) -> Iterator[RunningNginx]:
    """Start nginx with the config `write_files(prefix)` returns (it may write other files
    under the prefix first); the config must listen on 127.0.0.1:`port`. `run_as_uid` (when
    the tests run as root) starts nginx as that unprivileged user, owning the prefix."""
    binary = nginx_binary(nginx)
    prefix = Path(tempfile.mkdtemp(prefix="llm-nginx-"))
    # As root, nginx's workers run as an unprivileged user: they must reach the temp paths.
    prefix.chmod(0o755)
    conf = prefix / "nginx.conf"
    conf.write_text(write_files(prefix))
    stderr = (prefix / "stderr.log").open("wb")
    as_user: list[str] = []
    if run_as_uid is not None:
        for path in (prefix, *prefix.rglob("*")):
            os.chown(path, run_as_uid, run_as_uid)
        as_user = ["setpriv", f"--reuid={run_as_uid}", f"--regid={run_as_uid}", "--clear-groups"]
    process = subprocess.Popen(
        [
            *as_user,
            binary,
            *_prefix_args(binary, prefix, conf, f"daemon off; pid {prefix}/nginx.pid;"),
        ],
        stdin=subprocess.DEVNULL,
        stdout=stderr,
        stderr=stderr,
    )
    running = RunningNginx(port=port, prefix=prefix, conf_path=conf, process=process)
    try:
        _wait_listening(running)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)  # nginx: fast shutdown
            try:
                process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)
        stderr.close()
        shutil.rmtree(prefix, ignore_errors=True)


def _wait_listening(running: RunningNginx) -> None:
    # Polls a local socket until nginx accepts; no deadline under test depends on this wait.
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if running.process.poll() is not None:
            raise RuntimeError(f"nginx exited at start:\n{running.error_log()}")
        try:
            with socket.create_connection(("127.0.0.1", running.port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nginx did not listen within {START_TIMEOUT_S}s:\n{running.error_log()}")


@contextmanager
def run_proxy(
    *,
    upstream: str,
    api_key: str | None = None,
    auth_include_text: str | None = None,
    run_as_uid: int | None = None,
    nginx: str | None = None,
    render: Callable[..., str] = render_proxy_config,
    **render_overrides: Any,
) -> Iterator[RunningNginx]:
    """The project's proxy config in front of `upstream` (host:port), keyed with `api_key`
    (or with a ready-made auth include). Extra keyword arguments go to `render`
    (render_proxy_config; a test may pass another renderer with its parameters)."""
    if (api_key is None) == (auth_include_text is None):
        raise ValueError("give exactly one of api_key and auth_include_text")
    port = free_port()

    def write_files(prefix: Path) -> str:
        auth = prefix / "proxy-auth.conf"
        auth.write_text(auth_include_text or render_auth_include(api_key or ""))
        auth.chmod(0o600)
        (prefix / "tmp").mkdir(mode=0o755)
        options: dict[str, Any] = {
            "listen_port": port,
            "listen_address": "127.0.0.1",
            "upstream": upstream,
            "auth_include": str(auth),
            "temp_dir": str(prefix / "tmp"),
            "access_log": str(prefix / "access.log"),
            "error_log": str(prefix / "error.log"),
            **render_overrides,
        }
        return render(**options)

    with run_nginx(write_files, port, run_as_uid=run_as_uid, nginx=nginx) as running:
        yield running
