"""HTTP plumbing for the smoke test: one requests session, what a failed request means, and
reading an answer within a deadline.

A request that gets no HTTP answer at all fails for one of a few reasons, and each has a
different fix; `classify` names the reason and `Failure.hint` says what to do.

`--timeout` bounds each request as a whole. requests' own timeout bounds each wait for data,
so a server that trickles a byte or an SSE keep-alive comment now and then would hold a
request forever; `read_pieces` reads the body against a `Deadline` instead.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import requests
import urllib3.exceptions
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from scripts.smoke_test import hints
from scripts.smoke_test.target import Target

USER_AGENT = "llm-endpoint-smoke-test/1"
Resolver = Callable[[str, int], Any]
Clock = Callable[[], float]
# Largest piece `read_pieces` asks for at once; any smaller piece is handed on as it arrives.
_PIECE_BYTES = 64 * 1024


class DeadlineExceeded(Exception):
    """The request as a whole took longer than --timeout."""


# What sending a request or reading its body can raise: requests wraps urllib3's errors when it
# sends, but `read_pieces` reads the body from urllib3's response directly.
TRANSPORT_ERRORS = (requests.RequestException, urllib3.exceptions.HTTPError, DeadlineExceeded)


class FailureClass(StrEnum):
    DNS = "dns"
    REFUSED = "connection-refused"
    TIMEOUT = "timeout"
    TLS = "tls"
    CONNECTION = "connection-error"


@dataclass(frozen=True)
class Failure:
    failure_class: FailureClass
    summary: str
    hint: str

    @property
    def retryable(self) -> bool:
        """Worth retrying under --wait: a booting VM refuses, drops or resets connections; a
        name that does not resolve or a certificate that is not trusted will not fix itself."""
        return self.failure_class in (
            FailureClass.REFUSED,
            FailureClass.TIMEOUT,
            FailureClass.CONNECTION,
        )


@dataclass(frozen=True)
class Deadline:
    at: float
    clock: Clock

    @classmethod
    def after(cls, seconds: float, clock: Clock) -> Deadline:
        return cls(clock() + seconds, clock)

    def remaining(self) -> float:
        return self.at - self.clock()


def _limit_wait(response: requests.Response, seconds: float) -> bool:
    """Make the next network read of `response` wait at most `seconds`; False if the socket is
    out of reach (http.client hands a `Connection: close` answer's socket to the response
    alone), in which case each read still waits up to the request's own timeout."""
    connection = getattr(response.raw, "connection", None)  # urllib3 2's HTTPResponse.connection
    sock = getattr(connection, "sock", None)
    if not isinstance(sock, socket.socket):
        return False
    sock.settimeout(seconds)
    return True


def read_pieces(
    response: requests.Response, deadline: Deadline, per_read: float
) -> Iterator[bytes]:
    """The body of `response` (sent with `stream=True`) piece by piece as it arrives, until it
    ends. Raises DeadlineExceeded once `deadline` passes, however steadily the server trickles:
    the deadline is checked between pieces, and each read waits at most the time left.
    `read1` makes at most one network read, where `read(n)` would wait to fill n bytes."""
    raw = response.raw
    while True:
        left = deadline.remaining()
        if left <= 0:
            raise DeadlineExceeded
        capped = left < per_read and _limit_wait(response, left)
        try:
            piece: bytes = raw.read1(_PIECE_BYTES, decode_content=True)
        except urllib3.exceptions.ReadTimeoutError as err:
            if capped or deadline.remaining() <= 0:
                raise DeadlineExceeded from err
            raise
        if not piece:
            return
        yield piece


def split_lines(pieces: Iterator[bytes]) -> Iterator[bytes]:
    """Lines of a byte stream, each as soon as it is complete. SSE ends lines with LF, CRLF or
    CR; CR is read as LF, and the empty lines that makes are of no consequence here."""
    pending = b""
    for piece in pieces:
        pending = (pending + piece).replace(b"\r", b"\n")
        *lines, pending = pending.split(b"\n")
        yield from lines
    if pending:
        yield pending


def make_session(verify: bool | str) -> requests.Session:
    """A session that retries a failed connection once (a dropped SYN, a reset during a proxy
    restart), but never re-sends a request that reached the server: reads and statuses are the
    findings the checks report. `--wait` does the long, patient retrying."""
    session = requests.Session()
    # Talk to the endpoint directly: an HTTP(S)_PROXY would change the source address that
    # the firewall judges, and ~/.netrc must not add credentials to the "without a key" probes.
    session.trust_env = False
    session.verify = verify
    session.headers["User-Agent"] = USER_AGENT
    retry = Retry(total=1, connect=1, read=0, status=0, other=0, redirect=0, backoff_factor=0.2)
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """`exc` and everything it wraps (requests wraps urllib3's MaxRetryError, which wraps the
    socket error in `.reason` or as the cause)."""
    seen: set[int] = set()
    stack: list[BaseException] = [exc]
    while stack:
        current = stack.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None)]
        linked.extend(a for a in current.args if isinstance(a, BaseException))
        stack.extend(e for e in linked if isinstance(e, BaseException))


def classify(exc: BaseException, target: Target, timeout: float) -> Failure:
    """What a request failure means for `target`, with the fix."""
    causes = list(_causes(exc))
    where = target.netloc

    def has(*types: type[BaseException]) -> bool:
        return any(isinstance(c, types) for c in causes)

    if has(DeadlineExceeded):
        return Failure(
            FailureClass.TIMEOUT,
            f"{where} began to answer but did not finish within {timeout:g}s",
            "The server sent its answer so slowly (a trickle of bytes) that it did not complete "
            "within --timeout. A loaded or stuck server, or a proxy in between, does this: "
            "retry with a larger --timeout, and if it persists check "
            f"{hints.vllm_logs(target)}.",
        )

    if has(urllib3.exceptions.NameResolutionError, socket.gaierror):
        return dns_failure(target)
    if isinstance(exc, requests.exceptions.SSLError) or has(
        ssl.SSLError, urllib3.exceptions.SSLError
    ):
        return Failure(
            FailureClass.TLS,
            f"TLS failed with {where}: {_reason(causes, ssl.SSLError)}",
            hints.tls(target),
        )
    if has(ConnectionRefusedError):
        return Failure(
            FailureClass.REFUSED,
            f"connection refused by {where}",
            hints.refused(target),
        )
    # urllib3's NewConnectionError subclasses ConnectTimeoutError; refusals are handled above.
    if isinstance(exc, requests.exceptions.ConnectTimeout) or any(
        isinstance(c, urllib3.exceptions.ConnectTimeoutError)
        and not isinstance(c, urllib3.exceptions.NewConnectionError)
        for c in causes
    ):
        return Failure(
            FailureClass.TIMEOUT,
            f"no connection to {where} within {timeout:g}s (packets dropped)",
            hints.dropped(target),
        )
    if isinstance(exc, requests.exceptions.Timeout) or has(TimeoutError, socket.timeout):
        return Failure(
            FailureClass.TIMEOUT,
            f"connected to {where}, but no answer within {timeout:g}s",
            "The server accepted the connection but did not answer in time: it is overloaded, "
            "or the proxy is waiting on a vLLM that is still loading. Retry with a larger "
            "--timeout, or with --wait.",
        )
    return Failure(
        FailureClass.CONNECTION,
        f"the connection to {where} failed: {_reason(causes, OSError)}",
        "The connection was closed or reset before an HTTP answer. Check that this port "
        "serves HTTP (not HTTPS), and that nothing in between drops the connection.",
    )


def dns_failure(target: Target) -> Failure:
    return Failure(
        FailureClass.DNS,
        f"the name {target.host} does not resolve",
        "Check the spelling, or use the VM's address: `pulumi stack output ip`, or run with "
        "--stack NAME to read it from the stack.",
    )


def _reason(causes: list[BaseException], kind: type[BaseException]) -> str:
    """A short reason for a message: the innermost exception of `kind`, one line."""
    chosen = next((c for c in reversed(causes) if isinstance(c, kind)), causes[-1])
    text = str(chosen).splitlines()[0] if str(chosen) else type(chosen).__name__
    return text[:200]


def resolve(host: str, port: int) -> Any:
    """The real resolver (tests inject their own, so no DNS query leaves the machine)."""
    return socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
