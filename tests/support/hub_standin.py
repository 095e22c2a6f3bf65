"""A stand-in for the Hugging Face Hub on loopback, for the real `huggingface_hub` client.

It serves the two kinds of request infra/hub.py makes (docs/facts/huggingface.md):
- `GET /api/models/<org>/<name>[/revision/<rev>]?blobs=True`: the model info, with `sha`,
  `gated` and `siblings` (`rfilename`, `size`);
- `HEAD` and `GET /<org>/<name>/resolve/<rev>/<file>`: a file, with the headers
  hf_hub_download reads (`X-Repo-Commit`, `ETag`, `Content-Length`).
Errors are worded the Hub's way: `X-Error-Code: RepoNotFound` (401) for an unknown or private
repo, `GatedRepo` (403) for a gated file without an accepted token, and a 401 with
`X-Error-Message: Invalid credentials in Authorization header` for a wrong token.
`stall=True` accepts connections and never answers. Every request is recorded.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit


@dataclass
class Repo:
    # file name -> content (served) or size in bytes (listed only, like a multi-GB shard)
    files: dict[str, bytes | int]
    gated: bool = False
    sha: str = "0123456789abcdef0123456789abcdef01234567"

    def size(self, name: str) -> int:
        body = self.files[name]
        return body if isinstance(body, int) else len(body)


@dataclass
class Seen:
    method: str
    path: str
    authorization: str | None


@dataclass
class HubStandIn:
    repos: dict[str, Repo]
    accepted_tokens: frozenset[str] = frozenset()
    stall: bool = False
    requests: list[Seen] = field(default_factory=list)
    url: str = ""
    released: threading.Event = field(default_factory=threading.Event)


def model_repo(config: dict[str, Any], weights: dict[str, int], **kw: Any) -> Repo:
    """A repo with this config.json and safetensors files of these sizes (plus an index naming
    them, when there are several)."""
    files: dict[str, bytes | int] = {"config.json": json.dumps(config).encode()}
    files.update(weights)
    shards = [n for n in weights if n.startswith("model-")]
    if len(shards) > 1:
        index = {
            "metadata": {"total_size": sum(weights[n] for n in shards)},
            "weight_map": {f"layer.{i}.weight": n for i, n in enumerate(shards)},
        }
        files["model.safetensors.index.json"] = json.dumps(index).encode()
    return Repo(files, **kw)


class _Handler(BaseHTTPRequestHandler):
    hub: HubStandIn  # set on the subclass per server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def do_HEAD(self) -> None:
        self._serve(body=False)

    def do_GET(self) -> None:
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        path = unquote(urlsplit(self.path).path)
        self.hub.requests.append(Seen(self.command, path, self.headers.get("Authorization")))
        if self.hub.stall:
            self.hub.released.wait(30)  # hold the connection, answer nothing
            return
        if self._bad_token():
            self._error(401, {"X-Error-Message": "Invalid credentials in Authorization header"})
        elif path.startswith("/api/models/"):
            self._model_info(path.removeprefix("/api/models/"), body)
        elif "/resolve/" in path:
            repo_id, _, rest = path.lstrip("/").partition("/resolve/")
            self._file(repo_id, rest.partition("/")[2], body)
        else:
            self._error(404, {})

    def _bad_token(self) -> bool:
        auth = self.headers.get("Authorization")
        return auth is not None and auth.removeprefix("Bearer ") not in self.hub.accepted_tokens

    def _model_info(self, rest: str, body: bool) -> None:
        repo_id = rest.split("/revision/", maxsplit=1)[0]
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(401, {"X-Error-Code": "RepoNotFound"})
            return
        info = {
            "id": repo_id,
            "modelId": repo_id,
            "sha": repo.sha,
            "private": False,
            "gated": "manual" if repo.gated else False,
            "siblings": [{"rfilename": n, "size": repo.size(n)} for n in repo.files],
        }
        self._reply(200, json.dumps(info).encode(), {"Content-Type": "application/json"}, body)

    def _file(self, repo_id: str, name: str, body: bool) -> None:
        repo = self.hub.repos.get(repo_id)
        if repo is None:
            self._error(401, {"X-Error-Code": "RepoNotFound"})
            return
        if repo.gated and self.headers.get("Authorization") is None:
            self._error(403, {"X-Error-Code": "GatedRepo"})
            return
        content = repo.files.get(name)
        if not isinstance(content, bytes):
            self._error(404, {"X-Error-Code": "EntryNotFound"})
            return
        etag = hashlib.sha256(content).hexdigest()
        headers = {"X-Repo-Commit": repo.sha, "ETag": f'"{etag}"'}
        self._reply(200, content, headers, body)

    def _error(self, status: int, headers: dict[str, str]) -> None:
        self._reply(status, b'{"error": "stand-in error"}', headers, True)

    def _reply(self, status: int, content: bytes, headers: dict[str, str], body: bool) -> None:
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if body:
            self.wfile.write(content)


@contextmanager
def running(hub: HubStandIn) -> Iterator[HubStandIn]:
    handler = type("Handler", (_Handler,), {"hub": hub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield hub
    finally:
        hub.released.set()
        server.shutdown()
        server.server_close()
