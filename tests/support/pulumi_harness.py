"""Run the Pulumi program under Pulumi's mock runtime, the way `pulumi up` would run it.

- `stack_config(stack, ...)` reads a shipped `Pulumi.<stack>.yaml` and encodes its values the
  way the engine passes them to the program (strings; objects and numbers as JSON).
- `run_program(config, secret_keys)` installs fresh recording mocks (real project name,
  preview=False) and the config, runs the program, and returns its outputs and the mocks.
- `stack_test` wraps an *async* test body for `pulumi.runtime.test`, so the body awaits outputs
  and asserts outside `apply`; it also fails the test if the body never ran to the end.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import yaml

from tests.support.tls_certs import tls_mock_state

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PROJECT = "llm-endpoint"

# Canned values the mocks give for provider-computed outputs.
MOCK_IP = "203.0.113.10"
MOCK_GENERATED_KEY = "mockgeneratedkey0123456789abcdefghijklmnopqrstuv"
MOCK_LINK = "https://www.googleapis.com/compute/v1/projects/example-project"


@dataclass
class RecordingMocks(pulumi.runtime.Mocks):
    """Records every resource the program declares, with its inputs."""

    resources: list[pulumi.runtime.MockResourceArgs] = field(default_factory=list)

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        self.resources.append(args)
        state = dict(args.inputs)
        if args.typ == "gcp:compute/address:Address":
            state["address"] = MOCK_IP
        elif args.typ == "gcp:serviceaccount/account:Account":
            state["email"] = f"{args.inputs['accountId']}@example-project.iam.gserviceaccount.com"
        elif args.typ == "random:index/randomPassword:RandomPassword":
            state["result"] = MOCK_GENERATED_KEY
        elif args.typ == "gcp:secretmanager/secret:Secret":
            state["name"] = f"projects/example-project/secrets/{args.inputs['secretId']}"
        elif args.typ == "gcp:projects/iAMCustomRole:IAMCustomRole":
            state["name"] = f"projects/{args.inputs['project']}/roles/{args.inputs['roleId']}"
        elif args.typ == "gcp:compute/instanceTemplate:InstanceTemplate":
            state["selfLinkUnique"] = f"{MOCK_LINK}/global/instanceTemplates/{args.name}?uniqueId=1"
        elif args.typ == "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager":
            state["instanceGroup"] = f"{MOCK_LINK}/regions/r/instanceGroups/{args.inputs['name']}"
        elif args.typ == "gcp:secretmanager/secretVersion:SecretVersion":
            # A new value is a new version (secret_data replaces the version), so a key
            # rotation is a new version name; the same value keeps its name across runs.
            data = json.dumps(args.inputs.get("secretData"), sort_keys=True, default=str)
            number = int(hashlib.sha256(data.encode()).hexdigest()[:6], 16) % 1000 + 1
            if args.name.endswith("-tls-key-version"):
                number = 1  # the mocked TLS provider keeps its keys, like state would
            state["name"] = f"projects/123/secrets/{args.name}/versions/{number}"
        elif (tls := tls_mock_state(args.typ, args.name, dict(args.inputs))) is not None:
            state = tls  # real keys and certificates, as the TLS provider makes them
        return f"{args.name}-id", state

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], list[Any]]:
        return {}, []

    def of_type(self, typ: str) -> list[pulumi.runtime.MockResourceArgs]:
        return [r for r in self.resources if r.typ == typ]

    def one(self, typ: str) -> pulumi.runtime.MockResourceArgs:
        found = self.of_type(typ)
        assert len(found) == 1, f"expected one {typ}, found {[r.name for r in found]}"
        return found[0]


def _encode(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def stack_config(
    stack: str,
    overrides: Mapping[str, Any] | None = None,
    secrets: Mapping[str, str] | None = None,
    remove: tuple[str, ...] = (),
) -> tuple[dict[str, str], list[str]]:
    """Config of a shipped stack file, with overrides (top-level keys; nested objects are
    merged one level deep) and plaintext secrets standing in for `{secure: ...}` values."""
    doc = yaml.safe_load((PROJECT_ROOT / f"Pulumi.{stack}.yaml").read_text())
    raw: dict[str, Any] = {}
    for full_key, value in (doc.get("config") or {}).items():
        ns, _, key = full_key.partition(":")
        if ns == PROJECT and not (isinstance(value, dict) and "secure" in value):
            raw[key] = value
    for key, value in (overrides or {}).items():
        if isinstance(value, dict) and isinstance(raw.get(key), dict):
            raw[key] = {**raw[key], **value}
        else:
            raw[key] = value
    for key in remove:
        raw.pop(key, None)
    config = {f"{PROJECT}:{k}": _encode(v) for k, v in raw.items()}
    secret_keys = []
    for key, value in (secrets or {}).items():
        config[f"{PROJECT}:{key}"] = value
        secret_keys.append(f"{PROJECT}:{key}")
    return config, secret_keys


async def run_program(
    config: Mapping[str, str], secret_keys: list[str]
) -> tuple[dict[str, Any], RecordingMocks]:
    """Run the program under the test's fresh mocks and wait until every resource it declares
    has been registered. Await it inside a `stack_test` body."""
    from pulumi.runtime.stack import wait_for_rpcs

    from infra import program

    assert _current_mocks, "run_program() belongs inside a @stack_test body"
    pulumi.runtime.set_all_config(dict(config), secret_keys)
    outputs = program.run()
    await wait_for_rpcs(await_all_outstanding_tasks=False)
    return outputs, _current_mocks[-1]


_current_mocks: list[RecordingMocks] = []


def stack_test(body: Callable[..., Awaitable[None]] | None = None, *, stack: str = "dev") -> Any:
    """Turn an async test body into a pytest test run by pulumi.runtime.test, with fresh
    recording mocks installed before it starts (so the runtime waits for every resource
    registration the body triggers)."""
    if body is None:
        return functools.partial(stack_test, stack=stack)

    @functools.wraps(body)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        finished: list[bool] = []

        @pulumi.runtime.test
        def run() -> Awaitable[None]:
            async def go() -> None:
                await body(*args, **kwargs)
                finished.append(True)

            return go()

        mocks = RecordingMocks()
        # A root stack left by the previous test belongs to a finished event loop; resources
        # parented to it would never register. Start each test with a fresh one.
        pulumi.runtime.settings.ROOT.set(None)
        pulumi.runtime.set_mocks(mocks, project=PROJECT, stack=stack, preview=False)
        _current_mocks.append(mocks)
        try:
            run()
        finally:
            _current_mocks.pop()
        assert finished == [True], "the test body did not run to the end"

    return wrapper


async def value(output: Any) -> Any:
    """The resolved value of an Output (or a plain value), awaited inside the mock runtime."""
    if isinstance(output, pulumi.Output):
        return await output.future()
    return output


async def is_secret(output: Any) -> bool:
    return isinstance(output, pulumi.Output) and bool(await output.is_secret())
