"""Pieces of the smoke test that need no server: TARGET parsing and the failure classes of
errors that cannot be produced on loopback (DNS through requests, a dropped SYN)."""

from __future__ import annotations

import http.client
import io
import socket
import ssl

import pytest
import requests
import urllib3.exceptions

from scripts.smoke_test.report import MIN_KEY_LENGTH, RedactingWriter
from scripts.smoke_test.target import Target, UsageError, parse_target
from scripts.smoke_test.transport import FailureClass, classify

TARGET = Target("http", "203.0.113.7", 8000)


@pytest.mark.parametrize(
    ("text", "port", "expected"),
    [
        ("203.0.113.7", None, "http://203.0.113.7:8000"),
        ("203.0.113.7", 9000, "http://203.0.113.7:9000"),
        ("2001:db8::1", None, "http://[2001:db8::1]:8000"),
        ("[2001:db8::1]", 8443, "http://[2001:db8::1]:8443"),
        ("Endpoint.Example.COM", None, "http://endpoint.example.com:8000"),
        ("example.com.", None, "http://example.com.:8000"),
        ("http://203.0.113.7:8000", 1234, "http://203.0.113.7:8000"),  # the URL's port wins
        ("http://203.0.113.7:8000/", None, "http://203.0.113.7:8000"),
        ("HTTPS://pod-8000.proxy.runpod.net", None, "https://pod-8000.proxy.runpod.net:443"),
        ("http://[::1]:8001", None, "http://[::1]:8001"),
        ("http://203.0.113.7", 8000, "http://203.0.113.7:8000"),
        ("http://203.0.113.7", None, "http://203.0.113.7:80"),
    ],
)
def test_parse_target(text, port, expected):
    assert parse_target(text, port).base_url == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "256.1.1.1",
        "01.2.3.4",
        "1.2.3.4.5",
        "-bad.example.com",
        "a" * 64 + ".com",
        "exa mple.com",
        "2001:db8::zz",
        "host:8000",
        "203.0.113.7/24",
        "http://",
        "http://203.0.113.7:0",
        "http://203.0.113.7:8000/health",
        "http://203.0.113.7#frag",
        "gopher://203.0.113.7",
    ],
)
def test_bad_targets(text):
    with pytest.raises(UsageError):
        parse_target(text)


def _wrapped(reason: Exception) -> urllib3.exceptions.MaxRetryError:
    return urllib3.exceptions.MaxRetryError(None, "/health", reason)  # type: ignore[arg-type]


def test_dns_failure_inside_requests_is_dns():
    gaierror = socket.gaierror(socket.EAI_NONAME, "Name or service not known")
    resolution = urllib3.exceptions.NameResolutionError("h.invalid", None, gaierror)  # type: ignore[arg-type]
    err = requests.exceptions.ConnectionError(_wrapped(resolution))
    failure = classify(err, Target("http", "h.invalid", 8000), 5)
    assert failure.failure_class is FailureClass.DNS
    assert "h.invalid does not resolve" in failure.summary
    assert not failure.retryable


def test_dropped_syn_is_a_connect_timeout_with_firewall_hint():
    reason = urllib3.exceptions.ConnectTimeoutError(None, "connect timed out")
    err = requests.exceptions.ConnectTimeout(_wrapped(reason))
    failure = classify(err, TARGET, 7)
    assert failure.failure_class is FailureClass.TIMEOUT
    assert failure.summary == "no connection to 203.0.113.7:8000 within 7s (packets dropped)"
    assert "allowedSourceRanges" in failure.hint
    assert failure.retryable


def test_refused_is_not_mistaken_for_a_timeout():
    # urllib3's NewConnectionError subclasses ConnectTimeoutError.
    new_conn = urllib3.exceptions.NewConnectionError(None, "Connection refused")  # type: ignore[arg-type]
    new_conn.__cause__ = ConnectionRefusedError(111, "Connection refused")
    err = requests.exceptions.ConnectionError(_wrapped(new_conn))
    assert classify(err, TARGET, 5).failure_class is FailureClass.REFUSED


def test_tls_and_reset():
    tls = requests.exceptions.SSLError(_wrapped(ssl.SSLError(1, "WRONG_VERSION_NUMBER")))
    assert classify(tls, TARGET, 5).failure_class is FailureClass.TLS
    reset = requests.exceptions.ConnectionError(
        urllib3.exceptions.ProtocolError(
            "Connection aborted.", http.client.RemoteDisconnected("closed")
        )
    )
    failure = classify(reset, TARGET, 5)
    assert failure.failure_class is FailureClass.CONNECTION
    assert failure.retryable


def test_redaction_replaces_whole_keys_and_never_short_ones():
    key = "k3y-" + "a1b2" * 4  # 20 characters
    assert MIN_KEY_LENGTH == 16
    sink = io.StringIO()
    writer = RedactingWriter(sink, {"x", "index", key[:15]})
    writer.secrets.add(key)  # secrets found later (the stack's key) count too
    writer.write(f"usage: [--index N] [--api-key KEY] x={key}, again:{key}\n")
    assert sink.getvalue() == "usage: [--index N] [--api-key KEY] x=[redacted], again:[redacted]\n"
