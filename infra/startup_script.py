"""Renders what runs on the VM (the startup script) from the templates in `startup/`.

Rendering takes only non-secret values: secret *names* in Secret Manager, never their values.
The script embeds the proxy's nginx config (infra/proxy_config.py), the shell writer of the
proxy's key file and, when `stop_on_failure` is on or `idle_stop_minutes` is set, the autostop
check (startup/autostop.sh.j2: powers the VM off when vLLM dies after being ready, or when it is
idle), so one metadata value carries everything the VM needs.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import jinja2

from infra import proxy_config
from infra.serving import MIN_NVIDIA_DRIVER_MAJOR, PUBLIC_PORT, VLLM_INTERNAL_PORT, ServingSpec

STARTUP_DIR = Path(__file__).resolve().parent.parent / "startup"

# Docker's apt signing key (docs.docker.com/engine/install: "9DC8 5822 9FC7 DD38 854A E2D8 8D81
# 803C 0EBF CD88"). The script refuses a downloaded key with another fingerprint.
DOCKER_APT_KEY_FINGERPRINT = "9DC858229FC7DD38854AE2D88D81803C0EBFCD88"

# GCE's limit for an inline startup-script value (FACTS.md, Google Cloud).
MAX_STARTUP_SCRIPT_BYTES = 256 * 1024

VLLM_CONTAINER = "llm-vllm"

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(STARTUP_DIR),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,  # shell and nginx text, not HTML: values are quoted with `q` instead
)
_env.filters["q"] = lambda v: shlex.quote(str(v))

# How long vLLM may be dead after it was ready (its /health failing, or its container not
# running, at every minute's check) before the autostop check powers the VM off. Long enough for
# a brief outage to pass; a restart in progress does not count at all (startup/autostop.sh.j2).
DEAD_GRACE_MINUTES = 10

_HEREDOC_ENDS = ("LLM_ENDPOINT_NGINX_CONF", "LLM_ENDPOINT_AUTOSTOP")


@dataclass(frozen=True)
class StartupParams:
    spec: ServingSpec
    gcp_project: str
    api_key_secret: str
    hf_token_secret: str | None
    stop_on_failure: bool = True
    ready_timeout_minutes: int = 45
    idle_stop_minutes: int = 0
    public_port: int = PUBLIC_PORT
    vllm_port: int = VLLM_INTERNAL_PORT
    proxy_image: str = proxy_config.PROXY_IMAGE


def needs_autostop(params: StartupParams) -> bool:
    """Whether the VM runs the autostop check once ready: for a dead vLLM (stop_on_failure)
    and/or for an idle one (idle_stop_minutes)."""
    return params.stop_on_failure or params.idle_stop_minutes > 0


def render_autostop_check(params: StartupParams) -> str:
    """The autostop check the script installs (also rendered alone for tests)."""
    return _env.get_template("autostop.sh.j2").render(
        stop_on_failure=params.stop_on_failure,
        grace_minutes=DEAD_GRACE_MINUTES,
        idle_stop_minutes=params.idle_stop_minutes,
        vllm_port=params.vllm_port,
        gcp_project=params.gcp_project,
        vllm_container=VLLM_CONTAINER,
    )


def render_startup_script(params: StartupParams) -> str:
    """The whole startup script for the VM, ready for instance metadata (no secret in it)."""
    if params.ready_timeout_minutes <= 0 or params.idle_stop_minutes < 0:
        raise ValueError("ready_timeout_minutes must be > 0 and idle_stop_minutes >= 0")
    vllm_args = params.spec.vllm_args(host="127.0.0.1", port=params.vllm_port)
    nginx_conf = proxy_config.render_proxy_config(
        listen_port=params.public_port,
        upstream=f"127.0.0.1:{params.vllm_port}",
        auth_include=proxy_config.AUTH_INCLUDE_PATH,
        temp_dir="/tmp",  # noqa: S108 (a private tmpfs in the proxy container)
        access_log="/dev/stdout",
        error_log="stderr",
    )
    autostop = render_autostop_check(params) if needs_autostop(params) else ""
    for text in (nginx_conf, autostop):
        if any(end in text for end in _HEREDOC_ENDS):
            raise ValueError("an embedded file contains a heredoc terminator")
        if text and not text.endswith("\n"):
            raise ValueError("an embedded file must end with a newline")
    script = _env.get_template("startup.sh.j2").render(
        p=params,
        spec=params.spec,
        vllm_args=vllm_args,
        public_port=params.public_port,
        vllm_port=params.vllm_port,
        proxy_image=params.proxy_image,
        min_driver_major=MIN_NVIDIA_DRIVER_MAJOR,
        docker_key_fingerprint=DOCKER_APT_KEY_FINGERPRINT,
        auth_include_sh=proxy_config.AUTH_INCLUDE_SH,
        auth_include_path=proxy_config.AUTH_INCLUDE_PATH,
        nginx_conf=nginx_conf,
        autostop=autostop,
        dead_grace_minutes=DEAD_GRACE_MINUTES,
        vllm_container=VLLM_CONTAINER,
    )
    if len(script.encode()) > MAX_STARTUP_SCRIPT_BYTES:
        raise ValueError(
            f"the startup script is {len(script.encode())} bytes; GCE accepts at most "
            f"{MAX_STARTUP_SCRIPT_BYTES}"
        )
    return script
