"""RunPod GPU pods serving the stack's vLLM endpoint: `RunpodPods`, a component with one
`RunpodPod` (a Pulumi dynamic resource, infra/runpod/provider.py) per pod.

Each pod runs the same vLLM (image version, model, arguments: infra/serving.py) as the GCP VM,
behind the same allowlisting proxy (infra/proxy_config.py), with the stack's one API key. How
the proxy gets into the pod: infra/runpod/bootstrap.py.
"""

from __future__ import annotations

from typing import Any

import pulumi
from pulumi import dynamic

from infra import serving
from infra.config import ConfigError, StackConfig
from infra.runpod.naming import pod_base_name
from infra.runpod.provider import SECRET_INPUTS, RunpodPodProvider, min_container_disk_gb

_OUTPUT_KEYS = (
    "podId",
    "podName",
    "endpoint",
    "gpuTypeId",
    "dataCenterId",
    "costPerHour",
    "status",
)


class RunpodPod(dynamic.Resource, module="llm-endpoint", name="RunpodPod"):
    """One pod. Outputs are camelCase, as the provider returns them."""

    podId: pulumi.Output[str]
    podName: pulumi.Output[str]
    endpoint: pulumi.Output[str]
    gpuTypeId: pulumi.Output[str]
    dataCenterId: pulumi.Output[str]
    costPerHour: pulumi.Output[float]
    status: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        props: dict[str, Any],
        opts: pulumi.ResourceOptions | None = None,
        provider: RunpodPodProvider | None = None,
    ) -> None:
        secret_outputs = pulumi.ResourceOptions(additional_secret_outputs=list(SECRET_INPUTS))
        super().__init__(
            provider or RunpodPodProvider(),
            name,
            {**props, **dict.fromkeys(_OUTPUT_KEYS)},
            pulumi.ResourceOptions.merge(opts, secret_outputs),
        )


def _config_error(key: str, value: Any, message: str) -> ConfigError:
    shown = "(not set)" if value is None else repr(value) if isinstance(value, str) else value
    return ConfigError(
        f"Invalid stack configuration (1 problem):\n  - llm-endpoint:runpod.{key} = {shown}: "
        f"{message}"
    )


def pod_inputs(cfg: StackConfig, api_key: pulumi.Input[str], index: int) -> dict[str, Any]:
    """The provider inputs for pod `index`; raises ConfigError for settings only checkable
    against the rest of the stack (the image, the disk against the model's size)."""
    rp = cfg.runpod
    assert rp is not None and cfg.weights_gb is not None  # guaranteed by the caller / config
    if rp.image is None:
        raise _config_error(
            "image",
            None,
            "RunPod pods need the llm-endpoint pod image (the pinned vLLM image plus the proxy; "
            "RunPod's API cannot replace the stock image's entrypoint). Build and push it: "
            f"`docker build -t REGISTRY/llm-endpoint-vllm:v{serving.VLLM_VERSION}-proxy1 "
            "infra/runpod/image && docker push ...`, then "
            "`pulumi config set --path llm-endpoint:runpod.image REGISTRY/...` (README, RunPod)",
        )
    need = min_container_disk_gb(cfg.weights_gb, rp.volume_gb)
    if rp.container_disk_gb < need:
        raise _config_error(
            "containerDiskGb",
            rp.container_disk_gb,
            f"too small for {cfg.model} (~{cfg.weights_gb:g} GB of weights"
            f"{'' if rp.volume_gb else ', downloaded to the container disk'}). Set it to at "
            "least "
            f"{need}, or add a volume for the model cache with runpod.volumeGb",
        )
    if rp.volume_gb and rp.volume_gb < cfg.weights_gb * 1.2:
        raise _config_error(
            "volumeGb",
            rp.volume_gb,
            f"too small for {cfg.model}'s ~{cfg.weights_gb:g} GB of weights. Set it to at "
            f"least {int(cfg.weights_gb * 1.2) + 1}, or to 0 for no volume",
        )
    spec = cfg.serving_for(rp.gpu_count)
    return {
        "name": pod_base_name(pulumi.get_stack(), index),
        "image": rp.image,
        "vllmArgs": spec.vllm_args(),
        "minCudaVersion": serving.MIN_CUDA_VERSION,
        "gpuTypeIds": list(rp.gpu_type_ids),
        "gpuCount": rp.gpu_count,
        "dataCenterIds": list(rp.data_center_ids),
        "cloud": rp.cloud,
        "containerDiskGb": rp.container_disk_gb,
        "volumeGb": rp.volume_gb,
        "weightsGb": cfg.weights_gb,
        "readyTimeoutMinutes": rp.ready_timeout_minutes,
        "apiKey": pulumi.Output.secret(api_key),
        "hfToken": pulumi.Output.secret(cfg.hf_token or ""),
    }


class RunpodPods(pulumi.ComponentResource):
    """`runpod.podCount` pods, each a child of this component."""

    endpoints: pulumi.Output[list[str]]
    pod_ids: pulumi.Output[list[str]]
    cost_per_hour: pulumi.Output[float]

    def __init__(
        self,
        name: str,
        cfg: StackConfig,
        api_key: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("llm-endpoint:runpod:Pods", name, None, opts)
        if cfg.runpod is None:
            raise ValueError("RunpodPods needs an `llm-endpoint:runpod` config object")
        self.pods = [
            RunpodPod(
                f"{name}-{i}",
                pod_inputs(cfg, api_key, i),
                pulumi.ResourceOptions(parent=self),
            )
            for i in range(cfg.runpod.pod_count)
        ]
        self.endpoints = pulumi.Output.all(*[p.endpoint for p in self.pods])
        self.pod_ids = pulumi.Output.all(*[p.podId for p in self.pods])
        self.cost_per_hour = pulumi.Output.all(*[p.costPerHour for p in self.pods]).apply(
            lambda costs: round(sum(float(c or 0) for c in costs), 4)
        )
        self.register_outputs(
            {
                "endpoints": self.endpoints,
                "pod_ids": self.pod_ids,
                "cost_per_hour": self.cost_per_hour,
            }
        )
