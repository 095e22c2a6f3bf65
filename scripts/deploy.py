"""From a fresh clone to a deployed endpoint: `python3 -m scripts.deploy STACK`.

Installs what is missing (uv, the Pulumi CLI), checks credentials before anything is billed,
makes sure stack secrets can be encrypted, then runs `pulumi up` for the stack and prints the
smoke-test command. Standard library only, so it runs before the project's dependencies exist.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
UV_VERSION = "0.13.9"
PULUMI_INSTALLER = "https://get.pulumi.com"
STATE_DIR = "~/.pulumi-llm-endpoint"  # the file backend Pulumi.yaml names
# Kept apart from the state it decrypts: one copy of the state directory must not be enough.
PASSPHRASE_FILE = "~/.config/llm-endpoint/passphrase"  # noqa: S105 (a path, not a secret)


class DeployError(Exception):
    """A problem the user must fix; the message says what happened and what to do."""


def _say(message: str) -> None:
    print(f"deploy: {message}", flush=True)


def _run(argv: Sequence[str], env: dict[str, str], check: bool = True) -> int:
    _say("$ " + " ".join(argv))
    code = subprocess.run(list(argv), cwd=PROJECT_ROOT, env=env, check=False).returncode
    if check and code != 0:
        raise DeployError(f"`{' '.join(argv)}` failed (exit {code}); see its output above.")
    return code


def _which(tool: str, env: dict[str, str], extra_dirs: Sequence[Path] = ()) -> str | None:
    path = os.pathsep.join([*(str(d) for d in extra_dirs), env.get("PATH", "")])
    return shutil.which(tool, path=path)


def ensure_uv(env: dict[str, str]) -> str:
    home = Path(env["HOME"])
    found = _which("uv", env, [home / ".local" / "bin"])
    if found:
        return found
    _say(f"uv not found: installing uv=={UV_VERSION} with pip (user site)")
    _run([sys.executable, "-m", "pip", "install", "--user", f"uv=={UV_VERSION}"], env)
    found = _which("uv", env, [home / ".local" / "bin"])
    if not found:
        raise DeployError("uv was installed but is not on PATH; add ~/.local/bin to PATH.")
    return found


def ensure_pulumi(env: dict[str, str]) -> str:
    pulumi_bin = Path(env["HOME"]) / ".pulumi" / "bin"
    found = _which("pulumi", env, [pulumi_bin])
    if found:
        return found
    if not shutil.which("curl", path=env.get("PATH")):
        raise DeployError(
            "the Pulumi CLI is missing and curl is not there to install it. Install Pulumi "
            "(https://www.pulumi.com/docs/install/), then run this again."
        )
    _say(f"Pulumi CLI not found: installing it with the official installer ({PULUMI_INSTALLER})")
    _run(["sh", "-c", f"curl -fsSL {PULUMI_INSTALLER} | sh"], env)
    found = _which("pulumi", env, [pulumi_bin])
    if not found:
        raise DeployError(f"the Pulumi installer ran but no pulumi is in {pulumi_bin}.")
    return found


def stack_targets(stack: str) -> set[str]:
    """Which targets the stack file declares (`gcp`, `runpod`), read without a YAML library:
    the top-level config keys are `llm-endpoint:gcp:` / `llm-endpoint:runpod:` lines."""
    stack_file = PROJECT_ROOT / f"Pulumi.{stack}.yaml"
    if not stack_file.exists():
        shipped = sorted(p.name for p in PROJECT_ROOT.glob("Pulumi.*.yaml"))
        raise DeployError(
            f"no stack file {stack_file.name}. Use one of {', '.join(shipped)}, or copy one "
            f"to {stack_file.name} and edit it."
        )
    text = stack_file.read_text()
    return {t for t in ("gcp", "runpod") if f"\n  llm-endpoint:{t}:" in f"\n{text}"}


# Values the shipped stack files carry as examples: deploying with them would target a project
# that is not yours and open the endpoint to a documentation range (RFC 5737) only.
EXAMPLE_VALUES = {
    "project: llm-endpoint-dev": (
        "pulumi config set --stack {stack} --path 'llm-endpoint:gcp.project' YOUR_PROJECT_ID"
    ),
    "- 203.0.113.0/24": (
        "pulumi config set --stack {stack} --path 'llm-endpoint:gcp.allowedSourceRanges[0]' "
        "YOUR.PUBLIC.IP.ADDR/32"
    ),
}


def check_example_values(stack: str) -> None:
    text = (PROJECT_ROOT / f"Pulumi.{stack}.yaml").read_text()
    fixes = [fix.format(stack=stack) for marker, fix in EXAMPLE_VALUES.items() if marker in text]
    if fixes:
        raise DeployError(
            f"Pulumi.{stack}.yaml still has the shipped example values. Set yours first:\n  "
            + "\n  ".join(fixes)
        )


def check_credentials(targets: set[str], env: dict[str, str]) -> None:
    if "gcp" in targets:
        adc = env.get("GOOGLE_APPLICATION_CREDENTIALS") or str(
            Path(env["HOME"]) / ".config" / "gcloud" / "application_default_credentials.json"
        )
        if not Path(adc).is_file():
            raise DeployError(
                "no Google Cloud credentials: run `gcloud auth application-default login` "
                "(or set GOOGLE_APPLICATION_CREDENTIALS), then run this again."
            )


def ensure_passphrase(env: dict[str, str]) -> None:
    """Stack secrets are encrypted with a passphrase; make one if the user has none, and say
    where it is, since losing it means losing access to the stack's secrets."""
    if env.get("PULUMI_CONFIG_PASSPHRASE") or env.get("PULUMI_CONFIG_PASSPHRASE_FILE"):
        return
    passphrase = Path(PASSPHRASE_FILE.replace("~", env["HOME"], 1))
    passphrase.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    if not passphrase.exists():
        fd = os.open(passphrase, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32) + "\n")
        _say(
            f"generated a passphrase for stack secrets in {passphrase} (mode 600). Back it up: "
            "without it the stack's secrets cannot be decrypted."
        )
    env["PULUMI_CONFIG_PASSPHRASE_FILE"] = str(passphrase)


def deploy(stack: str, yes: bool, env: dict[str, str]) -> None:
    targets = stack_targets(stack)
    if not targets:
        raise DeployError(f"Pulumi.{stack}.yaml declares neither llm-endpoint:gcp nor :runpod.")
    if "gcp" in targets:
        check_example_values(stack)
    check_credentials(targets, env)
    uv = ensure_uv(env)
    pulumi = ensure_pulumi(env)
    ensure_passphrase(env)
    Path(STATE_DIR.replace("~", env["HOME"], 1)).mkdir(mode=0o700, parents=True, exist_ok=True)
    _run([uv, "sync", "--locked"], env)
    _run([pulumi, "stack", "select", "--create", stack], env)
    if "runpod" in targets and not env.get("RUNPOD_API_KEY"):
        has_key = _run([pulumi, "config", "get", "runpodApiKey", "--stack", stack], env, False)
        if has_key != 0:
            raise DeployError(
                "no RunPod API key: run `pulumi config set --secret runpodApiKey` (or export "
                "RUNPOD_API_KEY), then run this again."
            )
    _run([pulumi, "up", "--stack", stack, *(["--yes"] if yes else [])], env)
    if "gcp" in targets:
        _run([pulumi, "stack", "output", "smoke_test_command", "--stack", stack], env, False)
    _say(
        "deployed. The first boot takes 10-20 minutes (image and weights download); the "
        "command above waits for it. Tear down with `pulumi destroy --stack " + stack + "`."
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m scripts.deploy", description=__doc__)
    parser.add_argument("stack", help="stack name: a Pulumi.<stack>.yaml next to Pulumi.yaml")
    parser.add_argument("--yes", action="store_true", help="skip pulumi's confirmation prompt")
    args = parser.parse_args(argv)
    env = dict(os.environ)
    env.setdefault("HOME", str(Path.home()))
    try:
        deploy(args.stack, args.yes, env)
    except DeployError as err:
        print(f"deploy: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
