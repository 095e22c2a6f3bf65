"""Read the endpoint, key and model from a Pulumi stack, so nothing is copied by hand.

Stack outputs (defined by the program): `endpoint` (the GCP VM's URL, e.g.
`http://203.0.113.7:8000`), `ip`, `model` (the served model name), `api_key` (secret), and on
a RunPod stack `runpod_endpoints` (a list of URLs). The candidate endpoints are `endpoint`
first (if the stack has one), then the RunPod ones in order; `--index` picks one (default 0).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scripts.smoke_test.target import UsageError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PULUMI_TIMEOUT_S = 120
INSTALL_HINT = (
    "Install it (https://www.pulumi.com/docs/iac/download-install/), or pass the endpoint "
    "and key yourself: python -m scripts.smoke_test http://IP:8000 with VLLM_API_KEY set."
)


class StackError(UsageError):
    """The stack's outputs could not be read or do not name an endpoint (exit 2)."""


@dataclass(frozen=True)
class StackEndpoint:
    url: str
    api_key: str | None
    model: str | None
    index: int
    count: int
    # The stack's CA (output `ca_cert`), for the GCP VM's endpoint: its TLS certificate is
    # signed by it. None for RunPod's (publicly trusted) proxy URLs.
    ca_cert: str | None = None


def read_outputs(stack: str, env: Mapping[str, str]) -> dict[str, Any]:
    """`pulumi stack output --json --show-secrets` for `stack`, run in the project directory.
    The output holds the key: it is parsed here and never printed."""
    pulumi = shutil.which("pulumi", path=env.get("PATH"))
    if pulumi is None:
        raise StackError(
            f"--stack needs the Pulumi CLI, which is not installed (not on PATH). {INSTALL_HINT}"
        )
    try:
        done = subprocess.run(
            [pulumi, "stack", "output", "--json", "--show-secrets", "--stack", stack],
            cwd=PROJECT_ROOT,
            env=dict(env),
            capture_output=True,
            text=True,
            timeout=PULUMI_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise StackError(
            f"`pulumi stack output` for stack {stack!r} did not finish within "
            f"{PULUMI_TIMEOUT_S}s; check `pulumi whoami` and the backend you are logged in to"
        ) from None
    if done.returncode != 0:
        detail = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise StackError(
            f"`pulumi stack output --stack {stack}` failed (exit {done.returncode}): "
            f"{' '.join(detail)[-500:]}. Check the stack name (`pulumi stack ls`); for a "
            "passphrase-protected stack set PULUMI_CONFIG_PASSPHRASE or "
            "PULUMI_CONFIG_PASSPHRASE_FILE."
        )
    try:
        outputs = json.loads(done.stdout)
    except ValueError:
        raise StackError(f"`pulumi stack output --json` for {stack!r} did not print JSON") from None
    if not isinstance(outputs, dict):
        raise StackError(f"`pulumi stack output --json` for {stack!r} did not print an object")
    return outputs


def select_endpoint(outputs: Mapping[str, Any], stack: str, index: int) -> StackEndpoint:
    candidates: list[str] = []
    if isinstance(outputs.get("endpoint"), str) and outputs["endpoint"]:
        candidates.append(outputs["endpoint"])
    runpod = outputs.get("runpod_endpoints") or []
    if isinstance(runpod, list):
        candidates.extend(u for u in runpod if isinstance(u, str) and u)
    if not candidates:
        raise StackError(
            f"stack {stack!r} has no `endpoint` or `runpod_endpoints` output: has it been "
            "deployed (`pulumi up`)? Its outputs: " + (", ".join(sorted(outputs)) or "none")
        )
    if not 0 <= index < len(candidates):
        raise StackError(
            f"--index {index} is out of range: stack {stack!r} has {len(candidates)} "
            f"endpoint(s), numbered 0 to {len(candidates) - 1}"
        )
    key = outputs.get("api_key")
    model = outputs.get("model")
    ca = outputs.get("ca_cert")
    is_vm = candidates[index] == outputs.get("endpoint")
    return StackEndpoint(
        url=candidates[index],
        api_key=key if isinstance(key, str) and key else None,
        model=model if isinstance(model, str) and model else None,
        index=index,
        count=len(candidates),
        ca_cert=ca if is_vm and isinstance(ca, str) and ca else None,
    )
