"""A local stand-in for vLLM's OpenAI-compatible HTTP server, for tests on loopback.

It reproduces the HTTP behaviour recorded in docs/facts/vllm.md, read from vLLM 0.33.0:

- "The API key": the `--api-key` guard checks only paths starting with `/v1`, `/v2`,
  `/inference` and `/cohere`; OPTIONS is never checked; a failure is HTTP 401 with body
  `{"error":"Unauthorized"}`; the Bearer scheme is matched case-insensitively.
- "Routes open without the key": `/health`, `/ping`, `/version`, `/metrics`, `/tokenize`,
  `/detokenize` and `/invocations` (which runs inference) stay open whatever the key.
- "Routes the project uses": `/v1/models` answers
  `{"object":"list","data":[{"id":...,"object":"model","owned_by":"vllm","max_model_len":...}]}`;
  `/v1/chat/completions` streams Server-Sent Events when `stream: true`, ending `data: [DONE]`.
- "Metrics for idleness": Prometheus gauges `vllm:num_requests_running`, `vllm:num_requests_waiting`
  and counters `vllm:request_success_total`, `vllm:generation_tokens_total` on `/metrics`.

API
---
    from tests.support.vllm_standin import StandinConfig, run_standin, PROXY_BLOCKED_PATHS

    with run_standin(StandinConfig(api_key="k")) as vllm:   # faithful vLLM (open paths open)
        vllm.url            # "http://127.0.0.1:<free port>" (no trailing slash)
                            # run_standin(config, host="::1") for IPv6,
                            # run_standin(config, tls=(certfile, keyfile)) for https://
        vllm.host, vllm.port
        vllm.requests       # list[RecordedRequest], a snapshot of every request so far
        vllm.paths()        # ["/health", "/v1/models", ...] in arrival order
        vllm.wait_for_request("/v1/chat/completions")  # the record, once it is logged
        vllm.set_metrics(num_requests_running=2, generation_tokens_total=10.0)
        vllm.config = dataclasses.replace(vllm.config, models=("other",))  # change live
        vllm.clear_requests()

    # pytest fixture, if a test module wants one:
    @pytest.fixture
    def vllm():
        with run_standin(StandinConfig(api_key="k")) as server:
            yield server

`StandinConfig` fields (all optional; the default is a healthy vLLM 0.33 serving one model with
key `DEFAULT_API_KEY`, i.e. vLLM *without* a proxy, so `/invocations`, `/metrics`, `/tokenize`
are open):

    api_key           str | None. None: the key is not enforced (vLLM started without --api-key).
    models            served model names; `/v1/models` lists them, completions check `model`.
    max_model_len     reported in `/v1/models` and `/tokenize`.
    refused_paths     paths answered 403 `{"error":"Forbidden"}` before anything else (exact
                      match, any method): emulates the deployment's allowlisting proxy so the
                      stand-in alone can play "a correctly deployed endpoint". Default empty.
                      `PROXY_BLOCKED_PATHS` is the set a correct proxy blocks;
                      `StandinConfig.deployed()` uses it.
    health_unready    the first N `GET /health` requests answer `health_unready_status` (503),
                      later ones 200 (a server still loading its model).
    completion_text   text of every completion (`""` = an empty completion).
    stream_chunks     content pieces of a streamed answer, one SSE event each.
    stream_done       False: the stream ends without `data: [DONE]`.
    chunk_delay       seconds between streamed events (each is written and flushed on its own,
                      with chunked transfer encoding, so a proxy test can see them arrive apart).
    stream_keepalive  > 0: after its content events a stream never finishes; it sends the SSE
                      comment `: keep-alive` every this many seconds, forever (no finish event,
                      no usage chunk, no `[DONE]`), until the client hangs up or the stand-in
                      stops.
    response_delay    seconds to wait before answering ...
    delayed_paths     ... requests to these paths (None = every path).
    trickle_paths     plain (non-stream) answers on these paths send their status and headers,
                      then one space (valid JSON padding) every `trickle_interval` seconds,
                      forever: a body that keeps coming and never ends.
    unauthorized_status  the status of a missing or wrong key (default 401, as vLLM; 403 plays a
                      gateway that checks keys but answers 403, body `{"error":"Forbidden"}`).

Variants tests use (see also `StandinConfig.deployed()`):
    healthy, proxied:      StandinConfig.deployed()
    auth not enforced:     StandinConfig(api_key=None)
    /invocations open:     StandinConfig.deployed(open_paths={"/invocations"})
    wrong model:           StandinConfig(models=("some/other-model",))
    two models:            StandinConfig(models=("a", "b"))
    503 then 200:          StandinConfig(health_unready=3)
    empty completion:      StandinConfig(completion_text="")
    stream without [DONE]: StandinConfig(stream_done=False)
    stream kept alive:     StandinConfig(stream_keepalive=0.05)   (SSE comments, never [DONE])
    body trickled:         StandinConfig(trickle_paths=frozenset({"/v1/completions"}))
    403 for a bad key:     StandinConfig(unauthorized_status=403)
    very slow:             StandinConfig(response_delay=2.0,
                                         delayed_paths=frozenset({"/v1/completions"}))

Routes: GET /health, /version, /metrics, /v1/models; GET|POST /ping; POST /v1/completions and
/v1/chat/completions (both stream with `stream: true`; `stream_options: {"include_usage": true}`
adds a usage chunk before `[DONE]`), /invocations (chat if the body has `messages`, else
completion), /tokenize, /detokenize. An unknown `model` gets vLLM's 404 error body; unknown paths
404 `{"detail":"Not Found"}`; a wrong method 405; OPTIONS 405 without any key check.

`RecordedRequest` keeps method, path (without query), query, headers (the Authorization value
replaced by `<redacted>`), body bytes, the auth verdict (`"absent"`, `"valid"`, `"invalid"`,
`"not-checked"`) and the status answered (0: dropped unanswered). A request is logged just
before its answer is complete, so once a client has the whole answer its request is in the log:
a plain answer just before it is sent; a stream after its last event, just before the
terminating chunk (so while a stream is still flowing, its request is not in the log yet). Handler
threads are daemons and every delay waits on the stop event, so leaving the `with` block never
hangs on a slow response.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import secrets
import socket
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Literal
from urllib.parse import urlsplit

DEFAULT_API_KEY = "standin-key-0123456789"
DEFAULT_MODEL = "Qwen/Qwen2.5-7B-Instruct"
VLLM_VERSION = "0.33.0"

# docs/facts/vllm.md ("The API key"): only these path prefixes are checked against --api-key.
GUARDED_PREFIXES = ("/v1", "/v2", "/inference", "/cohere")
# docs/facts/vllm.md ("Routes open without the key"): open whatever the key; a deployment's proxy
# must block every one that is not harmless. `/health` stays reachable so people (and the smoke
# test) can see readiness.
VLLM_OPEN_PATHS = frozenset(
    {
        "/health",
        "/ping",
        "/version",
        "/metrics",
        "/tokenize",
        "/detokenize",
        "/pooling",
        "/classify",
        "/score",
        "/rerank",
        "/invocations",
    }
)
PROXY_BLOCKED_PATHS = VLLM_OPEN_PATHS - {"/health"}

AuthVerdict = Literal["absent", "valid", "invalid", "not-checked"]


@dataclass(frozen=True)
class StandinConfig:
    """How the stand-in behaves; see the module docstring for each field."""

    api_key: str | None = DEFAULT_API_KEY
    models: tuple[str, ...] = (DEFAULT_MODEL,)
    max_model_len: int = 8192
    refused_paths: frozenset[str] = frozenset()
    health_unready: int = 0
    health_unready_status: int = 503
    completion_text: str = " Paris is the capital of France."
    stream_chunks: tuple[str, ...] = ("Paris", " is", " the", " capital", " of", " France", ".")
    stream_done: bool = True
    chunk_delay: float = 0.0
    stream_keepalive: float = 0.0
    response_delay: float = 0.0
    delayed_paths: frozenset[str] | None = None
    trickle_paths: frozenset[str] = frozenset()
    trickle_interval: float = 0.05
    unauthorized_status: int = 401

    @classmethod
    def deployed(cls, open_paths: Iterable[str] = (), **overrides: Any) -> StandinConfig:
        """vLLM as clients of a correct deployment see it: the paths vLLM leaves open (except
        `/health`) are refused with 403, as the allowlisting proxy does. `open_paths` are left
        open anyway (to play a proxy with a hole)."""
        refused = PROXY_BLOCKED_PATHS - frozenset(open_paths)
        return cls(refused_paths=refused, **overrides)


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes
    auth: AuthVerdict
    status: int

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None


@dataclass
class Metrics:
    num_requests_running: float = 0.0
    num_requests_waiting: float = 0.0
    request_success_total: float = 0.0
    generation_tokens_total: float = 0.0


@dataclass
class _State:
    config: StandinConfig
    lock: threading.Lock = field(default_factory=threading.Lock)
    logged: threading.Condition = field(init=False)
    stopping: threading.Event = field(default_factory=threading.Event)
    requests: list[RecordedRequest] = field(default_factory=list)
    metrics: Metrics = field(default_factory=Metrics)
    health_requests: int = 0

    def __post_init__(self) -> None:
        self.logged = threading.Condition(self.lock)


class VllmStandin:
    """A running stand-in. Create it with `run_standin`."""

    def __init__(
        self, server: ThreadingHTTPServer, state: _State, host: str, scheme: str = "http"
    ) -> None:
        self._server = server
        self.scheme = scheme
        self._state = state
        self.host = host
        self.port: int = server.server_address[1]

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"

    @property
    def config(self) -> StandinConfig:
        return self._state.config

    @config.setter
    def config(self, value: StandinConfig) -> None:
        with self._state.lock:
            self._state.config = value

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._state.lock:
            return list(self._state.requests)

    def paths(self) -> list[str]:
        return [r.path for r in self.requests]

    def wait_for_request(self, path: str, timeout: float = 5.0) -> RecordedRequest:
        """The first logged request to `path`, waiting up to `timeout` seconds for it. Use it
        after a client stopped reading a stream at `[DONE]`: the stand-in logs a stream after its
        last event, which can be a moment after the client has it (through a proxy, say)."""
        with self._state.logged:
            found = self._state.logged.wait_for(
                lambda: any(r.path == path for r in self._state.requests), timeout
            )
            if not found:
                raise AssertionError(f"no request to {path} within {timeout}s")
            return next(r for r in self._state.requests if r.path == path)

    def clear_requests(self) -> None:
        with self._state.lock:
            self._state.requests.clear()

    @property
    def metrics(self) -> Metrics:
        with self._state.lock:
            return dataclasses.replace(self._state.metrics)

    def set_metrics(self, **values: float) -> None:
        """Set any of num_requests_running, num_requests_waiting, request_success_total,
        generation_tokens_total."""
        with self._state.lock:
            self._state.metrics = dataclasses.replace(self._state.metrics, **values)


def _check_bearer(header: str | None, key: str) -> AuthVerdict:
    if not header:
        return "absent"
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return "invalid"
    # vLLM compares SHA-256 digests in constant time; so do we.
    given = hashlib.sha256(token.encode()).digest()
    expected = hashlib.sha256(key.encode()).digest()
    return "valid" if secrets.compare_digest(given, expected) else "invalid"


def _count_tokens(text: str) -> int:
    return max(1, len(text.split())) if text else 0


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # uvicorn speaks 1.1; streams use chunked encoding
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle's algorithm and
    # delayed ACKs would add ~40 ms to every response and blur stream timings.
    disable_nagle_algorithm = True
    server_version = "uvicorn"
    sys_version = ""
    state: _State  # set on the per-server subclass

    # --- plumbing -----------------------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:
        pass  # tests read `requests` instead of stderr noise

    def _handle(self) -> None:
        state = self.state
        cfg = state.config
        split = urlsplit(self.path)
        path = split.path
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        headers = {
            k: ("<redacted>" if k.lower() == "authorization" else v)
            for k, v in self.headers.items()
        }
        self._auth: AuthVerdict = "not-checked"
        self._record_args = (path, split.query, headers, body)
        self._recorded = False
        self._trickle = False
        try:
            delayed = cfg.delayed_paths is None or path in cfg.delayed_paths
            if cfg.response_delay and delayed and state.stopping.wait(cfg.response_delay):
                self.close_connection = True  # stopping: drop the connection unanswered
                return
            if path in cfg.refused_paths:
                self._send_json(403, {"error": "Forbidden"})
                return
            # docs/facts/vllm.md ("The API key"): OPTIONS is never checked; only the guarded
            # prefixes are.
            if (
                cfg.api_key is not None
                and self.command != "OPTIONS"
                and path.startswith(GUARDED_PREFIXES)
            ):
                self._auth = _check_bearer(self.headers.get("Authorization"), cfg.api_key)
                if self._auth != "valid":
                    status = cfg.unauthorized_status
                    error = "Unauthorized" if status == 401 else "Forbidden"
                    self._send_json(status, {"error": error})
                    return
            self._trickle = path in cfg.trickle_paths
            self._route(cfg, path, body)
        finally:
            if not self._recorded:
                self._record(0)  # dropped unanswered

    def _record(self, status: int) -> None:
        """Log the request, before its answer goes out: a client that has the answer can rely
        on finding its request in the log."""
        path, query, headers, body = self._record_args
        self._recorded = True
        with self.state.lock:
            self.state.requests.append(
                RecordedRequest(self.command, path, query, headers, body, self._auth, status)
            )
            self.state.logged.notify_all()

    def _start_response(self, status: int) -> None:
        self._record(status)
        self.send_response(status)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _handle

    def _send_json(self, status: int, payload: Any) -> None:
        self._send_bytes(status, json.dumps(payload).encode(), "application/json")

    def _send_bytes(self, status: int, data: bytes, content_type: str) -> None:
        if self._trickle:
            self._trickle_forever(status, content_type)
            return
        self._start_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _trickle_forever(self, status: int, content_type: str) -> None:
        self._start_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        # The body never ends, so this connection cannot carry another request.
        self.close_connection = True
        try:
            while not self.state.stopping.wait(self.state.config.trickle_interval):
                self._write_chunk(b" ")
        except (BrokenPipeError, ConnectionResetError):
            return

    def _not_found(self) -> None:
        self._send_json(404, {"detail": "Not Found"})

    def _method_not_allowed(self) -> None:
        self._send_json(405, {"detail": "Method Not Allowed"})

    # --- routes -------------------------------------------------------------------------------

    def _route(self, cfg: StandinConfig, path: str, body: bytes) -> None:
        method = self.command
        if method == "OPTIONS":
            self._method_not_allowed()
            return
        gets = {
            "/health": self._health,
            "/version": lambda: self._send_json(200, {"version": VLLM_VERSION}),
            "/metrics": self._metrics,
            "/v1/models": self._models,
        }
        if path == "/ping" and method in ("GET", "POST"):
            self._send_bytes(200, b"", "application/json")
            return
        if path in gets:
            if method != "GET":
                self._method_not_allowed()
                return
            gets[path]()
            return
        posts = {
            "/v1/completions": self._completions,
            "/v1/chat/completions": self._chat,
            "/invocations": self._invocations,
            "/tokenize": self._tokenize,
            "/detokenize": self._detokenize,
        }
        if path not in posts:
            self._not_found()
            return
        if method != "POST":
            self._method_not_allowed()
            return
        try:
            request = json.loads(body or b"null")
        except ValueError:
            request = None
        if not isinstance(request, dict):
            self._send_json(
                400,
                {"error": {"message": "Invalid JSON body", "type": "BadRequestError", "code": 400}},
            )
            return
        posts[path](request)

    def _health(self) -> None:
        state = self.state
        with state.lock:
            state.health_requests += 1
            unready = state.health_requests <= state.config.health_unready
        if unready:
            self._send_bytes(state.config.health_unready_status, b"", "application/json")
        else:
            self._send_bytes(200, b"", "application/json")

    def _metrics(self) -> None:
        cfg = self.state.config
        m = self.metrics_snapshot()
        labels = f'engine="0",model_name="{cfg.models[0] if cfg.models else ""}"'
        text = (
            "# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f"vllm:num_requests_running{{{labels}}} {m.num_requests_running}\n"
            "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
            "# TYPE vllm:num_requests_waiting gauge\n"
            f"vllm:num_requests_waiting{{{labels}}} {m.num_requests_waiting}\n"
            "# HELP vllm:request_success_total Count of successfully processed requests.\n"
            "# TYPE vllm:request_success_total counter\n"
            f'vllm:request_success_total{{{labels},finished_reason="stop"}} '
            f"{m.request_success_total}\n"
            "# HELP vllm:generation_tokens_total Number of generation tokens processed.\n"
            "# TYPE vllm:generation_tokens_total counter\n"
            f"vllm:generation_tokens_total{{{labels}}} {m.generation_tokens_total}\n"
        )
        self._send_bytes(200, text.encode(), "text/plain; version=0.0.4; charset=utf-8")

    def metrics_snapshot(self) -> Metrics:
        with self.state.lock:
            return dataclasses.replace(self.state.metrics)

    def _count_success(self, tokens: int) -> None:
        with self.state.lock:
            self.state.metrics.request_success_total += 1
            self.state.metrics.generation_tokens_total += tokens

    def _models(self) -> None:
        cfg = self.state.config
        created = int(time.time())
        data = [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "vllm",
                "root": name,
                "parent": None,
                "max_model_len": cfg.max_model_len,
            }
            for name in cfg.models
        ]
        self._send_json(200, {"object": "list", "data": data})

    def _check_model(self, request: dict[str, Any]) -> str | None:
        """The served model the request names (the first one if it names none), or None after
        answering 404 as vLLM does for an unknown model."""
        cfg = self.state.config
        name = request.get("model")
        if name is None and cfg.models:
            return cfg.models[0]
        if name in cfg.models:
            return str(name)
        self._send_json(
            404,
            {
                "error": {
                    "message": f"The model `{name}` does not exist.",
                    "type": "NotFoundError",
                    "param": "model",
                    "code": 404,
                }
            },
        )
        return None

    def _completions(self, request: dict[str, Any]) -> None:
        model = self._check_model(request)
        if model is None:
            return
        if request.get("stream"):
            self._stream(model, request, chat=False)
            return
        text = self.state.config.completion_text
        tokens = _count_tokens(text)
        self._count_success(tokens)
        self._send_json(
            200,
            {
                "id": f"cmpl-{uuid.uuid4().hex}",
                "object": "text_completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "text": text,
                        "logprobs": None,
                        "finish_reason": "length",
                        "stop_reason": None,
                    }
                ],
                "usage": {
                    "prompt_tokens": 5,
                    "completion_tokens": tokens,
                    "total_tokens": 5 + tokens,
                },
            },
        )

    def _chat(self, request: dict[str, Any]) -> None:
        model = self._check_model(request)
        if model is None:
            return
        if request.get("stream"):
            self._stream(model, request, chat=True)
            return
        text = self.state.config.completion_text
        tokens = _count_tokens(text)
        self._count_success(tokens)
        self._send_json(
            200,
            {
                "id": f"chatcmpl-{uuid.uuid4().hex}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": text, "tool_calls": []},
                        "logprobs": None,
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": 9,
                    "completion_tokens": tokens,
                    "total_tokens": 9 + tokens,
                },
            },
        )

    def _invocations(self, request: dict[str, Any]) -> None:
        # vLLM's SageMaker-style route runs chat or completion depending on the body.
        if "messages" in request:
            self._chat(request)
        else:
            self._completions(request)

    def _tokenize(self, request: dict[str, Any]) -> None:
        words = str(request.get("prompt", "")).split()
        tokens = [1000 + i for i in range(len(words))]
        self._send_json(
            200,
            {
                "count": len(tokens),
                "max_model_len": self.state.config.max_model_len,
                "tokens": tokens,
            },
        )

    def _detokenize(self, request: dict[str, Any]) -> None:
        tokens = request.get("tokens", [])
        self._send_json(200, {"prompt": " ".join(f"t{t}" for t in tokens)})

    # --- streaming ----------------------------------------------------------------------------

    def _write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _stream(self, model: str, request: dict[str, Any], *, chat: bool) -> None:
        cfg = self.state.config
        # Logged after the last event (below), so a test can tell a stream still in flight.
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        ident = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
        created = int(time.time())
        kind = "chat.completion.chunk" if chat else "text_completion"

        def event(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            payload = {
                "id": ident,
                "object": kind,
                "created": created,
                "model": model,
                "choices": choices,
                **extra,
            }
            return f"data: {json.dumps(payload)}\n\n".encode()

        def choice(content: str, finish: str | None, role: bool = False) -> dict[str, Any]:
            if chat:
                delta: dict[str, Any] = {"content": content}
                if role:
                    delta = {"role": "assistant", "content": content}
                return {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}
            return {"index": 0, "text": content, "logprobs": None, "finish_reason": finish}

        events: list[bytes] = []
        if chat:
            events.append(event([choice("", None, role=True)]))
        events.extend(event([choice(piece, None)]) for piece in cfg.stream_chunks)
        finishes = not cfg.stream_keepalive  # a kept-alive stream never gets to its end
        if finishes:
            events.append(event([choice("", "stop")]))
        options = request.get("stream_options") or {}
        if finishes and isinstance(options, dict) and options.get("include_usage"):
            n = len(cfg.stream_chunks)
            usage = {"prompt_tokens": 9, "completion_tokens": n, "total_tokens": 9 + n}
            events.append(event([], usage=usage))
        if cfg.stream_done and not cfg.stream_keepalive:
            events.append(b"data: [DONE]\n\n")
        try:
            for i, data in enumerate(events):
                if i and cfg.chunk_delay and self.state.stopping.wait(cfg.chunk_delay):
                    self.close_connection = True
                    return
                self._write_chunk(data)
            if cfg.stream_keepalive > 0:
                # A stream that stays open and never finishes (a stuck server, say).
                self.close_connection = True
                while not self.state.stopping.wait(cfg.stream_keepalive):
                    self._write_chunk(b": keep-alive\n\n")
                return
            self._count_success(len(cfg.stream_chunks))
            # Before the terminator: a client that has read the whole body finds the record.
            self._record(200)
            self._write_chunk(b"")  # the zero-length chunk that ends a chunked body
        except (BrokenPipeError, ConnectionResetError):
            return
        finally:
            if not self._recorded:
                self._record(200)  # cut short (client gone, or the stand-in stopping)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients (and tests) hang up mid-request on purpose; only real bugs are worth a trace.
        if not isinstance(sys.exc_info()[1], (ConnectionError, TimeoutError, ssl.SSLError)):
            super().handle_error(request, client_address)


class _Server6(_Server):
    address_family = socket.AF_INET6


@contextmanager
def run_standin(
    config: StandinConfig | None = None,
    host: str = "127.0.0.1",
    tls: tuple[str, str] | None = None,
    port: int = 0,
) -> Iterator[VllmStandin]:
    """Serve the stand-in on `host` (127.0.0.1 or ::1) at `port` (0: a free one) until the block
    ends. `tls=(certfile, keyfile)` serves HTTPS instead of HTTP."""
    if host not in ("127.0.0.1", "::1"):
        raise ValueError("the stand-in listens on loopback only (127.0.0.1 or ::1)")
    state = _State(config=config or StandinConfig())
    handler = type("Handler", (_Handler,), {"state": state})
    server_class = _Server6 if ":" in host else _Server
    server = server_class((host, port), handler)
    if tls is not None:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        # Handshake in the handler thread, so a client that rejects the certificate cannot
        # stall the accept loop.
        server.socket = context.wrap_socket(
            server.socket, server_side=True, do_handshake_on_connect=False
        )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield VllmStandin(server, state, host, "https" if tls else "http")
    finally:
        state.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
