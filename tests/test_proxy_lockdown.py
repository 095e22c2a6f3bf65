"""The proxy lockdown (issue 8), proven with Debian's real nginx in front of an upstream that
records the raw request line it receives (tests/support/upstream_recorder.py).

The property (tests/support/proxy_battery.py, docs/security.md): nothing reaches vLLM without
the key except `GET /health`, and what reaches vLLM is the normalised path nginx judged. It is
checked on a generated battery (every route x path form x method x key) and on random paths
(hypothesis). The same battery finds the `/metrics/../health` bypass in the config as it was
before this fix (tests/data/nginx.conf.before-issue-8.j2), so it is not a test that cannot fail.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jinja2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.nginx import NGINX_BUILDS, run_proxy
from tests.support.proxy_battery import (
    METHODS,
    Probe,
    RecordedProxy,
    battery,
    judged_path,
    normal_form,
    recorded_proxy,
    send_raw,
    violations,
)
from tests.support.route_inventory import load_routes
from tests.support.upstream_recorder import run_recorder

KEY = "Kq7.x+y/z~-0123456789abcdefghijkl=="
DATA = Path(__file__).resolve().parent / "data"

# vLLM's own routes (docs/facts/vllm-routes.json), parameters filled in, and two it does not
# have. The battery tries every method on each.
ROUTES = tuple(sorted({r.example for r in load_routes()} | {"/", "/nope"}))
CORE = ("/health", "/metrics", "/v1/models", "/invocations", "/v1/chat/completions")

# The requests issue 8 names: each returned vLLM's metrics page without a key.
ISSUE_BYPASSES = (
    Probe("GET", "/metrics/../health", False, "issue"),
    Probe("HEAD", "/metrics/../health", False, "issue"),
    Probe("GET", "/metrics/%2e%2e/health", False, "issue"),
    Probe("GET", "/metrics%2f..%2fhealth", False, "issue"),
    Probe("GET", "/metrics//../health", False, "issue"),
    Probe("GET", "http://x/metrics/../health", False, "issue"),
    Probe("GET", "/metrics/%2E%2E/health", False, "issue"),
    Probe("GET", "/metrics%2F..%2Fhealth", False, "issue"),
    Probe("GET", "/metrics/.%2e/health", False, "issue"),
)


@pytest.fixture(scope="module", params=NGINX_BUILDS)
def proxied(request) -> Iterator[RecordedProxy]:
    """The proxy in each supported nginx build (the machine's, and 1.18) before the recorder."""
    with recorded_proxy(KEY, nginx=request.param) as running:
        yield running


def test_the_battery_keeps_the_property(proxied):
    probes = battery(ROUTES, CORE) + list(ISSUE_BYPASSES)
    answers = proxied.fire(probes)
    assert violations(answers) == []
    # Not vacuous: the battery has each kind of answer, and every method.
    reached = [a for a in answers if a.reached]
    assert any(not a.probe.keyed and a.reached[0].target == "/health" for a in reached)
    assert any(a.reached[0].path.startswith("/v1/") for a in reached)
    assert {a.status for a in answers if not a.reached} >= {400, 401, 403}
    assert {p.method for p in probes} == set(METHODS)
    assert len(probes) > 5000


def test_the_issue_bypasses_are_refused_with_the_json_body(proxied):
    for answer in proxied.fire(list(ISSUE_BYPASSES)):
        assert answer.reached == (), answer.probe
        assert answer.status == 403, answer.probe
        expected = b"" if answer.probe.method == "HEAD" else b'{"error":"Forbidden"}\n'
        assert answer.body == expected


def _render_before_issue_8(**options: Any) -> str:
    """The proxy config as it was before issue 8, with run_proxy's parameters."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(DATA), autoescape=False)
    return env.get_template("nginx.conf.before-issue-8.j2").render(
        listen=f"{options['listen_address']}:{options['listen_port']}", **options
    )


def test_the_battery_finds_the_bypass_in_the_config_before_issue_8():
    """Proof that the property test can fail: every request issue 8 names reached the
    upstream without the key, as a raw path other than /health."""
    with recorded_proxy(KEY, render=_render_before_issue_8) as old:
        for answer in old.fire(list(ISSUE_BYPASSES)):
            assert answer.status == 200, answer.probe
            assert answer.reached[0].target != "/health"
            assert "without the key" in " ".join(violations([answer]))
        assert len(violations(old.fire(battery(ROUTES, CORE)))) > 100


# Pieces a random path is made of: separators, dots and their escapes, the open and the
# guarded names, case changes, a query and a fragment.
_PIECES = st.sampled_from(
    [
        "/",
        "//",
        ".",
        "..",
        "%2e",
        "%2E",
        "%2f",
        "%2F",
        "%25",
        "%00",
        "\\",
        ";",
        "?",
        "#",
        "health",
        "Health",
        "metrics",
        "v1",
        "V1",
        "models",
        "invocations",
        "%68ealth",
        "%76%31",
        "x",
    ]
)


@settings(
    max_examples=400,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    pieces=st.lists(_PIECES, min_size=1, max_size=10),
    absolute=st.booleans(),
    method=st.sampled_from(METHODS),
    keyed=st.booleans(),
)
def test_random_paths_keep_the_property(proxied, pieces, absolute, method, keyed):
    target = ("http://x" if absolute else "") + "/" + "".join(pieces)
    answers = proxied.fire([Probe(method, target, keyed, "random")])
    assert violations(answers) == []


# --- HEAD, methods, redirects, refusal bodies -----------------------------------------------


def test_head_health_is_answered_from_a_get(proxied):
    (answer,) = proxied.fire([Probe("HEAD", "/health", False, "head")])
    assert answer.status == 200
    assert answer.body == b""
    assert [seen.line for seen in answer.reached] == ["GET /health HTTP/1.1"]


@pytest.mark.parametrize("method", [m for m in METHODS if m not in ("GET", "HEAD")])
def test_other_methods_on_health_are_refused(proxied, method):
    for keyed in (False, True):
        (answer,) = proxied.fire([Probe(method, "/health", keyed, "method")])
        assert answer.reached == ()
        assert answer.status == 403
        assert answer.body == b'{"error":"Forbidden"}\n'


def test_a_redirect_from_vllm_keeps_the_port(proxied):
    """vLLM builds a redirect (Starlette's trailing-slash one) from the Host header: nginx
    must pass the client's Host with its port ($http_host), not $host without it."""
    proxy = proxied.proxy
    (answer,) = proxied.fire([Probe("GET", "/v1/models/", True, "redirect")])
    assert answer.status == 307
    assert answer.reached[0].headers["host"] == f"127.0.0.1:{proxy.port}"
    assert answer.headers["location"] == f"http://127.0.0.1:{proxy.port}/v1/models"


def test_a_request_without_host_still_names_a_host_upstream(proxied):
    proxy = proxied.proxy
    request = f"GET /v1/models HTTP/1.0\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode()
    status, _, body = send_raw(proxy.port, request)
    assert (status, body) == (200, b'{"recorder":"ok"}')


def _big_header() -> bytes:
    return b"X-Big: " + b"a" * 40000 + b"\r\n"


REFUSALS = [
    ("no key", b"GET /v1/models HTTP/1.1\r\nHost: h\r\n", 401, "Unauthorized"),
    ("other path", b"POST /metrics HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n", 403, None),
    ("TRACE", b"TRACE /v1/models HTTP/1.1\r\nHost: h\r\n", 403, "Forbidden"),
    ("bad escape", b"GET /v1/%zz HTTP/1.1\r\nHost: h\r\n", 400, "Bad Request"),
    ("NUL escape", b"GET /v1/a%00 HTTP/1.1\r\nHost: h\r\n", 400, "Bad Request"),
    ("star target", b"OPTIONS * HTTP/1.1\r\nHost: h\r\n", 400, "Bad Request"),
    ("above root", b"GET /../health HTTP/1.1\r\nHost: h\r\n", 400, "Bad Request"),
    ("no Host", b"GET /health HTTP/1.1\r\n", 400, "Bad Request"),
    ("HTTP/2.0 line", b"GET /health HTTP/2.0\r\nHost: h\r\n", 505, None),
    ("gzip body", b"POST /v1/x HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n", 501, None),
    (
        "body too large",
        f"POST /v1/x HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {KEY}\r\n"
        "Content-Length: 99999999\r\n".encode(),
        413,
        None,
    ),
    ("URI too long", b"GET /v1/" + b"a" * 20000 + b" HTTP/1.1\r\nHost: h\r\n", 414, None),
    ("header too large", b"GET /v1/models HTTP/1.1\r\nHost: h\r\n" + _big_header(), 400, None),
]


@pytest.mark.parametrize(
    ("name", "request_bytes", "status", "body"), REFUSALS, ids=[r[0] for r in REFUSALS]
)
def test_every_refusal_is_one_small_json_body(proxied, name, request_bytes, status, body):
    upstream, proxy = proxied.upstream, proxied.proxy
    upstream.clear()
    got_status, headers, got_body = send_raw(
        proxy.port, request_bytes + b"Connection: close\r\n\r\n"
    )
    assert got_status == status, name
    assert headers["content-type"] == "application/json", name
    assert got_body.startswith(b'{"error":"') and got_body.endswith(b'"}\n'), got_body[:200]
    if body is not None:
        assert got_body == b'{"error":"%s"}\n' % body.encode()
    assert ("www-authenticate" in headers) == (status == 401)
    if status == 401:
        assert headers["www-authenticate"] == "Bearer"
    assert upstream.seen == []


def test_upstream_down_is_a_json_502():
    with run_recorder() as upstream:
        address = upstream.address
    with run_proxy(upstream=address, api_key=KEY) as proxy:
        status, headers, body = send_raw(proxy.port, b"GET /health HTTP/1.1\r\nHost: h\r\n\r\n")
    assert (status, body) == (502, b'{"error":"Bad Gateway"}\n')
    assert headers["content-type"] == "application/json"


# --- the reference normalisation the property uses ------------------------------------------


@pytest.mark.parametrize(
    ("raw", "normal"),
    [
        ("/v1/models", "/v1/models"),
        ("/v1//models/", "/v1/models/"),
        ("/v1/%6dodels", "/v1/models"),
        ("/v1/a%2Fb", "/v1/a/b"),
        ("/v1/a%3fb", "/v1/a%3Fb"),
        ("/v1/./x/../models", "/v1/models"),
        ("/v1/..", "/"),
    ],
)
def test_normal_form(raw, normal):
    assert normal_form(raw) == normal


@pytest.mark.parametrize(
    ("target", "judged"),
    [
        ("/metrics/../health", "/health"),
        ("/metrics%2f..%2fhealth", "/health"),
        ("/metrics/%2E%2E/health?x=/../v1", "/health"),
        ("http://x/metrics//../health#frag", "/health"),
        ("/v1/a%3Fb", "/v1/a?b"),
    ],
)
def test_judged_path(target, judged):
    assert judged_path(target) == judged
