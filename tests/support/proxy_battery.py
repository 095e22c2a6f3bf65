"""A generated battery of requests against the proxy, and the property every answer must keep.

    from tests.support.proxy_battery import battery, fire, violations

    probes = battery(routes, core)                # every route x path form x method x key
    with recorded_proxy(KEY, nginx=None) as proxied:   # nginx in front of the recorder
        answers = proxied.fire(probes)            # or fire(probes, port=..., key=..., recorder=...)
    assert violations(answers) == []

The property (issue 8, docs/security.md): nothing reaches vLLM without the key except
`GET /health`, and what reaches vLLM is the normalised path nginx judged. For each answer, the
requests the upstream recorder saw for that probe (matched by the `X-Llm-Probe` header) must be:

- at most one;
- either exactly `GET /health` (raw target, no query), with or without the key,
- or, only with the key, exactly `GET /metrics` for a client's literal `GET /metrics` (the one
  exception, for monitoring: issue 12),
- or, only with the key, a raw path under `/v1/` that is its own normal form (`normal_form`)
  and that, decoded, is the path nginx judged (`judged_path`, nginx's normalisation);

and every answer that did not come from the upstream is a refusal with one small JSON body
`{"error": ...}` (none for HEAD), never nginx's HTML page.

The path forms (`path_forms`) are generated from rules, not listed: dot segments before and
after the route (`..`, `.`, and their `%2e`/`%2E` spellings), `%2f`/`%2F` for the slashes
around them, doubled slashes, trailing slashes, case changes, one letter percent-encoded,
absolute-form targets (`http://host/...`), and a query or fragment (`?`, `#`) appended; every
method, with and without the key.
"""

from __future__ import annotations

import itertools
import json
import re
import socket
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

from tests.support.nginx import RunningNginx, run_proxy
from tests.support.upstream_recorder import SeenRequest, UpstreamRecorder, run_recorder

METHODS = (
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "PATCH",
    "OPTIONS",
    "TRACE",
    "CONNECT",
    "PROPFIND",
    "FOO",
)
PROBE_HEADER = "X-Llm-Probe"
# Paths a dot segment can lead from or to: the open one, the prefix-mounted one that was
# reached (/metrics), the API, and one vLLM does not have.
PIVOTS = ("/health", "/metrics", "/v1/models", "/invocations", "/nope")
SUFFIXES = ("", "?", "?a=1", "?/../metrics", "#", "#x", "?x#y")
ABSOLUTE = ("", "http://x", "HTTP://127.0.0.1:1")
_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Probe:
    method: str
    target: str  # exactly as on the request line
    keyed: bool
    form: str  # the rule that made the target, for the table


@dataclass(frozen=True)
class Answer:
    probe: Probe
    status: int
    headers: dict[str, str]
    body: bytes
    reached: tuple[SeenRequest, ...]  # what the upstream recorder saw for this probe


# --- the path forms --------------------------------------------------------------------------


def _dots(route: str, pivot: str) -> Iterator[tuple[str, str]]:
    """Dot segments leading from `pivot` to `route` and from `route` to `pivot`."""
    yield "dot-before", f"{pivot}/../{route[1:]}"
    yield "dot-after", f"{route}/../{pivot[1:]}"
    yield "dot-dot-before", f"{pivot}/./../{route[1:]}"
    yield "dot-double-slash", f"{pivot}//../{route[1:]}"
    yield "dot-tail", f"{route}/.."


def _spellings(form: str, path: str) -> Iterator[tuple[str, str]]:
    """`path` (which has dot segments) with its dots and slashes percent-encoded."""
    yield form, path
    for dot in ("%2e", "%2E"):
        yield f"{form}+{dot}", path.replace("..", dot * 2).replace("/./", f"/{dot}/")
    yield f"{form}+.%2e", path.replace("..", ".%2e")
    for slash in ("%2f", "%2F"):
        yield f"{form}+{slash}", re.sub(r"/(?=\.)|(?<=\.)/", slash, path)


def _plain(route: str) -> Iterator[tuple[str, str]]:
    """`route` without dot segments: as is, and spelled otherwise."""
    yield "route", route
    yield "trailing-slash", route + "/"
    yield "trailing-double-slash", route + "//"
    yield "leading-double-slash", "/" + route
    yield "inner-double-slash", route.replace("/", "//")
    yield "dot-segment", "/." + route
    yield "upper-case", route.upper()
    yield "first-letter-upper", re.sub(r"(?<=/)[a-z]", lambda m: m.group(0).upper(), route, count=1)
    letter = re.search(r"[a-z]", route)
    if letter is not None:
        i = letter.start()
        yield "letter-%xx", f"{route[:i]}%{ord(route[i]):02x}{route[i + 1 :]}"
        yield "letter-%XX", f"{route[:i]}%{ord(route[i]):02X}{route[i + 1 :]}"
    yield "slash-%2F", route.replace("/", "%2F", 1)


def path_forms(route: str, *, dots: bool = True) -> list[tuple[str, str]]:
    """Every (rule, target) for `route`: plain spellings and, with `dots`, dot segments
    to and from each pivot in every spelling. Each gets a suffix and an absolute-form prefix
    in turn (round-robin), so every suffix and prefix meets every rule."""
    forms = list(_plain(route))
    if dots:
        for pivot in PIVOTS:
            if pivot != route:
                for form, path in _dots(route, pivot):
                    forms.extend(_spellings(form, path))
    suffixes = itertools.cycle(SUFFIXES)
    prefixes = itertools.cycle(ABSOLUTE)
    out = []
    for form, path in forms:
        out.append((form, path))
        suffix, prefix = next(suffixes), next(prefixes)
        if suffix or prefix:
            name = form + (f"+{suffix!r}" if suffix else "") + ("+absolute" if prefix else "")
            out.append((name, prefix + path + suffix))
    return out


def battery(routes: Sequence[str], core: Iterable[str]) -> list[Probe]:
    """Every route in every plain form; the `core` routes also with dot segments. Each form
    is tried with GET, HEAD, POST and one other method in turn, with and without the key; the
    plain route itself with every method."""
    core_set = set(core)
    others = itertools.cycle(m for m in METHODS if m not in ("GET", "HEAD", "POST"))
    probes = []
    for route in routes:
        for form, target in path_forms(route, dots=route in core_set):
            methods = METHODS if form == "route" else ("GET", "HEAD", "POST", next(others))
            for method, keyed in itertools.product(methods, (False, True)):
                probes.append(Probe(method, target, keyed, form))
    return probes


# --- normalisation ---------------------------------------------------------------------------

_UNRESERVED = re.compile(rb"[A-Za-z0-9._~-]")


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4 on a path whose slashes are merged; `..` above the root stays
    at the root."""
    out: list[str] = []
    segments = path.split("/")[1:]
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == "..":
            if out:
                out.pop()
            if last:
                out.append("")
        elif segment == ".":
            if last:
                out.append("")
        else:
            out.append(segment)
    return "/" + "/".join(out)


def _merge_slashes(path: str) -> str:
    return re.sub(r"/{2,}", "/", path)


def normal_form(path: str) -> str:
    """The normal form of a raw path (RFC 3986 section 6.2.2, plus merged slashes): escapes of
    unreserved characters and of `/` decoded, other escapes in upper-case hex, dot segments
    removed. A path that equals its normal form can mean only one thing to any server."""

    def escape(m: re.Match[str]) -> str:
        char = bytes.fromhex(m.group(1))
        return char.decode() if _UNRESERVED.fullmatch(char) or char == b"/" else m.group(0).upper()

    decoded = re.sub(r"%([0-9A-Fa-f]{2})", escape, path)
    return remove_dot_segments(_merge_slashes(decoded))


def judged_path(target: str) -> str:
    """The path nginx matches locations against for a request target: the authority of an
    absolute-form target dropped, the query and fragment cut off, every escape decoded,
    slashes merged, dot segments removed (docs/facts/nginx.md, "How nginx normalises")."""
    path = re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*://[^/]*", "", target)
    path = path.split("?", 1)[0].split("#", 1)[0]
    decoded = unquote_to_bytes(path).decode("latin-1")
    return remove_dot_segments(_merge_slashes(decoded))


# --- firing and judging ----------------------------------------------------------------------


def _request_bytes(probe: Probe, probe_id: int, port: int, key: str) -> bytes:
    lines = [
        f"{probe.method} {probe.target} HTTP/1.1",
        f"Host: 127.0.0.1:{port}",
        f"{PROBE_HEADER}: {probe_id}",
        "Connection: close",
    ]
    if probe.keyed:
        lines.append(f"Authorization: Bearer {key}")
    body = b""
    if probe.method in ("POST", "PUT", "PATCH"):
        body = b"{}"
        lines += ["Content-Type: application/json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def send_raw(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `request` as is on a new connection; the answer's status, headers and body (read
    to its Content-Length, or to the end of the connection; none for a HEAD)."""
    with socket.create_connection(("127.0.0.1", port), timeout=_TIMEOUT_S) as conn:
        conn.sendall(request)
        data = b""
        while b"\r\n\r\n" not in data and (chunk := conn.recv(65536)):
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        status_line, *header_lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if request.startswith(b"HEAD "):
            return int(status_line.split(" ")[1]), headers, body
        length = int(headers.get("content-length", "-1"))
        while (length < 0 or len(body) < length) and (chunk := conn.recv(65536)):
            body += chunk
    return int(status_line.split(" ")[1]), headers, body


def fire(
    probes: Sequence[Probe], *, port: int, key: str, recorder: UpstreamRecorder, workers: int = 4
) -> list[Answer]:
    """Send every probe (a few at a time) and pair each answer with what the upstream saw
    (the recorder is cleared first: probe ids count from 0 in every call)."""
    recorder.clear()

    def one(numbered: tuple[int, Probe]) -> tuple[int, dict[str, str], bytes]:
        probe_id, probe = numbered
        return send_raw(port, _request_bytes(probe, probe_id, port, key))

    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(one, enumerate(probes)))
    by_probe: dict[str, list[SeenRequest]] = {}
    for seen in recorder.seen:
        by_probe.setdefault(seen.headers.get(PROBE_HEADER.lower(), "?"), []).append(seen)
    stray = by_probe.pop("?", [])
    if stray:
        raise AssertionError(f"the upstream saw requests without a probe id: {stray}")
    return [
        Answer(probe, status, headers, body, tuple(by_probe.get(str(i), [])))
        for i, (probe, (status, headers, body)) in enumerate(zip(probes, results, strict=True))
    ]


@dataclass(frozen=True)
class RecordedProxy:
    """The project's proxy (real nginx) in front of an upstream recorder, keyed with `key`."""

    upstream: UpstreamRecorder
    proxy: RunningNginx
    key: str

    def fire(self, probes: Sequence[Probe]) -> list[Answer]:
        return fire(probes, port=self.proxy.port, key=self.key, recorder=self.upstream)


@contextmanager
def recorded_proxy(
    key: str, *, nginx: str | None = None, **run_proxy_options: Any
) -> Iterator[RecordedProxy]:
    """`nginx` (default: the machine's); other options go to run_proxy (e.g. `render`)."""
    with (
        run_recorder() as upstream,
        run_proxy(
            upstream=upstream.address, api_key=key, nginx=nginx, **run_proxy_options
        ) as proxy,
    ):
        yield RecordedProxy(upstream, proxy, key)


def violations(answers: Iterable[Answer]) -> list[str]:
    """Every way in which `answers` break the property in the module docstring."""
    found: list[str] = []
    for answer in answers:
        found.extend(f"{_describe(answer)}: {problem}" for problem in _check(answer))
    return found


def _check(answer: Answer) -> Iterator[str]:
    probe = answer.probe
    if len(answer.reached) > 1:
        yield f"reached the upstream {len(answer.reached)} times"
    for seen in answer.reached:
        if seen.method == "GET" and seen.target == "/health":
            continue
        if seen.method == "GET" and seen.target == "/metrics":
            if not (probe.keyed and probe.method == "GET" and probe.target == "/metrics"):
                yield f"reached /metrics from {probe.method} {probe.target!r}"
            continue
        if not probe.keyed:
            yield f"reached the upstream without the key as {seen.line!r}"
        elif not seen.path.startswith("/v1/"):
            yield f"reached the upstream outside /v1/ as {seen.line!r}"
        elif normal_form(seen.path) != seen.path:
            yield f"reached the upstream as {seen.line!r}, not in normal form"
        elif unquote_to_bytes(seen.path).decode("latin-1") != judged_path(probe.target):
            yield f"reached the upstream as {seen.line!r}, not the path nginx judged"
    if answer.reached:
        return
    if answer.status < 400:
        yield f"answered {answer.status} without reaching the upstream"
    expected_body = b"" if probe.method == "HEAD" else None
    if expected_body is None and not _is_refusal_body(answer.body):
        yield f"refusal body is not one small JSON error: {answer.body[:80]!r}"
    if expected_body is not None and answer.body:
        yield f"HEAD answered with a body: {answer.body[:80]!r}"


def _is_refusal_body(body: bytes) -> bool:
    try:
        parsed = json.loads(body)
    except ValueError:
        return False
    return len(body) < 64 and isinstance(parsed, dict) and list(parsed) == ["error"]


def _describe(answer: Answer) -> str:
    key = "with key" if answer.probe.keyed else "no key"
    return f"{answer.probe.method} {answer.probe.target!r} ({key}) -> {answer.status}"
