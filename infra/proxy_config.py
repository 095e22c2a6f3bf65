"""The allowlisting reverse proxy (nginx) in front of vLLM: its config and its key file.

Why: vLLM's `--api-key` guards only paths starting with /v1, /v2, /inference and /cohere;
/invocations (which runs inference), /metrics, /tokenize and others stay open whatever the key
(docs/facts/vllm.md, "Routes open without the key"). So vLLM listens on loopback only and nginx, on
the public port, forwards only `/health` and `/v1/*`, checks the bearer key on `/v1/*` itself
(defence in depth: vLLM checks it again) and answers 403 `{"error":"Forbidden"}` to every other
path.

Contract (shared by the GCP VM, where nginx runs in the `nginx` container image below, and the
RunPod pods, where Debian's nginx runs in the pod next to vLLM):

1. `render_proxy_config(...)` gives the whole `nginx.conf`. It holds no secret, so it may travel
   in instance metadata, pod arguments or Pulumi state. Parameters: the listen port (and
   address), the upstream vLLM `host:port` (default 127.0.0.1:8001), the path of the auth
   include file (default `/etc/llm-endpoint/proxy-auth.conf`), a writable directory for nginx's
   temporary files (must exist), and where the access and error logs go. It sets neither
   `daemon`, `pid` nor `user`: run it as
   `nginx -c <conf> -g 'daemon off; pid <writable path>;'` (add `-e stderr` on nginx 1.19.5+ to
   keep even the first messages off the built-in log path; 1.18 has no `-e`).
2. The auth include file is made on the machine at start, from the key, and nowhere else:
   `render_auth_include(key)` in Python, or the POSIX shell function in `AUTH_INCLUDE_SH`
   (`printf '%s' "$KEY" | llm_endpoint_write_proxy_auth /etc/llm-endpoint/proxy-auth.conf`),
   which writes the byte-identical file with mode 0600 without putting the key on any command
   line. Its format: one nginx `map` at `http` level that sets `$llm_endpoint_authorized` to
   "1" when the Authorization header is `Bearer <key>` (scheme matched case-insensitively, one
   space, the key exactly, as vLLM does: docs/facts/vllm.md, "The API key") and to "0" otherwise.
   nginx reads it as root when it starts; if it is missing nginx refuses to start (fails closed).
3. The key is 1+ characters of `A-Za-z0-9-._~+/=` (the RFC 6750 bearer-token alphabet; the
   stack's config and generated keys satisfy it). Anything else is refused, never escaped into
   something surprising.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path

import jinja2

from infra import gcp_catalog
from infra.serving import PUBLIC_PORT, VLLM_INTERNAL_PORT

# The one place the proxy image is named. A pinned release, never a moving tag: nginx's 1.28
# stable line on Alpine (small, with security updates from the nginx maintainers).
PROXY_IMAGE = "nginx:1.28.0-alpine"

AUTH_INCLUDE_PATH = "/etc/llm-endpoint/proxy-auth.conf"
# Google's health-check ranges (infra/gcp_catalog.py). A group's firewall lets them reach the
# proxy's port, and two of them are also where any customer's proxy load balancer (an internet
# NEG can point at any address) connects from (docs/facts/gcp.md, "Health checks"): from there
# only /health is answered, so the allowlist still decides who may use the key.
HEALTH_ONLY_RANGES = gcp_catalog.HEALTH_CHECK_RANGES
# Names the machine (its host name: a GCE VM's instance name) on every /v1/ answer, so that a
# client of a group, and the smoke test, can tell which replica answered.
REPLICA_HEADER = "X-LLM-Endpoint-Replica"
DEFAULT_UPSTREAM = f"127.0.0.1:{VLLM_INTERNAL_PORT}"
AUTHORIZED_VARIABLE = "$llm_endpoint_authorized"


@dataclass(frozen=True)
class TlsFiles:
    """Where nginx finds the server certificate (with the CA after it) and its key."""

    cert: str
    key: str


_TEMPLATES = Path(__file__).resolve().parent.parent / "startup"
_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_TEMPLATES),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,  # nginx text, not HTML: every value is validated instead
)

_KEY = re.compile(r"[A-Za-z0-9._~+/=-]+")
_UPSTREAM = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\]):[0-9]{1,5}")
_LISTEN_ADDRESS = re.compile(r"[0-9.]+|\[[0-9A-Fa-f:.]+\]")
_SAFE_PATH = re.compile(r"/[A-Za-z0-9._/@+-]*")
_LOG_TARGET = re.compile(r"stderr|off|/[A-Za-z0-9._/@+-]*")

_AUTH_HEADER = (
    "# Written at start from the API key (infra/proxy_config.py). Root-only: it holds the key.\n"
)


def render_proxy_config(
    *,
    listen_port: int = PUBLIC_PORT,
    listen_address: str | None = None,
    upstream: str = DEFAULT_UPSTREAM,
    auth_include: str = AUTH_INCLUDE_PATH,
    temp_dir: str = "/tmp",  # noqa: S108 (a private tmpfs in the container, /tmp in a pod)
    access_log: str = "/dev/stdout",
    error_log: str = "stderr",
    health_only_ranges: tuple[str, ...] = HEALTH_ONLY_RANGES,
    tls: TlsFiles | None = None,
    upstream_authorization: bool = False,
) -> str:
    """The proxy's `nginx.conf` (no secret in it). See the module docstring for the contract.

    Clients in `health_only_ranges` (Google's health checkers, by default) get `/health` and
    nothing else, even with the key; tests pass their own loopback address. `tls` makes it
    serve HTTPS with that certificate and key (paths). `upstream_authorization` sends vLLM
    `$llm_endpoint_upstream_authorization` (defined by the VM agent's auth include) instead of
    the client's Authorization header.

    `listen_address` None listens on every IPv4 address (the VM and pods: the firewall decides
    who reaches it); tests pass 127.0.0.1. `upstream` is vLLM's `host:port`. `access_log` and
    `error_log` take a path, `stderr` (error log) or `off` (access log)."""
    if not 0 < listen_port < 65536:
        raise ValueError(f"listen_port {listen_port} is not a TCP port (1-65535)")
    if listen_address is not None and not _LISTEN_ADDRESS.fullmatch(listen_address):
        raise ValueError(f"listen_address {listen_address!r} is not an IPv4 or [IPv6] address")
    if not _UPSTREAM.fullmatch(upstream):
        raise ValueError(f"upstream {upstream!r} is not host:port (e.g. {DEFAULT_UPSTREAM})")
    tls_paths = (("tls.cert", tls.cert), ("tls.key", tls.key)) if tls else ()
    for name, value, pattern in (
        *((n, v, _SAFE_PATH) for n, v in tls_paths),
        ("auth_include", auth_include, _SAFE_PATH),
        ("temp_dir", temp_dir, _SAFE_PATH),
        ("access_log", access_log, _LOG_TARGET),
        ("error_log", error_log, _LOG_TARGET),
    ):
        if not pattern.fullmatch(value):
            raise ValueError(
                f"{name} {value!r} must be an absolute path of letters, digits and ._/@+- "
                "(or stderr/off for logs), so it cannot change the nginx syntax"
            )
    if error_log == "off":
        raise ValueError("error_log cannot be off: give a path or stderr")
    ranges = [str(ipaddress.ip_network(r, strict=True)) for r in health_only_ranges]
    listen = f"{listen_address}:{listen_port}" if listen_address else str(listen_port)
    return _env.get_template("nginx.conf.j2").render(
        health_only_ranges=ranges,
        listen=listen,
        upstream=upstream,
        auth_include=auth_include,
        temp_dir=temp_dir.rstrip("/") or "/",
        access_log=access_log,
        error_log=error_log,
        tls=tls,
        upstream_authorization=upstream_authorization,
    )


def render_auth_include(api_key: str) -> str:
    """The auth include file's content for `api_key` (it contains the key: write it 0600).

    The key is escaped character by character (every non-alphanumeric gets a backslash, which
    PCRE reads as that literal character and nginx's quoted strings keep as is), exactly as the
    shell function in `AUTH_INCLUDE_SH` does."""
    if not _KEY.fullmatch(api_key):
        raise ValueError(
            "the API key must be letters, digits and -._~+/= only (a bearer token); "
            "set another with `pulumi config set --secret apiKey`"
        )
    escaped = re.sub(r"[^A-Za-z0-9]", lambda m: "\\" + m.group(0), api_key)
    return (
        _AUTH_HEADER
        + f"map $http_authorization {AUTHORIZED_VARIABLE} {{\n"
        + "    default 0;\n"
        + f'    "~^(?i:bearer) {escaped}$" 1;\n'
        + "}\n"
    )


# POSIX sh (dash, busybox ash, bash): reads the key from stdin so it is never in argv, refuses a
# key outside the bearer alphabet, writes the file atomically with mode 0600. `printf` is a shell
# builtin in all three, so `printf '%s' "$KEY" | ...` keeps the key off every command line.
AUTH_INCLUDE_SH = r"""
# shellcheck disable=SC2016  # the $ in the printf formats are nginx variables, not shell ones
llm_endpoint_write_proxy_auth() {
  _lepa_dest=$1
  IFS= read -r _lepa_key || [ -n "$_lepa_key" ]
  case $_lepa_key in
    '' | *[!A-Za-z0-9._~+/=-]*)
      echo "llm-endpoint: the API key is empty or has characters outside" \
        "A-Za-z0-9-._~+/= ; refusing to write $_lepa_dest" >&2
      unset _lepa_key
      return 1 ;;
  esac
  _lepa_tmp="$_lepa_dest.tmp.$$"
  (
    umask 077
    {
      printf '%s %s\n' '# Written at start from the API key (infra/proxy_config.py).' \
        'Root-only: it holds the key.'
      printf 'map $http_authorization $llm_endpoint_authorized {\n    default 0;\n'
      printf '    "~^(?i:bearer) '
      printf '%s' "$_lepa_key" | sed 's/[^A-Za-z0-9]/\\&/g'
      printf '$" 1;\n}\n'
    } > "$_lepa_tmp"
  ) || { rm -f "$_lepa_tmp"; unset _lepa_key; return 1; }
  unset _lepa_key
  chmod 600 "$_lepa_tmp" && mv -f "$_lepa_tmp" "$_lepa_dest"
}
""".lstrip("\n")
