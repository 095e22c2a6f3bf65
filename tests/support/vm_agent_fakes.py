"""Stand-ins for what the VM agent talks to: the metadata server and Secret Manager as real
HTTP servers on loopback, a fake clock, and a recording host that simulates the containers.

- `FakeClock`: `now()`/`sleep()`; nothing really sleeps.
- `FakeMetadataServer`: GCE's metadata server for what the agent uses: attributes with
  `recursive`, `wait_for_change`, `last_etag` and `timeout_sec` (a wait with nothing changed
  moves the fake clock forward by `timeout_sec` and answers with the same values, as the real
  server does after holding the request), `Metadata-Flavor: Google` required (403 without),
  guest attributes by PUT, a service-account token.
- `FakeSecretManager`: `GET /v1/<version name>:access` with the token, the value in base64
  `payload.data`; `refuse_first` answers 403 that many times (a fresh IAM grant).
- `RecordingHost`: the agent's `Host`, recording every call; files live in a dict (or, with
  `root`, also on disk under that directory, so a real nginx can read them); the vLLM unit
  follows a script of `VllmBehaviour`s, one per start.
"""

from __future__ import annotations

import base64
import hashlib
import json
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from infra import serving
from vm_agent import units
from vm_agent.host import HostError

TOKEN = "fake-access-token"


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self.t = start
        self.lock = threading.Lock()

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.t += seconds


@dataclass
class _MetadataState:
    clock: FakeClock
    attributes: dict[str, str] = field(default_factory=dict)
    generation: int = 0
    guest: dict[str, str] = field(default_factory=dict)
    requests: list[str] = field(default_factory=list)

    @property
    def etag(self) -> str:
        return f"etag-{self.generation}"


class _MetadataHandler(BaseHTTPRequestHandler):
    state: _MetadataState

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, etag: str | None = None) -> None:
        self.send_response(status)
        if etag:
            self.send_header("ETag", etag)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        query = dict(urllib.parse.parse_qsl(url.query))
        self.state.requests.append(self.path)
        if self.headers.get("Metadata-Flavor") != "Google":
            self._send(403, b"Missing Metadata-Flavor:Google header.")
            return
        if url.path == "/computeMetadata/v1/instance/service-accounts/default/token":
            self._send(200, json.dumps({"access_token": TOKEN, "expires_in": 3599}).encode())
            return
        s = self.state
        prefix = "/computeMetadata/v1/instance/attributes/"
        if url.path.startswith(prefix) and url.path != prefix:
            key = url.path.removeprefix(prefix)
            found = s.attributes.get(key)
            self._send(200 if found is not None else 404, (found or "not found").encode())
            return
        if url.path != prefix:
            self._send(404, b"not found")
            return
        if query.get("wait_for_change") == "true" and query.get("last_etag") == s.etag:
            s.clock.sleep(float(query.get("timeout_sec", "60")))  # the server held it this long
        self._send(200, json.dumps(s.attributes).encode(), s.etag)

    def do_PUT(self) -> None:
        prefix = "/computeMetadata/v1/instance/guest-attributes/"
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length).decode()
        if self.headers.get("Metadata-Flavor") != "Google" or not self.path.startswith(prefix):
            self._send(403, b"refused")
            return
        self.state.guest[self.path.removeprefix(prefix)] = body
        self._send(200, b"")


@dataclass
class FakeMetadataServer:
    url: str
    state: _MetadataState

    def set_attributes(self, **changes: str) -> None:
        self.state.attributes |= changes
        self.state.generation += 1

    def guest(self, key: str) -> str | None:
        return self.state.guest.get(f"llm-endpoint/{key}")


@dataclass
class _SecretState:
    values: dict[str, str]
    refuse_first: int = 0
    accessed: list[str] = field(default_factory=list)


class _SecretHandler(BaseHTTPRequestHandler):
    state: _SecretState

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        name = urllib.parse.unquote(self.path).removeprefix("/v1/").removesuffix(":access")
        s = self.state
        s.accessed.append(name)
        if self.headers.get("Authorization") != f"Bearer {TOKEN}" or s.refuse_first > 0:
            s.refuse_first -= 1
            body = json.dumps({"error": {"code": 403, "message": "Permission denied"}})
            self._reply(403, body)
        elif name not in s.values:
            self._reply(404, json.dumps({"error": {"code": 404, "message": "not found"}}))
        else:
            data = base64.b64encode(s.values[name].encode()).decode()
            self._reply(200, json.dumps({"name": name, "payload": {"data": data}}))

    def _reply(self, status: int, body: str) -> None:
        raw = body.encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)


@contextmanager
def _serve(handler: type[BaseHTTPRequestHandler]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def fake_metadata_server(clock: FakeClock) -> Iterator[FakeMetadataServer]:
    state = _MetadataState(clock)
    handler = type("Handler", (_MetadataHandler,), {"state": state})
    with _serve(handler) as url:
        yield FakeMetadataServer(url + "/computeMetadata/v1", state)


@contextmanager
def fake_secret_manager(values: dict[str, str]) -> Iterator[tuple[str, _SecretState]]:
    state = _SecretState(dict(values))
    handler = type("Handler", (_SecretHandler,), {"state": state})
    with _serve(handler) as url:
        yield url + "/v1", state


@dataclass(frozen=True)
class VllmBehaviour:
    """What one start of the vLLM unit does: ready after `ready_after_s`, or exit after
    `exit_after_s` (a deterministic failure), or neither (a load that never ends)."""

    ready_after_s: float | None = 60.0
    exit_after_s: float | None = None


@dataclass
class RecordingHost:
    clock: FakeClock
    behaviours: list[VllmBehaviour] = field(default_factory=lambda: [VllmBehaviour()])
    root: Path | None = None
    files: dict[str, str] = field(default_factory=dict)
    modes: dict[str, tuple[int, int]] = field(default_factory=dict)
    calls: list[tuple[str, ...]] = field(default_factory=list)
    images: set[str] = field(default_factory=set)
    units: dict[str, str] = field(default_factory=dict)
    active: dict[str, float] = field(default_factory=dict)  # unit -> start time
    console_lines: list[str] = field(default_factory=list)
    powered_off: bool = False
    metrics: str = "vllm:num_requests_running 0\nvllm:request_success_total 0\n"
    missing: list[str] = field(default_factory=list)
    on_reload: Callable[[str], None] | None = None
    starts: int = 0
    proxy_probe: Callable[[str, dict[str, str], str | None], tuple[int | None, object]] | None = (
        None
    )

    def write_file(self, path: str, content: str, mode: int, owner: int = 0) -> None:
        self.calls.append(("write_file", path))
        self.files[path] = content
        self.modes[path] = (mode, owner)
        if self.root is not None:
            target = self.root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(content)
            target.chmod(mode)

    def read_file(self, path: str) -> str | None:
        return self.files.get(path)

    def remove_file(self, path: str) -> None:
        self.files.pop(path, None)

    def make_dir(self, path: str, mode: int, owner: int = 0) -> None:
        self.calls.append(("make_dir", path, oct(mode), str(owner)))
        self.modes[path] = (mode, owner)

    def install_unit(self, name: str, text: str) -> None:
        self.calls.append(("install_unit", name))
        self.units[name] = text

    def start(self, unit: str) -> None:
        self.calls.append(("start", unit))
        self.active[unit] = self.clock.now()
        if unit == "llm-vllm.service":
            self.starts += 1

    def stop(self, unit: str) -> None:
        self.calls.append(("stop", unit))
        self.active.pop(unit, None)

    def reload(self, unit: str) -> None:
        self.calls.append(("reload", unit))
        if self.on_reload is not None:
            self.on_reload(unit)

    def _behaviour(self) -> VllmBehaviour:
        return self.behaviours[min(self.starts, len(self.behaviours)) - 1]

    def _vllm_age(self) -> float | None:
        started = self.active.get("llm-vllm.service")
        return None if started is None else self.clock.now() - started

    def unit_state(self, unit: str) -> str:
        if unit not in self.active:
            return "inactive"
        if unit == "llm-vllm.service":
            b, age = self._behaviour(), self._vllm_age()
            if b.exit_after_s is not None and age is not None and age >= b.exit_after_s:
                del self.active[unit]
                return "failed"
        return "active"

    def vllm_ready(self) -> bool:
        age = self._vllm_age()
        b = self._behaviour() if self.starts else None
        return bool(
            b and age is not None and b.ready_after_s is not None and age >= b.ready_after_s
        )

    def image_present(self, image: str) -> bool:
        return image in self.images

    def pull(self, image: str, timeout_s: float) -> None:
        self.calls.append(("pull", image))
        if timeout_s <= 0:
            raise HostError("no time left")
        self.images.add(image)

    def log_tail(self, unit: str, lines: int) -> list[str]:
        return ["ValueError: bad argument --max-model-len"][:lines]

    def console(self, line: str) -> None:
        self.console_lines.append(line)

    def poweroff(self) -> None:
        self.calls.append(("poweroff",))
        self.powered_off = True

    def run(self, argv: list[str]) -> None:
        self.calls.append(("run", *argv))
        if argv[0] == "/bin/false":
            raise HostError("exit status 1")

    def memory_mb(self) -> int:
        return 87040

    def cpu_count(self) -> int:
        return 12

    def missing_commands(self) -> list[str]:
        return list(self.missing)

    def http_get(
        self, url: str, headers: dict[str, str], ca_pem: str | None, timeout: float
    ) -> tuple[int | None, object]:
        self.calls.append(("http_get", url))
        if f":{serving.VLLM_INTERNAL_PORT}/" in url:  # vLLM itself on loopback
            if not self.vllm_ready():
                return None, None
            return (200, self.metrics) if url.endswith("/metrics") else (200, None)
        if self.proxy_probe is not None:
            return self.proxy_probe(url, headers, ca_pem)
        return self._simulated_proxy(url, headers)

    def _simulated_proxy(self, url: str, headers: dict[str, str]) -> tuple[int | None, object]:
        if "llm-proxy.service" not in self.active:
            return None, None
        if not self.vllm_ready():
            return 502, None
        if url.endswith("/health"):
            return 200, None
        auth = self.files.get(f"{units.PROXY_DIR}/{units.AUTH_FILE_NAME}", "")
        key = headers.get("Authorization", "").removeprefix("Bearer ")
        escaped = "".join(c if c.isalnum() else "\\" + c for c in key)
        if not key or f"(?i:bearer) {escaped}$" not in auth:
            return 401, {"error": "Unauthorized"}
        return 200, {"object": "list", "data": [{"id": "qwen", "object": "model"}]}


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()
