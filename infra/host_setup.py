"""The VM's host setup as cloud-init config (`#cloud-config` in the `user-data` metadata key).

cloud-init runs it once, at the instance's first boot (docs/facts/gcp.md, "cloud-init"):
Docker Engine and the NVIDIA Container Toolkit from their own apt repositories, each signing
key fetched by its full fingerprint (gpg refuses a key with another one), versions pinned by
apt preferences, one `apt-get update` and one install (apt runs once), the NVIDIA driver and
kernel packages held so that unattended upgrades cannot replace them under a running VM, and
the agent's systemd units. Nothing here is secret, and nothing changes per deployment except
the boot watchdog's time: the runtime itself is data the agent reads (infra/vm_runtime.py).

What is left in shell: one `apt-mark hold` line (a `dpkg-query` glob for the driver packages
the boot image happens to carry). Everything else is cloud-init's own modules and systemd.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vm_agent import units

# Fingerprints of the repositories' signing keys (docs/facts/gcp.md, "Signing keys").
DOCKER_KEY_FINGERPRINT = "9DC858229FC7DD38854AE2D88D81803C0EBFCD88"
NVIDIA_KEY_FINGERPRINT = "C95B321B61E88C1809C4F759DDCAE044F796ECB0"
KEYSERVER = "keyserver.ubuntu.com"

# Pinned versions (docs/facts/gcp.md, "Package versions"). The Docker pins match any Ubuntu
# release's build of that version (`~ubuntu.24.04~noble` and the like).
DOCKER_VERSION = "5:29.8.0-1~*"
CONTAINERD_VERSION = "2.3.5-1~*"
NVIDIA_TOOLKIT_VERSION = "1.20.0-1"
PINS: dict[tuple[str, ...], str] = {
    ("docker-ce", "docker-ce-cli"): DOCKER_VERSION,
    ("containerd.io",): CONTAINERD_VERSION,
    (
        "nvidia-container-toolkit",
        "nvidia-container-toolkit-base",
        "libnvidia-container1",
        "libnvidia-container-tools",
    ): NVIDIA_TOOLKIT_VERSION,
}
PACKAGES = ["docker-ce", "docker-ce-cli", "containerd.io", "nvidia-container-toolkit"]
# Held at every boot, before anything else touches apt: the driver that came with the image
# and the kernel its modules were built for.
HELD_GLOBS = ("nvidia-*", "libnvidia-*", "linux-modules-nvidia-*", "linux-image-*", "linux-gcp*")

AGENT_UNIT = "llm-endpoint-agent.service"
AGENT_FAILED_UNIT = "llm-endpoint-agent-failed.service"
LOADER_PATH = "/usr/local/lib/llm-endpoint/load_agent.py"
AGENT_ZIP = f"{units.RUN_DIR}/agent.zip"
_VM_AGENT_DIR = Path(__file__).resolve().parent.parent / "vm_agent"


def apt_preferences() -> str:
    return "\n".join(
        f"Package: {' '.join(names)}\nPin: version {version}\nPin-Priority: 1001\n"
        for names, version in PINS.items()
    )


def unattended_upgrades_conf() -> str:
    """Belt and braces beside the holds: unattended-upgrades skips these (regexes)."""
    names = "; ".join(f'"{g.rstrip("*")}"' for g in HELD_GLOBS)
    return f"Unattended-Upgrade::Package-Blacklist {{ {names}; }};\n"


def hold_command() -> list[str]:
    globs = " ".join(f"'{g}'" for g in HELD_GLOBS)
    line = (
        "dpkg-query -W -f='${binary:Package} ${db:Status-Status}\\n' "
        f"{globs} 2>/dev/null | awk '$2 == \"installed\" {{print $1}}' | xargs -r apt-mark hold"
    )
    return ["sh", "-c", line]


def docker_daemon_json() -> str:
    """What `nvidia-ctk runtime configure --runtime=docker` writes, declared instead of run
    (docs/facts/gcp.md, "Docker and NVIDIA Container Toolkit on Ubuntu"), with bounded logs."""
    return json.dumps(
        {
            "runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}},
            "log-driver": "json-file",
            "log-opts": {"max-size": "50m", "max-file": "5"},
        },
        indent=2,
    )


def agent_unit() -> str:
    return f"""[Unit]
Description=llm-endpoint agent: runs what the instance metadata declares
Wants=network-online.target
After=network-online.target docker.service
# A crash-looping agent cannot keep the GPU from billing for nothing: give up and power off.
StartLimitIntervalSec=1h
StartLimitBurst=10
OnFailure={AGENT_FAILED_UNIT}

[Service]
Type=simple
RuntimeDirectory=llm-endpoint
RuntimeDirectoryPreserve=yes
ExecStartPre=/usr/bin/python3 -I {LOADER_PATH} {AGENT_ZIP}
Environment=PYTHONPATH={AGENT_ZIP}
ExecStart=/usr/bin/python3 -m vm_agent
Restart=always
RestartSec=10

[Install]
WantedBy=multi-user.target
"""


def agent_failed_unit() -> str:
    return f"""[Unit]
Description=llm-endpoint: the agent keeps failing; power off unless stopOnFailure is off
ConditionPathExists=!{units.NO_STOP_FLAG}

[Service]
Type=oneshot
StandardOutput=file:/dev/ttyS0
ExecStartPre=/usr/bin/echo "llm-endpoint: the agent keeps failing \\
(journalctl -u {AGENT_UNIT}); powering off"
ExecStart=/usr/bin/systemctl poweroff
"""


def watchdog_command(seconds: int, action: list[str] | None = None) -> list[str]:
    """A transient timer armed at every boot, before cloud-init touches apt: it powers the VM
    off `seconds` after boot unless the agent reports ready first (it stops the timer and
    writes the ready flag) or stopOnFailure is off. It covers what the agent cannot: an apt
    that hangs, an agent that never starts."""
    return [
        "systemd-run", "--unit", units.WATCHDOG_TIMER.removesuffix(".timer"),
        f"--on-boot={seconds}", "--timer-property=AccuracySec=30s",
        f"--property=ConditionPathExists=!{units.READY_FLAG}",
        f"--property=ConditionPathExists=!{units.NO_STOP_FLAG}",
        *(action or ["/usr/bin/systemctl", "poweroff"]),
    ]  # fmt: skip


def _file(path: str, content: str, permissions: str = "0644") -> dict[str, Any]:
    return {"path": path, "content": content, "permissions": permissions, "owner": "root:root"}


def user_data(
    watchdog_seconds: int,
    *,
    extra_files: dict[str, str] | None = None,
    watchdog_action: list[str] | None = None,
) -> str:
    """The whole `#cloud-config` document (JSON is YAML, so no YAML library is needed).
    `extra_files` (path: content, installed executable) and `watchdog_action` (instead of
    poweroff) serve a group's replicas (infra/group_runtime.py)."""
    sources = {
        "docker.list": {
            "source": "deb [arch=amd64 signed-by=$KEY_FILE] "
            "https://download.docker.com/linux/ubuntu $RELEASE stable",
            "keyid": DOCKER_KEY_FINGERPRINT,
            "keyserver": KEYSERVER,
        },
        "nvidia-container-toolkit.list": {
            "source": "deb [signed-by=$KEY_FILE] "
            "https://nvidia.github.io/libnvidia-container/stable/deb/amd64 /",
            "keyid": NVIDIA_KEY_FINGERPRINT,
            "keyserver": KEYSERVER,
        },
    }
    loader = (_VM_AGENT_DIR / "load.py").read_text()
    config: dict[str, Any] = {
        "bootcmd": [hold_command(), watchdog_command(watchdog_seconds, watchdog_action)],
        "apt": {"preserve_sources_list": True, "sources": sources},
        "package_update": True,
        "package_upgrade": False,
        "packages": PACKAGES,
        "write_files": [
            _file("/etc/apt/preferences.d/llm-endpoint-pins", apt_preferences()),
            _file("/etc/apt/apt.conf.d/51llm-endpoint-holds", unattended_upgrades_conf()),
            _file("/etc/docker/daemon.json", docker_daemon_json()),
            _file(LOADER_PATH, loader, "0755"),
            _file(f"/etc/systemd/system/{AGENT_UNIT}", agent_unit()),
            _file(f"/etc/systemd/system/{AGENT_FAILED_UNIT}", agent_failed_unit()),
            *(_file(path, text, "0755") for path, text in (extra_files or {}).items()),
        ],
        "runcmd": [
            ["systemctl", "daemon-reload"],
            ["systemctl", "enable", "--now", AGENT_UNIT],
        ],
    }
    return "#cloud-config\n" + json.dumps(config, indent=2) + "\n"
