"""Checks 3 to 7: the key is enforced, nothing else is open, the model is served, and it
answers, both whole and streamed."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests

from scripts.smoke_test.results import CheckResult, Status, timed
from scripts.smoke_test.target import Target
from scripts.smoke_test.transport import FailureClass, classify

# FACTS.md (vLLM): vLLM answers 401 when the key is missing or wrong. A proxy that checks the
# key itself may answer 403; both refuse.
REFUSED_AUTH = frozenset({401, 403})
# For paths the proxy must block, not routing them at all (404) refuses too.
REFUSED_PATH = frozenset({401, 403, 404})
# FACTS.md (vLLM): open in vLLM whatever --api-key says. /invocations runs inference.
MUST_BE_CLOSED: tuple[tuple[str, str, dict[str, Any] | None], ...] = (
    ("POST", "/invocations", {"prompt": "ping", "max_tokens": 1}),
    ("GET", "/metrics", None),
    ("POST", "/tokenize", {"prompt": "ping"}),
)
COMPLETION_PROMPT = "The capital of France is"
COMPLETION_MAX_TOKENS = 16
CHAT_MAX_TOKENS = 32


@dataclass(frozen=True)
class Endpoint:
    session: requests.Session
    target: Target
    api_key: str
    timeout: float

    def call(
        self,
        method: str,
        path: str,
        *,
        key: str | None,
        body: dict[str, Any] | None = None,
        stream: bool = False,
        headers: dict[str, str] | None = None,
    ) -> requests.Response:
        sent = dict(headers or {})
        if key is not None:
            sent["Authorization"] = f"Bearer {key}"
        return self.session.request(
            method,
            self.target.base_url + path,
            headers=sent,
            json=body,
            timeout=self.timeout,
            stream=stream,
            allow_redirects=False,
        )


def _request_failed(
    number: int, name: str, title: str, err: requests.RequestException, ep: Endpoint, took: float
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
            without = ep.call("GET", "/v1/models", key=None)
            without.close()
            wrong = ep.call("GET", "/v1/models", key=_wrong_key(ep.api_key))
            wrong.close()
        except requests.RequestException as err:
            return _request_failed(number, name, title, err, ep, t.elapsed)
    detail = f"no key -> {without.status_code}, wrong key -> {wrong.status_code}"
    data = {"without_key": without.status_code, "wrong_key": wrong.status_code}
    if without.status_code in REFUSED_AUTH and wrong.status_code in REFUSED_AUTH:
        return CheckResult(number, name, title, Status.PASS, t.elapsed, detail, data=data)
    return CheckResult(
        number,
        name,
        title,
        Status.FAIL,
        t.elapsed,
        detail + " (expected 401): the API answers without a valid key",
        "Anyone who can reach this port can use the GPU. vLLM must run with VLLM_API_KEY set "
        "(the startup script passes the stack's apiKey through the container environment); "
        "check `docker inspect vllm` on the VM, then redeploy.",
        "auth-not-enforced",
        data,
    )


def check_open_paths(ep: Endpoint) -> CheckResult:
    number, name, title = 4, "open_paths", "Nothing else open"
    answers: dict[str, str] = {}
    open_paths: list[str] = []
    with timed() as t:
        for method, path, body in MUST_BE_CLOSED:
            try:
                response = ep.call(method, path, key=None, body=body)
                response.close()
            except requests.RequestException as err:
                failure = classify(err, ep.target, ep.timeout)
                if failure.failure_class is FailureClass.CONNECTION:
                    answers[path] = "closed"  # e.g. nginx `return 444`
                    continue
                return _request_failed(number, name, title, err, ep, t.elapsed)
            answers[path] = str(response.status_code)
            if response.status_code not in REFUSED_PATH:
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
            response = ep.call("GET", "/v1/models", key=ep.api_key)
            body = _json(response)
        except requests.RequestException as err:
            return _request_failed(number, name, title, err, ep, t.elapsed), None

    def fail(detail: str, hint: str, data: dict[str, Any] | None = None) -> CheckResult:
        return CheckResult(
            number, name, title, Status.FAIL, t.elapsed, detail, hint, "models", data or {}
        )

    if response.status_code in REFUSED_AUTH:
        return fail(
            f"the key was refused ({response.status_code})",
            "Check --api-key or VLLM_API_KEY against the stack's key "
            "(`pulumi stack output api_key --show-secrets`), or use --stack NAME.",
        ), None
    if response.status_code != 200 or not isinstance(body, dict):
        return fail(
            f"GET /v1/models answered {response.status_code}, not a model list",
            "Check that this endpoint is the deployment's proxy in front of vLLM.",
        ), None
    models = [m for m in body.get("data") or [] if isinstance(m, dict)]
    ids = [str(m.get("id")) for m in models]
    lengths = {str(m.get("id")): m.get("max_model_len") for m in models}
    data: dict[str, Any] = {"served": ids}
    if expected is not None:
        if expected in ids:
            return CheckResult(
                number,
                name,
                title,
                Status.PASS,
                t.elapsed,
                f"{expected} (max_model_len {lengths[expected]})",
                data=data,
            ), expected
        return fail(
            f"{expected} is not served; served: {', '.join(ids) or 'none'}",
            "The served name is the stack's servedModelName (`pulumi stack output model`). "
            "If you changed the model, the VM may still run the old one: redeploy.",
            data,
        ), None
    if len(ids) == 1:
        return CheckResult(
            number,
            name,
            title,
            Status.PASS,
            t.elapsed,
            f"{ids[0]} (max_model_len {lengths[ids[0]]})",
            data=data,
        ), ids[0]
    return fail(
        f"{len(ids)} models served ({', '.join(ids) or 'none'}); expected exactly one",
        "Name the model to check with --model NAME (the stack's `model` output).",
        data,
    ), None


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


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
            response = ep.call("POST", "/v1/completions", key=ep.api_key, body=request)
            body = _json(response)
        except requests.RequestException as err:
            return _request_failed(number, name, title, err, ep, t.elapsed)
    text = ""
    if response.status_code == 200 and isinstance(body, dict):
        choices = body.get("choices") or [{}]
        text = str(choices[0].get("text") or "") if isinstance(choices[0], dict) else ""
    if response.status_code != 200:
        return CheckResult(
            number,
            name,
            title,
            Status.FAIL,
            t.elapsed,
            f"POST /v1/completions answered {response.status_code}: {_error_message(body)}",
            "Check the vLLM logs on the machine (`docker logs vllm`).",
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
            "The model answered with no text. Check the vLLM logs (`docker logs vllm`): a "
            "broken model download or tokenizer, or a max_model_len too small for any output.",
            "empty-completion",
        )
    shown = text.strip().replace("\n", " ")
    shown = shown if len(shown) <= 50 else shown[:47] + "..."
    return CheckResult(
        number, name, title, Status.PASS, t.elapsed, f"{shown!r}", data={"text": text}
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


def _read_stream(
    response: requests.Response, started: float, now: Callable[[], float]
) -> _StreamStats:
    stats = _StreamStats()
    # chunk_size=None hands each chunk on as it arrives, so the time to first token is real.
    for raw in response.iter_lines(chunk_size=None):
        line = raw.decode("utf-8", "replace").strip()
        if not line.startswith("data:"):
            continue
        payload = line[5:].strip()
        if payload == "[DONE]":
            stats.done = True
            break
        stats.events += 1
        try:
            chunk = json.loads(payload)
        except ValueError:
            stats.error = f"event {stats.events} is not JSON"
            break
        if not isinstance(chunk, dict):
            continue
        if chunk.get("error"):
            stats.error = _error_message(chunk)
            break
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
    return stats


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
            # identity: a compressed stream could be held back by the decompressor.
            response = ep.call(
                "POST",
                "/v1/chat/completions",
                key=ep.api_key,
                body=request,
                stream=True,
                headers={"Accept": "text/event-stream", "Accept-Encoding": "identity"},
            )
            with response:
                if response.status_code != 200:
                    body = _json(response)
                    return CheckResult(
                        number,
                        name,
                        title,
                        Status.FAIL,
                        t.elapsed,
                        f"POST /v1/chat/completions answered {response.status_code}: "
                        f"{_error_message(body)}",
                        "Check the vLLM logs on the machine (`docker logs vllm`).",
                        "stream",
                    )
                content_type = response.headers.get("Content-Type", "")
                stats = _read_stream(response, t.started, time.perf_counter)
        except requests.RequestException as err:
            return _request_failed(number, name, title, err, ep, t.elapsed)
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
    summary = f"{stats.events} chunks, {tokens} tokens; first token {ttft}, {speed}"
    problem: tuple[str, str] | None = None
    if stats.error is not None:
        problem = (f"the stream reported an error: {stats.error}", "Check `docker logs vllm`.")
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
            "The model answered with no text; check `docker logs vllm`.",
        )
    if problem is not None:
        return CheckResult(
            number, name, title, Status.FAIL, t.elapsed, problem[0], problem[1], "stream", data
        )
    return CheckResult(number, name, title, Status.PASS, t.elapsed, summary + ", [DONE]", data=data)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)
