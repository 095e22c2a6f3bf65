"""The provider driven exactly as the Pulumi engine drives it: through Pulumi's dynamic-provider
host process (`python -m pulumi.dynamic`, run from the project root), over its ResourceProvider
gRPC interface, with the provider serialized by the SDK's own `serialize_provider` (dill,
base64) in the `__provider` property. This proves the provider survives pickling, is re-imported
by reference in another process, reads the RunPod key from Configure, and runs its whole
lifecycle there against the emulator (reached through RUNPOD_API_BASE_URL and
RUNPOD_PROXY_URL_TEMPLATE set for the host). The host uses real time, so the emulator's pods
change state immediately here.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pulumi.dynamic.dynamic import serialize_provider
from pulumi.runtime.proto import provider_pb2, provider_pb2_grpc

from infra.runpod.journal import JOURNAL_DIR_ENV
from infra.runpod.provider import RunpodPodProvider
from tests.support.provider_host import as_dict, provider_host, struct
from tests.support.runpod_emulator import RealClock, RunpodEmulator
from tests.support.runpod_testing import (
    ENDPOINT_KEY,
    HF_TOKEN,
    KEY_SECRET,
    RUNPOD_KEY,
    SECRETS,
    TOKEN_SECRET,
    pod_inputs,
)

ROOT = Path(__file__).resolve().parents[1]
URN = "urn:pulumi:test::llm-endpoint::pulumi-python:dynamic/llm-endpoint:RunpodPod::runpod-0"


@pytest.fixture
def emulator() -> Iterator[RunpodEmulator]:
    with RunpodEmulator(
        api_key=RUNPOD_KEY, clock=RealClock(), provision_s=0, start_s=0, serve_after_s=0
    ) as emu:
        emu.put_secret(KEY_SECRET, ENDPOINT_KEY)
        emu.put_secret(TOKEN_SECRET, HF_TOKEN)
        yield emu
        assert emu.violations == []


@pytest.fixture
def host(
    emulator: RunpodEmulator, tmp_path: Path
) -> Iterator[provider_pb2_grpc.ResourceProviderStub]:
    stderr_path = tmp_path / "host.stderr"
    env = {**emulator.env(), JOURNAL_DIR_ENV: str(tmp_path / "journal")}
    with provider_host(env, stderr_path) as running:
        yield running.stub
    logged = stderr_path.read_text(errors="replace")
    for secret in SECRETS:
        assert secret not in logged, "a secret reached the provider host's output"


def test_engine_lifecycle_through_the_dynamic_provider_host(host, emulator):
    serialized = serialize_provider(RunpodPodProvider())
    assert RUNPOD_KEY not in serialized

    host.Configure(
        provider_pb2.ConfigureRequest(
            args=struct({"llm-endpoint:runpodApiKey": RUNPOD_KEY}), acceptSecrets=False
        )
    )

    news = {**pod_inputs(), "__provider": serialized}
    checked = host.Check(provider_pb2.CheckRequest(urn=URN, olds=struct({}), news=struct(news)))
    assert list(checked.failures) == []
    inputs = as_dict(checked.inputs)
    assert inputs["bootstrapDigest"]

    created = host.Create(provider_pb2.CreateRequest(urn=URN, properties=checked.inputs))
    pod_id = created.id
    outs = as_dict(created.properties)
    assert list(emulator.pods) == [pod_id]
    assert outs["podId"] == pod_id
    assert outs["endpoint"] == emulator.proxy_url_template.format(pod_id=pod_id, port=8000)
    assert outs["status"] == "RUNNING"
    assert outs["gpuTypeId"] == "NVIDIA A100 80GB PCIe"
    assert outs["__provider"] == serialized
    assert emulator.pods[pod_id].health_hits >= 1

    read = host.Read(provider_pb2.ReadRequest(id=pod_id, urn=URN, properties=created.properties))
    assert read.id == pod_id
    assert as_dict(read.properties)["costPerHour"] == pytest.approx(1.64)

    new_image = "ghcr.io/example/llm-endpoint-vllm:v0.33.0-proxy2"
    rechecked = host.Check(
        provider_pb2.CheckRequest(
            urn=URN, olds=checked.inputs, news=struct({**news, "image": new_image})
        )
    )
    diff = host.Diff(
        provider_pb2.DiffRequest(id=pod_id, urn=URN, olds=created.properties, news=rechecked.inputs)
    )
    assert diff.changes == provider_pb2.DiffResponse.DIFF_SOME
    assert list(diff.replaces) == []
    bigger = host.Check(
        provider_pb2.CheckRequest(
            urn=URN, olds=checked.inputs, news=struct({**news, "gpuCount": 2})
        )
    )
    replace = host.Diff(
        provider_pb2.DiffRequest(id=pod_id, urn=URN, olds=created.properties, news=bigger.inputs)
    )
    assert list(replace.replaces) == ["gpuCount"]

    updated = host.Update(
        provider_pb2.UpdateRequest(
            id=pod_id, urn=URN, olds=created.properties, news=rechecked.inputs
        )
    )
    assert as_dict(updated.properties)["image"] == new_image
    assert emulator.pods[pod_id].body["image"] == new_image
    assert [m for m, _, _ in emulator.requests].count("PATCH") == 1
    # The PATCH alone does not restart the container: the documented restart action did.
    actions = [b for m, p, b in emulator.requests if p == f"/v2/pods/{pod_id}/action"]
    assert actions == [{"action": "restart"}]
    assert emulator.pods[pod_id].container["image"] == new_image

    host.Delete(provider_pb2.DeleteRequest(id=pod_id, urn=URN, properties=updated.properties))
    assert emulator.live_pods() == []

    gone = host.Read(provider_pb2.ReadRequest(id=pod_id, urn=URN, properties=updated.properties))
    assert gone.id == ""


def test_check_failures_come_back_through_the_host(host, emulator):
    news = {
        **pod_inputs(gpuTypeIds=[], containerDiskGb=12),
        "__provider": serialize_provider(RunpodPodProvider()),
    }
    host.Configure(provider_pb2.ConfigureRequest(args=struct({})))
    checked = host.Check(provider_pb2.CheckRequest(urn=URN, olds=struct({}), news=struct(news)))
    assert sorted(f.property for f in checked.failures) == ["containerDiskGb", "gpuTypeIds"]
    assert emulator.requests == []
