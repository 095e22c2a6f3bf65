"""What the project sends to RunPod for a pod: the stock image started with the project's
entrypoint, a custom image with `args`, the size limit, and an older API's 422."""

from __future__ import annotations

import pytest

from infra import serving
from infra.config import parse
from infra.runpod import bodies, bootstrap
from infra.runpod.client import RunpodClient
from infra.runpod.errors import ApiError, RunpodError
from infra.runpod.inputs import MAX_GPUS, MAX_ID_CHARS
from infra.runpod.provider import RunpodPodProvider
from tests.support.runpod_emulator import RunpodEmulator
from tests.support.runpod_testing import CUSTOM_IMAGE, SERVING, pod_inputs

pytest_plugins = ["tests.support.runpod_fixtures"]


def _posts(emulator: RunpodEmulator) -> list[dict[str, object]]:
    return [b for m, p, b in emulator.requests if m == "POST" and p == "/v2/pods"]


def test_largest_create_and_update_bodies_stay_well_under_the_limit():
    """The largest body the config allows: the longest model and served names, 8 GPUs (8-way
    tensor parallelism), the longest GPU type and data center ids, a volume, an HF token."""
    long_id = "x" * MAX_ID_CHARS
    cfg = parse(
        {
            "model": "o" * 40 + "/" + "m" * 55,
            "servedModelName": "s" * 128,
            "modelWeightsGb": 1000,
            "hfToken": "hf_" + "t" * 200,
            "apiKey": "k" * 256,
            "runpod": {
                "gpuCount": MAX_GPUS,
                "gpuTypeIds": [long_id],
                "dataCenterIds": ["d" * MAX_ID_CHARS],
                "containerDiskGb": 2000,
                "volumeGb": 4000,
            },
        }
    )
    assert cfg.runpod is not None
    spec = bodies.PodSpec(
        name="llm-endpoint-" + "s" * 30 + "-15-0123abcd",
        image=serving.VLLM_IMAGE,
        custom_image=False,
        args=cfg.serving_for(MAX_GPUS).vllm_args(),
        env=bootstrap.pod_env("k" * 256, "hf_" + "t" * 200),
        key="k" * 256,
        gpu_type_ids=[long_id],
        gpu_count=MAX_GPUS,
        data_center_ids=["d" * MAX_ID_CHARS],
        cloud="COMMUNITY",
        container_disk_gb=2000,
        volume_gb=4000,
        min_cuda_version=serving.MIN_CUDA_VERSION,
        port=serving.PUBLIC_PORT,
        ready_timeout_s=240 * 60,
    )
    created = bodies.body_bytes(spec.create_body(long_id, "d" * MAX_ID_CHARS))
    updated = bodies.body_bytes(spec.update_body(was_custom_image=True, container=True, disk=True))
    print(f"largest create body: {created} bytes; largest update body: {updated} bytes")
    # "Well under": a quarter of the limit leaves room for whatever a template adds.
    assert created < bodies.MAX_BODY_BYTES / 4
    assert updated < bodies.MAX_BODY_BYTES / 4


def test_a_body_over_the_limit_is_refused_before_sending(emulator):
    too_big = {"name": "x", "env": {"BIG": "a" * bodies.MAX_BODY_BYTES}}
    with pytest.raises(RunpodError) as err:
        bodies.check_size(too_big, "pod create")
    assert "over RunPod's limit of 102400" in str(err.value)
    # The emulator enforces the limit as RunPod does: 413, before authentication.
    with (
        RunpodClient("not-the-key", base_url=emulator.base_url) as client,
        pytest.raises(ApiError) as answered,
    ):
        client.create_pod(too_big)
    assert answered.value.status == 413


def test_stock_image_starts_the_projects_entrypoint_with_vllm_args_as_cmd():
    command = bootstrap.launch_command(SERVING.vllm_args(), custom_image=False)
    assert command == {
        "entrypoint": ["/bin/sh", "-c", bootstrap.entrypoint_stub(), "llm-endpoint-entrypoint"],
        "cmd": SERVING.vllm_args(),
    }
    assert "#" not in bootstrap.entrypoint_stub().split("\n", 1)[0]
    custom = bootstrap.launch_command(SERVING.vllm_args(), custom_image=True)
    assert set(custom) == {"args"}


def test_custom_image_pod_uses_args_and_its_own_entrypoint(provider, emulator):
    created = provider.create(
        provider.check({}, pod_inputs(image=CUSTOM_IMAGE, customImage=True)).inputs
    )
    (body,) = _posts(emulator)
    assert body["image"] == CUSTOM_IMAGE
    assert "entrypoint" not in body and "cmd" not in body
    assert str(body["args"]).split()[0] == SERVING.model
    provider.delete(created.id, created.outs)


def test_an_api_without_entrypoint_says_so_and_names_the_custom_image(
    provider: RunpodPodProvider, emulator: RunpodEmulator
):
    emulator.faults.older_api = True  # validates against the 2026-08 document
    with pytest.raises(RunpodError) as err:
        provider.create(provider.check({}, pod_inputs()).inputs)
    message = str(err.value)
    assert "422" in message and "does not accept `entrypoint`/`cmd`" in message
    assert "llm-endpoint:runpod.image" in message and "infra/runpod/image" in message
    assert "No pod was created" in message
    assert emulator.pods == {}
    emulator.violations.clear()  # the 422 was the point


def test_the_same_old_api_takes_a_custom_image_pod(provider, emulator):
    emulator.faults.older_api = True
    inputs = provider.check({}, pod_inputs(image=CUSTOM_IMAGE, customImage=True)).inputs
    created = provider.create(inputs)
    assert created.outs["status"] == "RUNNING"
    provider.delete(created.id, created.outs)
