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

from infra import group_runtime, proxy_config
from infra.serving import MIN_NVIDIA_DRIVER_MAJOR, PUBLIC_PORT, VLLM_INTERNAL_PORT, ServingSpec

STARTUP_DIR = Path(__file__).resolve().parent.parent / "startup"

# Docker's apt signing key (docs.docker.com/engine/install: "9DC8 5822 9FC7 DD38 854A E2D8 8D81
# 803C 0EBF CD88"). The script refuses a downloaded key with another fingerprint.
DOCKER_APT_KEY_FINGERPRINT = "9DC858229FC7DD38854AE2D88D81803C0EBFCD88"

# GCE's limit for an inline startup-script value (docs/facts/gcp.md, "Startup scripts").
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

_HEREDOC_ENDS = ("LLM_ENDPOINT_NGINX_CONF", "LLM_ENDPOINT_AUTOSTOP", "LLM_ENDPOINT_LEAVE_GROUP")


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
    # Set for a replica of a group (gcp.replicas >= 2): it leaves the group instead of powering
    # off, and the group's autohealing, not the autostop check, replaces a dead vLLM.
    group: group_runtime.GroupParams | None = None


def needs_autostop(params: StartupParams) -> bool:
    """Whether the VM runs the autostop check once ready: for a dead vLLM (stop_on_failure)
    and/or for an idle one (idle_stop_minutes)."""
    return _autostop_dead_check(params) or params.idle_stop_minutes > 0


def _autostop_dead_check(params: StartupParams) -> bool:
    return params.stop_on_failure and params.group is None


def render_autostop_check(params: StartupParams) -> str:
    """The autostop check the script installs (also rendered alone for tests)."""
    return _env.get_template("autostop.sh.j2").render(
        stop_on_failure=_autostop_dead_check(params),
        leave_group_path=group_runtime.LEAVE_GROUP_PATH if params.group else "",
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
    leave_group = group_runtime.render_leave_group(params.group) if params.group else ""
    for text in (nginx_conf, autostop, leave_group):
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
        leave_group=leave_group,
        # Today's single VM keeps its script byte for byte: a change would replace the VM.
        dead_check_var="DEAD_CHECK" if params.group else "STOP_ON_FAILURE",
        watchdog_stop=(
            f"{group_runtime.LEAVE_GROUP_PATH} failure 'startup still not done after its deadline'"
            if params.group
            else "systemctl poweroff"
        ),
        leave_group_path=group_runtime.LEAVE_GROUP_PATH,
    )
    if len(script.encode()) > MAX_STARTUP_SCRIPT_BYTES:
        raise ValueError(
            f"the startup script is {len(script.encode())} bytes; GCE accepts at most "
            f"{MAX_STARTUP_SCRIPT_BYTES}"
        )
    return script
