"""The rules for a pod's settings, in one place: the stack config (`llm-endpoint:runpod`,
infra/config.py) and the provider's `check` (infra/runpod/provider.py) both validate with the
types defined here, so a bound or a message cannot drift between them.

Each rule's message says what is wrong and how to fix it; infra/config.py prefixes the key and
the value, the provider reports the input's name.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, ValidationError
from pydantic.alias_generators import to_camel

from infra import serving

MAX_PODS = 16
MAX_GPUS = 8
# docs/facts/runpod.md ("Account secrets"): names RunPod accepts.
_SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-/]{0,190}$")
_TAG = re.compile(r"^[\w][\w.-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,50}$")
_CUDA = re.compile(r"^\d+\.\d+$")


def _between(lo: int, hi: int, what: str) -> Callable[[int], int]:
    def check(v: int) -> int:
        if not lo <= v <= hi:
            raise ValueError(f"{what} must be {lo}-{hi}; set a value in that range")
        return v

    return check


def image_problem(ref: str) -> str | None:
    """Why `ref` is not a pinned image reference (REPOSITORY:TAG or REPOSITORY@sha256:HEX),
    or None. A tag after the last `/` only, so a registry port is not taken for one."""
    repository, at, digest = ref.partition("@")
    if at:
        if not _DIGEST.match(digest):
            return (
                f"the digest '{digest}' is not sha256:<64 lowercase hex digits>; copy the "
                "image's sha256 digest from `docker buildx imagetools inspect` or the registry"
            )
        return None if repository and " " not in repository else "no repository before '@'"
    path, colon, tag = ref.rpartition(":")
    if not colon or "/" in tag or not path:
        return "has no tag; pin a version, e.g. REPOSITORY:v1 (or @sha256:<digest>)"
    if not _TAG.match(tag):
        return f"the tag '{tag}' is not a valid image tag (letters, digits, '_', '.', '-')"
    if tag == "latest":
        return "`:latest` moves; pin a version tag or a @sha256: digest"
    return None


def _image(ref: str) -> str:
    problem = image_problem(ref)
    if problem:
        raise ValueError(problem)
    return ref


def secret_name_problem(name: str) -> str | None:
    """Why RunPod would refuse `name` as an account secret name, or None."""
    if name.upper().startswith("RUNPOD"):
        return "RunPod reserves names starting with RUNPOD; choose another prefix"
    if not _SECRET_NAME.match(name):
        return (
            "must start with a letter or '_' and hold only letters, digits and _.-/ (at most "
            "191 characters)"
        )
    return None


def _secret_name(name: str) -> str:
    problem = secret_name_problem(name)
    if problem:
        raise ValueError(problem)
    return name


MAX_ID_CHARS = 100  # bounds the create body (docs/facts/runpod.md ("Request size"))


def _ids(v: list[str]) -> list[str]:
    if (
        not v
        or any(not item.strip() or len(item) > MAX_ID_CHARS for item in v)
        or len(set(v)) != len(v)
    ):
        raise ValueError(
            f"list each id once, none empty or over {MAX_ID_CHARS} characters, in order of "
            "preference (ids as RunPod spells them, e.g. 'NVIDIA A100 80GB PCIe' or 'US-KS-2')"
        )
    return v


def _data_centers(v: list[str]) -> list[str]:
    return _ids(v) if v else v


def _volume(v: int) -> int:
    if v != 0 and not 10 <= v <= 4000:
        raise ValueError("RunPod volumes are 10-4000 GB. Set 0 (no volume) or 10-4000")
    return v


PodCount = Annotated[int, AfterValidator(_between(1, MAX_PODS, "the number of pods"))]
GpuCount = Annotated[int, AfterValidator(_between(1, MAX_GPUS, "GPUs per pod"))]
ReadyTimeoutMinutes = Annotated[int, AfterValidator(_between(1, 240, "the ready timeout"))]
ContainerDiskGb = Annotated[int, AfterValidator(_between(10, 2000, "the container disk (GB)"))]
VolumeGb = Annotated[int, AfterValidator(_volume)]
GpuTypeIds = Annotated[list[str], AfterValidator(_ids)]
DataCenterIds = Annotated[list[str], AfterValidator(_data_centers)]
ImageRef = Annotated[str, AfterValidator(_image)]
SecretName = Annotated[str, AfterValidator(_secret_name)]
Cloud = Literal["SECURE", "COMMUNITY"]


def disk_problems(disk: int, volume: int, weights_gb: float) -> list[tuple[str, str]]:
    """(which, why) for disks too small for the model: "disk" or "volume"."""
    found = []
    need = serving.minimum_pod_container_disk_gb(weights_gb, volume)
    if disk < need:
        found.append(
            (
                "disk",
                f"too small for ~{weights_gb:g} GB of weights"
                f"{'' if volume else ', downloaded to the container disk'}. Set it to at least "
                f"{need}, or add a volume for the model cache with runpod.volumeGb",
            )
        )
    staged = serving.staged_download_gb(weights_gb)
    if volume and volume < staged:
        found.append(
            ("volume", f"too small for ~{weights_gb:g} GB of weights. Set it to at least {staged}")
        )
    return found


def _name(v: str) -> str:
    if not _NAME.match(v):
        raise ValueError("must be 1-51 lowercase letters, digits and hyphens (the pod name prefix)")
    return v


def _cuda(v: str) -> str:
    if not _CUDA.match(v):
        raise ValueError("must be major.minor, e.g. 13.0")
    return v


def _key(v: str) -> str:
    if len(v) < 32:
        raise ValueError("must be the stack's API key (at least 32 characters)")
    return v


class PodInputs(BaseModel):
    """The provider's inputs (camelCase, as the component passes them). Fields are optional
    only because an unknown value (preview) is left out before validation; `check` requires
    the ones that must be present."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    name: Annotated[str, AfterValidator(_name)] | None = None
    image: ImageRef | None = None
    custom_image: bool | None = None
    vllm_args: list[str] | None = None
    min_cuda_version: Annotated[str, AfterValidator(_cuda)] | None = None
    gpu_type_ids: GpuTypeIds | None = None
    gpu_count: GpuCount | None = None
    data_center_ids: DataCenterIds | None = None
    cloud: Cloud | None = None
    container_disk_gb: ContainerDiskGb | None = None
    volume_gb: VolumeGb | None = None
    weights_gb: float | None = None
    ready_timeout_minutes: ReadyTimeoutMinutes | None = None
    api_key: Annotated[str, AfterValidator(_key)] | None = None
    api_key_secret: SecretName | None = None
    hf_token_secret: SecretName | Literal[""] | None = None


REQUIRED_INPUTS = ("name", "image", "vllmArgs", "gpuTypeIds", "gpuCount", "apiKey", "apiKeySecret")


def input_failures(props: dict[str, Any], unknown: object) -> list[tuple[str, str]]:
    """(input name, reason) for every bad input; values equal to `unknown` (preview) pass."""
    known = {k: v for k, v in props.items() if v != unknown}
    failures = [(k, "is required") for k in REQUIRED_INPUTS if k not in props]
    try:
        PodInputs.model_validate(known)
    except ValidationError as err:
        for e in err.errors(include_url=False):
            failures.append((str(e["loc"][0]), e["msg"].removeprefix("Value error, ")))
    bad = {key for key, _ in failures}
    disk, volume, weights = (known.get(k) for k in ("containerDiskGb", "volumeGb", "weightsGb"))
    if not isinstance(weights, int | float) or weights <= 0:
        failures.append(("weightsGb", "must be the model's weight size in GB (> 0)"))
    elif isinstance(disk, int | float) and "containerDiskGb" not in bad:
        vol = int(volume) if isinstance(volume, int | float) and "volumeGb" not in bad else 0
        for which, why in disk_problems(int(disk), vol, float(weights)):
            failures.append(("containerDiskGb" if which == "disk" else "volumeGb", why))
    return failures
