"""The runtime document: what the VM runs, as data (instance metadata `llm-endpoint-runtime`).

Written by the Pulumi program (infra/vm_runtime.py) and read by the agent, so both sides use
this one schema. Nothing secret is in it: secrets are named by their Secret Manager version
(`projects/P/secrets/S/versions/N`), and on a single VM a new version (key rotation) is a new
name, which is what makes the agent fetch it again. In a group the API key is named by its
`latest` alias instead (a template cannot change without a roll) and `secret_poll_s` has the
agent re-read it (docs/scale-out.md, "Key rotation").
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA = 1
RUNTIME_KEY = "llm-endpoint-runtime"
AGENT_KEY = "llm-endpoint-agent"
GUEST_NAMESPACE = "llm-endpoint"


class RuntimeError_(ValueError):
    """The document cannot be applied (wrong schema or a missing field)."""


@dataclass(frozen=True)
class VllmSpec:
    image: str
    args: list[str]
    env: dict[str, str]  # the non-secret part of serving.vllm_container_env()
    served_model_name: str
    port: int
    # Left to the OS, Docker and the proxy out of the machine's memory.
    reserved_memory_mb: int = 4096


@dataclass(frozen=True)
class ProxySpec:
    image: str
    port: int
    nginx_conf: str
    tls_cert_pem: str | None  # server certificate and the CA (public); None: plain HTTP
    ca_cert_pem: str | None


@dataclass(frozen=True)
class SecretNames:
    api_key: str
    hf_token: str | None = None
    tls_key: str | None = None


@dataclass(frozen=True)
class Runtime:
    vllm: VllmSpec
    proxy: ProxySpec
    secrets: SecretNames
    ready_timeout_s: int
    idle_stop_minutes: int
    stop_on_failure: bool
    max_failed_starts: int = 2
    # How long vLLM may fail /health while its container runs, once ready, before a restart.
    hung_grace_s: int = 600
    # Instead of powering off (failure, deadline, idle), run this (a replica leaves its group,
    # issue 13); poweroff stays the fallback if it fails. None: power off.
    stop_command: list[str] | None = None
    # Restart a vLLM that dies or hangs after ready. Off where something else replaces a dead
    # machine (a managed instance group's autohealing).
    watch_after_ready: bool = True
    # Re-read the API key every this many seconds and reload the proxy when its value changed:
    # in a group, where `secrets.api_key` names the `latest` alias. 0: only when the document
    # names another version (the single VM).
    secret_poll_s: int = 0
    schema: int = field(default=SCHEMA)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    def vllm_fingerprint(self, hf_token: str | None) -> str:
        """What a running vLLM must match to be kept: a change here restarts it. The HF
        token's value is hashed in (a new token matters only to a new download)."""
        return _digest([asdict(self.vllm), hf_token or ""])

    def proxy_fingerprint(self) -> str:
        """What needs a new proxy container (not a reload): its image and port."""
        return _digest([self.proxy.image, self.proxy.port])


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]


def parse(text: str) -> Runtime:
    """The document from its JSON; RuntimeError_ names what is wrong."""
    try:
        raw = json.loads(text)
        if raw.get("schema") != SCHEMA:
            raise RuntimeError_(f"schema {raw.get('schema')!r}, this agent reads {SCHEMA}")
        return Runtime(
            vllm=VllmSpec(**raw.pop("vllm")),
            proxy=ProxySpec(**raw.pop("proxy")),
            secrets=SecretNames(**raw.pop("secrets")),
            **raw,
        )
    except RuntimeError_:
        raise
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise RuntimeError_(f"unreadable runtime document: {type(err).__name__}: {err}") from None
