"""A loopback stand-in of the Compute API methods `pulumi up`'s waits call (real HTTP on
127.0.0.1; infra/compute_api.py pointed at it with a plain `requests.Session`).

Answers are keyed by the request path's last segment (a method such as `getHealth`, or the
instance's name for `instances.get`): a list of (status, JSON body), answered in turn, the
last one for every later request. Every request is recorded with its query and JSON body.
"""

from __future__ import annotations

import json
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Answer = tuple[int, dict[str, Any]]


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    query: dict[str, str]
    body: dict[str, Any] | None


@dataclass
class ComputeStandin:
    answers: dict[str, list[Answer]]
    url: str = ""  # the API's base, like https://compute.googleapis.com/compute/v1
    requests: list[Recorded] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def answer(self, method: str, target: str, body: dict[str, Any] | None) -> Answer:
        parsed = urllib.parse.urlsplit(target)
        query = dict(urllib.parse.parse_qsl(parsed.query))
        with self.lock:
            self.requests.append(Recorded(method, parsed.path, query, body))
            turns = self.answers.get(parsed.path.rsplit("/", 1)[-1])
            if not turns:
                return 404, {"error": {"code": 404, "message": f"no stand-in for {parsed.path}"}}
            return turns.pop(0) if len(turns) > 1 else turns[0]


@contextmanager
def compute_standin(answers: dict[str, list[Answer]]) -> Iterator[ComputeStandin]:
    standin = ComputeStandin(answers)

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self._reply(standin.answer("GET", self.path, None))

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            self._reply(
                standin.answer("POST", self.path, json.loads(self.rfile.read(length) or b"{}"))
            )

        def _reply(self, answer: Answer) -> None:
            data = json.dumps(answer[1]).encode()
            self.send_response(answer[0])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    standin.url = f"http://127.0.0.1:{server.server_address[1]}/compute/v1"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield standin
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
