"""The VM's host setup and units, checked with the real tools: `cloud-init schema` on the
user-data, `systemd-analyze verify` on every unit, shellcheck on the one shell line, apt on the
pins; the agent bundle run by the system python3 without site-packages."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infra import agent_bundle, host_setup
from infra.config import parse as parse_config
from infra.vm_runtime import SecretVersions, build_runtime
from tests.support.vm_agent_fakes import FakeClock, fake_metadata_server
from vm_agent import units
from vm_agent.runtime_doc import AGENT_KEY

DEV = {"gcp": {"project": "llm-endpoint-dev", "allowedSourceRanges": ["203.0.113.0/24"]}}


def tool(name: str, package: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: apt-get install {package} (bash .ci/run installs it)"
    return path


def user_data_config() -> dict[str, object]:
    text = host_setup.user_data(3600)
    assert text.startswith("#cloud-config\n")
    config: dict[str, object] = json.loads(text.removeprefix("#cloud-config\n"))
    return config


def test_user_data_passes_cloud_init_schema(tmp_path: Path) -> None:
    path = tmp_path / "user-data"
    path.write_text(host_setup.user_data(3600))
    done = subprocess.run(
        [tool("cloud-init", "cloud-init"), "schema", "--config-file", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Valid cloud-config" in done.stdout


def test_cloud_init_schema_catches_a_broken_config(tmp_path: Path) -> None:
    """The check above is not vacuous: the same command refuses a wrong type."""
    config = user_data_config()
    config["packages"] = "docker-ce"
    path = tmp_path / "user-data"
    path.write_text("#cloud-config\n" + json.dumps(config))
    done = subprocess.run(
        [tool("cloud-init", "cloud-init"), "schema", "--config-file", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode != 0


def all_units() -> dict[str, str]:
    cfg = parse_config(DEV)
    assert cfg.gcp is not None
    rt = build_runtime(
        cfg.gcp, cfg.serving_for(1), SecretVersions("projects/1/secrets/k/versions/1", None, None),
        None, None,
    )  # fmt: skip
    return {
        units.VLLM_UNIT: units.vllm_unit(rt, 87040, 12),
        units.PROXY_UNIT: units.proxy_unit(rt),
        host_setup.AGENT_UNIT: host_setup.agent_unit(),
        host_setup.AGENT_FAILED_UNIT: host_setup.agent_failed_unit(),
    }


def test_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """Verified as written, except that /usr/bin/docker (absent here) is pointed at a stub
    executable and docker.service at a stand-in unit, both in the temporary directory."""
    stub = tmp_path / "bin" / "docker"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    (tmp_path / "docker.service").write_text(
        f"[Unit]\nDescription=x\n[Service]\nExecStart={stub}\n"
    )
    paths = []
    for name, text in all_units().items():
        (tmp_path / name).write_text(text.replace(units.DOCKER, str(stub)))
        paths.append(str(tmp_path / name))
    done = subprocess.run(
        [tool("systemd-analyze", "systemd"), "verify", *paths],
        capture_output=True, text=True, check=False,
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stderr == "", done.stderr


def test_the_only_shell_left_passes_shellcheck(tmp_path: Path) -> None:
    config = user_data_config()
    shell = [c[2] for c in config["bootcmd"] if c[:2] == ["sh", "-c"]]  # type: ignore[attr-defined]
    assert len(shell) == 1
    script = tmp_path / "hold.sh"
    script.write_text("#!/bin/sh\n" + shell[0] + "\n")
    done = subprocess.run(
        [tool("shellcheck", "shellcheck"), "--shell=sh", str(script)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout


def test_point7_driver_held_keys_pinned_versions_pinned_apt_once() -> None:
    config = user_data_config()
    hold = " ".join(config["bootcmd"][0])  # type: ignore[index]
    assert "apt-mark hold" in hold and "'nvidia-*'" in hold and "'libnvidia-*'" in hold
    sources = config["apt"]["sources"]  # type: ignore[index]
    fingerprints = {s["keyid"] for s in sources.values()}
    assert fingerprints == {host_setup.DOCKER_KEY_FINGERPRINT, host_setup.NVIDIA_KEY_FINGERPRINT}
    assert all(re.fullmatch(r"[0-9A-F]{40}", f) for f in fingerprints)  # full, not short ids
    assert all("signed-by=$KEY_FILE" in s["source"] for s in sources.values())
    assert config["package_update"] is True and config["package_upgrade"] is False
    assert config["packages"] == host_setup.PACKAGES
    files = {f["path"]: f["content"] for f in config["write_files"]}  # type: ignore[attr-defined]
    prefs = files["/etc/apt/preferences.d/llm-endpoint-pins"]
    for package in ("docker-ce", "containerd.io", "nvidia-container-toolkit"):
        assert re.search(rf"Package: [^\n]*{re.escape(package)}[^\n]*\nPin: version \S+", prefs)
    assert "nvidia-" in files["/etc/apt/apt.conf.d/51llm-endpoint-holds"]
    # apt runs once: cloud-init's one update and one install, no apt-get anywhere else.
    everything = json.dumps(config["bootcmd"]) + json.dumps(config["runcmd"])
    assert "apt-get" not in everything and "apt install" not in everything


def test_apt_reads_the_pins(tmp_path: Path) -> None:
    """Debian's apt parses the preferences file: a syntax error would be an `E:` line."""
    parts = tmp_path / "preferences.d"
    parts.mkdir()
    (parts / "llm-endpoint-pins").write_text(host_setup.apt_preferences())
    done = subprocess.run(
        [tool("apt-cache", "apt"), "-o", f"Dir::Etc::PreferencesParts={parts}",
         "-o", "Dir::Etc::Preferences=/dev/null", "policy", "docker-ce"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and "E:" not in done.stderr, done.stderr


def test_bundle_is_reproducible_and_runs_on_the_bare_system_python(tmp_path: Path) -> None:
    assert agent_bundle.agent_bundle() == agent_bundle.agent_bundle()
    bundle = tmp_path / "agent.zip"
    bundle.write_bytes(agent_bundle.agent_bundle())
    python = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
    # -S: no site-packages, so only the standard library is importable besides the bundle.
    code = (
        f"import sys; sys.path.insert(0, {str(bundle)!r}); "
        "import vm_agent.__main__, vm_agent.agent, vm_agent.load, infra.serving; "
        "assert 'pydantic' not in sys.modules and 'pulumi' not in sys.modules; print('ok')"
    )
    done = subprocess.run(
        [python, "-S", "-c", code], capture_output=True, text=True, check=False, cwd=tmp_path
    )
    assert done.stdout.strip() == "ok", done.stderr


def test_loader_fetches_the_agent_from_metadata(tmp_path: Path) -> None:
    target = tmp_path / "agent.zip"
    with fake_metadata_server(FakeClock()) as meta:
        meta.set_attributes(**{AGENT_KEY: agent_bundle.agent_bundle_b64()})
        done = subprocess.run(
            [sys.executable, "-I", "vm_agent/load.py", str(target)],
            capture_output=True, text=True, check=False,
            env={"LLM_ENDPOINT_METADATA_URL": meta.url, "PATH": os.environ["PATH"]},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert target.read_bytes() == agent_bundle.agent_bundle()
        assert oct(target.stat().st_mode & 0o777) == "0o600"
        meta.set_attributes(**{AGENT_KEY: base64.b64encode(b"not a zip").decode()})
        bad = subprocess.run(
            [sys.executable, "-I", "vm_agent/load.py", str(target)],
            capture_output=True, text=True, check=False,
            env={"LLM_ENDPOINT_METADATA_URL": meta.url, "PATH": os.environ["PATH"]},
        )  # fmt: skip
    assert bad.returncode != 0
    assert target.read_bytes() == agent_bundle.agent_bundle()  # the good one stays


def test_agent_unit_loads_then_runs_the_bundle() -> None:
    unit = host_setup.agent_unit()
    assert (
        f"ExecStartPre=/usr/bin/python3 -I {host_setup.LOADER_PATH} {host_setup.AGENT_ZIP}" in unit
    )
    assert f"Environment=PYTHONPATH={host_setup.AGENT_ZIP}" in unit
    assert "Restart=always" in unit and f"OnFailure={host_setup.AGENT_FAILED_UNIT}" in unit


@pytest.mark.parametrize("arg", ["plain", "with space", 'q"uote', "50%", "$HOME", "back\\slash"])
def test_systemd_quoting_is_accepted_by_systemd_analyze(arg: str, tmp_path: Path) -> None:
    """systemd's own parser accepts every quoted word (the exact forms are checked below)."""
    unit = tmp_path / "q.service"
    unit.write_text(f"[Service]\nExecStart=/bin/echo {units.systemd_quote(arg)}\n")
    done = subprocess.run(
        [tool("systemd-analyze", "systemd"), "verify", str(unit)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def test_systemd_quoting_forms() -> None:
    assert units.systemd_quote("Qwen/Qwen2.5-7B-Instruct") == "Qwen/Qwen2.5-7B-Instruct"
    assert units.systemd_quote("daemon off; pid /tmp/nginx.pid;") == (
        '"daemon off; pid /tmp/nginx.pid;"'
    )
    assert units.systemd_quote("50%") == '"50%%"'
    assert units.systemd_quote("$HOME") == '"$$HOME"'
    assert units.systemd_quote('a"b') == '"a\\"b"'


def test_group_user_data_installs_the_leave_script_and_the_watchdog_runs_it(
    tmp_path: Path,
) -> None:
    leave = "/usr/local/sbin/llm-endpoint-leave-group"
    text = host_setup.user_data(
        3600,
        extra_files={leave: "#!/bin/sh\necho leave\n"},
        watchdog_action=[leave, "failure", "not ready by the boot watchdog"],
    )
    path = tmp_path / "user-data"
    path.write_text(text)
    done = subprocess.run(
        [tool("cloud-init", "cloud-init"), "schema", "--config-file", str(path)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    config = json.loads(text.removeprefix("#cloud-config\n"))
    [script] = [f for f in config["write_files"] if f["path"] == leave]
    assert script["permissions"] == "0755"
    watchdog = config["bootcmd"][1]
    assert watchdog[-3:] == [leave, "failure", "not ready by the boot watchdog"]
    assert "poweroff" not in watchdog
