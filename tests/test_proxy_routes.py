"""Every route vLLM has (docs/facts/vllm-routes.json, from vLLM's own app) against the proxy:
Debian's nginx with the project's config in front of an upstream recording raw request lines.
`/v1/*` routes pass with the key and get 401 without; every other route gets 403 with or
without the key, except `GET /health` (and HEAD, sent on as GET)."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from infra import serving
from infra.proxy_config import render_proxy_config
from tests.support.nginx import NGINX_BUILDS
from tests.support.proxy_battery import METHODS, Probe, RecordedProxy, recorded_proxy
from tests.support.route_inventory import Route, load_inventory, load_routes

KEY = "Kq7.x+y/z~-0123456789abcdefghijkl=="
ROUTES = load_routes()


@pytest.fixture(scope="module", params=NGINX_BUILDS)
def proxied(request) -> Iterator[RecordedProxy]:
    """The proxy in each supported nginx build (the machine's, and 1.18) before the recorder."""
    with recorded_proxy(KEY, nginx=request.param) as running:
        yield running


def test_the_inventory_is_for_the_vllm_version_served():
    """Regenerate docs/facts/vllm-routes.json (scripts/vllm_routes.py) on every vLLM bump."""
    assert load_inventory()["vllm_version"] == serving.VLLM_VERSION, (
        "docs/facts/vllm-routes.json was made from another vLLM than infra/serving.py serves: "
        "run scripts/vllm_routes.py with that vLLM (docs/security.md, 'The route inventory')"
    )


def test_the_inventory_has_the_routes_the_proxy_is_about():
    """A sanity check on the file itself: what issue 8 and docs/facts/vllm.md rely on."""
    kinds = {(r.path, r.kind) for r in ROUTES}
    assert {("/health", "http"), ("/v1/models", "http"), ("/v1/chat/completions", "http")} <= kinds
    assert ("/metrics", "mount") in kinds
    assert ("/v1/realtime", "websocket") in kinds
    assert {"/invocations", "/tokenize", "/pooling", "/score", "/v2/embed"} <= {
        r.path for r in ROUTES
    }
    assert len(ROUTES) > 50


def _methods(route: Route) -> tuple[str, ...]:
    """The route's own methods, and GET and POST whatever they are: a wrong method must be
    refused (or passed, under /v1/ with the key) exactly like a right one."""
    if route.kind != "http":
        return ("GET", "POST")
    return tuple(sorted({*route.methods, "GET", "POST"}))


def _targets(route: Route) -> tuple[str, ...]:
    if route.kind == "mount":  # a prefix: anything below it reaches the mounted app
        return (route.example, f"{route.example}/x", f"{route.example}x")
    return (route.example,)


def _probes(route: Route) -> list[Probe]:
    return [
        Probe(method, target, keyed, "inventory")
        for target in _targets(route)
        for method in _methods(route)
        for keyed in (False, True)
    ]


GUARDED = [r for r in ROUTES if r.guarded]


def test_the_proxy_allows_exactly_the_methods_of_vllms_v1_routes(proxied):
    """`limit_except GET POST` in the /v1/ location: the methods the inventory's /v1 routes
    have (a WebSocket handshake is a GET); with the key, any other method is a 403."""
    methods = {m for r in GUARDED for m in (r.methods if r.kind == "http" else ("GET",))}
    assert methods == {"GET", "POST"}
    assert "limit_except GET POST {" in render_proxy_config()
    others = [m for m in METHODS if m not in ("GET", "HEAD", "POST")]
    for answer in proxied.fire([Probe(m, "/v1/models", True, "method") for m in others]):
        assert (answer.status, answer.reached) == (403, ()), answer.probe


OTHER = [r for r in ROUTES if not r.guarded]


@pytest.mark.parametrize("route", GUARDED, ids=[f"{r.kind}:{r.path}" for r in GUARDED])
def test_a_v1_route_passes_with_the_key_and_gets_401_without(proxied, route):
    for answer in proxied.fire(_probes(route)):
        probe = answer.probe
        if probe.keyed:
            assert [seen.line for seen in answer.reached] == [
                f"{probe.method} {probe.target} HTTP/1.1"
            ], probe
            assert answer.status == 200
        else:
            assert answer.reached == (), probe
            assert answer.status == 401, probe
            assert answer.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize("route", OTHER, ids=[f"{r.kind}:{r.path}" for r in OTHER])
def test_every_other_route_gets_403_with_or_without_the_key(proxied, route):
    for answer in proxied.fire(_probes(route)):
        probe = answer.probe
        if probe.target == "/health" and probe.method in ("GET", "HEAD"):
            assert [seen.line for seen in answer.reached] == ["GET /health HTTP/1.1"]
            assert answer.status == 200
            continue
        if probe.target == "/metrics" and probe.method == "GET":
            # The one exception (issue 12): exactly GET /metrics, for key holders only.
            if probe.keyed:
                assert [seen.line for seen in answer.reached] == ["GET /metrics HTTP/1.1"]
                assert answer.status == 200
            else:
                assert answer.reached == () and answer.status == 401, probe
            continue
        assert answer.reached == (), probe
        assert answer.status == 403, probe
        assert answer.body == (b"" if probe.method == "HEAD" else b'{"error":"Forbidden"}\n')


VLLM_PYTHON = os.environ.get("LLM_TEST_VLLM_PYTHON", "")


@pytest.mark.skipif(
    not VLLM_PYTHON,
    reason="set LLM_TEST_VLLM_PYTHON to a Python with vLLM installed (vLLM is a multi-GB "
    "download, so CI does not have it; scripts/vllm_routes.py says how to get it)",
)
def test_the_inventory_is_what_vllm_builds(tmp_path):
    """The committed file is exactly what scripts/vllm_routes.py makes from vLLM today."""
    out = tmp_path / "routes.json"
    done = subprocess.run(
        [VLLM_PYTHON, "-m", "scripts.vllm_routes", "--output", str(out)],
        cwd=Path(__file__).resolve().parent.parent,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(out.read_text()) == load_inventory()
