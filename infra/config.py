"""The stack configuration: read once, validated whole, with one clear message on error.

Every key lives in the project's namespace (`llm-endpoint:`). Settings for each deployment
target are objects (`llm-endpoint:gcp`, `llm-endpoint:runpod`); secrets are top-level keys so
that `pulumi config set --secret` encrypts them and the SDK tracks them as secrets.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Any, Literal

import pulumi
from pulumi.runtime import config as runtime_config
from pydantic import (
    AliasGenerator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

from infra import gcp_catalog, serving

PROJECT = "llm-endpoint"
SECRET_KEYS = ("apiKey", "hfToken", "runpodApiKey")
_STRING_KEYS = frozenset({"model", "servedModelName", *SECRET_KEYS})
WORLD_OPEN = ("0.0.0.0/0", "::/0")
DEFAULT_BOOT_IMAGE = (
    "projects/ubuntu-os-accelerator-images/global/images/family/"
    "ubuntu-accelerator-2404-amd64-with-nvidia-580"
)
# FACTS.md (vLLM): meta-llama/* models are gated (need HF_TOKEN and an accepted licence).
GATED_MODEL_PREFIXES = ("meta-llama/",)
_DRIVER_IN_IMAGE = re.compile(r"nvidia-(\d{3})")
_GCP_PROJECT_ID = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
# RFC 6750 b64token characters: what can travel in `Authorization: Bearer <key>` unquoted.
_BEARER_TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")


class ConfigError(pulumi.RunError):
    """Shown by `pulumi preview`/`up` as a plain message, without a Python traceback."""


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=AliasGenerator(validation_alias=to_camel),
        extra="forbid",
        frozen=True,
        populate_by_name=True,
    )


def _check_cidr(value: str) -> str:
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as err:
        raise ValueError(
            f"not a valid CIDR range ({err}). Write a network address with a prefix length, "
            "e.g. 203.0.113.0/24 or 198.51.100.7/32"
        ) from None


class GcpConfig(_Model):
    """`llm-endpoint:gcp`: a Google Cloud A100 VM serving vLLM on port 8000."""

    project: str
    zone: str = "us-central1-a"
    machine_type: str = "a2-highgpu-1g"
    gpu_count: int | None = None
    spot: bool = False
    spot_termination_action: Literal["STOP", "DELETE"] | None = None
    allowed_source_ranges: list[str] = Field(min_length=1)
    allow_world_open: bool = False
    ssh_source_ranges: list[str] = Field(default_factory=list)
    ssh_via_iap: bool = True
    boot_disk_size_gb: int = Field(default=200, ge=10, le=65536)
    boot_disk_type: Literal["pd-balanced", "pd-ssd", "pd-standard"] = "pd-balanced"
    boot_image: str = DEFAULT_BOOT_IMAGE
    boot_image_driver_major: int | None = None
    network: str = "default"
    secure_boot: bool = True
    stop_on_failure: bool = True
    ready_timeout_minutes: int = Field(default=45, ge=5, le=240)
    idle_stop_minutes: int = Field(default=0, ge=0, le=10080)
    labels: dict[str, str] = Field(default_factory=dict)

    @field_validator("project")
    @classmethod
    def _project_id(cls, v: str) -> str:
        if not _GCP_PROJECT_ID.match(v):
            raise ValueError(
                "not a Google Cloud project id (6-30 lowercase letters, digits and hyphens, "
                "starting with a letter). Use the id shown by `gcloud projects list`"
            )
        return v

    @field_validator("machine_type")
    @classmethod
    def _a100_shape(cls, v: str) -> str:
        if v not in gcp_catalog.A100_MACHINE_TYPES:
            raise ValueError(
                "not an A100 machine type. Use one of "
                + ", ".join(gcp_catalog.A100_MACHINE_TYPES)
                + " (a2-highgpu-* have A100 40GB, a2-ultragpu-* A100 80GB)"
            )
        return v

    @field_validator("allowed_source_ranges", "ssh_source_ranges")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        return [_check_cidr(r) for r in v]

    @field_validator("labels")
    @classmethod
    def _label_syntax(cls, v: dict[str, str]) -> dict[str, str]:
        for k, val in v.items():
            if not re.fullmatch(r"[a-z][a-z0-9_-]{0,62}", k) or not re.fullmatch(
                r"[a-z0-9_-]{0,63}", val
            ):
                raise ValueError(
                    f"label {k}={val} is not a valid GCE label. Use lowercase letters, digits, "
                    "'_' and '-', keys starting with a letter, at most 63 characters"
                )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> GcpConfig:
        shape = gcp_catalog.A100_MACHINE_TYPES[self.machine_type]
        if self.zone not in gcp_catalog.A100_ZONES[shape.accelerator]:
            offering = sorted(gcp_catalog.A100_ZONES[shape.accelerator])
            raise _KeyError(
                "zone",
                self.zone,
                f"zone does not offer {shape.accelerator} (needed by {self.machine_type}). "
                f"Use one of {', '.join(offering)}",
            )
        if self.gpu_count is not None and self.gpu_count != shape.gpus:
            raise _KeyError(
                "gpuCount",
                self.gpu_count,
                f"{self.machine_type} comes with {shape.gpus} GPU(s) attached. Set gpuCount to "
                f"{shape.gpus}, remove it, or pick the a2 machine type with that many GPUs",
            )
        if self.spot_termination_action is not None and not self.spot:
            raise _KeyError(
                "spotTerminationAction",
                self.spot_termination_action,
                "only applies to spot VMs. Remove it, or set spot: true",
            )
        for key, ranges in (
            ("allowedSourceRanges", self.allowed_source_ranges),
            ("sshSourceRanges", self.ssh_source_ranges),
        ):
            open_ranges = [r for r in ranges if r in WORLD_OPEN]
            if open_ranges and not self.allow_world_open:
                raise _KeyError(
                    key,
                    open_ranges[0],
                    "opens the endpoint to the whole internet. List your own networks instead, "
                    "or set allowWorldOpen: true if that is really intended",
                )
        driver = self.driver_major
        if driver is None:
            raise _KeyError(
                "bootImage",
                self.boot_image,
                "the NVIDIA driver version cannot be read from the image name. Set "
                f"bootImageDriverMajor to the image's driver major version (>= "
                f"{serving.MIN_NVIDIA_DRIVER_MAJOR}), or use {DEFAULT_BOOT_IMAGE}",
            )
        if driver < serving.MIN_NVIDIA_DRIVER_MAJOR:
            raise _KeyError(
                "bootImageDriverMajor" if self.boot_image_driver_major else "bootImage",
                self.boot_image_driver_major or self.boot_image,
                f"NVIDIA driver {driver} is too old for {serving.VLLM_IMAGE} (CUDA "
                f"{serving.MIN_CUDA_VERSION} needs {serving.MIN_NVIDIA_DRIVER_MAJOR}+). Use an "
                f"image with driver {serving.MIN_NVIDIA_DRIVER_MAJOR}+, e.g. {DEFAULT_BOOT_IMAGE}",
            )
        return self

    @property
    def shape(self) -> gcp_catalog.MachineShape:
        return gcp_catalog.A100_MACHINE_TYPES[self.machine_type]

    @property
    def region(self) -> str:
        return gcp_catalog.region_of(self.zone)

    @property
    def driver_major(self) -> int | None:
        if self.boot_image_driver_major is not None:
            return self.boot_image_driver_major
        found = _DRIVER_IN_IMAGE.search(self.boot_image)
        return int(found.group(1)) if found else None

    @property
    def termination_action(self) -> str | None:
        return (self.spot_termination_action or "STOP") if self.spot else None


class RunpodConfig(_Model):
    """`llm-endpoint:runpod`: RunPod GPU pods serving the same endpoint (infra/runpod_pods.py).

    `image` is the pod image built from the pinned vLLM image by infra/runpod/image/Dockerfile
    (RunPod's REST API v2 cannot replace an image's entrypoint, so the proxy must be in the
    image). It may stay unset here; declaring pods without it fails with a message saying how
    to build it. `volumeGb` > 0 adds a volume for the Hugging Face cache."""

    pod_count: int = Field(default=1, ge=1, le=16)
    gpu_type_ids: list[str] = Field(
        default_factory=lambda: ["NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB"], min_length=1
    )
    gpu_count: int = Field(default=1, ge=1, le=8)
    data_center_ids: list[str] = Field(default_factory=list)
    cloud: Literal["SECURE", "COMMUNITY"] = "SECURE"
    container_disk_gb: int = Field(default=50, ge=10, le=2000)
    volume_gb: int = Field(default=0, ge=0, le=4000)
    ready_timeout_minutes: int = Field(default=20, ge=1, le=240)
    image: str | None = None

    @field_validator("gpu_type_ids", "data_center_ids")
    @classmethod
    def _distinct_ids(cls, v: list[str]) -> list[str]:
        if any(not item.strip() for item in v) or len(set(v)) != len(v):
            raise ValueError(
                "list each id once, none empty, in order of preference (ids as RunPod spells "
                "them, e.g. 'NVIDIA A100 80GB PCIe' or 'US-KS-2')"
            )
        return v

    @field_validator("volume_gb")
    @classmethod
    def _volume_floor(cls, v: int) -> int:
        if 0 < v < 10:
            raise ValueError("RunPod volumes are at least 10 GB. Set 0 (no volume) or 10 or more")
        return v

    @field_validator("image")
    @classmethod
    def _pod_image(cls, v: str | None) -> str | None:
        if v is None:
            return v
        repository, _, tag = v.rpartition(":")
        if repository.rsplit("/", 1)[-1] == "" or "/" in tag:
            raise ValueError("not an image reference like REGISTRY/llm-endpoint-vllm:TAG")
        if repository == serving.VLLM_IMAGE_REPOSITORY:
            raise ValueError(
                f"the stock vLLM image has no proxy in front of vLLM. Build the pod image with "
                f"`docker build -t REGISTRY/llm-endpoint-vllm:v{serving.VLLM_VERSION}-proxy1 "
                "infra/runpod/image`, push it and set its name here"
            )
        if f"v{serving.VLLM_VERSION}" not in tag:
            raise ValueError(
                f"the tag must contain v{serving.VLLM_VERSION}, the vLLM version it was built "
                "from (infra/serving.py), so a vLLM upgrade cannot silently keep an old image. "
                "Rebuild it from infra/runpod/image/Dockerfile and tag it "
                f"...:v{serving.VLLM_VERSION}-<n>"
            )
        return v


class StackConfig(_Model):
    """Everything in the `llm-endpoint:` namespace."""

    model: str = serving.DEFAULT_MODEL
    served_model_name: str | None = None
    max_model_len: int = Field(default=8192, ge=256, le=1_048_576)
    gpu_memory_utilization: float = Field(default=0.90, gt=0.1, le=0.98)
    model_weights_gb: float | None = Field(default=None, gt=0)
    api_key: str | None = Field(default=None, repr=False)
    hf_token: str | None = Field(default=None, repr=False)
    runpod_api_key: str | None = Field(default=None, repr=False)
    gcp: GcpConfig | None = None
    runpod: RunpodConfig | None = None

    @field_validator("model")
    @classmethod
    def _hf_model_id(cls, v: str) -> str:
        if v.lower().endswith(".gguf") or not re.fullmatch(r"[\w.-]+/[\w.-]+", v):
            raise ValueError(
                "not a Hugging Face model id like Qwen/Qwen2.5-7B-Instruct (GGUF files are not "
                "supported: serve a safetensors model)"
            )
        return v

    @field_validator("api_key")
    @classmethod
    def _key_shape(cls, v: str | None) -> str | None:
        if v is not None and (len(v) < 32 or not _BEARER_TOKEN.match(v)):
            raise ValueError(
                "must be at least 32 characters of letters, digits and -._~+/ so it can travel "
                "as a bearer token. Remove it to let Pulumi generate one, or set a longer one "
                "with `pulumi config set --secret apiKey`"
            )
        return v

    @model_validator(mode="after")
    def _targets_and_disk(self) -> StackConfig:
        if self.gcp is None and self.runpod is None:
            raise _KeyError(
                "gcp",
                None,
                "the stack deploys nothing. Add an `llm-endpoint:gcp` object, an "
                "`llm-endpoint:runpod` object, or both (see README, Configuration)",
            )
        if self.model.startswith(GATED_MODEL_PREFIXES) and self.hf_token is None:
            raise _KeyError(
                "hfToken",
                None,
                f"{self.model} is gated on Hugging Face: without a token the download fails "
                "after the GPU is already billing. Accept the model's licence on huggingface.co, "
                "then `pulumi config set --secret llm-endpoint:hfToken hf_...`",
            )
        if self.weights_gb is None:
            raise _KeyError(
                "modelWeightsGb",
                None,
                f"the size of {self.model}'s weights is unknown. Set modelWeightsGb to the size "
                "of its safetensors files in GB",
            )
        if self.gcp is not None:
            need = serving.minimum_boot_disk_gb(self.weights_gb)
            if self.gcp.boot_disk_size_gb < need:
                raise _KeyError(
                    "gcp.bootDiskSizeGb",
                    self.gcp.boot_disk_size_gb,
                    f"too small for the OS, the vLLM image and {self.model} "
                    f"(~{self.weights_gb:g} GB of weights). Set it to at least {need}",
                )
        if self.runpod is not None:
            self._check_runpod(self.runpod, self.weights_gb)
        return self

    def _check_runpod(self, rp: RunpodConfig, weights_gb: float) -> None:
        """RunPod settings that are only checkable against the rest of the stack."""
        if rp.image is None:
            raise _KeyError(
                "runpod.image",
                None,
                "RunPod pods need the llm-endpoint pod image (the pinned vLLM image plus the "
                "proxy; RunPod's API cannot replace the stock image's entrypoint). Build and push "
                f"it: `docker build -t REGISTRY/llm-endpoint-vllm:v{serving.VLLM_VERSION}-proxy1 "
                "infra/runpod/image && docker push ...`, then `pulumi config set --path "
                "llm-endpoint:runpod.image REGISTRY/...` (README, RunPod)",
            )
        need = serving.minimum_pod_container_disk_gb(weights_gb, rp.volume_gb)
        if rp.container_disk_gb < need:
            raise _KeyError(
                "runpod.containerDiskGb",
                rp.container_disk_gb,
                f"too small for {self.model} (~{weights_gb:g} GB of weights"
                f"{'' if rp.volume_gb else ', downloaded to the container disk'}). Set it to at "
                f"least {need}, or add a volume for the model cache with runpod.volumeGb",
            )
        staged = serving.staged_download_gb(weights_gb)
        if rp.volume_gb and rp.volume_gb < staged:
            raise _KeyError(
                "runpod.volumeGb",
                rp.volume_gb,
                f"too small for {self.model}'s ~{weights_gb:g} GB of weights. Set it to at "
                f"least {staged}, or to 0 for no volume",
            )

    @property
    def weights_gb(self) -> float | None:
        return self.model_weights_gb or serving.estimate_weights_gb(self.model)

    def serving_for(self, gpus: int) -> serving.ServingSpec:
        assert self.weights_gb is not None  # guaranteed by validation
        return serving.ServingSpec(
            model=self.model,
            served_model_name=self.served_model_name or self.model,
            max_model_len=self.max_model_len,
            gpu_memory_utilization=self.gpu_memory_utilization,
            tensor_parallel_size=gpus,
            weights_gb=self.weights_gb,
        )


class _KeyError(ValueError):
    """A cross-field error that names the key it is about, not the model it was found on."""

    def __init__(self, key: str, value: Any, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.value = value


def _display(key_path: str, value: Any, secret_keys: frozenset[str]) -> str:
    if value is None:
        return "(not set)"
    top = key_path.split(".", 1)[0]
    if key_path.rsplit(".", maxsplit=1)[-1] in SECRET_KEYS or top in secret_keys:
        return "<secret>"
    return repr(value) if isinstance(value, str) else str(value)


def _format_errors(err: ValidationError, secret_keys: frozenset[str]) -> str:
    lines = []
    for e in err.errors(include_url=False):
        path = ".".join(str(p) for p in e["loc"] if not isinstance(p, int))
        ctx_error = (e.get("ctx") or {}).get("error")
        value: Any = e.get("input")
        message = e["msg"].removeprefix("Value error, ")
        if isinstance(ctx_error, _KeyError):
            path = f"{path}.{ctx_error.key}" if path else ctx_error.key
            value = ctx_error.value
            message = str(ctx_error)
        elif e["type"] == "extra_forbidden":
            message = "unknown key (a typo?). Remove it or fix its name; README lists every key"
        elif e["type"] == "missing":
            message = "required but not set"
            value = None
        key = f"{PROJECT}:{path}" if path else PROJECT
        lines.append(f"  - {key} = {_display(path, value, secret_keys)}: {message}")
    count = len(lines)
    return f"Invalid stack configuration ({count} problem{'s' if count > 1 else ''}):\n" + (
        "\n".join(lines)
    )


def parse(raw: Mapping[str, Any], secret_keys: frozenset[str] = frozenset()) -> StackConfig:
    """Validate the namespace's keys (already JSON-decoded) into a StackConfig. Values of
    `secret_keys` (keys set with --secret, even under a misspelt name) are never shown."""
    try:
        return StackConfig.model_validate(dict(raw))
    except ValidationError as err:
        raise ConfigError(_format_errors(err, secret_keys)) from None


def _raw_namespace() -> dict[str, Any]:
    """All keys set in this project's namespace, however the engine passed them in.

    pulumi.Config only answers for keys we already know, so unknown-key (typo) detection needs
    the whole set: explicit runtime config (set by the engine or by mocks) plus PULUMI_CONFIG.
    """
    merged: dict[str, Any] = {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}
    prefix = f"{PROJECT}:"
    raw: dict[str, Any] = {}
    for full_key, value in merged.items():
        if not full_key.startswith(prefix):
            continue
        key = full_key[len(prefix) :]
        raw[key] = value
        if isinstance(value, str) and key not in _STRING_KEYS:
            # The engine passes every value as a string: numbers, booleans and objects as JSON.
            with contextlib.suppress(json.JSONDecodeError):
                raw[key] = json.loads(value)
    return raw


def load() -> StackConfig:
    """Read and validate this stack's config. Raises ConfigError with every problem at once."""
    prefix = f"{PROJECT}:"
    # The engine names secret keys in PULUMI_CONFIG_SECRET_KEYS; set_all_config (the mock
    # runtime) keeps them in the SDK's own set, which has no public getter.
    secret = {
        k[len(prefix) :]
        for k in (*runtime_config.get_config_secret_keys_env(), *runtime_config._SECRET_KEYS.get())
        if k.startswith(prefix)
    }
    return parse(_raw_namespace(), frozenset(secret))
