"""The Pulumi program under mocks with the shipped Pulumi.runpod.yaml: it declares the pods, with
the shared vLLM settings and key, as children of the RunpodPods component."""

from __future__ import annotations

import base64
from pathlib import Path

import dill
import pytest
from pulumi.runtime import rpc

from infra.config import ConfigError
from infra.runpod.provider import RunpodPodProvider
from infra.serving import MIN_CUDA_VERSION, ServingSpec
from tests.support import pulumi_harness
from tests.support.pulumi_harness import (
    MOCK_GENERATED_KEY,
    RecordingMocks,
    is_secret,
    run_program,
    stack_config,
    stack_test,
    value,
)
from tests.support.runpod_testing import CUSTOM_IMAGE, IMAGE, RUNPOD_KEY

POD_TYPE = "pulumi-python:dynamic/llm-endpoint:RunpodPod"
SECRET_TYPE = "pulumi-python:dynamic/llm-endpoint:RunpodSecret"
COMPONENT_TYPE = "llm-endpoint:runpod:Pods"
ROOT = Path(__file__).resolve().parents[1]


def _with_pod_outputs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Mocks that answer like the provider: pod id, endpoint and cost for each pod."""
    plain = RecordingMocks.new_resource

    def new_resource(self, args):
        rid, state = plain(self, args)
        if args.typ == POD_TYPE:
            pod_id = f"pod{args.name.rsplit('-', 1)[-1]}"  # runpod-0 -> pod0
            state |= {
                "podId": pod_id,
                "endpoint": f"https://{pod_id}-8000.proxy.runpod.net",
                "costPerHour": 1.64,
            }
            rid = pod_id
        return rid, state

    monkeypatch.setattr(RecordingMocks, "new_resource", new_resource)


@stack_test(stack="runpod")
async def test_shipped_runpod_stack_declares_pods_with_the_shared_vllm_settings(monkeypatch):
    _with_pod_outputs(monkeypatch)
    config, secret_keys = stack_config(
        "runpod",
        overrides={"runpod": {"podCount": 2}},
        secrets={"runpodApiKey": RUNPOD_KEY},
    )
    outputs, mocks = await run_program(config, secret_keys)

    pods = mocks.of_type(POD_TYPE)
    pods.sort(key=lambda p: p.name)  # registration order is not deterministic
    secrets = mocks.of_type(SECRET_TYPE)
    assert [(s.name, s.inputs["name"]) for s in secrets] == [
        ("runpod-api-key", "llm-endpoint-runpod-api-key")
    ]
    assert rpc.is_rpc_secret(secrets[0].inputs["value"])
    assert rpc.unwrap_rpc_secret(secrets[0].inputs["value"]) == MOCK_GENERATED_KEY
    assert [p.name for p in pods] == ["runpod-0", "runpod-1"]
    assert [c.name for c in mocks.of_type(COMPONENT_TYPE)] == ["runpod"]
    assert mocks.of_type("gcp:compute/instance:Instance") == []
    expected_args = ServingSpec(
        model="Qwen/Qwen2.5-7B-Instruct",
        served_model_name="Qwen/Qwen2.5-7B-Instruct",
        max_model_len=8192,
        gpu_memory_utilization=0.9,
        tensor_parallel_size=1,
        weights_gb=15.3,
    ).vllm_args()
    for index, pod in enumerate(pods):
        inputs = pod.inputs
        assert inputs["name"] == f"llm-endpoint-runpod-{index}"
        assert inputs["image"] == IMAGE  # runpod.image unset: the stock pinned image
        assert inputs["customImage"] is False
        assert inputs["vllmArgs"] == expected_args
        assert inputs["minCudaVersion"] == MIN_CUDA_VERSION
        assert inputs["gpuTypeIds"] == ["NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB"]
        assert inputs["gpuCount"] == 1
        assert inputs["dataCenterIds"] == []
        assert inputs["cloud"] == "SECURE"
        assert inputs["containerDiskGb"] == 50
        assert inputs["volumeGb"] == 0
        assert inputs["readyTimeoutMinutes"] == 20
        # The stack's key reaches the pod provider as a secret (only to check the pod answers
        # with it); the pod's env will reference the stack's account secret by name.
        assert rpc.is_rpc_secret(inputs["apiKey"])
        assert rpc.unwrap_rpc_secret(inputs["apiKey"]) == MOCK_GENERATED_KEY
        assert inputs["apiKeySecret"] == "llm-endpoint-runpod-api-key"
        assert inputs["hfTokenSecret"] == ""  # no hfToken set: no token secret
        assert "hfToken" not in inputs
        # The provider travels pickled in the inputs, without any key in it.
        blob = base64.b64decode(rpc.unwrap_rpc_secret(inputs["__provider"]))
        assert RUNPOD_KEY.encode() not in blob and MOCK_GENERATED_KEY.encode() not in blob
        assert isinstance(dill.loads(blob), RunpodPodProvider)  # noqa: S301 (made by the SDK)

    assert await value(outputs["runpod_endpoints"]) == [
        "https://pod0-8000.proxy.runpod.net",
        "https://pod1-8000.proxy.runpod.net",
    ]
    assert await value(outputs["runpod_pod_ids"]) == ["pod0", "pod1"]
    assert await value(outputs["runpod_cost_per_hour"]) == pytest.approx(3.28)
    assert not await is_secret(outputs["runpod_endpoints"])
    assert await is_secret(outputs["api_key"])


@stack_test(stack="runpod")
async def test_runpod_stack_with_a_custom_image_passes_it_on(monkeypatch):
    _with_pod_outputs(monkeypatch)
    config, secret_keys = stack_config(
        "runpod",
        overrides={"runpod": {"image": CUSTOM_IMAGE}},
        secrets={"runpodApiKey": RUNPOD_KEY},
    )
    _, mocks = await run_program(config, secret_keys)
    (pod,) = mocks.of_type(POD_TYPE)
    assert pod.inputs["image"] == CUSTOM_IMAGE and pod.inputs["customImage"] is True


@stack_test(stack="runpod")
async def test_container_disk_too_small_for_the_model_is_a_config_error():
    config, secret_keys = stack_config("runpod", overrides={"runpod": {"containerDiskGb": 20}})
    with pytest.raises(ConfigError) as err:
        await run_program(config, secret_keys)
    assert "llm-endpoint:runpod.containerDiskGb = 20" in str(err.value)
    assert "at least 29" in str(err.value)


def test_shipped_stack_file_holds_no_secret_and_no_image_placeholder():
    text = (ROOT / "Pulumi.runpod.yaml").read_text()
    assert "runpodApiKey:" not in text and "secure:" not in text
    assert "--secret runpodApiKey" in text and "pulumi up --stack runpod" in text
    assert pulumi_harness.PROJECT == "llm-endpoint"


@pytest.mark.parametrize(
    ("runpod", "key", "fragment"),
    [
        ({"image": "vllm/vllm-openai:v0.33.0"}, "runpod.image", "Remove the key"),
        ({"image": "ghcr.io/acme/llm-endpoint-vllm:v0.32.0-1"}, "runpod.image", "v0.33.0"),
        ({"image": "ghcr.io/acme/llm-endpoint-vllm"}, "runpod.image", "has no tag; pin"),
        ({"image": "ghcr.io/acme/x:latest"}, "runpod.image", "`:latest` moves"),
        ({"image": "ghcr.io/acme/x@sha512:" + "a" * 128}, "runpod.image", "not sha256"),
        ({"image": "ghcr.io/acme/x@sha256:ABC"}, "runpod.image", "not sha256"),
        ({"podCount": 17}, "runpod.podCount", "must be 1-16"),
        ({"volumeGb": 5}, "runpod.volumeGb", "10-4000 GB"),
        ({"gpuTypeIds": ["A", "A"]}, "runpod.gpuTypeIds", "each id once"),
        ({"dataCenterIds": [""]}, "runpod.dataCenterIds", "none empty"),
        ({"cloud": "PUBLIC"}, "runpod.cloud", "SECURE"),
    ],
)
def test_runpod_config_errors_name_the_key_and_the_fix(runpod, key, fragment):
    from infra import config

    with pytest.raises(ConfigError) as err:
        config.parse({"runpod": runpod})
    assert f"llm-endpoint:{key} = " in str(err.value)
    assert fragment in str(err.value)


def test_runpod_config_accepts_a_pod_image_built_for_this_vllm():
    from infra import config

    runpod = {"image": CUSTOM_IMAGE, "volumeGb": 40, "dataCenterIds": ["US-KS-2"]}
    cfg = config.parse({"runpod": runpod})
    assert cfg.runpod is not None and cfg.runpod.image == CUSTOM_IMAGE
    digest = "ghcr.io/acme/llm-endpoint-vllm@sha256:" + "a" * 64
    assert config.parse({"runpod": {"image": digest}}).runpod.image == digest  # type: ignore[union-attr]
    assert cfg.runpod.volume_gb == 40


@stack_test(stack="runpod")
async def test_an_hf_token_becomes_its_own_account_secret_referenced_by_the_pods(monkeypatch):
    _with_pod_outputs(monkeypatch)
    token = "hf_" + "x" * 34
    config, secret_keys = stack_config(
        "runpod", secrets={"runpodApiKey": RUNPOD_KEY, "hfToken": token}
    )
    _, mocks = await run_program(config, secret_keys)
    secrets = {s.inputs["name"]: s for s in mocks.of_type(SECRET_TYPE)}
    assert set(secrets) == {"llm-endpoint-runpod-api-key", "llm-endpoint-runpod-hf-token"}
    assert rpc.unwrap_rpc_secret(secrets["llm-endpoint-runpod-hf-token"].inputs["value"]) == token
    (pod,) = mocks.of_type(POD_TYPE)
    assert pod.inputs["hfTokenSecret"] == "llm-endpoint-runpod-hf-token"
    assert token not in repr(pod.inputs)  # the pod gets the name, never the token
