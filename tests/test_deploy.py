"""`python3 -m scripts.deploy STACK`, with recording stand-ins for pulumi, uv and pip."""

from __future__ import annotations

import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support.pulumi_harness import PROJECT_ROOT

RECORDER = """#!/bin/sh
echo "$(basename "$0") $*" >> "$CALL_LOG"
case "$(basename "$0") $*" in
  "pulumi config get runpodApiKey"*) exit "${HAS_RUNPOD_KEY_EXIT:-1}" ;;
  "pulumi stack output smoke_test_command"*) echo 'python -m scripts.smoke_test 203.0.113.10' ;;
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


def test_shipped_example_values_are_refused_before_anything_runs(
    sandbox: dict[str, str], tmp_path: Path
) -> None:
    adc = Path(sandbox["HOME"]) / ".config/gcloud/application_default_credentials.json"
    adc.write_text("{}")
    sandbox["PROJECT"] = str(copy_project(tmp_path / "as-shipped", own_values=False))
    result = deploy(sandbox, "dev", "--yes")
    assert result.returncode == 1
    assert "still has the shipped example values" in result.stderr
    assert "--path 'llm-endpoint:gcp.project' YOUR_PROJECT_ID" in result.stderr
    assert "--path 'llm-endpoint:gcp.allowedSourceRanges[0]'" in result.stderr
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
    assert "python -m scripts.smoke_test 203.0.113.10" in result.stdout


def test_existing_passphrase_is_used_and_no_prompt_is_skipped_by_default(
    sandbox: dict[str, str],
) -> None:
    adc = Path(sandbox["HOME"]) / ".config/gcloud/application_default_credentials.json"
    adc.write_text("{}")
    sandbox["PULUMI_CONFIG_PASSPHRASE"] = "from-the-user"
    assert deploy(sandbox, "dev").returncode == 0
    assert "pulumi up --stack dev" in calls(sandbox)
    assert not (Path(sandbox["HOME"]) / ".config" / "llm-endpoint" / "passphrase").exists()


def test_missing_tools_are_installed(sandbox: dict[str, str], tmp_path: Path) -> None:
    """uv comes from pip; Pulumi from its official installer (here, a recording `sh`)."""
    adc = Path(sandbox["HOME"]) / ".config/gcloud/application_default_credentials.json"
    adc.write_text("{}")
    bare = tmp_path / "bare-bin"
    installer_log = tmp_path / "installs.log"
    bare.mkdir()
    # `sh -c "curl ... | sh"` stands for the Pulumi installer: it "installs" pulumi.
    (bare / "sh").write_text(
        f'#!/bin/bash\necho "sh $*" >> {installer_log}\n'
        f'mkdir -p "$HOME/.pulumi/bin" && cp {Path(sandbox["PATH"].split(":")[0])}/pulumi '
        '"$HOME/.pulumi/bin/pulumi"\n'
    )
    (bare / "curl").write_text("#!/bin/sh\nexit 0\n")
    fake_python = bare / "python-for-pip"
    fake_python.write_text(
        f'#!/bin/bash\necho "pip $*" >> {installer_log}\nmkdir -p "$HOME/.local/bin" && '
        f'cp {Path(sandbox["PATH"].split(":")[0])}/uv "$HOME/.local/bin/uv"\n'
    )
    for f in bare.iterdir():
        f.chmod(0o755)
    env = {**sandbox, "PATH": f"{bare}:/usr/bin:/bin", "PULUMI_CONFIG_PASSPHRASE": "x"}
    code = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, scripts.deploy as d; sys.executable = sys.argv[1]; "
            "raise SystemExit(d.main(['dev', '--yes']))",
            str(fake_python),
        ],
        cwd=env["PROJECT"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert code.returncode == 0, code.stderr + code.stdout
    installs = installer_log.read_text().splitlines()
    assert installs == [
        "pip -m pip install --user uv==0.13.9",
        "sh -c curl -fsSL https://get.pulumi.com | sh",
    ]
    assert "pulumi up --stack dev --yes" in calls(env)


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
    assert "pulumi config set --secret runpodApiKey" in result.stderr
    assert not any(c.startswith("pulumi up") for c in calls(sandbox))
