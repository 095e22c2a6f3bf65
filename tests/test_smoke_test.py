"""The smoke test against the vLLM stand-in on loopback: each variant gives the right exit code
and names the right finding. Run through the real `main(argv)`."""

from __future__ import annotations

import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from scripts.smoke_test.cli import Deps, main
from tests.support.fake_clock import FakeClock
from tests.support.vllm_standin import (
    DEFAULT_MODEL,
    PROXY_BLOCKED_PATHS,
    StandinConfig,
    run_standin,
)

# Recognisable, so a leak anywhere in the output is caught.
KEY = "SMOKE-SECRET-7f3a9c21e4b8d6"


def no_dns(host: str, port: int) -> Any:
    raise AssertionError(f"unexpected name resolution of {host}")


def make_deps(
    env: dict[str, str] | None = None,
    time_: FakeClock | None = None,
    resolver: Callable[[str, int], Any] = no_dns,
) -> Deps:
    t = time_ or FakeClock(1000.0)
    base = {"VLLM_API_KEY": KEY, "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    return Deps(env=base if env is None else env, resolver=resolver, clock=t.now, sleep=t.sleep)


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def text(self) -> str:
        return self.out + self.err

    @property
    def flat(self) -> str:
        """stdout with hints unwrapped."""
        return " ".join(self.out.split())

    def line(self, number: int) -> str:
        """The report line of check `number`."""
        for line in self.out.splitlines():
            if line.startswith(f"{number} "):
                return line
        raise AssertionError(f"no line for check {number} in:\n{self.out}")

    def report(self) -> dict[str, Any]:
        return json.loads(self.out)  # type: ignore[no-any-return]


@pytest.fixture
def smoke(capsys) -> Callable[..., Run]:
    def run(argv: list[str], deps: Deps | None = None) -> Run:
        code = main(argv, deps or make_deps())
        captured = capsys.readouterr()
        result = Run(code, captured.out, captured.err)
        assert KEY not in result.text, "the API key leaked into the output"
        return result

    return run


@pytest.fixture(autouse=True)
def guard_dns(monkeypatch) -> Iterator[None]:
    """No name lookup may leave the machine: only literal addresses and localhost resolve."""
    real = socket.getaddrinfo

    def guarded(host: Any, *args: Any, **kwargs: Any) -> Any:
        name = host.decode() if isinstance(host, bytes) else str(host)
        if name != "localhost":
            try:
                socket.inet_pton(socket.AF_INET6 if ":" in name else socket.AF_INET, name)
            except OSError:
                raise AssertionError(f"a real DNS query for {name!r} would escape") from None
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", guarded)
    yield


# --- the happy path ------------------------------------------------------------------------


def test_healthy_endpoint_passes_every_check(smoke):
    with run_standin(StandinConfig.deployed(api_key=KEY, chunk_delay=0.01)) as vllm:
        run = smoke([vllm.url])
        # The smoke test stops reading at [DONE]; the stand-in logs the stream just after.
        stream_request = vllm.wait_for_request("/v1/chat/completions")
    assert stream_request.auth == "valid"
    assert run.code == 0
    assert "Result: PASS, 7 of 7 checks passed (exit 0)" in run.out
    for number in range(1, 8):
        assert " PASS " in run.line(number)
    assert "no key -> 401, wrong key -> 401" in run.line(3)
    assert "/invocations -> 403, /metrics -> 403, /tokenize -> 403" in run.line(4)
    assert DEFAULT_MODEL in run.line(5)
    assert "'Paris is the capital of France.'" in run.line(6)
    assert "[DONE]" in run.line(7)
    assert "first token" in run.line(7)
    assert "tokens/s" in run.line(7)
    # What went over the wire: the probes without a key carried none, the others the real one.
    requests_by_path = [(r.method, r.path, r.auth) for r in vllm.requests]
    assert ("GET", "/v1/models", "absent") in requests_by_path
    assert ("GET", "/v1/models", "invalid") in requests_by_path
    assert ("GET", "/v1/models", "valid") in requests_by_path
    assert ("POST", "/v1/completions", "valid") in requests_by_path
    assert ("POST", "/v1/chat/completions", "valid") in requests_by_path
    assert all(r.auth == "not-checked" for r in vllm.requests if r.path == "/invocations")


def test_bare_address_and_port_flag(smoke):
    with run_standin(StandinConfig.deployed(api_key=KEY)) as vllm:
        run = smoke(["127.0.0.1", "--port", str(vllm.port), "--model", DEFAULT_MODEL])
    assert run.code == 0
    assert f"Smoke test of http://127.0.0.1:{vllm.port} (model: {DEFAULT_MODEL})" in run.out


def test_url_port_wins_over_port_flag(smoke):
    with run_standin(StandinConfig.deployed(api_key=KEY)) as vllm:
        run = smoke([vllm.url, "--port", "1"])
    assert run.code == 0
    assert vllm.requests


def test_ipv6_address(smoke):
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    try:
        standin = run_standin(StandinConfig.deployed(api_key=KEY), host="::1")
        vllm = standin.__enter__()
    except OSError:
        pytest.skip("::1 is not configured here")
    try:
        run = smoke(["::1", "--port", str(vllm.port)])
    finally:
        standin.__exit__(None, None, None)
    assert run.code == 0
    assert f"http://[::1]:{vllm.port}" in run.out


def test_host_name_is_resolved_then_checked(smoke):
    seen: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> Any:
        seen.append((host, port))
        return []

    with run_standin(StandinConfig.deployed(api_key=KEY)) as vllm:
        run = smoke([f"http://localhost:{vllm.port}"], make_deps(resolver=resolver))
    assert seen == [("localhost", vllm.port)]
    assert run.code == 0


def test_key_from_flag_overrides_environment(smoke):
    with run_standin(StandinConfig.deployed(api_key=KEY)) as vllm:
        env = {"VLLM_API_KEY": "not-the-key", "PATH": "/usr/bin"}
        run = smoke([vllm.url, "--api-key", KEY], make_deps(env=env))
    assert run.code == 0


# --- findings: exit 1 ------------------------------------------------------------------------


def test_auth_not_enforced(smoke):
    with run_standin(StandinConfig.deployed(api_key=None)) as vllm:
        run = smoke([vllm.url])
    assert run.code == 1
    assert " FAIL " in run.line(3)
    assert "no key -> 200, wrong key -> 200" in run.line(3)
    assert "VLLM_API_KEY" in run.out  # the hint says what to fix
    assert "Result: FAIL" in run.out


def test_key_refused_with_403_is_not_what_clients_expect(smoke):
    # A gateway that checks keys itself but answers 403: refused, yet not the deployment's
    # proxy (which answers 401, as vLLM does), and OpenAI-compatible clients expect 401.
    with run_standin(StandinConfig.deployed(api_key=KEY, unauthorized_status=403)) as vllm:
        run = smoke([vllm.url])
    assert run.code == 1
    assert " FAIL " in run.line(3)
    assert "no key -> 403, wrong key -> 403 (expected 401 for both) [auth-status]" in run.line(3)
    assert "OpenAI-compatible clients expect 401" in run.flat
    assert "the deployment's proxy answers 401 on /v1/" in run.flat
    assert " PASS " in run.line(5)  # the real key works; only the refusals are off


def test_wrong_key_is_reported_as_refused(smoke):
    with run_standin(StandinConfig.deployed(api_key="the-real-key")) as vllm:
        run = smoke([vllm.url])
    assert run.code == 1
    assert " PASS " in run.line(3)
    assert "the key was refused (401)" in run.line(5)
    assert "pulumi stack output api_key --show-secrets" in run.flat
    assert "SKIP" in run.line(6)
    assert "SKIP" in run.line(7)


def test_invocations_left_open(smoke):
    with run_standin(StandinConfig.deployed(api_key=KEY, open_paths={"/invocations"})) as vllm:
        run = smoke([vllm.url])
    assert run.code == 1
    assert "/invocations answered without a key" in run.line(4)
    assert "/metrics -> 403" in run.line(4)
    assert "proxy must" in run.out
    assert " PASS " in run.line(7)  # the other checks still ran


def test_bare_vllm_without_proxy_fails_check_4_and_explains(smoke):
    with run_standin(StandinConfig(api_key=KEY)) as vllm:
        run = smoke([vllm.url])
    assert run.code == 1
    assert "/invocations, /metrics, /tokenize answered without a key" in run.line(4)
    assert "vLLM checks the key only on paths under /v1, /v2, /inference and /cohere" in run.flat


def test_wrong_model(smoke):
    with run_standin(StandinConfig.deployed(api_key=KEY, models=("some/other-model",))) as vllm:
        run = smoke([vllm.url, "--model", DEFAULT_MODEL])
    assert run.code == 1
    assert f"{DEFAULT_MODEL} is not served; served: some/other-model" in run.line(5)
    assert "SKIP" in run.line(6)
    assert all(r.path != "/v1/completions" for r in vllm.requests)


def test_two_models_need_model_flag(smoke):
    config = StandinConfig.deployed(api_key=KEY, models=("org/a", "org/b"))
    with run_standin(config) as vllm:
        without = smoke([vllm.url])
        named = smoke([vllm.url, "--model", "org/b"])
        completions = [r.json()["model"] for r in vllm.requests if r.path == "/v1/completions"]
    assert without.code == 1
    assert "2 models served (org/a, org/b); expected exactly one" in without.line(5)
    assert "--model" in without.out
    assert named.code == 0
    assert completions == ["org/b"]


def test_empty_completion(smoke):
    with run_standin(StandinConfig.deployed(api_key=KEY, completion_text="")) as vllm:
        run = smoke([vllm.url])
    assert run.code == 1
    assert "the completion is empty" in run.line(6)
    assert " PASS " in run.line(7)


def test_stream_without_done(smoke):
    with run_standin(StandinConfig.deployed(api_key=KEY, stream_done=False)) as vllm:
        run = smoke([vllm.url])
    assert run.code == 1
    assert "the stream ended without data: [DONE]" in run.line(7)
    assert "proxy_buffering off" in run.flat


def test_slow_completion_times_out(smoke):
    config = StandinConfig.deployed(
        api_key=KEY, response_delay=30, delayed_paths=frozenset({"/v1/completions"})
    )
    with run_standin(config) as vllm:
        run = smoke([vllm.url, "--timeout", "0.3", "--json"])
    assert run.code == 1
    report = run.report()
    completion = report["checks"][5]
    assert completion["status"] == "FAIL"
    assert completion["failure_class"] == "timeout"
    assert "no answer within 0.3s" in completion["detail"]
    assert report["checks"][6]["status"] == "PASS"


# --- --timeout bounds a request as a whole --------------------------------------------------------
# Each of these servers sends something more often than --timeout, so a bound on each read alone
# would wait forever; pytest's timeout turns such a hang into a failure.

TRICKLE_TIMEOUT_S = 0.5


def _timed_smoke(smoke, argv: list[str]) -> tuple[Run, float]:
    started = time.monotonic()
    run = smoke(argv)
    return run, time.monotonic() - started


@pytest.mark.timeout(10)
def test_stream_kept_alive_without_done_times_out(smoke):
    config = StandinConfig.deployed(api_key=KEY, stream_keepalive=0.05)
    with run_standin(config) as vllm:
        run, took = _timed_smoke(smoke, [vllm.url, "--timeout", str(TRICKLE_TIMEOUT_S)])
        as_json, _ = _timed_smoke(smoke, [vllm.url, "--timeout", str(TRICKLE_TIMEOUT_S), "--json"])
    assert run.code == 1
    line = run.line(7)
    assert " FAIL " in line
    assert "no data: [DONE] within --timeout 0.5s" in line
    assert "keep-alive comments" in line
    assert line.endswith("[timeout]")
    assert "retry with a larger --timeout" in run.flat
    assert all(" PASS " in run.line(n) for n in range(1, 7))
    assert took < 5  # the other checks take milliseconds; the stream is cut at 0.5 s
    stream = as_json.report()["checks"][6]
    assert (stream["status"], stream["failure_class"]) == ("FAIL", "timeout")
    assert stream["data"]["done"] is False
    assert stream["data"]["content_chunks"] == 7  # the content arrived, then only comments
    assert TRICKLE_TIMEOUT_S <= stream["duration_s"] < TRICKLE_TIMEOUT_S + 1.0


@pytest.mark.timeout(10)
@pytest.mark.parametrize(
    ("path", "code", "check", "expected"),
    [
        ("/v1/completions", 1, 6, "began to answer but did not finish within 0.5s [timeout]"),
        ("/v1/models", 1, 5, "began to answer but did not finish within 0.5s [timeout]"),
        # Checks 1-4 need only the status: a body that never ends does not hold them up.
        ("/health", 0, 2, " PASS "),
        ("/metrics", 1, 4, "/metrics answered without a key (/invocations -> 403, /metrics -> 200"),
    ],
)
def test_body_that_trickles_forever_is_cut_at_the_timeout(smoke, path, code, check, expected):
    refused = PROXY_BLOCKED_PATHS - {path}
    config = StandinConfig(api_key=KEY, refused_paths=refused, trickle_paths=frozenset({path}))
    with run_standin(config) as vllm:
        run, took = _timed_smoke(smoke, [vllm.url, "--timeout", str(TRICKLE_TIMEOUT_S)])
    assert run.code == code
    assert expected in run.line(check)
    assert took < 5
    if check == 6:
        assert "sent its answer so slowly" in run.flat
        assert " PASS " in run.line(7)


# --- not reachable / not ready: exit 3 --------------------------------------------------------


def test_slow_health_is_a_timeout(smoke):
    with run_standin(StandinConfig.deployed(api_key=KEY, response_delay=30)) as vllm:
        run = smoke([vllm.url, "--timeout", "0.3"])
    assert run.code == 3
    assert "connected to 127.0.0.1" in run.line(1)
    assert "no answer within 0.3s" in run.line(1)
    assert "--timeout" in run.out
    assert "Result: NOT REACHABLE" in run.out


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_nothing_listening(smoke):
    port = _dead_port()
    run = smoke([f"http://127.0.0.1:{port}", "--json"])
    assert run.code == 3
    report = run.report()
    reach = report["checks"][0]
    assert reach["status"] == "FAIL"
    assert reach["failure_class"] == "connection-refused"
    assert f"connection refused by 127.0.0.1:{port}" == reach["detail"]
    assert "still be booting" in reach["hint"]
    assert "--wait" in reach["hint"]
    assert [c["status"] for c in report["checks"][1:]] == ["SKIP"] * 6
    assert report["result"] == "not-reachable"


def test_nothing_listening_with_wait_retries_until_the_deadline(smoke):
    t = FakeClock(1000.0)
    port = _dead_port()
    run = smoke([f"http://127.0.0.1:{port}", "--wait", "20"], make_deps(time_=t))
    assert run.code == 3
    assert t.sleeps == [2.0, 3.0, 4.5, 6.75, 3.75]  # backoff, cut at the deadline
    assert sum(t.sleeps) == 20
    assert "after 6 attempts over 20s" in run.line(1)
    assert "did not become reachable within --wait 20s" in run.flat
    assert run.err.count("connection refused") == 5  # progress, one line per retry


def test_dns_failure_without_a_real_query(smoke):
    asked: list[tuple[str, int]] = []

    def resolver(host: str, port: int) -> Any:
        asked.append((host, port))
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    run = smoke(["endpoint.invalid"], make_deps(resolver=resolver))
    assert asked == [("endpoint.invalid", 8000)]
    assert run.code == 3
    assert "the name endpoint.invalid does not resolve" in run.line(1)
    assert "pulumi stack output ip" in run.out


def test_health_503_then_ready_with_wait(smoke):
    t = FakeClock(1000.0)
    with run_standin(StandinConfig.deployed(api_key=KEY, health_unready=3)) as vllm:
        run = smoke([vllm.url, "--wait", "600"], make_deps(time_=t))
        health_calls = vllm.paths().count("/health")
    assert run.code == 0
    assert health_calls == 4
    assert t.sleeps == [2.0, 3.0, 4.5]
    assert "after 4 attempts" in run.line(1)
    assert run.err.count("still starting (GET /health -> 503)") == 3


def test_health_503_without_wait_is_not_ready(smoke):
    with run_standin(StandinConfig.deployed(api_key=KEY, health_unready=1)) as vllm:
        run = smoke([vllm.url])
        paths = vllm.paths()
    assert run.code == 3
    assert "still starting: 503" in run.line(2)
    assert "--wait 1200" in run.out
    assert paths == ["/health"]


def test_health_502_never_ready_within_wait(smoke):
    t = FakeClock(1000.0)
    config = StandinConfig.deployed(api_key=KEY, health_unready=10**6, health_unready_status=502)
    with run_standin(config) as vllm:
        run = smoke([vllm.url, "--wait", "30", "--json"], make_deps(time_=t))
    assert run.code == 3
    assert sum(t.sleeps) == 30
    health = run.report()["checks"][1]
    assert health["status"] == "FAIL"
    assert health["detail"].startswith("still starting: 502")
    assert run.report()["result"] == "not-ready"
    assert "within --wait 30s" in health["hint"]
    assert vllm.paths().count("/health") == len(t.sleeps) + 1


def test_health_other_status_fails_but_other_checks_run(smoke):
    config = StandinConfig(api_key=KEY, refused_paths=PROXY_BLOCKED_PATHS | {"/health"})
    with run_standin(config) as vllm:
        run = smoke([vllm.url])
    assert run.code == 1
    assert "answered 403, expected 200" in run.line(2)
    assert " PASS " in run.line(5)


# --- JSON -------------------------------------------------------------------------------------


def test_json_report_shape(smoke):
    with run_standin(StandinConfig.deployed(api_key=KEY, chunk_delay=0.01)) as vllm:
        run = smoke([vllm.url, "--json", "--model", DEFAULT_MODEL])
    assert run.code == 0
    report = run.report()
    assert set(report) == {
        "endpoint",
        "expected_model",
        "result",
        "exit_code",
        "waited_s",
        "stack",
        "checks",
    }
    assert report["endpoint"] == vllm.url
    assert report["expected_model"] == DEFAULT_MODEL
    assert (report["result"], report["exit_code"], report["stack"]) == ("pass", 0, None)
    names = [c["name"] for c in report["checks"]]
    assert names == [
        "reachability",
        "health",
        "auth",
        "open_paths",
        "models",
        "completion",
        "stream",
    ]
    for check in report["checks"]:
        assert set(check) == {
            "number",
            "name",
            "title",
            "status",
            "duration_s",
            "detail",
            "hint",
            "failure_class",
            "data",
        }
        assert check["status"] == "PASS"
        assert check["duration_s"] >= 0
    stream = report["checks"][6]["data"]
    assert stream["done"] is True
    assert stream["completion_tokens"] == 7
    assert stream["time_to_first_token_s"] > 0
    assert stream["tokens_per_s"] > 0
    assert report["checks"][3]["data"] == {
        "/invocations": "403",
        "/metrics": "403",
        "/tokenize": "403",
    }
