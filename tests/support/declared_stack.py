"""The program run once under Pulumi's mocks, synchronously, for tests that then use what it
declared with real components (nginx, openssl): the machine's inputs (the single VM's instance
or the group's template), every resource's inputs, the outputs awaited, the TLS server key.

    found = declared({"gcp": {"tls": False}}, {"apiKey": KEY})
    runtime(found).proxy.nginx_conf
    found["inputs"]["gcp:compute/forwardingRule:ForwardingRule"]["gcp-lb"]["ipAddress"]
"""

from __future__ import annotations

import json
from typing import Any

from pulumi.runtime import rpc

from tests.support.pulumi_harness import run_program, stack_config, stack_test, value
from vm_agent.runtime_doc import RUNTIME_KEY, Runtime, parse

INSTANCE = "gcp:compute/instance:Instance"
TEMPLATE = "gcp:compute/instanceTemplate:InstanceTemplate"
SECRET_VERSION = "gcp:secretmanager/secretVersion:SecretVersion"
WAIT = "pulumi-python:dynamic:Resource"


def group_stack(**gcp: Any) -> tuple[dict[str, str], list[str]]:
    """The dev stack as a group of 2 (or `replicas`): the region instead of a pinned zone."""
    config, secret_keys = stack_config(
        "dev", {"gcp": {"replicas": 2, "region": "us-central1", **gcp}}
    )
    doc = json.loads(config["llm-endpoint:gcp"])
    doc.pop("zone")
    doc.pop("readyTimeoutMinutes")  # a group's default (25) instead of the dev stack's 45
    config["llm-endpoint:gcp"] = json.dumps(doc)
    return config, secret_keys


def declared(
    overrides: dict[str, Any] | None = None, secrets: dict[str, str] | None = None
) -> dict[str, Any]:
    """The dev stack with `overrides` and `secrets`, declared under fresh mocks."""
    return declared_config(*stack_config("dev", overrides, secrets))


def declared_config(config: dict[str, str], secret_keys: list[str]) -> dict[str, Any]:
    found: dict[str, Any] = {"inputs": {}}

    @stack_test
    async def body() -> None:
        outputs, mocks = await run_program(config, secret_keys)
        for r in mocks.resources:
            found["inputs"].setdefault(r.typ, {})[r.name] = dict(r.inputs)
        [machine] = [r for r in mocks.resources if r.typ in (INSTANCE, TEMPLATE)]
        found["vm"] = dict(machine.inputs)
        found["waits"] = [dict(r.inputs) for r in mocks.of_type(WAIT)]
        found["outputs"] = {k: await value(v) for k, v in outputs.items()}
        for r in mocks.of_type(SECRET_VERSION):
            if r.name.endswith("tls-key-version"):
                found["tls_key"] = rpc.unwrap_rpc_secret(r.inputs["secretData"])

    body()
    return found


def runtime(found: dict[str, Any]) -> Runtime:
    """The runtime document the machine's metadata carries."""
    return parse(found["vm"]["metadata"][RUNTIME_KEY])
