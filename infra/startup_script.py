"""Renders what runs on the VM (the startup script) from the templates in `startup/`.

Rendering takes only non-secret values: secret *names* in Secret Manager, never their values.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

import jinja2

from infra.serving import PUBLIC_PORT, ServingSpec

STARTUP_DIR = Path(__file__).resolve().parent.parent / "startup"

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(STARTUP_DIR),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,  # shell and nginx text, not HTML: values are quoted with `q` instead
)
_env.filters["q"] = lambda v: shlex.quote(str(v))


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


def render_startup_script(params: StartupParams) -> str:
    return _env.get_template("startup.sh.j2").render(p=params, spec=params.spec)
