"""From a fresh clone to a deployed endpoint: `python3 -m scripts.deploy STACK`.

Installs what is missing (uv, the Pulumi CLI), checks credentials before anything is billed,
makes sure stack secrets can be encrypted, then runs `pulumi up` for the stack and prints the
commands for what comes next (smoke test, teardown), runnable as printed in the user's shell.
Standard library only, so it runs before the project's dependencies exist.

uv goes into a virtual environment this command owns (~/.local/share/llm-endpoint/uv), not into
the system Python: Debian and Ubuntu refuse `pip install --user` there (PEP 668, "externally
managed"). Every download and install has a time limit, and a failure says what failed.
"""

from __future__ import annotations

import argparse
import os
import secrets
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
UV_VERSION = "0.13.9"
PULUMI_INSTALLER = "https://get.pulumi.com"
STATE_DIR = "~/.pulumi-llm-endpoint"  # the file backend Pulumi.yaml names
# Kept apart from the state it decrypts: one copy of the state directory must not be enough.
PASSPHRASE_FILE = "~/.config/llm-endpoint/passphrase"  # noqa: S105 (a path, not a secret)
# What this command installs for itself: uv's virtual environment, and a bin directory holding
# only a link to uv (the environment's own bin would also put its python first on PATH).
TOOLS_HOME = "~/.local/share/llm-endpoint"
# Time limits, in seconds. The installer downloads a ~100 MB archive.
VENV_TIMEOUT_S = 120
PIP_TIMEOUT_S = 600
CURL_MAX_TIME_S = 120
INSTALLER_TIMEOUT_S = 600
CURL_EXITS = {
    6: "could not resolve the host name",
    7: "could not connect",
    22: "the server answered with an HTTP error",
    28: "timed out",
    35: "TLS handshake failed",
    60: "the server's certificate could not be verified",
}


class DeployError(Exception):
    """A problem the user must fix; the message says what happened and what to do."""


def _say(message: str) -> None:
    print(f"deploy: {message}", flush=True)


def _home(path: str, env: dict[str, str]) -> Path:
    return Path(path.replace("~", env["HOME"], 1))


def _run(
    argv: Sequence[str], env: dict[str, str], check: bool = True, timeout: float | None = None
) -> int:
    _say("$ " + " ".join(argv))
    try:
        code = subprocess.run(
            list(argv), cwd=PROJECT_ROOT, env=env, check=False, timeout=timeout
        ).returncode
    except subprocess.TimeoutExpired:
        raise DeployError(f"`{' '.join(argv)}` did not finish within {timeout:g} s.") from None
    if check and code != 0:
        raise DeployError(f"`{' '.join(argv)}` failed (exit {code}); see its output above.")
    return code


def _capture(
    argv: Sequence[str], env: dict[str, str], timeout: float
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv), cwd=PROJECT_ROOT, env=env, capture_output=True, text=True,
            check=False, timeout=timeout,
        )  # fmt: skip
    except subprocess.TimeoutExpired:
        raise DeployError(f"`{' '.join(argv)}` did not finish within {timeout:g} s.") from None


def _which(tool: str, env: dict[str, str], extra_dirs: Sequence[Path] = ()) -> str | None:
    path = os.pathsep.join([*(str(d) for d in extra_dirs), env.get("PATH", "")])
    return shutil.which(tool, path=path)


# --- uv ----------------------------------------------------------------------------------------


def ensure_uv(env: dict[str, str]) -> str:
    tools_bin = _home(TOOLS_HOME, env) / "bin"
    found = _which("uv", env, [_home("~/.local/bin", env), tools_bin])
    if found:
        return found
    python = sys.executable
    venv = _home(TOOLS_HOME, env) / "uv"
    _say(f"uv not found: installing uv=={UV_VERSION} into {venv} (a venv of its own)")
    made = _capture([python, "-m", "venv", str(venv)], env, VENV_TIMEOUT_S)
    if made.returncode == 0:
        return _pip_into_venv(venv, tools_bin, env)
    if not _externally_managed(python, env):
        _say(f"`{python} -m venv` failed; installing uv with pip into the user site instead")
        _run([python, "-m", "pip", "install", "--user", f"uv=={UV_VERSION}"], env,
             timeout=PIP_TIMEOUT_S)  # fmt: skip
        found = _which("uv", env, [_home("~/.local/bin", env)])
        if found:
            return found
        raise DeployError("uv was installed but is not in ~/.local/bin; add it to PATH.")
    raise DeployError(_no_way_to_install_uv(python, made.stderr + made.stdout))


def _pip_into_venv(venv: Path, tools_bin: Path, env: dict[str, str]) -> str:
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--disable-pip-version-check"]
    code = _run([*pip, "--timeout", "30", f"uv=={UV_VERSION}"], env, False, PIP_TIMEOUT_S)
    uv = venv / "bin" / "uv"
    if code != 0 or not uv.is_file():
        raise DeployError(
            f"installing uv=={UV_VERSION} from PyPI into {venv} failed (exit {code}; see the "
            "output above). Check the network, or install uv yourself "
            "(https://docs.astral.sh/uv/getting-started/installation/) and run this again."
        )
    tools_bin.mkdir(parents=True, exist_ok=True)
    link = tools_bin / "uv"
    link.unlink(missing_ok=True)
    link.symlink_to(uv)
    return str(link)


def _externally_managed(python: str, env: dict[str, str]) -> bool:
    """PEP 668: the distribution marks its Python with an EXTERNALLY-MANAGED file."""
    probe = (
        "import os, sysconfig; "
        "print(os.path.exists(os.path.join(sysconfig.get_path('stdlib'), 'EXTERNALLY-MANAGED')))"
    )
    answer = _capture([python, "-c", probe], env, 30)
    return answer.stdout.strip() != "False"  # in doubt, do not touch the system's Python


def _no_way_to_install_uv(python: str, venv_output: str) -> str:
    said = [line.strip() for line in venv_output.splitlines() if "apt" in line]
    package = "python3-venv"
    if said and (words := said[0].split()) and words[-1].endswith("-venv"):
        package = words[-1]  # Debian's message names the versioned package
    return (
        f"cannot install uv: `{python} -m venv` does not work here (Debian and Ubuntu ship the "
        f"venv module as a separate package), and this Python is externally managed (PEP "
        f"668), so `pip install --user` is refused. Install venv support, then run this "
        f"again:\n    sudo apt-get install {package}\nor install uv yourself "
        f"(https://docs.astral.sh/uv/getting-started/installation/), e.g. `pipx install "
        f"uv=={UV_VERSION}`, and run this again."
    )


# --- the Pulumi CLI ----------------------------------------------------------------------------


def ensure_pulumi(env: dict[str, str]) -> str:
    pulumi_bin = _home("~/.pulumi/bin", env)
    found = _which("pulumi", env, [pulumi_bin])
    if found:
        return found
    if not shutil.which("curl", path=env.get("PATH")):
        raise DeployError(
            "the Pulumi CLI is missing and curl is not there to install it. Install Pulumi "
            "(https://www.pulumi.com/docs/install/), then run this again."
        )
    _say(f"Pulumi CLI not found: installing it with the official installer ({PULUMI_INSTALLER})")
    with tempfile.TemporaryDirectory(prefix="llm-endpoint-pulumi-") as tmp:
        installer = Path(tmp) / "install.sh"
        _download(PULUMI_INSTALLER, installer, env)
        _run(["sh", str(installer)], env, timeout=INSTALLER_TIMEOUT_S)
    found = _which("pulumi", env, [pulumi_bin])
    if not found:
        raise DeployError(f"the Pulumi installer ran but no pulumi is in {pulumi_bin}.")
    return found


def _download(url: str, target: Path, env: dict[str, str]) -> None:
    """curl to a file, not into `sh`: its failure is seen, and every try has a time limit."""
    argv = [
        "curl", "--fail", "--silent", "--show-error", "--location", "--proto", "=https",
        "--connect-timeout", "15", "--max-time", str(CURL_MAX_TIME_S), "--retry", "2",
        "--output", str(target), url,
    ]  # fmt: skip
    code = _run(argv, env, check=False, timeout=3 * CURL_MAX_TIME_S + 30)
    if code != 0 or not target.is_file() or target.stat().st_size == 0:
        why = CURL_EXITS.get(code, "see curl's message above") if code else "nothing was saved"
        raise DeployError(
            f"downloading the Pulumi installer from {url} failed (curl exit {code}: {why}). "
            "Check the network, or install Pulumi yourself "
            "(https://www.pulumi.com/docs/install/) and run this again."
        )


# --- the stack ---------------------------------------------------------------------------------


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
        "your Google Cloud project id (as `gcloud projects list` shows it)",
        "--path 'llm-endpoint:gcp.project' YOUR_PROJECT_ID",
    ),
    "203.0.113.0/24": (
        "the network that may reach the endpoint, e.g. your public IP address as A.B.C.D/32",
        "--path 'llm-endpoint:gcp.allowedSourceRanges[0]' YOUR.PUBLIC.IP.ADDR/32",
    ),
}


def check_example_values(stack: str) -> None:
    """The CLI and the stack may not exist yet, so the fix is an edit of the file; the
    equivalent `pulumi config set` commands are for later."""
    name = f"Pulumi.{stack}.yaml"
    lines = (PROJECT_ROOT / name).read_text().splitlines()
    edits, commands = [], []
    for number, line in enumerate(lines, start=1):
        for marker, (meaning, option) in EXAMPLE_VALUES.items():
            if marker in line.split("#", 1)[0]:  # in a value, not in a comment
                edits.append(f"    line {number}: {line.strip():<28} -> {meaning}")
                commands.append(f"    pulumi config set --stack {stack} {option}")
    if edits:
        raise DeployError(
            f"{name} still has the shipped example values. Edit these lines of {name}, then "
            "run this again:\n" + "\n".join(edits) + "\n(Once the Pulumi CLI is installed and "
            "the stack exists, these commands do the same:\n" + "\n".join(commands) + ")"
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
    passphrase = _home(PASSPHRASE_FILE, env)
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


# --- what comes next ---------------------------------------------------------------------------


def shell_setup(tools: Sequence[str], env: dict[str, str], user_path: str) -> list[str]:
    """The lines that give the user's shell what the deploy's child processes had: the project
    directory, the tools' directories on PATH, the passphrase file."""
    lines = [f"cd {shlex.quote(str(PROJECT_ROOT))}"]
    on_path = set(user_path.split(os.pathsep))
    dirs = list(dict.fromkeys(str(Path(t).parent) for t in tools))
    missing = [d for d in dirs if d not in on_path]
    if missing:
        lines.append(f'export PATH={":".join(shlex.quote(d) for d in missing)}:"$PATH"')
    if env.get("PULUMI_CONFIG_PASSPHRASE_FILE"):
        quoted = shlex.quote(env["PULUMI_CONFIG_PASSPHRASE_FILE"])
        lines.append(f"export PULUMI_CONFIG_PASSPHRASE_FILE={quoted}")
    return lines


def next_steps(stack: str, setup: Sequence[str], smoke_command: str | None) -> str:
    steps = ["In your shell (each new one), first:", *(f"  {line}" for line in setup)]
    if smoke_command:
        steps += ["Smoke test (waits for the first boot):", f"  {smoke_command}"]
    steps += [
        "Smoke test of every endpoint the stack has:",
        f"  uv run python -m scripts.smoke_test --stack {shlex.quote(stack)}",
        "Tear down (stops the billing):",
        f"  pulumi destroy --stack {shlex.quote(stack)}",
    ]
    return "\n".join(steps)


def _smoke_test_command(pulumi: str, stack: str, env: dict[str, str]) -> str | None:
    done = _capture([pulumi, "stack", "output", "smoke_test_command", "--stack", stack], env, 120)
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def deploy(stack: str, yes: bool, env: dict[str, str]) -> None:
    user_path = env.get("PATH", "")
    targets = stack_targets(stack)
    if not targets:
        raise DeployError(f"Pulumi.{stack}.yaml declares neither llm-endpoint:gcp nor :runpod.")
    if "gcp" in targets:
        check_example_values(stack)
    check_credentials(targets, env)
    uv = ensure_uv(env)
    pulumi = ensure_pulumi(env)
    # The children find both tools by name (pulumi runs `uv sync`, the smoke test runs pulumi).
    env["PATH"] = os.pathsep.join([str(Path(uv).parent), str(Path(pulumi).parent), user_path])
    ensure_passphrase(env)
    _home(STATE_DIR, env).mkdir(mode=0o700, parents=True, exist_ok=True)
    _run([uv, "sync", "--locked"], env)
    _run([pulumi, "stack", "select", "--create", stack], env)
    if "runpod" in targets and not env.get("RUNPOD_API_KEY"):
        has_key = _capture([pulumi, "config", "get", "runpodApiKey", "--stack", stack], env, 60)
        if has_key.returncode != 0:
            setup = "\n".join(f"    {line}" for line in shell_setup([uv, pulumi], env, user_path))
            raise DeployError(
                "no RunPod API key. Store it encrypted in the stack (it prompts for it), in "
                f"your shell:\n{setup}\n    pulumi config set --stack {shlex.quote(stack)} "
                "--secret runpodApiKey\nthen run this again."
            )
    _run([pulumi, "up", "--stack", stack, *(["--yes"] if yes else [])], env)
    smoke = _smoke_test_command(pulumi, stack, env) if "gcp" in targets else None
    _say("deployed. The first boot takes 10-20 minutes (image and weights download).")
    print(next_steps(stack, shell_setup([uv, pulumi], env, user_path), smoke), flush=True)


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
