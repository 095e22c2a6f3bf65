"""`python -m scripts.offline`: it starts the vLLM stand-in and the RunPod emulator, the
commands it prints work as printed (the smoke test passes, the leak finder finds and deletes
the pod no stack knows), and Ctrl-C stops both servers and exits 0."""

from __future__ import annotations

import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from scripts import offline

ROOT = Path(__file__).resolve().parents[1]
DEADLINE_S = 60.0


def _lines(stream, into: queue.Queue[str | None]) -> None:
    for line in stream:
        into.put(line.rstrip("\n"))
    into.put(None)


def _until_ready(lines: queue.Queue[str | None]) -> list[str]:
    seen: list[str] = []
    deadline = time.monotonic() + DEADLINE_S
    while True:
        line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
        assert line is not None, "exited before it was ready:\n" + "\n".join(seen)
        seen.append(line)
        if line == offline.READY:
            return seen


def _run_printed(command: str) -> subprocess.CompletedProcess[str]:
    """Run a printed command as a shell would, with this interpreter standing in for
    `uv run python` (the environment is the same: the project's)."""
    words = shlex.split(command)
    env_words = [w for w in words[: words.index("uv")] if "=" in w]
    env = {**os.environ, **dict(w.split("=", 1) for w in env_words)}
    rest = words[words.index("uv") :]
    assert rest[:3] == ["uv", "run", "python"], command
    return subprocess.run(
        [sys.executable, *rest[3:]],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=DEADLINE_S,
        check=False,
    )


def _port_closed(url: str) -> bool:
    host, port = re.match(r"http://([\d.]+):(\d+)", url).groups()  # type: ignore[union-attr]
    with socket.socket() as s:
        return s.connect_ex((host, int(port))) != 0


def test_offline_tools_work_as_printed_and_ctrl_c_stops_them():
    proc = subprocess.Popen(
        [sys.executable, "-m", "scripts.offline", "--seconds-per-phase", "0.5"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_lines, args=(proc.stdout, lines), daemon=True).start()
    try:
        shown = _until_ready(lines)
        commands = [line.strip() for line in shown if "uv run python -m" in line]
        urls = re.findall(r"http://127\.0\.0\.1:\d+", "\n".join(shown))
        smoke, smoke_json, find, delete = commands

        passed = _run_printed(smoke)
        assert passed.returncode == 0, passed.stdout + passed.stderr
        assert "7 of 7 checks passed" in passed.stdout
        assert _run_printed(smoke_json).returncode == 0

        found = _run_printed(find)
        assert found.returncode == 1, found.stdout + found.stderr  # an unknown pod remains
        assert found.stdout.count("UNKNOWN") == 1 and "known" in found.stdout
        deleted = _run_printed(delete)
        assert deleted.returncode == 0, deleted.stdout + deleted.stderr
        assert "deleted " in deleted.stdout

        proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
        assert proc.wait(timeout=DEADLINE_S) == 0
        rest = []
        while (line := lines.get(timeout=DEADLINE_S)) is not None:
            rest.append(line)
        assert rest[-1] == "Stopped both."
        assert all(_port_closed(url) for url in set(urls))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _serving_threads() -> int:
    return sum("serve_forever" in t.name for t in threading.enumerate())


def test_both_servers_stop_even_when_the_second_cannot_start():
    before = _serving_threads()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        # werkzeug says the port is taken and exits; the stand-in started first must stop too.
        with pytest.raises((OSError, SystemExit)), offline.started(runpod_port=port):
            raise AssertionError("the emulator should not start on a taken port")
    # The stand-in that did start was stopped: no server thread of it keeps running.
    assert _serving_threads() <= before
