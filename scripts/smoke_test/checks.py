"""Checks 3 to 7: the key is enforced, nothing else is open, the model is served, and it
answers, both whole and streamed."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import requests

from infra import serving
from scripts.smoke_test import hints
from scripts.smoke_test.results import CheckResult, Status, timed
from scripts.smoke_test.target import Target
from scripts.smoke_test.transport import (
    TRANSPORT_ERRORS,
    Clock,
    Deadline,
    DeadlineExceeded,
    FailureClass,
    classify,
    read_pieces,
    split_lines,
)

# docs/facts/vllm.md ("The API key"): vLLM answers 401 `{"error":"Unauthorized"}` when the key is
# missing or wrong, and the deployment's proxy (startup/nginx.conf.j2) answers the same on /v1/
# before vLLM sees the request. OpenAI-compatible clients read 401 as "bad key": check 3 wants it.
AUTH_REFUSED = 401
# Check 5 only needs to know whether the real key was turned away; a 403 says that too.
KEY_REFUSED = frozenset({401, 403})
# For paths the proxy must block, not routing them at all (404) refuses too.
REFUSED_PATH = frozenset({401, 403, 404})
# docs/facts/vllm.md ("Routes open without the key"): open in vLLM whatever --api-key says.
# /invocations runs inference.
MUST_BE_CLOSED: tuple[tuple[str, str, dict[str, Any] | None], ...] = (
    ("POST", "/invocations", {"prompt": "ping", "max_tokens": 1}),
    ("GET", "/metrics", None),
    ("POST", "/tokenize", {"prompt": "ping"}),
)
COMPLETION_PROMPT = "The capital of France is"
COMPLETION_MAX_TOKENS = 16
CHAT_MAX_TOKENS = 32


# The proxy names the machine that answered a /v1/ request (infra/proxy_config.py): behind a
# group's load balancer, which replica it was.
REPLICA_HEADER = "X-LLM-Endpoint-Replica"


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes
    replica: str | None = None

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None


@dataclass(frozen=True)
class Endpoint:
    """The endpoint under test. Every request is bounded by `timeout` as a whole (see
    transport.read_pieces), not only each wait for data."""

    session: requests.Session
    target: Target
    api_key: str
    timeout: float
    clock: Clock = field(default=time.monotonic)

    def deadline(self) -> Deadline:
        return Deadline.after(self.timeout, self.clock)

    def send(
        self,
        method: str,
        path: str,
        *,
        key: str | None,
        body: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        """The answer once its headers are in; the caller reads the body within a deadline
        (or not at all) and closes it."""
        sent = dict(headers or {})
        if key is not None:
            sent["Authorization"] = f"Bearer {key}"
        return self.session.request(
            method,
            self.target.base_url + path,
            headers=sent,
            json=body,
            timeout=self.timeout,
            stream=True,  # requests would read the body with no bound on the whole
            allow_redirects=False,
        )

    def status(
        self, method: str, path: str, *, key: str | None, body: dict[str, Any] | None = None
    ) -> int:
        """Only the status; the body is never read, so it cannot hold the check up."""
        with self.send(method, path, key=key, body=body) as response:
            return response.status_code

    def fetch(
        self, method: str, path: str, *, key: str | None, body: dict[str, Any] | None = None
    ) -> Answer:
        """The whole answer, within `timeout` from now (raises DeadlineExceeded)."""
        deadline = self.deadline()
        with self.send(method, path, key=key, body=body) as response:
            data = b"".join(read_pieces(response, deadline, self.timeout))
            return Answer(response.status_code, data, response.headers.get(REPLICA_HEADER))


def _request_failed(
    number: int, name: str, title: str, err: Exception, ep: Endpoint, took: float
) -> CheckResult:
    failure = classify(err, ep.target, ep.timeout)
    return CheckResult(
        number,
        name,
        title,
        Status.FAIL,
        took,
        failure.summary,
        failure.hint,
        failure.failure_class.value,
    )


def _wrong_key(real: str) -> str:
    while True:
        candidate = "smoke-test-wrong-key-" + secrets.token_hex(8)
        if candidate != real:
            return candidate


def check_auth(ep: Endpoint) -> CheckResult:
    number, name, title = 3, "auth", "Key required on /v1"
    with timed() as t:
        try:
            without = ep.status("GET", "/v1/models", key=None)
            wrong = ep.status("GET", "/v1/models", key=_wrong_key(ep.api_key))
        except TRANSPORT_ERRORS as err:
            return _request_failed(number, name, title, err, ep, t.elapsed)
    detail = f"no key -> {without}, wrong key -> {wrong}"
    data = {"without_key": without, "wrong_key": wrong}
    if without == AUTH_REFUSED and wrong == AUTH_REFUSED:
        return CheckResult(number, name, title, Status.PASS, t.elapsed, detail, data=data)
    if any(200 <= status < 300 for status in (without, wrong)):
        return CheckResult(
            number,
            name,
            title,
            Status.FAIL,
            t.elapsed,
            detail + " (expected 401): the API answers without a valid key",
            "Anyone who can reach this port can use the GPU. vLLM must run with VLLM_API_KEY "
            "set, behind the deployment's proxy, which checks the key on /v1/ first: check "
            f"{hints.vllm_logs(ep.target)}, then {hints.redeploy(ep.target)}.",
            "auth-not-enforced",
            data,
        )
    if 403 in (without, wrong):
        hint = (
            "Requests without a valid key were refused, but with 403, not 401. "
            "OpenAI-compatible clients expect 401 for a missing or wrong key, and the "
            "deployment's proxy answers 401 on /v1/ (as vLLM does), so something else answers "
            "here: another proxy or gateway in front of the endpoint, or the wrong IP or port. "
            "Point the smoke test at the deployment's own endpoint (`pulumi stack output "
            "endpoint`)."
        )
    else:
        hint = (
            "The deployment's proxy answers 401 on /v1/ without a valid key; this answer "
            "comes from something else: check the IP and port (`pulumi stack output "
            "endpoint`), and that the proxy runs in front of vLLM."
        )
    return CheckResult(
        number,
        name,
        title,
        Status.FAIL,
        t.elapsed,
        detail + " (expected 401 for both)",
        hint,
        "auth-status",
        data,
    )


def check_open_paths(ep: Endpoint) -> CheckResult:
    number, name, title = 4, "open_paths", "Nothing else open"
    answers: dict[str, str] = {}
    open_paths: list[str] = []
    with timed() as t:
        for method, path, body in MUST_BE_CLOSED:
            try:
                status = ep.status(method, path, key=None, body=body)
            except TRANSPORT_ERRORS as err:
                failure = classify(err, ep.target, ep.timeout)
                if failure.failure_class is FailureClass.CONNECTION:
                    answers[path] = "closed"  # e.g. nginx `return 444`
                    continue
                return _request_failed(number, name, title, err, ep, t.elapsed)
            answers[path] = str(status)
            if status not in REFUSED_PATH:
                open_paths.append(path)
    detail = ", ".join(f"{p} -> {s}" for p, s in answers.items())
    if not open_paths:
        return CheckResult(number, name, title, Status.PASS, t.elapsed, detail, data=answers)
    return CheckResult(
        number,
        name,
        title,
        Status.FAIL,
        t.elapsed,
        f"{', '.join(open_paths)} answered without a key ({detail})",
        "vLLM checks the key only on paths under /v1, /v2, /inference and /cohere; it leaves "
        "/invocations (which runs inference), /metrics, /tokenize and others open whatever "
        "--api-key says. The deployment's proxy must pass only /health and /v1/ to vLLM and "
        "refuse everything else: check that the proxy runs in front of vLLM and that vLLM "
        "listens on 127.0.0.1 only.",
        "open-paths",
        answers,
    )


def check_models(ep: Endpoint, expected: str | None) -> tuple[CheckResult, str | None]:
    """Check 5, and the model checks 6 and 7 should query (None: they are skipped)."""
    number, name, title = 5, "models", "Model served"
    with timed() as t:
        try:
            response = ep.fetch("GET", "/v1/models", key=ep.api_key)
        except TRANSPORT_ERRORS as err:
            return _request_failed(number, name, title, err, ep, t.elapsed), None
    body = response.json()

    def fail(detail: str, hint: str, data: dict[str, Any] | None = None) -> CheckResult:
        return CheckResult(
            number, name, title, Status.FAIL, t.elapsed, detail, hint, "models", data or {}
        )

    if response.status in KEY_REFUSED:
        return fail(
            f"the key was refused ({response.status})",
            "Check --api-key or VLLM_API_KEY against the stack's key "
            "(`pulumi stack output api_key --show-secrets`), or use --stack NAME.",
        ), None
    if response.status != 200 or not isinstance(body, dict):
        return fail(
            f"GET /v1/models answered {response.status}, not a model list",
            "Check that this endpoint is the deployment's proxy in front of vLLM.",
        ), None
    models = [m for m in body.get("data") or [] if isinstance(m, dict)]
    ids = [str(m.get("id")) for m in models]
    lengths = {str(m.get("id")): m.get("max_model_len") for m in models}
    data: dict[str, Any] = {"served": ids}
    # Check 2 saw /health answer 200; with the model named, this is the rest of the one
    # definition of ready (serving.is_ready). Without it, the one model served is the one.
    chosen = expected if expected is not None else (ids[0] if len(ids) == 1 else None)
    if chosen is not None and serving.is_ready(200, response.status, body, chosen):
        passed = CheckResult(
            number, name, title, Status.PASS, t.elapsed,
            f"{chosen} (max_model_len {lengths[chosen]})", data=data,
        )  # fmt: skip
        return passed, chosen
    if expected is not None:
        return fail(
            f"{expected} is not served; served: {', '.join(ids) or 'none'}",
            "The served name is the stack's servedModelName (`pulumi stack output model`). "
            "If you changed the model, the old one may still be served: "
            f"{hints.redeploy(ep.target)}.",
            data,
        ), None
    return fail(
        f"{len(ids)} models served ({', '.join(ids) or 'none'}); expected exactly one",
        "Name the model to check with --model NAME (the stack's `model` output).",
        data,
    ), None


def check_completion(ep: Endpoint, model: str) -> CheckResult:
    number, name, title = 6, "completion", "Completion has text"
    request = {
        "model": model,
        "prompt": COMPLETION_PROMPT,
        "max_tokens": COMPLETION_MAX_TOKENS,
        "temperature": 0,
    }
    with timed() as t:
        try:
            response = ep.fetch("POST", "/v1/completions", key=ep.api_key, body=request)
        except TRANSPORT_ERRORS as err:
            return _request_failed(number, name, title, err, ep, t.elapsed)
    body = response.json()
    text = ""
    if response.status == 200 and isinstance(body, dict):
        choices = body.get("choices") or [{}]
        text = str(choices[0].get("text") or "") if isinstance(choices[0], dict) else ""
    if response.status != 200:
        return CheckResult(
            number,
            name,
            title,
            Status.FAIL,
            t.elapsed,
            f"POST /v1/completions answered {response.status}: {_error_message(body)}",
            f"Check {hints.vllm_logs(ep.target)}.",
            "completion",
        )
    if not text.strip():
        return CheckResult(
            number,
            name,
            title,
            Status.FAIL,
            t.elapsed,
            "the completion is empty",
            f"The model answered with no text. Check {hints.vllm_logs(ep.target)}: a broken "
            "model download or tokenizer, or a max_model_len too small for any output.",
            "empty-completion",
        )
    shown = text.strip().replace("\n", " ")
    shown = shown if len(shown) <= 50 else shown[:47] + "..."
    by = f" (answered by replica {response.replica})" if response.replica else ""
    return CheckResult(
        number,
        name,
        title,
        Status.PASS,
        t.elapsed,
        f"{shown!r}{by}",
        data={"text": text, "replica": response.replica},
    )


def _error_message(body: Any) -> str:
    if isinstance(body, dict):
        error = body.get("error") or body.get("detail")
        if isinstance(error, dict):
            return str(error.get("message") or error)[:200]
        if error:
            return str(error)[:200]
    return "no error message"


@dataclass
class _StreamStats:
    events: int = 0
    tokens: int = 0  # content-bearing chunks
    usage_tokens: int | None = None
    done: bool = False
    first_token_s: float | None = None
    last_token_s: float | None = None
    error: str | None = None
    timed_out: bool = False  # --timeout passed before [DONE]
    comments: int = 0  # SSE comment lines (`: keep-alive`)


def _read_stream(lines: Iterator[bytes], started: float, now: Callable[[], float]) -> _StreamStats:
    stats = _StreamStats()
    try:
        _parse_events(lines, stats, started, now)
    except DeadlineExceeded:
        stats.timed_out = True
    return stats


def _parse_events(
    lines: Iterator[bytes], stats: _StreamStats, started: float, now: Callable[[], float]
) -> None:
    # Lines are handed on as they arrive, so the time to first token is real.
    for raw in lines:
        line = raw.decode("utf-8", "replace").strip()
        if line.startswith(":"):
            stats.comments += 1
            continue
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            stats.done = True
            return
        stats.events += 1
        try:
            chunk = json.loads(payload)
        except ValueError:
            stats.error = f"event {stats.events} is not JSON"
            return
        if not isinstance(chunk, dict):
            continue
        if chunk.get("error"):
            stats.error = _error_message(chunk)
            return
        usage = chunk.get("usage")
        if isinstance(usage, dict) and isinstance(usage.get("completion_tokens"), int):
            stats.usage_tokens = usage["completion_tokens"]
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") if isinstance(choice, dict) else None
            if isinstance(delta, dict) and delta.get("content"):
                stats.tokens += 1
                stats.last_token_s = now() - started
                if stats.first_token_s is None:
                    stats.first_token_s = stats.last_token_s


def check_stream(ep: Endpoint, model: str) -> CheckResult:
    number, name, title = 7, "stream", "Streamed chat ends [DONE]"
    request = {
        "model": model,
        "messages": [{"role": "user", "content": "Name three primary colours."}],
        "max_tokens": CHAT_MAX_TOKENS,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with timed() as t:
        try:
            deadline = ep.deadline()
            # identity: a compressed stream could be held back by the decompressor.
            response = ep.send(
                "POST",
                "/v1/chat/completions",
                key=ep.api_key,
                body=request,
                headers={"Accept": "text/event-stream", "Accept-Encoding": "identity"},
            )
            with response:
                pieces = read_pieces(response, deadline, ep.timeout)
                if response.status_code != 200:
                    body = Answer(response.status_code, b"".join(pieces)).json()
                    return CheckResult(
                        number,
                        name,
                        title,
                        Status.FAIL,
                        t.elapsed,
                        f"POST /v1/chat/completions answered {response.status_code}: "
                        f"{_error_message(body)}",
                        f"Check {hints.vllm_logs(ep.target)}.",
                        "stream",
                    )
                content_type = response.headers.get("Content-Type", "")
                stats = _read_stream(split_lines(pieces), t.started, time.perf_counter)
        except TRANSPORT_ERRORS as err:
            return _request_failed(number, name, title, err, ep, t.elapsed)
    data, summary = _stream_summary(stats)
    found = _stream_problem(stats, content_type, summary, ep)
    if found is not None:
        (detail, hint), failure_class = found
        return CheckResult(
            number, name, title, Status.FAIL, t.elapsed, detail, hint, failure_class, data
        )
    return CheckResult(number, name, title, Status.PASS, t.elapsed, summary + ", [DONE]", data=data)


def _stream_summary(stats: _StreamStats) -> tuple[dict[str, Any], str]:
    """The stream's numbers for the report, and one line that says them."""
    tokens = stats.usage_tokens if stats.usage_tokens is not None else stats.tokens
    rate: float | None = None
    if (
        stats.first_token_s is not None
        and stats.last_token_s is not None
        and tokens > 1
        and stats.last_token_s > stats.first_token_s
    ):
        rate = (tokens - 1) / (stats.last_token_s - stats.first_token_s)
    data: dict[str, Any] = {
        "events": stats.events,
        "content_chunks": stats.tokens,
        "completion_tokens": tokens,
        "done": stats.done,
        "time_to_first_token_s": _round(stats.first_token_s),
        "tokens_per_s": _round(rate),
    }
    ttft = "n/a" if stats.first_token_s is None else f"{stats.first_token_s:.2f}s"
    speed = "n/a" if rate is None else f"{rate:.1f} tokens/s"
    return data, f"{stats.events} chunks, {tokens} tokens; first token {ttft}, {speed}"


def _stream_problem(
    stats: _StreamStats, content_type: str, summary: str, ep: Endpoint
) -> tuple[tuple[str, str], str] | None:
    """What is wrong with a 200 stream ((detail, hint), failure class), or None."""
    if stats.timed_out:
        kept_alive = f", then {stats.comments} keep-alive comments" if stats.comments else ""
        return (
            f"no data: [DONE] within --timeout {ep.timeout:g}s ({summary}{kept_alive})",
            "The stream stayed open without finishing. vLLM ends every stream with "
            "data: [DONE] once the answer (here at most "
            f"{CHAT_MAX_TOKENS} tokens) is complete, so a stream that only keeps the "
            f"connection alive is stuck: check {hints.vllm_logs(ep.target)}. "
            "If the model is merely slow (the first request after a start can be), retry with "
            "a larger --timeout.",
        ), "timeout"
    problem: tuple[str, str] | None = None
    if stats.error is not None:
        problem = (
            f"the stream reported an error: {stats.error}",
            f"Check {hints.vllm_logs(ep.target)}.",
        )
    elif "text/event-stream" not in content_type:
        problem = (
            f"answered {content_type or 'no content type'}, not text/event-stream",
            "Something in front of vLLM rewrites the answer; check the proxy.",
        )
    elif not stats.done:
        problem = (
            f"the stream ended without data: [DONE] ({summary})",
            "The stream was cut short. A proxy in front of vLLM may time out or buffer long "
            "answers (nginx: proxy_buffering off, a proxy_read_timeout of minutes).",
        )
    elif stats.tokens == 0:
        problem = (
            f"the stream carried no text ({summary})",
            f"The model answered with no text; check {hints.vllm_logs(ep.target)}.",
        )
    return None if problem is None else (problem, "stream")


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
