"""The smoke test's command line: usage errors send nothing, `--stack` reads Pulumi outputs,
the key never shows, TLS is verified, and `python -m scripts.smoke_test` runs for real."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from scripts.smoke_test.cli import build_parser, main
from tests.support.fake_clock import FakeClock
from tests.support.vllm_standin import DEFAULT_MODEL, StandinConfig, run_standin
from tests.test_smoke_test import KEY, guard_dns, make_deps, smoke

__all__ = ["guard_dns", "smoke"]  # fixtures shared with test_smoke_test.py

PROJECT_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def no_requests(monkeypatch):
    """Fail the test if the smoke test sends any HTTP request."""
    sent: list[str] = []

    def refuse(self, method, url, *args, **kwargs):
        sent.append(f"{method} {url}")
        raise AssertionError(f"a usage error must send nothing, but sent {method} {url}")

    monkeypatch.setattr(requests.Session, "request", refuse)
    return sent


# --- usage errors: exit 2, nothing sent ------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["999.1.1.1"], "not a valid IPv4 address"),
        (["1.2.3"], "not a valid IPv4 address"),
        (["bad_name!"], "neither an IP address nor a valid host name"),
        (["127.0.0.1:8000"], "use --port PORT or a URL"),
        (["http://127.0.0.1:8000/v1"], "without a path or query"),
        (["http://127.0.0.1:8000/?x=1"], "without a path or query"),
        (["ftp://127.0.0.1:8000"], "unsupported URL scheme 'ftp'"),
        (["http://user:pw@127.0.0.1:8000"], "must not contain user:password@"),
        (["127.0.0.1", "--port", "0"], "port 0 is out of range"),
        (["127.0.0.1", "--port", "65536"], "port 65536 is out of range"),
        (["http://127.0.0.1:99999"], "not a number from 1 to 65535"),
        (["127.0.0.1", "--wait", "-1"], "--wait must be 0"),
        (["127.0.0.1", "--timeout", "0"], "--timeout must be a positive"),
        (["127.0.0.1", "--index", "1"], "--index picks one of a stack's endpoints"),
        (["http://127.0.0.1", "--ca-file", "/etc/hostname"], "--ca-file verifies https://"),
        (["https://127.0.0.1", "--ca-file", "/nonexistent.pem"], "no such file"),
        ([], "give a TARGET"),
        (["127.0.0.1", "--port", "eighty"], "invalid int value"),
        (["127.0.0.1", "--no-such-flag"], "unrecognized arguments"),
    ],
)
def test_usage_errors_exit_2_and_send_nothing(smoke, no_requests, argv, message):
    run = smoke([*argv, "--api-key", KEY])
    assert run.code == 2
    assert "usage: python -m scripts.smoke_test" in run.err
    assert message in run.err
    assert run.out == ""
    assert no_requests == []


def test_missing_key_is_a_usage_error_and_reaches_no_server(smoke):
    with run_standin(StandinConfig.deployed(api_key=KEY)) as vllm:
        run = smoke([vllm.url], make_deps(env={"PATH": "/usr/bin"}))
        assert vllm.requests == []
    assert run.code == 2
    assert "no API key: set VLLM_API_KEY" in run.err


def test_key_with_spaces_is_refused_without_echoing_it(smoke, no_requests):
    run = smoke(["127.0.0.1", "--api-key", f"{KEY} extra"])
    assert run.code == 2
    assert "contains spaces or control characters" in run.err
    assert "extra" not in run.err.replace("[redacted]", "")


# Short enough to be refused, distinctive enough that an echo of it would be seen.
SHORT_KEY = "Zq7-sh0rt-K3y"


@pytest.mark.parametrize(
    ("argv", "env_key"),
    [
        (["127.0.0.1", "--api-key", SHORT_KEY], None),
        (["127.0.0.1", f"--api-key={SHORT_KEY}"], None),
        (["127.0.0.1"], SHORT_KEY),
        # argparse would echo the stray second copy in "unrecognized arguments: ...".
        (["127.0.0.1", "--api-key", SHORT_KEY, SHORT_KEY], None),
        (["127.0.0.1", "--api-key", SHORT_KEY, "--no-such-flag"], None),
    ],
)
def test_short_key_is_refused_without_echo(smoke, no_requests, argv, env_key):
    env = {"PATH": "/usr/bin"} | ({"VLLM_API_KEY": env_key} if env_key else {})
    run = smoke(argv, make_deps(env=env))
    assert run.code == 2
    assert "the API key is too short" in run.err
    assert "the deployments use keys of 32 or more characters" in run.err
    assert SHORT_KEY not in run.text
    assert "[redacted]" not in run.text  # nothing garbled instead
    assert build_parser().format_usage() in run.err  # the usage text, intact
    assert run.out == ""
    assert no_requests == []


def test_one_character_key_does_not_garble_the_usage_text(smoke, no_requests):
    # Redacting "x" used to print e.g. `--inde[redacted]`, showing where the key's letters were.
    run = smoke(["127.0.0.1", "--api-key", "x"])
    assert run.code == 2
    assert build_parser().format_usage() in run.err
    assert "[--index N]" in run.err
    assert "[redacted]" not in run.err
    assert no_requests == []


def test_short_stack_key_is_refused(smoke, tmp_path, no_requests):
    env = fake_pulumi(tmp_path, {"endpoint": "http://127.0.0.1:9", "api_key": SHORT_KEY})
    run = smoke(["--stack", "dev"], make_deps(env=env))
    assert run.code == 2
    assert "the API key is too short" in run.err
    assert SHORT_KEY not in run.text


def test_unused_short_environment_key_is_no_obstacle(smoke):
    with run_standin(StandinConfig.deployed(api_key=KEY)) as vllm:
        env = {"VLLM_API_KEY": "short", "PATH": "/usr/bin"}
        run = smoke([vllm.url, "--api-key", KEY], make_deps(env=env))
    assert run.code == 0


def test_help_lists_exit_codes(smoke):
    run = smoke(["--help"])
    assert run.code == 0
    for flag in ("--port", "--api-key", "--model", "--wait", "--timeout", "--json", "--stack"):
        assert flag in run.out
    assert "3 not reachable, or not ready within --wait" in " ".join(run.out.split())


# --- the key never appears ---------------------------------------------------------------------


VARIANTS = {
    "healthy": StandinConfig.deployed(api_key=KEY),
    "auth-off": StandinConfig.deployed(api_key=None),
    "wrong-key": StandinConfig.deployed(api_key="another-key"),
    "raw-vllm": StandinConfig(api_key=KEY),
    "wrong-model": StandinConfig.deployed(api_key=KEY, models=("x/y",)),
    "two-models": StandinConfig.deployed(api_key=KEY, models=("x/y", "x/z")),
    "empty": StandinConfig.deployed(api_key=KEY, completion_text=""),
    "no-done": StandinConfig.deployed(api_key=KEY, stream_done=False),
    "starting": StandinConfig.deployed(api_key=KEY, health_unready=10),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("as_json", [False, True])
@pytest.mark.parametrize("key_source", ["flag", "flag=", "env"])
def test_key_never_in_output(capsys, variant, as_json, key_source):
    argv_key = {"flag": ["--api-key", KEY], "flag=": [f"--api-key={KEY}"], "env": []}[key_source]
    env = {"PATH": "/usr/bin"} | ({"VLLM_API_KEY": KEY} if key_source == "env" else {})
    with run_standin(VARIANTS[variant]) as vllm:
        argv = [vllm.url, *argv_key, "--wait", "5"] + (["--json"] if as_json else [])
        code = main(argv, make_deps(env=env, time_=FakeClock(1000.0)))
    captured = capsys.readouterr()
    assert code in (0, 1, 3)
    assert captured.out  # a report was printed
    assert KEY not in captured.out + captured.err


def test_key_redacted_even_where_a_message_would_echo_it(capsys):
    # A mistyped command line puts the key where argparse echoes it back.
    code = main(["127.0.0.1", "--api-key", KEY, KEY], make_deps(env={"PATH": "/usr/bin"}))
    captured = capsys.readouterr()
    assert code == 2
    assert "unrecognized arguments: [redacted]" in captured.err
    assert KEY not in captured.out + captured.err


# --- --stack -----------------------------------------------------------------------------------


def fake_pulumi(
    tmp_path: Path, outputs: object, exit_code: int = 0, stderr: str = ""
) -> dict[str, str]:
    """A `pulumi` executable first on PATH that records its arguments and prints `outputs`."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "outputs.json").write_text(json.dumps(outputs))
    (bin_dir / "stderr.txt").write_text(stderr)
    script = bin_dir / "pulumi"
    script.write_text(
        "#!/bin/sh\n"
        'here="$(dirname "$0")"\n'
        'printf "%s\\n" "$PWD" "$@" > "$here/args"\n'
        'cat "$here/stderr.txt" >&2\n'
        'cat "$here/outputs.json"\n'
        f"exit {exit_code}\n"
    )
    script.chmod(0o755)
    return {"PATH": f"{bin_dir}:/usr/bin:/bin"}


def pulumi_args(tmp_path: Path) -> list[str]:
    return (tmp_path / "bin" / "args").read_text().splitlines()


def test_stack_gives_endpoint_key_and_model(smoke, tmp_path):
    with run_standin(StandinConfig.deployed(api_key=KEY, models=("org/a", "org/b"))) as vllm:
        outputs = {"endpoint": vllm.url, "ip": "127.0.0.1", "model": "org/b", "api_key": KEY}
        env = fake_pulumi(tmp_path, outputs)
        run = smoke(["--stack", "dev", "--json"], make_deps(env=env))
        models_asked = [r.json()["model"] for r in vllm.requests if r.path == "/v1/completions"]
    assert run.code == 0
    cwd, *args = pulumi_args(tmp_path)
    assert args == ["stack", "output", "--json", "--show-secrets", "--stack", "dev"]
    assert Path(cwd) == PROJECT_ROOT  # run where Pulumi.yaml is
    report = run.report()
    assert report["endpoint"] == vllm.url
    assert report["expected_model"] == "org/b"
    assert report["stack"] == {"name": "dev", "index": 0, "count": 1}
    assert models_asked == ["org/b"]


def test_stack_runpod_endpoints_and_index(smoke, tmp_path):
    with run_standin(StandinConfig.deployed(api_key=KEY)) as vllm:
        outputs = {
            "runpod_endpoints": ["http://127.0.0.1:9", vllm.url],
            "model": DEFAULT_MODEL,
            "api_key": KEY,
        }
        env = fake_pulumi(tmp_path, outputs)
        run = smoke(["--stack", "gpu", "--index", "1"], make_deps(env=env))
        out_of_range = smoke(["--stack", "gpu", "--index", "2"], make_deps(env=env))
    assert run.code == 0
    assert "From stack gpu: endpoint 1 of 2" in run.out
    assert out_of_range.code == 2
    assert "--index 2 is out of range: stack 'gpu' has 2 endpoint(s)" in out_of_range.err


def test_stack_explicit_target_and_key_win(smoke, tmp_path):
    with run_standin(StandinConfig.deployed(api_key=KEY)) as vllm:
        outputs = {"endpoint": "http://127.0.0.1:9", "model": DEFAULT_MODEL, "api_key": "old"}
        env = fake_pulumi(tmp_path, outputs)
        run = smoke([vllm.url, "--stack", "dev", "--api-key", KEY], make_deps(env=env))
    assert run.code == 0


def test_stack_without_endpoint_output(smoke, tmp_path, no_requests):
    env = fake_pulumi(tmp_path, {"ip": "203.0.113.7"})
    run = smoke(["--stack", "dev"], make_deps(env=env))
    assert run.code == 2
    assert "has no `endpoint` or `runpod_endpoints` output" in run.err
    assert "Its outputs: ip" in run.err


def test_stack_pulumi_failure(smoke, tmp_path, no_requests):
    env = fake_pulumi(tmp_path, {}, exit_code=255, stderr="error: no stack named 'nope' found")
    run = smoke(["--stack", "nope"], make_deps(env=env))
    assert run.code == 2
    assert "failed (exit 255): error: no stack named 'nope' found" in run.err
    assert "pulumi stack ls" in run.err


def test_stack_secret_from_pulumi_is_never_printed(capsys, tmp_path):
    secret = "STACK-SECRET-99aa77"
    with run_standin(StandinConfig(api_key=secret)) as vllm:  # raw vLLM: check 4 fails
        env = fake_pulumi(tmp_path, {"endpoint": vllm.url, "api_key": secret})
        code = main(["--stack", "dev", "--json"], make_deps(env=env))
    captured = capsys.readouterr()
    assert code == 1
    assert secret not in captured.out + captured.err


def test_pulumi_cli_not_installed(smoke, tmp_path, no_requests):
    empty = tmp_path / "empty"
    empty.mkdir()
    run = smoke(["--stack", "dev"], make_deps(env={"PATH": str(empty)}))
    assert run.code == 2
    assert "--stack needs the Pulumi CLI, which is not installed" in run.err
    assert "VLLM_API_KEY" in run.err  # says how to go on without it


# --- TLS ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory) -> tuple[str, str]:
    if shutil.which("openssl") is None:
        pytest.fail(
            "the openssl CLI is needed to make a test certificate (apt-get install openssl)"
        )
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=smoke-test",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
    )
    return str(cert), str(key)


def test_https_untrusted_certificate_is_a_tls_failure(smoke, self_signed):
    with run_standin(StandinConfig.deployed(api_key=KEY), tls=self_signed) as vllm:
        run = smoke([vllm.url, "--json"])
    assert vllm.url.startswith("https://")
    assert run.code == 3
    reach = run.report()["checks"][0]
    assert reach["failure_class"] == "tls"
    assert "CERTIFICATE_VERIFY_FAILED" in reach["detail"]
    assert "--ca-file" in reach["hint"]


def test_https_with_ca_file_passes(smoke, self_signed):
    cert, _ = self_signed
    with run_standin(StandinConfig.deployed(api_key=KEY), tls=self_signed) as vllm:
        run = smoke([vllm.url, "--ca-file", cert])
    assert run.code == 0
    assert "Result: PASS, 7 of 7" in run.out


def test_plain_http_to_a_tls_port_is_named(smoke, self_signed):
    with run_standin(StandinConfig.deployed(api_key=KEY), tls=self_signed) as vllm:
        run = smoke([vllm.url.replace("https://", "http://"), "--timeout", "2", "--json"])
    assert run.code == 3
    assert run.report()["checks"][0]["failure_class"] == "connection-error"
    assert "not HTTPS" in run.report()["checks"][0]["hint"]


# --- the real command --------------------------------------------------------------------------


def _run_module(args: list[str], env_key: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "VLLM_API_KEY"}
    if env_key is not None:
        env["VLLM_API_KEY"] = env_key
    return subprocess.run(
        [sys.executable, "-m", "scripts.smoke_test", *args],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_python_dash_m_runs_for_real():
    with run_standin(StandinConfig.deployed(api_key=KEY)) as vllm:
        done = _run_module([vllm.url, "--json"], KEY)
        proxied_wrong = _run_module([vllm.url], "a-wrong-key-of-acceptable-length")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["result"] == "pass"
    assert proxied_wrong.returncode == 1
    assert "the key was refused (401)" in proxied_wrong.stdout
    for run in (done, proxied_wrong):
        assert KEY not in run.stdout + run.stderr


def test_python_dash_m_usage_error_and_unreachable():
    usage = _run_module(["http://127.0.0.1:8000/v1"], KEY)
    assert usage.returncode == 2
    assert "usage:" in usage.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    unreachable = _run_module(["127.0.0.1", "--port", str(port)], KEY)
    assert unreachable.returncode == 3
    assert "connection refused" in unreachable.stdout


def test_stack_https_endpoint_is_verified_with_the_stacks_ca(smoke, tmp_path):
    """The VM serves HTTPS with the stack's own CA: --stack reads `ca_cert` and verifies with
    it (real nginx with TLS in front of the stand-in), no --ca-file needed."""
    from infra.proxy_config import render_auth_include
    from tests.support.nginx import run_proxy
    from tests.test_proxy_metrics_tls import make_pki

    (tmp_path / "pki").mkdir()
    ca, tls = make_pki(tmp_path / "pki", ["127.0.0.1"])
    with (
        run_standin(StandinConfig.deployed(api_key=KEY)) as vllm,
        run_proxy(
            upstream=f"127.0.0.1:{vllm.port}", auth_include_text=render_auth_include(KEY), tls=tls
        ) as proxy,
    ):
        url = f"https://127.0.0.1:{proxy.port}"
        outputs = {"endpoint": url, "model": DEFAULT_MODEL, "api_key": KEY}
        without_ca = smoke(["--stack", "dev"], make_deps(env=fake_pulumi(tmp_path, outputs)))
        (tmp_path / "bin").rename(tmp_path / "bin-old")
        outputs["ca_cert"] = ca.read_text()
        run = smoke(["--stack", "dev"], make_deps(env=fake_pulumi(tmp_path, outputs)))
    assert without_ca.code != 0 and "--ca-file" in without_ca.out
    assert run.code == 0, run.out


def test_stack_ca_is_only_for_the_vm_endpoint() -> None:
    from scripts.smoke_test.stack import select_endpoint

    outputs = {"endpoint": "https://203.0.113.10:8000", "ca_cert": "PEM",
               "runpod_endpoints": ["https://p-8000.proxy.runpod.net"]}  # fmt: skip
    assert select_endpoint(outputs, "s", 0).ca_cert == "PEM"
    assert select_endpoint(outputs, "s", 1).ca_cert is None
