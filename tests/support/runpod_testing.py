"""Shared values for the RunPod tests: secrets to look for, provider inputs, helpers.
The fixtures are in tests/support/runpod_fixtures.py (loaded with `pytest_plugins`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, TypeVar

from pulumi.dynamic import ConfigureRequest
from pulumi.dynamic.config import Config

from infra.runpod.provider_base import RunpodProviderBase
from infra.serving import MIN_CUDA_VERSION, VLLM_IMAGE, ServingSpec

ENDPOINT_KEY = "EndpointKey-0123456789abcdefghijklmnopqrstuvwxyz"
HF_TOKEN = "hf_SecretTokenValue0123456789"
RUNPOD_KEY = "rpa_RunpodKey0123456789ABCDEFGHIJKLMNOP"
IMAGE = VLLM_IMAGE  # the stock image, started with the project's entrypoint
CUSTOM_IMAGE = "ghcr.io/example/llm-endpoint-vllm:v0.33.0-proxy1"
NEW_ENDPOINT_KEY = "AnotherEndpointKey-0123456789abcdefghijklmnop"  # a rotated key
SECRETS = (ENDPOINT_KEY, HF_TOKEN, RUNPOD_KEY, NEW_ENDPOINT_KEY)
# The stack's account secrets (infra/runpod/account_secrets.py) the pods' env references.
KEY_SECRET = "llm-endpoint-test-api-key"
TOKEN_SECRET = "llm-endpoint-test-hf-token"

SERVING = ServingSpec(
    model="Qwen/Qwen2.5-7B-Instruct",
    served_model_name="qwen",
    max_model_len=8192,
    gpu_memory_utilization=0.9,
    tensor_parallel_size=1,
    weights_gb=15.3,
)


def pod_inputs(**overrides: Any) -> dict[str, Any]:
    """Provider inputs as the component passes them (camelCase)."""
    props: dict[str, Any] = {
        "name": "llm-endpoint-test-0",
        "image": IMAGE,
        "customImage": False,
        "vllmArgs": SERVING.vllm_args(),
        "minCudaVersion": MIN_CUDA_VERSION,
        "gpuTypeIds": ["NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB"],
        "gpuCount": 1,
        "dataCenterIds": [],
        "cloud": "SECURE",
        "containerDiskGb": 50,
        "volumeGb": 0,
        "weightsGb": 15.3,
        "readyTimeoutMinutes": 20,
        "apiKey": ENDPOINT_KEY,
        "apiKeySecret": KEY_SECRET,
        "hfTokenSecret": TOKEN_SECRET,
        "secretsVersion": "v1",
    }
    props.update(overrides)
    return props


P = TypeVar("P", bound=RunpodProviderBase)


def configured(provider: P, key: str | None = RUNPOD_KEY) -> P:
    raw = {"llm-endpoint:runpodApiKey": key} if key else {}
    provider.configure(ConfigureRequest(Config(raw, "llm-endpoint")))
    return provider


@dataclass
class Leaks:
    """Pods a test expects to be left alive (everything else must be gone at the end)."""

    allowed: set[str] = field(default_factory=set)
