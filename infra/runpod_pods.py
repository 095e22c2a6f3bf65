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
from infra.config import StackConfig
from infra.runpod import account_secrets
from infra.runpod.naming import pod_base_name
from infra.runpod.provider import SECRET_INPUTS, RunpodPodProvider
from infra.runpod.secret_provider import RunpodSecretProvider

_OUTPUT_KEYS = (
    "podId",
    "podName",
    "endpoint",
    "gpuTypeId",
    "dataCenterId",
    "costPerHour",
    "status",
    "serving",
    "notServingReason",
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
    serving: pulumi.Output[bool]
    notServingReason: pulumi.Output[str]

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


class RunpodSecret(dynamic.Resource, module="llm-endpoint", name="RunpodSecret"):
    """One RunPod account secret of the stack (infra/runpod/secret_provider.py)."""

    secretId: pulumi.Output[str]
    version: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        secret_name: str,
        value: pulumi.Input[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        props = {
            "name": secret_name,
            "value": pulumi.Output.secret(value),
            "description": f"llm-endpoint stack {pulumi.get_stack()} (managed by Pulumi)",
            "secretId": None,
            "version": None,
        }
        secret_outputs = pulumi.ResourceOptions(additional_secret_outputs=["value"])
        super().__init__(
            RunpodSecretProvider(), name, props, pulumi.ResourceOptions.merge(opts, secret_outputs)
        )


def pod_inputs(
    cfg: StackConfig,
    api_key: pulumi.Input[str],
    index: int,
    secrets: dict[str, RunpodSecret] | None = None,
) -> dict[str, Any]:
    """The provider inputs for pod `index`."""
    rp = cfg.runpod
    # Validated by infra/config.py: pods are declared with disks that fit.
    assert rp is not None and cfg.weights_gb is not None
    spec = cfg.serving_for(rp.gpu_count)
    return {
        "name": pod_base_name(pulumi.get_stack(), index),
        # Unset: the stock pinned image, started with the project's entrypoint.
        "image": rp.image or serving.VLLM_IMAGE,
        "customImage": rp.image is not None,
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
        **_secret_inputs(cfg, secrets or {}),
    }


def _secret_names(cfg: StackConfig) -> tuple[str, str]:
    assert cfg.runpod is not None
    prefix = cfg.runpod.secret_prefix or account_secrets.default_prefix(pulumi.get_stack())
    return account_secrets.secret_names(prefix)


def _secret_inputs(cfg: StackConfig, secrets: dict[str, RunpodSecret]) -> dict[str, Any]:
    """Names of the stack's account secrets (the pod's env references them) and a version that
    changes when a value is rotated (the pod then restarts and waits for the new key)."""
    key_name, token_name = _secret_names(cfg)
    versions = [s.version for s in secrets.values()]
    return {
        "apiKeySecret": key_name,
        "hfTokenSecret": token_name if "hfToken" in secrets else "",
        "secretsVersion": pulumi.Output.all(*versions).apply(lambda v: ".".join(map(str, v))),
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
        key_name, token_name = _secret_names(cfg)
        child = pulumi.ResourceOptions(parent=self)
        self.secrets = {"apiKey": RunpodSecret(f"{name}-api-key", key_name, api_key, child)}
        if cfg.hf_token:
            self.secrets["hfToken"] = RunpodSecret(
                f"{name}-hf-token", token_name, cfg.hf_token, child
            )
        self.pods = [
            RunpodPod(
                f"{name}-{i}",
                pod_inputs(cfg, api_key, i, self.secrets),
                pulumi.ResourceOptions(parent=self, depends_on=list(self.secrets.values())),
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
