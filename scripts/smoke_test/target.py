"""Parse the TARGET argument (an address, a host name or an http(s) URL) into a base URL.

Everything here is offline: a bad target is a usage error (exit 2) found before any request.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from infra.serving import PUBLIC_PORT

DEFAULT_PORT = PUBLIC_PORT  # the GCP VM's proxy: plain HTTP on 8000, behind the firewall
_LABEL = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)$")
_NUMERIC = re.compile(r"^[0-9.]+$")
_SCHEME_PORTS = {"http": 80, "https": 443}


class UsageError(ValueError):
    """Bad command-line input; the message says what to type instead."""


@dataclass(frozen=True)
class Target:
    scheme: str  # "http" or "https"
    host: str  # an IP address (IPv6 without brackets) or a host name
    port: int

    @property
    def is_ip(self) -> bool:
        try:
            ipaddress.ip_address(self.host)
        except ValueError:
            return False
        return True

    @property
    def netloc(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    @property
    def base_url(self) -> str:
        return f"{self.scheme}://{self.netloc}"


def check_port(port: int) -> int:
    if not 1 <= port <= 65535:
        raise UsageError(f"port {port} is out of range: give a port from 1 to 65535")
    return port


def _check_host(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if _NUMERIC.match(host):
        raise UsageError(
            f"{host!r} is not a valid IPv4 address (four numbers 0-255 without leading zeros, "
            "e.g. 203.0.113.7)"
        )
    name = host[:-1] if host.endswith(".") else host
    if len(name) > 253 or not all(_LABEL.match(label) for label in name.split(".")):
        raise UsageError(
            f"{host!r} is neither an IP address nor a valid host name "
            "(letters, digits and hyphens, separated by dots)"
        )
    return host.lower()


def parse_target(text: str, port: int | None = None) -> Target:
    """`text` as a Target. A bare address or name means plain HTTP on `port` (default 8000, the
    GCP VM's proxy). A URL's own port wins over `port`; a URL without one uses `port` if given,
    else its scheme's standard port (RunPod's proxy URLs are https on 443)."""
    text = text.strip()
    if not text:
        raise UsageError("the target is empty: give an IP address, a host name or a URL")
    if "://" in text:
        return _parse_url(text, port)
    if "/" in text or "?" in text or "#" in text or "@" in text:
        raise UsageError(
            f"{text!r} is not an address or host name; write a URL as http://HOST:PORT "
            "(without a path)"
        )
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    if ":" in text:
        try:
            ipaddress.IPv6Address(text)
        except ValueError:
            raise UsageError(
                f"{text!r} is not a valid address: to give a port, use --port PORT or a URL "
                "such as http://203.0.113.7:8000"
            ) from None
    return Target("http", _check_host(text), check_port(DEFAULT_PORT if port is None else port))


def _parse_url(text: str, port: int | None) -> Target:
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise UsageError(
            f"unsupported URL scheme {parts.scheme!r}: use http:// (the GCP VM's proxy on port "
            "8000) or https://"
        )
    if "@" in parts.netloc:
        # Never echo the URL: the part before @ may be a password.
        raise UsageError("the URL must not contain user:password@; pass the key with --api-key")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise UsageError(
            f"the URL must be the endpoint's root, without a path or query (got path "
            f"{parts.path!r}); the smoke test adds /health, /v1/models and so on itself"
        )
    if not parts.hostname:
        raise UsageError(f"the URL {text!r} has no host name")
    try:
        url_port = parts.port
    except ValueError:
        raise UsageError(f"the port in {text!r} is not a number from 1 to 65535") from None
    if url_port is None:
        url_port = port if port is not None else _SCHEME_PORTS[scheme]
    return Target(scheme, _check_host(parts.hostname), check_port(url_port))
