"""A record of each pod about to be created, so that a pod whose create never returned (the
provider host was killed mid-wait) is found and deleted later, and nobody pays for it unseen.

Why a file: the engine ends provider processes with a kill, and the dynamic-provider host's
`Cancel` does nothing (docs/facts/pulumi.md ("Dynamic providers")), so no `finally` of a create
runs then, and the pod is in no state. Before each POST the provider writes
`<journal dir>/<pod name>.json`; after the create returned (the pod is then in the state) or
failed (and cleaned up after itself), the entry is removed. An entry whose owning process is gone
is an orphan: the next `pulumi up`/`refresh` of the stack (any call of the pod provider) or the
leak finder (scripts/runpod_pods.py) deletes pods of that name, logs what it deleted, and
appends it to `<journal dir>/recovered.log`.

Owner liveness without trusting pids: each process holds an exclusive `flock` on its own lock
file for its whole life, and an entry names that file. If the lock can be taken, its owner is
dead (the kernel drops a dead process's locks, whatever killed it).

The journal lives in the directory the host runs in (the Pulumi program's, where `pulumi up`
runs): `.llm-endpoint/runpod-journal/`, or LLM_ENDPOINT_JOURNAL_DIR. A machine that never sees
the old one (a fresh CI runner) relies on the leak finder's age rule instead.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

JOURNAL_DIR_ENV = "LLM_ENDPOINT_JOURNAL_DIR"
DEFAULT_DIR = Path(".llm-endpoint") / "runpod-journal"
RECOVERED_LOG = "recovered.log"

_owner_lock = threading.Lock()
_owner: dict[str, tuple[Path, IO[str]]] = {}  # journal dir -> this process's held lock


def journal_dir() -> Path:
    return Path(os.environ.get(JOURNAL_DIR_ENV) or DEFAULT_DIR).resolve()


def _owner_file(root: Path) -> Path:
    """This process's lock file in `root`, created and locked on first use, held until exit."""
    with _owner_lock:
        held = _owner.get(str(root))
        if held is None:
            owners = root / "owners"
            owners.mkdir(parents=True, exist_ok=True)
            path = owners / f"{os.getpid()}-{secrets.token_hex(4)}.lock"
            handle = path.open("w")
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            held = _owner[str(root)] = (path, handle)
        return held[0]


def _owner_alive(lock_path: Path) -> bool:
    if any(str(lock_path) == str(p) for p, _ in _owner.values()):
        return True
    try:
        with lock_path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(handle, fcntl.LOCK_UN)
    except FileNotFoundError:
        return False
    except BlockingIOError:
        return True
    with contextlib.suppress(OSError):
        lock_path.unlink()  # its owner is gone
    return False


@dataclass(frozen=True)
class Entry:
    name: str
    owner: str
    started: float
    path: Path


def record(name: str, root: Path | None = None) -> Entry:
    """Write the entry for pod `name` before it is created (atomically: never half a file)."""
    root = root or journal_dir()
    owner = _owner_file(root)
    started = time.time()
    path = root / f"{name}.json"
    tmp = path.with_suffix(f".tmp.{os.getpid()}")
    tmp.write_text(json.dumps({"name": name, "owner": str(owner), "started": started}))
    tmp.replace(path)
    return Entry(name, str(owner), started, path)


def done(entry: Entry) -> None:
    """The create returned (the pod is in the state) or cleaned up after itself."""
    with contextlib.suppress(FileNotFoundError):
        entry.path.unlink()


def orphans(prefix: str, root: Path | None = None) -> list[Entry]:
    """Entries for pods named `prefix...` whose creating process is gone."""
    root = root or journal_dir()
    found = []
    for path in sorted(root.glob(f"{prefix}*.json")) if root.is_dir() else []:
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        entry = Entry(str(data["name"]), str(data["owner"]), float(data["started"]), path)
        if not _owner_alive(Path(entry.owner)):
            found.append(entry)
    return found


def note_recovered(entry: Entry, pod_ids: list[str], root: Path | None = None) -> str:
    """Say, in the log and in `recovered.log`, what an interrupted create left and what was
    done with it; the entry is then removed."""
    root = root or journal_dir()
    what = f"deleted pod(s) {', '.join(pod_ids)}" if pod_ids else "no pod of that name was listed"
    line = (
        f"pod {entry.name}: its create was interrupted (the provider process was killed) at "
        f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(entry.started))}; {what}"
    )
    log.warning("%s", line)
    with (root / RECOVERED_LOG).open("a") as out:
        out.write(line + "\n")
    done(entry)
    return line
