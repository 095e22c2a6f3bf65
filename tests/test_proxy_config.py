"""The allowlisting proxy, tested with the real Debian nginx in front of the vLLM stand-in."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
import requests

from infra.proxy_config import (
    AUTH_INCLUDE_PATH,
    AUTH_INCLUDE_SH,
    PROXY_IMAGE,
    render_auth_include,
    render_proxy_config,
)
from tests.support.nginx import NGINX_BUILDS, check_config, run_proxy
from tests.support.vllm_standin import (
    PROXY_BLOCKED_PATHS,
    RecordedRequest,
    StandinConfig,
    VllmStandin,
    run_standin,
)

KEY = "Kq7.x+y/z~-0123456789abcdefghijkl=="  # every non-alphanumeric the alphabet allows
GOOD = {"Authorization": f"Bearer {KEY}"}
CHAT = {
    "model": "Qwen/Qwen2.5-7B-Instruct",
    "messages": [{"role": "user", "content": "Capital of France?"}],
}


def _recorded(vllm: VllmStandin, count: int) -> list[RecordedRequest]:
    """vLLM's requests once `count` are recorded: the stand-in records a request just after
    answering it, so a client can see the answer a moment before the record exists."""
    deadline = time.monotonic() + 5
    while len(vllm.requests) < count and time.monotonic() < deadline:
        time.sleep(0.01)
    return vllm.requests


@pytest.fixture
def stack():
    """vLLM as it runs on the VM (key enforced on /v1, open paths open) behind the proxy."""
    with (
        run_standin(StandinConfig(api_key=KEY)) as vllm,
        run_proxy(upstream=f"127.0.0.1:{vllm.port}", api_key=KEY) as proxy,
    ):
        yield vllm, proxy


def test_health_passes_without_a_key(stack):
    vllm, proxy = stack
    r = requests.get(f"{proxy.url}/health", timeout=5)
    assert r.status_code == 200
    assert [q.path for q in _recorded(vllm, 1)] == ["/health"]


def test_health_only_get(stack):
    vllm, proxy = stack
    r = requests.post(f"{proxy.url}/health", timeout=5)
    assert r.status_code == 403
    assert vllm.paths() == []


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key-0123456789abcdefghijklmnop"},
        {"Authorization": f"Bearer {KEY}x"},
        {"Authorization": f"Bearer {KEY[:-1]}"},
        {"Authorization": f"Basic {KEY}"},
        {"Authorization": f"Bearer  {KEY}"},  # vLLM splits on one space: this token is " KEY"
        {"Authorization": KEY},
        {"X-Api-Key": KEY},
    ],
    ids=["none", "wrong", "longer", "shorter", "basic", "two-spaces", "no-scheme", "other-header"],
)
def test_v1_refused_without_the_right_key(stack, headers):
    vllm, proxy = stack
    for method, path in (("GET", "/v1/models"), ("POST", "/v1/chat/completions")):
        r = requests.request(method, f"{proxy.url}{path}", headers=headers, json=CHAT, timeout=5)
        assert r.status_code == 401, (method, path)
        assert r.json() == {"error": "Unauthorized"}
        assert r.headers["WWW-Authenticate"] == "Bearer"
    assert vllm.paths() == [], "a request without the key reached vLLM"


def test_key_regex_is_escaped():
    """A '.' or '+' in the key must match only itself: with an unescaped regex, 'x' would
    match '.' and a run of the previous character would match '+'."""
    key = "a" * 30 + ".b+"
    with (
        run_standin(StandinConfig(api_key=None)) as vllm,
        run_proxy(upstream=f"127.0.0.1:{vllm.port}", api_key=key) as proxy,
    ):
        for near in ("a" * 30 + "xb+", "a" * 30 + ".bb", "a" * 30 + ".b"):
            r = requests.get(
                f"{proxy.url}/v1/models", headers={"Authorization": f"Bearer {near}"}, timeout=5
            )
            assert r.status_code == 401, near
        r = requests.get(
            f"{proxy.url}/v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=5
        )
        assert r.status_code == 200


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_v1_passes_with_the_key_any_scheme_case(stack, scheme):
    vllm, proxy = stack
    r = requests.get(
        f"{proxy.url}/v1/models", headers={"Authorization": f"{scheme} {KEY}"}, timeout=5
    )
    assert r.status_code == 200
    assert r.json()["data"][0]["id"] == "Qwen/Qwen2.5-7B-Instruct"
    # The header reaches vLLM, which checks the key again (defence in depth).
    assert [(q.path, q.auth) for q in _recorded(vllm, 1)] == [("/v1/models", "valid")]


def test_keyed_chat_completion_passes(stack):
    vllm, proxy = stack
    r = requests.post(f"{proxy.url}/v1/chat/completions", headers=GOOD, json=CHAT, timeout=5)
    assert r.status_code == 200
    assert "Paris" in r.json()["choices"][0]["message"]["content"]
    assert _recorded(vllm, 1)[-1].json() == CHAT


# /metrics is the one exception, for key holders (tests/test_proxy_metrics_tls.py).
@pytest.mark.parametrize(
    "path", sorted((PROXY_BLOCKED_PATHS - {"/metrics"}) | {"/v2/models", "/docs", "/"})
)
def test_open_vllm_paths_refused_with_or_without_key(stack, path):
    vllm, proxy = stack
    for headers in ({}, GOOD):
        for method in ("GET", "POST"):
            body = {"prompt": "hi", "model": CHAT["model"], **CHAT}
            r = requests.request(
                method, f"{proxy.url}{path}", headers=headers, json=body, timeout=5
            )
            assert r.status_code == 403, (method, path, headers.keys())
            assert r.json() == {"error": "Forbidden"}
    assert vllm.paths() == [], f"{path} reached vLLM"


@pytest.mark.parametrize(
    "raw_path",
    [
        "/v1/../metrics",
        "/v1/%2e%2e/invocations",
        "/health/../tokenize",
        "//metrics",
        "/V1/models",
        "/v1",
        "/healthz",
        "/health/x",
    ],
)
def test_path_tricks_do_not_reach_open_paths(stack, raw_path):
    vllm, proxy = stack
    conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
    try:
        conn.request("POST", raw_path, body=json.dumps(CHAT), headers={"Content-Type": "x"})
        status = conn.getresponse().status
    finally:
        conn.close()
    assert status in (400, 403), raw_path
    assert vllm.paths() == []


def test_sse_chunks_arrive_unbuffered(stack):
    """The first event reaches the client while vLLM is still streaming: the stand-in records
    a request only after its last chunk, so the record must not exist yet."""
    vllm, proxy = stack
    vllm.config = StandinConfig(api_key=KEY, stream_chunks=("Par", "is", "!"), chunk_delay=0.4)
    with requests.post(
        f"{proxy.url}/v1/chat/completions",
        headers=GOOD,
        json={**CHAT, "stream": True},
        stream=True,
        timeout=10,
    ) as r:
        assert r.status_code == 200
        assert r.headers["Content-Type"].startswith("text/event-stream")
        assert r.headers["X-Accel-Buffering"] == "no"
        lines = r.iter_lines()
        first = next(line for line in lines if line)
        assert first.startswith(b"data: {")
        assert vllm.requests == [], "vLLM had already finished: the proxy buffered the stream"
        rest = [line for line in lines if line]
    assert rest[-1] == b"data: [DONE]"
    assert len(rest) == 1 + 3 + 1  # three content events, the finish event, [DONE]
    assert _recorded(vllm, 1)[-1].status == 200


def test_no_secret_in_logs(stack):
    _vllm, proxy = stack
    requests.get(f"{proxy.url}/v1/models", headers=GOOD, timeout=5)
    requests.get(f"{proxy.url}/v1/models", headers={"Authorization": "Bearer nope"}, timeout=5)
    log = proxy.access_log()
    assert "/v1/models" in log
    assert KEY not in log
    assert KEY not in proxy.error_log()


def test_runs_as_an_unprivileged_user_under_its_own_prefix():
    """The pod or a developer may run nginx without root: everything it writes is under -p."""
    root = os.geteuid() == 0
    uid = 65534 if root else os.geteuid()
    with (
        run_standin(StandinConfig(api_key=KEY)) as vllm,
        run_proxy(
            upstream=f"127.0.0.1:{vllm.port}", api_key=KEY, run_as_uid=uid if root else None
        ) as proxy,
    ):
        status = Path(f"/proc/{proxy.process.pid}/status").read_text()
        real_uid = next(line.split()[1] for line in status.splitlines() if line.startswith("Uid:"))
        assert int(real_uid) == uid != 0
        r = requests.get(f"{proxy.url}/v1/models", headers=GOOD, timeout=5)
        assert r.status_code == 200
        assert requests.get(f"{proxy.url}/tokenize", timeout=5).status_code == 403


def test_upstream_down_is_a_gateway_error_not_a_hang():
    port = _closed_port()
    with run_proxy(upstream=f"127.0.0.1:{port}", api_key=KEY) as proxy:
        assert requests.get(f"{proxy.url}/health", timeout=10).status_code == 502
        r = requests.get(f"{proxy.url}/v1/models", headers=GOOD, timeout=10)
        assert r.status_code == 502


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- the rendered text -----------------------------------------------------------------------


@pytest.mark.parametrize("nginx", NGINX_BUILDS)
def test_default_config_is_valid_nginx_and_has_no_secret(tmp_path, nginx):
    text = render_proxy_config()
    assert "listen 8000;" in text
    assert "server 127.0.0.1:8001;" in text
    assert f"include {AUTH_INCLUDE_PATH};" in text
    assert "proxy_buffering off;" in text
    assert "proxy_http_version 1.1;" in text
    read_timeout = max(int(t) for t in re.findall(r"proxy_read_timeout (\d+)s;", text))
    assert read_timeout >= 600
    # nginx -t with the include pointed at a real file (the default lives in /etc on machines).
    auth = tmp_path / "auth.conf"
    auth.write_text(render_auth_include(KEY))
    result = check_config(text.replace(AUTH_INCLUDE_PATH, str(auth)), nginx=nginx)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr


def test_idle_upstream_connections_close_before_vllm_closes_them(tmp_path):
    """vLLM's HTTP server (uvicorn) closes an idle keep-alive connection after 5 s. nginx must
    drop its idle upstream connections sooner, or it may reuse one vLLM is closing and, since
    it does not retry a POST, answer 502. The directive must sit in the upstream block (where
    it limits the kept connections to vLLM) and real nginx must accept it."""
    text = render_proxy_config()
    upstream = re.search(r"upstream llm_endpoint_vllm \{(.*?)\}", text, re.DOTALL)
    assert upstream is not None
    block = upstream.group(1)
    assert re.search(r"^\s*keepalive 16;$", block, re.MULTILINE)
    timeouts = re.findall(r"^\s*keepalive_timeout (\d+)s;$", block, re.MULTILINE)
    assert timeouts == ["4"]
    assert int(timeouts[0]) < 5  # uvicorn's default --timeout-keep-alive
    auth = tmp_path / "auth.conf"
    auth.write_text(render_auth_include(KEY))
    result = check_config(text.replace(AUTH_INCLUDE_PATH, str(auth)))
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    # And the same directive is rejected where it would not apply: proof that nginx -t parses
    # the upstream block rather than ignoring it.
    broken = text.replace("keepalive_timeout 4s;", "keepalive_timeout 4s 4s 4s;")
    result = check_config(broken.replace(AUTH_INCLUDE_PATH, str(auth)))
    assert result.returncode != 0
    assert "keepalive_timeout" in result.stderr


def test_config_fails_closed_without_the_auth_include(tmp_path):
    text = render_proxy_config(auth_include=str(tmp_path / "missing.conf"))
    result = check_config(text)
    assert result.returncode != 0
    assert "missing.conf" in result.stderr


def test_parameters_are_validated():
    with pytest.raises(ValueError, match="upstream"):
        render_proxy_config(upstream="127.0.0.1:8001; include /etc/passwd")
    with pytest.raises(ValueError, match="auth_include"):
        render_proxy_config(auth_include="relative.conf")
    with pytest.raises(ValueError, match="temp_dir"):
        render_proxy_config(temp_dir="/tmp dir")
    with pytest.raises(ValueError, match="listen_port"):
        render_proxy_config(listen_port=70000)
    assert "listen [::1]:9000;" in render_proxy_config(listen_address="[::1]", listen_port=9000)
    assert "server vllm:8001;" in render_proxy_config(upstream="vllm:8001")


def test_proxy_image_is_pinned():
    name, _, tag = PROXY_IMAGE.partition(":")
    assert name == "nginx"
    assert re.fullmatch(r"\d+\.\d+\.\d+-alpine", tag), "pin an exact nginx release"


# --- the auth include, from Python and from the shell ----------------------------------------


@pytest.mark.parametrize("bad", ["", "has space", 'quo"te', "semi;colon", "new\nline", "dollar$"])
def test_auth_include_refuses_keys_outside_the_bearer_alphabet(bad):
    with pytest.raises(ValueError, match="API key"):
        render_auth_include(bad)


def _run_shell_writer(
    shell: str, key: str, dest: Path, path_env: str
) -> subprocess.CompletedProcess[str]:
    script = (
        AUTH_INCLUDE_SH + '\nprintf "%s" "$LEPA_TEST_KEY" | llm_endpoint_write_proxy_auth "$1"\n'
    )
    return subprocess.run(
        [shell, "-c", script, "writer", str(dest)],
        env={"PATH": path_env, "LEPA_TEST_KEY": key},
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )


@pytest.mark.parametrize("shell", ["sh", "bash"])
@pytest.mark.parametrize("key", [KEY, "A" * 48, "z0~-._+/="])
def test_shell_writer_matches_python(tmp_path, shell, key):
    # A recording `sed` first on PATH: the key must not be on its (or any) command line.
    stubs = tmp_path / "bin"
    stubs.mkdir()
    argv_log = tmp_path / "argv.log"
    (stubs / "sed").write_text(f'#!/bin/sh\necho "$*" >> {argv_log}\nexec /bin/sed "$@"\n')
    (stubs / "sed").chmod(0o755)
    dest = tmp_path / "proxy-auth.conf"
    result = _run_shell_writer(shell, key, dest, f"{stubs}:{os.environ['PATH']}")
    assert result.returncode == 0, result.stderr
    assert dest.read_text() == render_auth_include(key)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert argv_log.read_text().strip()  # sed did run through the recorder
    assert key not in argv_log.read_text()
    assert key not in result.stdout + result.stderr


@pytest.mark.parametrize("bad", ["", "has space", 'quo"te', "x;y", "a$b"])
def test_shell_writer_refuses_bad_keys(tmp_path, bad):
    dest = tmp_path / "proxy-auth.conf"
    result = _run_shell_writer("sh", bad, dest, os.environ["PATH"])
    assert result.returncode != 0
    assert "refusing" in result.stderr
    assert not dest.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary file left behind


def test_shell_written_include_works_in_nginx(tmp_path):
    dest = tmp_path / "proxy-auth.conf"
    assert _run_shell_writer("sh", KEY, dest, os.environ["PATH"]).returncode == 0
    with (
        run_standin(StandinConfig(api_key=KEY)) as vllm,
        run_proxy(upstream=f"127.0.0.1:{vllm.port}", auth_include_text=dest.read_text()) as proxy,
    ):
        assert requests.get(f"{proxy.url}/v1/models", headers=GOOD, timeout=5).status_code == 200
        assert requests.get(f"{proxy.url}/v1/models", timeout=5).status_code == 401


def test_shell_writer_is_posix_sh(tmp_path):
    """RunPod pods may run it under dash or busybox sh, not bash."""
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "install shellcheck (apt-get install shellcheck) or run `bash .ci/run`"
    script = tmp_path / "writer.sh"
    script.write_text(AUTH_INCLUDE_SH)
    result = subprocess.run(
        [shellcheck, "--shell=sh", str(script)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout
