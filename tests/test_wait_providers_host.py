"""Both `pulumi up` waits' providers driven as the engine drives them: serialized by the SDK's
own `serialize_provider` into `__provider`, then run by Pulumi's dynamic-provider host
(`python -m pulumi.dynamic`, tests/support/provider_host.py) over its gRPC interface. This
shows they survive pickling (docs/facts/pulumi.md, "Dynamic providers": re-imported by
reference, no client captured), and make their Compute API client (infra/compute_api.py) in
the host, here pointed at a loopback stand-in with a plain session. Real time: the stand-in
answers "serving" at once, so no poll sleeps."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from pulumi.dynamic import ResourceProvider
from pulumi.dynamic.dynamic import serialize_provider
from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc

from infra.balancer_wait import BalancerWaitProvider
from infra.compute_api import HttpComputeApi
from infra.serving_wait import ServingWaitProvider
from tests.support.compute_standin import ComputeStandin, compute_standin
from tests.support.provider_host import as_dict, provider_host, struct

DOC = "d" * 64
LINK = "https://www.googleapis.com/compute/v1/projects/p-1"
TEMPLATE = f"{LINK}/global/instanceTemplates/llm-dev-replica-2"
READY = {"key": "state", "value": "ready"}


@pytest.fixture
def compute() -> Iterator[ComputeStandin]:
    replica = {"instance": f"{LINK}/zones/us-central1-a/instances/r-1",
               "version": {"instanceTemplate": TEMPLATE}}  # fmt: skip
    health = {"instance": replica["instance"], "healthState": "HEALTHY"}
    with compute_standin({
        "llm-dev-vm": [(200, {"status": "RUNNING"})],
        "getGuestAttributes": [(200, {"queryValue": {"items": [
            READY, {"key": "document", "value": DOC}, {"key": "reason", "value": "serving"}]}})],
        "listManagedInstances": [(200, {"managedInstances": [replica]})],
        "getHealth": [(200, {"healthStatus": [health]})],
    }) as standin:  # fmt: skip
        yield standin


@pytest.fixture
def host(tmp_path: Path) -> Iterator[provider_pb2_grpc.ResourceProviderStub]:
    with provider_host({}, tmp_path / "host.stderr") as running:
        running.stub.Configure(provider_pb2.ConfigureRequest(args=struct({})))
        yield running.stub


def create(
    host: provider_pb2_grpc.ResourceProviderStub, provider: ResourceProvider, inputs: dict[str, Any]
) -> tuple[str, dict[str, Any]]:
    urn = "urn:pulumi:test::llm-endpoint::pulumi-python:dynamic:Resource::wait"
    props = struct({**inputs, "__provider": serialize_provider(provider)})
    created = host.Create(provider_pb2.CreateRequest(urn=urn, properties=props))
    return created.id, as_dict(created.properties)


def test_the_vm_wait_runs_in_the_provider_host(host: Any, compute: ComputeStandin) -> None:
    api = HttpComputeApi(base_url=compute.url, session=requests.Session)
    inputs = {"project": "p-1", "zone": "us-central1-a", "instance": "llm-dev-vm",
              "document": DOC, "deadline_s": 600}  # fmt: skip
    id_, outs = create(host, ServingWaitProvider(api), inputs)
    assert id_ == "llm-dev-vm-serving"
    assert (outs["state"], outs["reason"]) == ("ready", "serving")
    assert [r.method for r in compute.requests] == ["GET", "GET"]


def test_the_group_wait_runs_in_the_provider_host(host: Any, compute: ComputeStandin) -> None:
    api = HttpComputeApi(base_url=compute.url, session=requests.Session)
    inputs = {"project": "p-1", "region": "us-central1", "group": "llm-dev-group",
              "backend": "llm-dev-backend", "template": TEMPLATE, "deadline_s": 600}  # fmt: skip
    id_, outs = create(host, BalancerWaitProvider(api), inputs)
    assert id_ == "llm-dev-group-serving"
    assert outs["replica"] == "r-1"
    assert [r.method for r in compute.requests] == ["POST", "POST"]
