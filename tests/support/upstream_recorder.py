"""An upstream that records the raw request line it receives, for proxy tests on loopback.

    from tests.support.upstream_recorder import run_recorder

    with run_recorder() as upstream:      # 127.0.0.1:<free port>
        upstream.address                  # "127.0.0.1:<port>", for run_proxy(upstream=...)
        upstream.seen                     # list[SeenRequest], a snapshot, in arrival order
        upstream.clear()

Why not the vLLM stand-in: the stand-in is an HTTP framework that parses (and so normalises)
the target before a test can look at it. This one reads the bytes nginx sent: the method, the
request target exactly as on the wire, the version and the headers. It answers every request
200 `{"recorder":"ok"}`, except a path with a trailing slash (not `/`), which it answers with a
307 to the same path without it, the URL built from the Host header it received: what vLLM's
framework (Starlette, `redirect_slashes`) does, so a test can see which host and port a
redirect through the proxy names. It speaks HTTP/1.1 keep-alive and reads Content-Length and
chunked bodies, so nginx's upstream keepalive works as with vLLM.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from typing import BinaryIO

_MAX_LINE = 65536
_BODY = b'{"recorder":"ok"}'


@dataclass(frozen=True)
class SeenRequest:
    """One request as it arrived: the raw request line split in three, and the headers
    (names lower-cased; a repeated header keeps its last value)."""

    method: str
    target: str
    version: str
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def line(self) -> str:
        return f"{self.method} {self.target} {self.version}"


class UpstreamRecorder:
    def __init__(self) -> None:
        self._server = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._server.getsockname()[1]
        self._seen: list[SeenRequest] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def seen(self) -> list[SeenRequest]:
        with self._lock:
            return list(self._seen)

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        # shutdown() wakes the accept() blocked in the other thread; close() alone would leave
        # the socket listening until that accept() returned.
        with suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return  # closed by stop()
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as stream:
            try:
                while (request := _read_request(stream)) is not None:
                    with self._lock:
                        self._seen.append(request)
                    conn.sendall(_answer(request))
            except (OSError, ValueError):
                return  # the peer went away or sent something that is not HTTP


def _read_request(stream: BinaryIO) -> SeenRequest | None:
    line = stream.readline(_MAX_LINE)
    if not line:
        return None
    method, target, version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
    headers: dict[str, str] = {}
    while (raw := stream.readline(_MAX_LINE)) not in (b"\r\n", b"\n", b""):
        name, _, value = raw.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    _drain_body(stream, headers)
    return SeenRequest(method, target, version, headers)


def _drain_body(stream: BinaryIO, headers: dict[str, str]) -> None:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        while (size := int(stream.readline(_MAX_LINE).split(b";")[0], 16)) > 0:
            stream.read(size + 2)  # the chunk and its CRLF
        while stream.readline(_MAX_LINE) not in (b"\r\n", b"\n", b""):
            pass  # trailers
    else:
        stream.read(int(headers.get("content-length", "0")))


def _answer(request: SeenRequest) -> bytes:
    if request.path.endswith("/") and request.path != "/":
        location = f"http://{request.headers.get('host', '')}{request.path.rstrip('/')}"
        return (
            f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\n\r\n"
        ).encode("latin-1")
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        + f"Content-Length: {len(_BODY)}\r\n\r\n".encode()
        + _BODY
    )


@contextmanager
def run_recorder() -> Iterator[UpstreamRecorder]:
    recorder = UpstreamRecorder()
    recorder.start()
    try:
        yield recorder
    finally:
        recorder.stop()
