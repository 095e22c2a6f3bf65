"""`python3 -m scripts.deploy STACK`, with recording stand-ins for pulumi, uv, pip, curl and an
"externally managed" Python (Debian's and Ubuntu's, PEP 668): fake executables that record
their arguments and answer as the real ones do in each case."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.pulumi_harness import PROJECT_ROOT

SMOKE = (
    'VLLM_API_KEY="$(pulumi stack output api_key --show-secrets --stack dev)" '
    "uv run python -m scripts.smoke_test 203.0.113.10 --model Qwen/Qwen2.5-7B-Instruct --wait 2700"
)
RECORDER = f"""#!/bin/sh
echo "$(basename "$0") $*" >> "$CALL_LOG"
[ -n "$ENV_LOG" ] && echo "$(basename "$0") $1 PPF=$PULUMI_CONFIG_PASSPHRASE_FILE" >> "$ENV_LOG"
case "$(basename "$0") $*" in
  "pulumi config get runpodApiKey"*) exit "${{HAS_RUNPOD_KEY_EXIT:-1}}" ;;
  "pulumi stack output smoke_test_command"*) echo '{SMOKE}' ;;
  "pulumi stack output api_key"*) echo 'the-stack-key' ;;
esac
exit 0
"""


def make_tool(directory: Path, name: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    tool = directory / name
    tool.write_text(RECORDER)
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)


def copy_project(target: Path, own_values: bool) -> Path:
    """The deploy command with the shipped stack files, in a throwaway project directory (it
    finds its project from its own location). With `own_values`, the dev stack file carries a
    user's project and range instead of the shipped examples, as after the README's setup."""
    (target / "scripts").mkdir(parents=True)
    for name in ("__init__.py", "deploy.py"):
        shutil.copy(PROJECT_ROOT / "scripts" / name, target / "scripts" / name)
    for stack_file in PROJECT_ROOT.glob("Pulumi*.yaml"):
        text = stack_file.read_text()
        if own_values:
            text = text.replace("project: llm-endpoint-dev", "project: acme-ml-prod")
            text = text.replace("- 203.0.113.0/24", "- 198.51.100.7/32")
        (target / stack_file.name).write_text(text)
    return target


@pytest.fixture
def sandbox(tmp_path: Path) -> dict[str, str]:
    home = tmp_path / "home"
    (home / ".config" / "gcloud").mkdir(parents=True)
    bin_dir = tmp_path / "bin"
    make_tool(bin_dir, "uv")
    make_tool(bin_dir, "pulumi")
    return {
        "HOME": str(home),
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "CALL_LOG": str(tmp_path / "calls.log"),
        "PROJECT": str(copy_project(tmp_path / "project", own_values=True)),
    }


def deploy(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "scripts.deploy", *args],
        cwd=env["PROJECT"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def calls(env: dict[str, str]) -> list[str]:
    log = Path(env["CALL_LOG"])
    return log.read_text().splitlines() if log.exists() else []


def test_without_gcp_credentials_nothing_runs(sandbox: dict[str, str]) -> None:
    result = deploy(sandbox, "dev")
    assert result.returncode == 1
    assert "gcloud auth application-default login" in result.stderr
    assert calls(sandbox) == []


def test_shipped_example_values_are_refused_with_the_lines_to_edit(
    sandbox: dict[str, str], tmp_path: Path
) -> None:
    """Before the first deploy there is no Pulumi CLI and no stack: the fix is an edit."""
    adc = Path(sandbox["HOME"]) / ".config/gcloud/application_default_credentials.json"
    adc.write_text("{}")
    sandbox["PROJECT"] = str(copy_project(tmp_path / "as-shipped", own_values=False))
    result = deploy(sandbox, "dev", "--yes")
    assert result.returncode == 1
    assert "Pulumi.dev.yaml still has the shipped example values. Edit these lines of " in (
        result.stderr
    )
    lines = (PROJECT_ROOT / "Pulumi.dev.yaml").read_text().splitlines()
    project_line = lines.index("    project: llm-endpoint-dev") + 1
    range_line = lines.index("      - 203.0.113.0/24") + 1
    assert f"line {project_line}: project: llm-endpoint-dev" in result.stderr
    assert f"line {range_line}: - 203.0.113.0/24" in result.stderr
    assert "your public IP address as A.B.C.D/32" in result.stderr
    # The commands are offered for later, once the CLI and the stack exist.
    assert "Once the Pulumi CLI is installed and the stack exists" in result.stderr
    assert "--path 'llm-endpoint:gcp.project' YOUR_PROJECT_ID" in result.stderr
    assert calls(sandbox) == []


def test_the_example_range_is_found_in_flow_style_too(sandbox: dict[str, str], tmp_path: Path):
    """README's replicas snippet writes the range as `allowedSourceRanges: [203.0.113.0/24]`."""
    adc = Path(sandbox["HOME"]) / ".config/gcloud/application_default_credentials.json"
    adc.write_text("{}")
    project = copy_project(tmp_path / "flow", own_values=True)
    stack_file = project / "Pulumi.dev.yaml"
    text = stack_file.read_text().replace(
        "    allowedSourceRanges:\n      - 198.51.100.7/32",
        "    allowedSourceRanges: [203.0.113.0/24]",
    )
    assert "[203.0.113.0/24]" in text
    stack_file.write_text(text)
    sandbox["PROJECT"] = str(project)
    result = deploy(sandbox, "dev", "--yes")
    assert result.returncode == 1
    assert ": allowedSourceRanges: [203.0.113.0/24]" in result.stderr
    assert calls(sandbox) == []


def test_deploys_the_stack_in_order_and_makes_a_private_passphrase(
    sandbox: dict[str, str],
) -> None:
    adc = Path(sandbox["HOME"]) / ".config/gcloud/application_default_credentials.json"
    adc.write_text("{}")
    result = deploy(sandbox, "dev", "--yes")
    assert result.returncode == 0, result.stderr
    assert calls(sandbox) == [
        "uv sync --locked",
        "pulumi stack select --create dev",
        "pulumi up --stack dev --yes",
        "pulumi stack output smoke_test_command --stack dev",
    ]
    passphrase = Path(sandbox["HOME"]) / ".config" / "llm-endpoint" / "passphrase"
    assert stat.S_IMODE(passphrase.stat().st_mode) == 0o600
    assert len(passphrase.read_text().strip()) >= 40
    assert passphrase.read_text().strip() not in result.stdout + result.stderr
    assert "Back it up" in result.stdout
    # Not beside the state it decrypts.
    assert (Path(sandbox["HOME"]) / ".pulumi-llm-endpoint").is_dir()
    assert list((Path(sandbox["HOME"]) / ".pulumi-llm-endpoint").iterdir()) == []
    assert SMOKE in result.stdout
    assert "uv run python -m scripts.smoke_test --stack dev" in result.stdout
    assert "pulumi destroy --stack dev" in result.stdout


def test_existing_passphrase_is_used_and_no_prompt_is_skipped_by_default(
    sandbox: dict[str, str],
) -> None:
    adc = Path(sandbox["HOME"]) / ".config/gcloud/application_default_credentials.json"
    adc.write_text("{}")
    sandbox["PULUMI_CONFIG_PASSPHRASE"] = "from-the-user"
    assert deploy(sandbox, "dev").returncode == 0
    assert "pulumi up --stack dev" in calls(sandbox)
    assert not (Path(sandbox["HOME"]) / ".config" / "llm-endpoint" / "passphrase").exists()


def test_unknown_stack_names_the_shipped_ones(sandbox: dict[str, str]) -> None:
    result = deploy(sandbox, "prod")
    assert result.returncode == 1
    assert "no stack file Pulumi.prod.yaml" in result.stderr
    assert "Pulumi.dev.yaml" in result.stderr


def test_stack_targets_reads_the_shipped_stack_files() -> None:
    from scripts.deploy import stack_targets

    assert stack_targets("dev") == {"gcp"}
    assert stack_targets("runpod") == {"runpod"}


def test_runpod_stack_without_key_stops_before_up(sandbox: dict[str, str]) -> None:
    result = deploy(sandbox, "runpod")
    assert result.returncode == 1
    assert "\n    pulumi config set --stack runpod --secret runpodApiKey\n" in result.stderr
    assert "export PULUMI_CONFIG_PASSPHRASE_FILE=" in result.stderr
    assert not any(c.startswith("pulumi up") for c in calls(sandbox))


# --- a stock Debian/Ubuntu machine: no uv, no Pulumi CLI, an externally managed Python -------

# Debian's python3 without the python3-venv package, and with PEP 668's marker: `-m venv` fails
# as Debian's does (on stdout), `pip install --user` is refused as pip refuses it there.
FAKE_PYTHON = r"""#!/bin/bash
echo "python3 $*" >> "$INSTALL_LOG"
case "$1 $2" in
  "-m venv")
    if [ "$VENV_WORKS" = 1 ]; then
      mkdir -p "$3/bin" && cp "$FAKE_VENV_PYTHON" "$3/bin/python" && exit 0
    fi
    mkdir -p "$3/bin"
    echo "The virtual environment was not created successfully because ensurepip is not"
    echo "available.  On Debian/Ubuntu systems, you need to install the python3-venv"
    echo "package using the following command."
    echo
    echo "    apt install python3.11-venv"
    exit 1 ;;
  "-m pip")
    if [ "$EXTERNALLY_MANAGED" = 1 ]; then
      echo "error: externally-managed-environment" >&2
      exit 1
    fi
    mkdir -p "$HOME/.local/bin" && cp "$FAKE_UV" "$HOME/.local/bin/uv" && exit 0 ;;
  "-c "*)
    if [ "$EXTERNALLY_MANAGED" = 1 ]; then echo True; else echo False; fi
    exit 0 ;;
esac
exit 2
"""
# The venv's own python: `-m pip install uv==...` installs a (recording) uv into the venv.
FAKE_VENV_PYTHON = r"""#!/bin/bash
echo "venv-python $*" >> "$INSTALL_LOG"
if [ "$1 $2 $3" = "-m pip install" ] && [ "$PIP_WORKS" = 1 ]; then
  cp "$FAKE_UV" "$(dirname "$0")/uv" && exit 0
fi
echo "ERROR: Could not find a version that satisfies the requirement uv==0.13.9" >&2
exit 1
"""
# curl: records its arguments; in mode "ok" saves an installer that installs a recording pulumi;
# in mode "6" fails as curl does when the name does not resolve.
FAKE_CURL = r"""#!/bin/bash
echo "curl $*" >> "$INSTALL_LOG"
out=""; prev=""
for a in "$@"; do [ "$prev" = "--output" ] && out="$a"; prev="$a"; done
case "$CURL_MODE" in
  ok) cp "$FAKE_INSTALLER" "$out"; exit 0 ;;
  6) echo "curl: (6) Could not resolve host: get.pulumi.com" >&2; exit 6 ;;
esac
exit 99
"""
# What get.pulumi.com serves, as far as the deploy can tell: it installs pulumi in ~/.pulumi/bin.
FAKE_INSTALLER = r"""#!/bin/sh
echo "installer $*" >> "$INSTALL_LOG"
mkdir -p "$HOME/.pulumi/bin" && cp "$FAKE_PULUMI" "$HOME/.pulumi/bin/pulumi"
"""


@pytest.fixture
def stock_machine(sandbox: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """Credentials and the user's own stack values, but no uv and no pulumi on PATH; python3,
    curl and pip as on a stock Debian/Ubuntu (the defaults: externally managed, venv works,
    PyPI and get.pulumi.com reachable). Tests change the knobs."""
    adc = Path(sandbox["HOME"]) / ".config/gcloud/application_default_credentials.json"
    adc.write_text("{}")
    fakes = tmp_path / "fakes"  # not on PATH: the tools copy them into place
    fakes.mkdir()
    for name, text in (
        ("python3", FAKE_PYTHON),
        ("venv-python", FAKE_VENV_PYTHON),
        ("installer.sh", FAKE_INSTALLER),
    ):
        (fakes / name).write_text(text)
    bare = tmp_path / "stock-bin"
    bare.mkdir()
    (bare / "curl").write_text(FAKE_CURL)
    for f in [*fakes.iterdir(), *bare.iterdir()]:
        f.chmod(0o755)
    recorders = Path(sandbox["PATH"].split(":")[0])
    return {
        **sandbox,
        "PATH": f"{bare}:/usr/bin:/bin",
        "INSTALL_LOG": str(tmp_path / "installs.log"),
        "FAKE_PYTHON": str(fakes / "python3"),
        "FAKE_VENV_PYTHON": str(fakes / "venv-python"),
        "FAKE_UV": str(recorders / "uv"),
        "FAKE_PULUMI": str(recorders / "pulumi"),
        "FAKE_INSTALLER": str(fakes / "installer.sh"),
        "EXTERNALLY_MANAGED": "1",
        "VENV_WORKS": "1",
        "PIP_WORKS": "1",
        "CURL_MODE": "ok",
    }


def deploy_with_python(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    """Run the deploy command as if `python3` were the fake one (deploy installs with the
    Python that runs it, sys.executable)."""
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, scripts.deploy as d; sys.executable = sys.argv[1]; "
            "raise SystemExit(d.main(sys.argv[2:]))",
            env["FAKE_PYTHON"],
            *args,
        ],
        cwd=env["PROJECT"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def installs(env: dict[str, str]) -> list[str]:
    log = Path(env["INSTALL_LOG"])
    return log.read_text().splitlines() if log.exists() else []


def test_on_an_externally_managed_python_uv_goes_into_a_venv_of_its_own(
    stock_machine: dict[str, str],
) -> None:
    env = stock_machine
    result = deploy_with_python(env, "dev", "--yes")
    assert result.returncode == 0, result.stderr + result.stdout
    tools = Path(env["HOME"]) / ".local/share/llm-endpoint"
    done = installs(env)
    assert done[0] == f"python3 -m venv {tools / 'uv'}"
    assert done[1] == (
        "venv-python -m pip install --disable-pip-version-check --timeout 30 uv==0.13.9"
    )
    assert not any("--user" in line for line in done)  # PEP 668 would refuse it
    assert (tools / "bin" / "uv").resolve() == (tools / "uv" / "bin" / "uv")
    assert "uv sync --locked" in calls(env)
    assert "pulumi up --stack dev --yes" in calls(env)


def test_without_venv_support_on_an_externally_managed_python_it_names_the_fix(
    stock_machine: dict[str, str],
) -> None:
    env = {**stock_machine, "VENV_WORKS": "0"}
    result = deploy_with_python(env, "dev", "--yes")
    assert result.returncode == 1
    assert "this Python is externally managed (PEP 668)" in result.stderr
    assert "\n    sudo apt-get install python3.11-venv\n" in result.stderr
    assert "pipx install uv==0.13.9" in result.stderr
    assert not any(line.startswith("python3 -m pip") for line in installs(env))
    assert calls(env) == []


def test_without_venv_support_on_a_plain_python_pip_user_is_used(
    stock_machine: dict[str, str],
) -> None:
    env = {**stock_machine, "VENV_WORKS": "0", "EXTERNALLY_MANAGED": "0"}
    result = deploy_with_python(env, "dev", "--yes")
    assert result.returncode == 0, result.stderr
    assert "python3 -m pip install --user uv==0.13.9" in installs(env)


def test_a_failed_uv_download_says_what_failed(stock_machine: dict[str, str]) -> None:
    env = {**stock_machine, "PIP_WORKS": "0"}
    result = deploy_with_python(env, "dev", "--yes")
    assert result.returncode == 1
    assert "installing uv==0.13.9 from PyPI into" in result.stderr
    assert "Check the network" in result.stderr
    assert calls(env) == []


def test_the_pulumi_installer_is_downloaded_with_limits_then_run(
    stock_machine: dict[str, str],
) -> None:
    env = stock_machine
    result = deploy_with_python(env, "dev", "--yes")
    assert result.returncode == 0, result.stderr
    (curl,) = [line for line in installs(env) if line.startswith("curl ")]
    words = curl.split()
    assert {"--fail", "--show-error", "--location"} <= set(words)
    assert words[words.index("--connect-timeout") + 1] == "15"
    assert words[words.index("--max-time") + 1] == "120"
    assert words[words.index("--proto") + 1] == "=https"
    assert words[-1] == "https://get.pulumi.com"
    assert any(line.startswith("installer") for line in installs(env))  # run from the file


def test_a_failed_pulumi_download_fails_fast_and_says_so(stock_machine: dict[str, str]) -> None:
    env = {**stock_machine, "CURL_MODE": "6"}
    result = deploy_with_python(env, "dev", "--yes")
    assert result.returncode == 1
    assert (
        "downloading the Pulumi installer from https://get.pulumi.com failed (curl exit 6: "
        "could not resolve the host name)" in result.stderr
    )
    assert not any(line.startswith("installer") for line in installs(env))
    assert calls(env) == []


def test_an_installer_that_hangs_is_stopped_at_its_time_limit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The subprocess limit, with the clock injected through subprocess.run's TimeoutExpired."""
    from scripts import deploy as d

    def hangs(argv: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        assert kw["timeout"] == d.INSTALLER_TIMEOUT_S
        raise subprocess.TimeoutExpired(argv, float(str(kw["timeout"])))

    monkeypatch.setattr(subprocess, "run", hangs)
    with pytest.raises(d.DeployError, match=r"did not finish within 600 s"):
        d._run(["sh", str(tmp_path / "install.sh")], {}, timeout=d.INSTALLER_TIMEOUT_S)


def _printed_block(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    start = lines.index("In your shell (each new one), first:")
    return [line.strip() for line in lines[start:] if line.startswith("  ")]


def test_the_printed_commands_work_as_printed_in_a_fresh_shell(
    stock_machine: dict[str, str], tmp_path: Path
) -> None:
    """A new shell has none of the deploy's PATH or passphrase: run what was printed in one."""
    env = stock_machine
    result = deploy_with_python(env, "dev", "--yes")
    assert result.returncode == 0, result.stderr
    block = _printed_block(result.stdout)
    home = env["HOME"]
    assert block[:3] == [
        f"cd {env['PROJECT']}",
        f'export PATH={home}/.local/share/llm-endpoint/bin:{home}/.pulumi/bin:"$PATH"',
        f"export PULUMI_CONFIG_PASSPHRASE_FILE={home}/.config/llm-endpoint/passphrase",
    ]
    assert block[3:] == [
        SMOKE,
        "uv run python -m scripts.smoke_test --stack dev",
        "pulumi destroy --stack dev",
    ]
    Path(env["CALL_LOG"]).unlink()
    env_log = tmp_path / "env.log"
    fresh = {
        "HOME": home,
        "PATH": "/usr/bin:/bin",
        "CALL_LOG": env["CALL_LOG"],
        "ENV_LOG": str(env_log),
    }
    shell = subprocess.run(
        ["bash", "-euc", "\n".join(block)],
        env=fresh,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert shell.returncode == 0, shell.stderr
    assert calls(env) == [
        "pulumi stack output api_key --show-secrets --stack dev",
        "uv run python -m scripts.smoke_test 203.0.113.10 --model Qwen/Qwen2.5-7B-Instruct "
        "--wait 2700",
        "uv run python -m scripts.smoke_test --stack dev",
        "pulumi destroy --stack dev",
    ]
    passphrase = f"{home}/.config/llm-endpoint/passphrase"
    assert set(env_log.read_text().splitlines()) == {
        f"pulumi stack PPF={passphrase}",
        f"uv run PPF={passphrase}",
        f"pulumi destroy PPF={passphrase}",
    }
