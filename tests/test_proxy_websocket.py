"""vLLM's `/v1/realtime` is a WebSocket (docs/facts/vllm.md, "Routes that matter"): a real
handshake through Debian's nginx with the project's config, both ends on loopback, with the
`websockets` library (client and upstream server)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect
from websockets.sync.server import Server, ServerConnection, serve

from tests.support.nginx import NGINX_BUILDS, RunningNginx, run_proxy
from tests.support.route_inventory import load_routes

KEY = "Kq7.x+y/z~-0123456789abcdefghijkl=="
# Every WebSocket route vLLM has (docs/facts/vllm-routes.json): /v1/realtime in 0.33.0.
WEBSOCKETS = [r.example for r in load_routes() if r.kind == "websocket"]


@dataclass
class EchoUpstream:
    """A WebSocket upstream that records each handshake's path and headers and echoes text."""

    server: Server
    handshakes: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    @property
    def address(self) -> str:
        host, port = self.server.socket.getsockname()[:2]
        return f"{host}:{port}"


@pytest.fixture(params=NGINX_BUILDS)
def realtime(request) -> Iterator[tuple[EchoUpstream, RunningNginx]]:
    upstream: EchoUpstream

    def handler(ws: ServerConnection) -> None:
        assert ws.request is not None
        upstream.handshakes.append((ws.request.path, dict(ws.request.headers.raw_items())))
        for message in ws:
            ws.send(f"echo {message!s}")

    with serve(handler, "127.0.0.1", 0) as server:
        upstream = EchoUpstream(server)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        with run_proxy(upstream=upstream.address, api_key=KEY, nginx=request.param) as proxy:
            yield upstream, proxy
        server.shutdown()
        thread.join(timeout=5)


def test_the_websocket_routes_are_under_v1():
    assert WEBSOCKETS == ["/v1/realtime"]


@pytest.mark.parametrize("route", WEBSOCKETS)
def test_realtime_websocket_works_through_the_proxy_with_the_key(realtime, route):
    upstream, proxy = realtime
    url = f"ws://127.0.0.1:{proxy.port}{route}?model=m"
    with connect(url, additional_headers={"Authorization": f"Bearer {KEY}"}, open_timeout=10) as ws:
        ws.send("session.update")
        assert ws.recv(timeout=10) == "echo session.update"
        ws.send("input_audio_buffer.append")
        assert ws.recv(timeout=10) == "echo input_audio_buffer.append"
    ((path, headers),) = upstream.handshakes
    assert path == f"{route}?model=m"
    names = {name.lower(): value for name, value in headers.items()}
    assert names["upgrade"].lower() == "websocket"
    assert "upgrade" in names["connection"].lower()
    assert names["authorization"] == f"Bearer {KEY}"  # vLLM checks it again
    assert names["host"] == f"127.0.0.1:{proxy.port}"


@pytest.mark.parametrize("route", WEBSOCKETS)
@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}])
def test_realtime_websocket_is_refused_without_the_key(realtime, route, headers):
    upstream, proxy = realtime
    with pytest.raises(InvalidStatus) as refused:
        connect(f"ws://127.0.0.1:{proxy.port}{route}", additional_headers=headers)
    assert refused.value.response.status_code == 401
    assert refused.value.response.body == b'{"error":"Unauthorized"}\n'
    assert upstream.handshakes == []


def test_a_websocket_elsewhere_is_refused_with_the_key(realtime):
    upstream, proxy = realtime
    for path in ("/metrics", "/v1/../metrics", "/realtime"):
        with pytest.raises(InvalidStatus) as refused:
            connect(
                f"ws://127.0.0.1:{proxy.port}{path}",
                additional_headers={"Authorization": f"Bearer {KEY}"},
            )
        assert refused.value.response.status_code == 403, path
    assert upstream.handshakes == []
