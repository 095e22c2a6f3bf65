"""How the allowlisting proxy gets into a RunPod pod.

The stock vLLM image's entrypoint is `vllm serve` (docs/facts/vllm.md ("Version and image")), which
would serve vLLM with no proxy in front. Two ways to run the project's entrypoint stub
(`image/entrypoint.sh`) instead:

- the stock pinned image, with the pod's `entrypoint` replaced by the stub (run by `sh -c`) and
  `cmd` = vLLM's arguments (docs/facts/runpod.md ("entrypoint and cmd"), RunPod's newer API
  documents). The bootstrap installs nginx from the image's own distribution;
- a custom image (`image/Dockerfile`: nginx baked in, the stub as ENTRYPOINT), with vLLM's
  arguments in `args`: faster and hermetic boots, and it works with an API that does not take
  `entrypoint`/`cmd`.

Everything that can change travels in the pod's environment:

- `LLM_ENDPOINT_BOOTSTRAP_B64`: this module's bootstrap script (base64). The stub writes it to a
  root-only file and runs it with vLLM's arguments (from infra/serving.py).
- `LLM_ENDPOINT_PROXY_CONF_B64`: `render_proxy_config(...)` from infra/proxy_config.py, the same
  nginx config as on the GCP VM (no secret in it).
- `VLLM_API_KEY` (secret): vLLM reads it (docs/facts/vllm.md, "The API key"), and the bootstrap
  turns it into the proxy's root-only auth include with infra/proxy_config.py's `AUTH_INCLUDE_SH`,
  never putting it on a command line.
- `HF_TOKEN` (secret, optional): for gated models.

The bootstrap refuses to start without a key or proxy config, or with an nginx older than 1.18
(the oldest tested; it never passes `-e`, which 1.18 lacks), checks the nginx config, starts
vLLM on 127.0.0.1:8001 and nginx on 0.0.0.0:8000, and stops the pod if either exits.
"""

from __future__ import annotations

import base64
import shlex
from pathlib import Path

import jinja2

from infra import proxy_config, serving
from infra.serving import PUBLIC_PORT, VLLM_INTERNAL_PORT

CONF_DIR = "/etc/llm-endpoint"
STATE_DIR = "/run/llm-endpoint"
VLLM_HOST = "127.0.0.1"
# The oldest nginx the bootstrap and the proxy config are tested with: 1.18, Ubuntu 22.04's
# (tests/test_runpod_bootstrap.py runs Debian bullseye's 1.18 build: .ci/old-nginx.sh).
MIN_NGINX_MINOR = 18
IMAGE_DIR = Path(__file__).resolve().parent / "image"

ENV_BOOTSTRAP = "LLM_ENDPOINT_BOOTSTRAP_B64"
ENV_PROXY_CONF = "LLM_ENDPOINT_PROXY_CONF_B64"
ENV_API_KEY = "VLLM_API_KEY"
ENV_HF_TOKEN = "HF_TOKEN"  # noqa: S105 (a variable name, not a value)
SECRET_ENV = (ENV_API_KEY, ENV_HF_TOKEN)

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,  # a shell script; every value is a constant of this project
)


def render_bootstrap() -> str:
    """The bootstrap as the pod gets it (whole-line comments left out, as in every text a pod
    body carries)."""
    text = _env.get_template("pod_bootstrap.sh.j2").render(
        conf_dir=CONF_DIR,
        state_dir=STATE_DIR,
        vllm_host=VLLM_HOST,
        vllm_port=VLLM_INTERNAL_PORT,
        public_port=PUBLIC_PORT,
        auth_include_sh=proxy_config.AUTH_INCLUDE_SH,
        vllm_max_restarts=VLLM_MAX_RESTARTS,
        min_nginx_minor=MIN_NGINX_MINOR,
        vllm_uid=serving.VLLM_UID,
    )
    return without_comment_lines(text)


def pod_proxy_config(
    *,
    conf_dir: str = CONF_DIR,
    state_dir: str = STATE_DIR,
    listen_port: int = PUBLIC_PORT,
    listen_address: str | None = None,
    upstream_port: int = VLLM_INTERNAL_PORT,
) -> str:
    """The VM's proxy config with the pod's paths (tests pass their own dirs and ports), as the
    pod gets it: without its whole-line comments."""
    text = proxy_config.render_proxy_config(
        listen_port=listen_port,
        listen_address=listen_address,
        upstream=f"{VLLM_HOST}:{upstream_port}",
        auth_include=f"{conf_dir}/proxy-auth.conf",
        temp_dir=f"{state_dir}/nginx-temp",
        access_log="/dev/stdout",
        error_log="stderr",
    )
    return without_comment_lines(text)


# How often the bootstrap restarts a vLLM that exited before it gives up and the pod exits.
VLLM_MAX_RESTARTS = 2
STUB_NAME = "llm-endpoint-entrypoint"  # $0 of the stub when run by `sh -c`


def without_comment_lines(text: str) -> str:
    """`text` without its whole-line comments (shell and nginx alike): what travels in every
    create body stays small (RunPod's limit, infra/runpod/bodies.py); the commented sources
    are in the repository. Only whole lines go, so no `#` inside a value is touched; shellcheck
    directives stay, so what ships is what tests/test_runpod_bootstrap.py lints."""

    def is_comment(line: str) -> bool:
        text = line.lstrip()
        return text.startswith("#") and not text.startswith("# shellcheck ")

    return "\n".join(line for line in text.splitlines() if not is_comment(line)) + "\n"


def entrypoint_stub() -> str:
    return without_comment_lines((IMAGE_DIR / "entrypoint.sh").read_text())


def launch_command(vllm_args: list[str], *, custom_image: bool) -> dict[str, object]:
    """The create/PATCH fields that start the stub with vLLM's arguments: `args` for a custom
    image (its ENTRYPOINT is the stub), else `entrypoint` + `cmd` in exec form, exactly as the
    container runtime joins them (ENTRYPOINT then CMD)."""
    if custom_image:
        return {"args": shlex.join(vllm_args)}
    return {"entrypoint": ["/bin/sh", "-c", entrypoint_stub(), STUB_NAME], "cmd": list(vllm_args)}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def pod_env(api_key_ref: str, hf_token_ref: str | None) -> dict[str, str]:
    """The pod's environment. RunPod shows it to whoever holds the account's API key (GET
    /v2/pods returns `env`), so the key and the token are references to account secrets
    (infra/runpod/account_secrets.py), which RunPod replaces with the values at boot."""
    env = {
        **serving.vllm_container_env(),
        ENV_BOOTSTRAP: b64(render_bootstrap()),
        ENV_PROXY_CONF: b64(pod_proxy_config()),
        ENV_API_KEY: api_key_ref,
    }
    if hf_token_ref:
        env[ENV_HF_TOKEN] = hf_token_ref
    return env
