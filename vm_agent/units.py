"""What the agent writes on the VM: the two container units, the env file, the proxy's key file.

Pure functions of the runtime document and the machine's size, so that tests render the very
text the VM gets (and `systemd-analyze verify` checks it).

vLLM: `--user 2000:2000` (serving.VLLM_UID) with every capability dropped and
no-new-privileges; the host directory mounted as its home holds its two caches (Hugging Face
and vLLM's compile cache, docs/facts/vllm.md "Caches"), so they survive container restarts
and reboots. It listens on 127.0.0.1 only (--network host, vLLM's --host): only the proxy
reaches it. The proxy (nginx) starts as root to read its key file and bind the port, then its
workers drop to the image's `nginx` user: SETUID/SETGID and CHOWN are all it keeps.
"""

from __future__ import annotations

import re

from infra import serving
from vm_agent.runtime_doc import Runtime

ETC_DIR = "/etc/llm-endpoint"
PROXY_DIR = f"{ETC_DIR}/proxy"  # mounted whole (a file bind mount would miss atomic renames)
STATE_DIR = "/var/lib/llm-endpoint"
RUN_DIR = "/run/llm-endpoint"
VLLM_HOME_ON_HOST = f"{STATE_DIR}/vllm-home"
ENV_FILE = f"{ETC_DIR}/vllm.env"
INTERNAL_KEY_FILE = f"{STATE_DIR}/internal-key"
APPLIED_FILE = f"{STATE_DIR}/applied.json"
READY_FLAG = f"{RUN_DIR}/ready"  # the boot watchdog stands down once this exists
NO_STOP_FLAG = f"{STATE_DIR}/no-stop-on-failure"
# Inside the proxy container the directory appears here, so the config's paths are these.
PROXY_DIR_IN_CONTAINER = ETC_DIR
AUTH_FILE_NAME = "proxy-auth.conf"
TLS_CERT_NAME = "server.pem"
TLS_KEY_NAME = "server.key"
NGINX_CONF_NAME = "nginx.conf"

VLLM_UNIT = "llm-vllm.service"
PROXY_UNIT = "llm-proxy.service"
VLLM_CONTAINER = "llm-vllm"
PROXY_CONTAINER = "llm-proxy"
WATCHDOG_TIMER = "llm-endpoint-watchdog.timer"
DOCKER = "/usr/bin/docker"

_PLAIN = re.compile(r"[A-Za-z0-9_./:=@+,-]+")
_KEY = re.compile(r"[A-Za-z0-9._~+/=-]+")


def systemd_quote(arg: str) -> str:
    """One ExecStart word: quoted when needed; `%` and `$` doubled so systemd expands
    neither specifiers nor variables in it."""
    text = (
        arg if _PLAIN.fullmatch(arg) else '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'
    )
    return text.replace("%", "%%").replace("$", "$$")


def _unit(description: str, argv: list[str], container: str, reload: bool = False) -> str:
    lines = [
        "[Unit]",
        f"Description={description}",
        "After=docker.service network-online.target",
        "Requires=docker.service",
        "",
        "[Service]",
        # exec: active while the container runs, inactive/failed once it exits, which is how
        # the agent counts failed starts (no Restart=: the agent decides about restarts).
        "Type=exec",
        f"ExecStartPre=-{DOCKER} rm -f {container}",
        "ExecStart=" + " ".join(systemd_quote(a) for a in argv),
        f"ExecStop={DOCKER} stop --time 30 {container}",
        *([f"ExecReload={DOCKER} kill --signal HUP {container}"] if reload else []),
        "Restart=no",
        "TimeoutStartSec=infinity",
        "TimeoutStopSec=60",
        "",
    ]
    return "\n".join(lines)


def vllm_memory_mb(rt: Runtime, machine_mb: int) -> int:
    mb = machine_mb - rt.vllm.reserved_memory_mb
    return mb if mb >= 2048 else machine_mb // 2


def vllm_unit(rt: Runtime, machine_mb: int, cpus: int) -> str:
    mem = vllm_memory_mb(rt, machine_mb)
    uid = serving.VLLM_UID
    argv = [
        DOCKER, "run", "--rm", "--name", VLLM_CONTAINER,
        "--network", "host", "--gpus", "all", "--ipc=host",
        "--user", f"{uid}:{uid}", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--ulimit", "memlock=-1:-1", "--memory", f"{mem}m", "--memory-swap", f"{mem}m",
        "--cpus", str(max(cpus - 1, 1)), "--pids-limit", "8192",
        "--env-file", ENV_FILE,
        "-v", f"{VLLM_HOME_ON_HOST}:{serving.VLLM_HOME}",
        rt.vllm.image, *rt.vllm.args,
    ]  # fmt: skip
    return _unit(f"llm-endpoint: vLLM ({rt.vllm.image})", argv, VLLM_CONTAINER)


def proxy_unit(rt: Runtime) -> str:
    argv = [
        DOCKER, "run", "--rm", "--name", PROXY_CONTAINER, "--network", "host",
        "--read-only", "--tmpfs", "/tmp:rw,nosuid,nodev,noexec,size=64m",  # noqa: S108
        "--memory", "256m", "--memory-swap", "256m", "--cpus", "1", "--pids-limit", "128",
        "--security-opt", "no-new-privileges",
        "--cap-drop", "ALL", "--cap-add", "CHOWN", "--cap-add", "SETUID", "--cap-add", "SETGID",
        "-v", f"{PROXY_DIR}:{PROXY_DIR_IN_CONTAINER}:ro",
        "--entrypoint", "nginx", rt.proxy.image,
        "-c", f"{PROXY_DIR_IN_CONTAINER}/{NGINX_CONF_NAME}",
        "-e", "stderr", "-g", "daemon off; pid /tmp/nginx.pid;",
    ]  # fmt: skip
    return _unit(f"llm-endpoint: proxy ({rt.proxy.image})", argv, PROXY_CONTAINER, reload=True)


def env_file(rt: Runtime, internal_key: str, hf_token: str | None) -> str:
    """docker --env-file: KEY=value per line, taken literally (root-only: it holds keys).
    vLLM gets the VM's internal key, not the users' key: the proxy checks the users' key and
    hands vLLM the internal one, so a key rotation is a proxy reload, not a model reload."""
    env = rt.vllm.env | serving.vllm_container_env(api_key=internal_key, hf_token=hf_token)
    for name, value in env.items():
        if "\n" in value or "\r" in value:
            raise ValueError(f"environment value of {name} has a line break")
    return "".join(f"{k}={v}\n" for k, v in sorted(env.items()))


def _nginx_escape(key: str) -> str:
    if not _KEY.fullmatch(key):
        raise ValueError("a key must be 1+ characters of A-Za-z0-9-._~+/= (a bearer token)")
    return re.sub(r"[^A-Za-z0-9]", lambda m: "\\" + m.group(0), key)


def auth_include(api_key: str, internal_key: str) -> str:
    """The proxy's key file: the same `map` as infra/proxy_config.render_auth_include (a test
    holds them equal), plus the Authorization header the proxy sends vLLM."""
    head = (
        "# Written at start from the API key (infra/proxy_config.py). "
        "Root-only: it holds the key.\n"
        "map $http_authorization $llm_endpoint_authorized {\n"
        "    default 0;\n"
        f'    "~^(?i:bearer) {_nginx_escape(api_key)}$" 1;\n'
        "}\n"
    )
    _nginx_escape(internal_key)
    return head + (
        "map $http_authorization $llm_endpoint_upstream_authorization {\n"
        f'    default "Bearer {internal_key}";\n'
        "}\n"
    )
