"""The stack configuration: read once, validated whole, every problem in one message.

Every key lives in the project's namespace (`llm-endpoint:`). Settings for each deployment
target are objects (`llm-endpoint:gcp`, `llm-endpoint:runpod`); secrets are top-level keys so
that `pulumi config set --secret` encrypts them and the SDK tracks them as secrets.

pydantic checks each key on its own (with the key's example on its Field, shown when a message
needs a fix); infra/config_checks.py checks keys against each other; infra/config_report.py
words the result. docs/configuration.md describes every key.
"""

from __future__ import annotations

import contextlib
import copy
import ipaddress
import json
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import pulumi
from pulumi.runtime import config as runtime_config
from pydantic import (
    AliasGenerator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import ErrorDetails

from infra import config_checks, config_report, gcp_catalog, group_plan, hub, model_checks, serving
from infra.config_checks import DEFAULT_BOOT_IMAGE, GATED_MODEL_PREFIXES, WORLD_OPEN
from infra.config_report import PROJECT, SECRET_KEYS, Problem
from infra.model_facts import ModelFacts
from infra.runpod import inputs

# Registers the checks of the model against the machine with config_checks.
_ = model_checks
HubLookup = Callable[[str, str | None], hub.HubAnswer]

__all__ = [
    "DEFAULT_BOOT_IMAGE",
    "GATED_MODEL_PREFIXES",
    "PROJECT",
    "SECRET_KEYS",
    "WORLD_OPEN",
    "ConfigError",
    "GcpConfig",
    "RunpodConfig",
    "StackConfig",
    "load",
    "parse",
]

_STRING_KEYS = frozenset({"model", "servedModelName", *SECRET_KEYS})
# Namespaces a stack may hold besides ours: the providers this program uses, and Pulumi's own.
# Any other (`llm-endpont:gcp`) is a typo that would otherwise be silently ignored.
KNOWN_NAMESPACES = frozenset({PROJECT, "gcp", "random", "pulumi"})
_DRIVER_IN_IMAGE = re.compile(r"nvidia-(\d{3})")
_GCP_PROJECT_ID = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
# RFC 6750 b64token characters: what can travel in `Authorization: Bearer <key>` unquoted.
_BEARER_TOKEN = re.compile(r"^[A-Za-z0-9\-._~+/]+=*$")
# What clients send as "model": no spaces or quotes, so it is typed and matched exactly.
_SERVED_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}")
_EXAMPLE_RANGE = "198.51.100.7/32"
DEFAULT_ZONE = "us-central1-a"


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

    project: str = Field(examples=["my-project-123"])
    # `zone` and `region` are read into *_setting fields so that a pinned zone can be told from
    # the default; the `zone` and `region` properties give the effective values.
    zone_setting: str | None = Field(
        default=None, validation_alias="zone", examples=["us-central1-a"]
    )
    machine_type: str = Field(default="a2-highgpu-1g", examples=["a2-ultragpu-1g"])
    gpu_count: int | None = Field(default=None, examples=[1])
    spot: bool = Field(default=False, examples=[True])
    spot_termination_action: Literal["STOP", "DELETE"] | None = Field(
        default=None, examples=["STOP"]
    )
    allowed_source_ranges: list[str] = Field(min_length=1, examples=[[_EXAMPLE_RANGE]])
    allow_world_open: bool = Field(default=False, examples=[False])
    ssh_source_ranges: list[str] = Field(default_factory=list, examples=[[_EXAMPLE_RANGE]])
    ssh_via_iap: bool = Field(default=True, examples=[True])
    boot_disk_size_gb: int = Field(default=200, ge=10, le=65536, examples=[200])
    boot_disk_type: Literal["pd-balanced", "pd-ssd", "pd-standard"] = Field(
        default="pd-balanced", examples=["pd-ssd"]
    )
    boot_image: str = Field(default=DEFAULT_BOOT_IMAGE, examples=[DEFAULT_BOOT_IMAGE])
    boot_image_driver_major: int | None = Field(default=None, examples=[580])
    network: str = Field(default="default", examples=["default"])
    secure_boot: bool = Field(default=True, examples=[True])
    stop_on_failure: bool = Field(default=True, examples=[True])
    ready_timeout_minutes: int = Field(default=45, ge=5, le=240, examples=[45])
    idle_stop_minutes: int = Field(default=0, ge=0, le=10080, examples=[60])
    labels: dict[str, str] = Field(default_factory=dict, examples=[{"team": "ml"}])
    # Group mode (docs/scale-out.md): replicas >= 2 behind one load balancer.
    region_setting: str | None = Field(
        default=None, validation_alias="region", examples=["us-central1"]
    )
    replicas: int = Field(default=1, examples=[2])
    max_surge: int = Field(default=0, ge=0, le=gcp_catalog.MAX_REPLICAS, examples=[0])
    idle_min_replicas: int = Field(default=0, ge=0, examples=[0])
    gpu_quota: int | None = Field(default=None, ge=0, examples=[8])
    # HTTPS on the endpoint with the stack's own CA; false serves plain HTTP (asked for only).
    tls: bool = Field(default=True, examples=[True])
    # `pulumi up` returns only once the VM reports it serves what was declared (or fails).
    wait_for_serving: bool = Field(default=True, examples=[True])

    @model_validator(mode="before")
    @classmethod
    def _group_ready_default(cls, data: Any) -> Any:
        """In a group, an unset readyTimeoutMinutes is the longest autohealing can wait out
        (group_plan.GROUP_DEFAULT_READY_TIMEOUT_MINUTES), not the single VM's 45."""
        if not isinstance(data, dict) or {"readyTimeoutMinutes", "ready_timeout_minutes"} & set(
            data
        ):
            return data
        replicas = data.get("replicas")
        if isinstance(replicas, int) and not isinstance(replicas, bool) and replicas > 1:
            return {**data, "readyTimeoutMinutes": group_plan.GROUP_DEFAULT_READY_TIMEOUT_MINUTES}
        return data

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

    @property
    def shape(self) -> gcp_catalog.MachineShape:
        return gcp_catalog.A100_MACHINE_TYPES[self.machine_type]

    @property
    def zone(self) -> str:
        """The VM's zone; in group mode the provider's default zone (the group spreads over
        the region's zones). Without gcp.zone: the region's first A100 zone, else the default."""
        if self.zone_setting is not None:
            return self.zone_setting
        if self.region_setting is not None and self.region_zones:
            return self.region_zones[0]
        return DEFAULT_ZONE

    @property
    def region(self) -> str:
        return self.region_setting or gcp_catalog.region_of(self.zone)

    @property
    def region_zones(self) -> list[str]:
        """The zones of the region that offer the machine type's A100, sorted."""
        zones = gcp_catalog.A100_ZONES[self.shape.accelerator]
        return sorted(z for z in zones if gcp_catalog.region_of(z) == self.region)

    @property
    def group_mode(self) -> bool:
        return self.replicas > 1

    def plan_group(self) -> group_plan.GroupPlan:
        return group_plan.plan(
            region_zones=self.region_zones,
            replicas=self.replicas,
            max_surge=self.max_surge,
            ready_timeout_minutes=self.ready_timeout_minutes,
            gpus_per_replica=self.shape.gpus,
        )

    @property
    def driver_major(self) -> int | None:
        if self.boot_image_driver_major is not None:
            return self.boot_image_driver_major
        found = _DRIVER_IN_IMAGE.search(self.boot_image)
        return int(found.group(1)) if found else None

    @property
    def termination_action(self) -> str | None:
        return (self.spot_termination_action or "STOP") if self.spot else None


_POD_IMAGE_EXAMPLE = f"ghcr.io/acme/llm-endpoint-vllm:v{serving.VLLM_VERSION}-proxy1"


class RunpodConfig(_Model):
    """`llm-endpoint:runpod`: RunPod GPU pods serving the same endpoint (infra/runpod_pods.py).

    Without `image`, pods run the stock pinned vLLM image (`serving.VLLM_IMAGE`) with the
    project's entrypoint (infra/runpod/bootstrap.py). `image` names a custom image built from
    infra/runpod/image (faster, hermetic boots; also for an API without `entrypoint`/`cmd`).
    `volumeGb` > 0 adds a volume for the Hugging Face cache. The field types are the pod rules
    the provider checks too (infra/runpod/inputs.py)."""

    pod_count: inputs.PodCount = Field(default=1, examples=[1])
    gpu_type_ids: inputs.GpuTypeIds = Field(
        default_factory=lambda: ["NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB"],
        min_length=1,
        examples=[["NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB"]],
    )
    gpu_count: inputs.GpuCount = Field(default=1, examples=[1])
    data_center_ids: inputs.DataCenterIds = Field(default_factory=list, examples=[["US-KS-2"]])
    cloud: inputs.Cloud = Field(default="SECURE", examples=["SECURE"])
    container_disk_gb: inputs.ContainerDiskGb = Field(default=50, examples=[50])
    volume_gb: inputs.VolumeGb = Field(default=0, examples=[40])
    ready_timeout_minutes: inputs.ReadyTimeoutMinutes = Field(default=20, examples=[20])
    image: inputs.ImageRef | None = Field(default=None, examples=[_POD_IMAGE_EXAMPLE])
    # The stack's account secrets are `<prefix>-api-key` and `<prefix>-hf-token`
    # (infra/runpod/account_secrets.py); unset, the prefix comes from the stack's name.
    secret_prefix: inputs.SecretName | None = Field(default=None, examples=["llm-endpoint-prod"])

    @field_validator("image")
    @classmethod
    def _custom_image(cls, v: str | None) -> str | None:
        if v is None:
            return v
        if v.startswith(serving.VLLM_IMAGE_REPOSITORY + ":") or v.startswith(
            serving.VLLM_IMAGE_REPOSITORY + "@"
        ):
            raise ValueError(
                "is the stock vLLM image, which the stack already uses (with its own "
                "entrypoint) when runpod.image is unset. Remove the key: `pulumi config rm "
                "--path llm-endpoint:runpod.image`"
            )
        tag = v.rpartition(":")[2] if "@" not in v else None
        if tag is not None and f"v{serving.VLLM_VERSION}" not in tag:
            raise ValueError(
                f"the tag must contain v{serving.VLLM_VERSION}, the vLLM version it was built "
                "from (infra/serving.py), so a vLLM upgrade cannot silently keep an old image. "
                "Rebuild it from infra/runpod/image (the `pod-image` workflow does, on a tag) and "
                f"tag it ...:v{serving.VLLM_VERSION}-<n>, or remove runpod.image to use the "
                "stock image"
            )
        return v


class StackConfig(_Model):
    """Everything in the `llm-endpoint:` namespace."""

    # Hugging Face ids are at most 96 characters; the names travel in every pod create body,
    # which RunPod limits to 102,400 bytes (docs/facts/runpod.md ("Request size")).
    model: str = Field(
        default=serving.DEFAULT_MODEL, max_length=96, examples=[serving.DEFAULT_MODEL]
    )
    served_model_name: str | None = Field(default=None, examples=["qwen-7b"])
    max_model_len: int = Field(default=8192, ge=256, le=1_048_576, examples=[8192])
    gpu_memory_utilization: float = Field(default=0.90, gt=0.1, le=0.98, examples=[0.9])
    model_weights_gb: float | None = Field(default=None, gt=0, examples=[15.3])
    api_key: str | None = Field(default=None, repr=False)
    hf_token: str | None = Field(default=None, repr=False)
    runpod_api_key: str | None = Field(default=None, repr=False)
    gcp: GcpConfig | None = Field(
        default=None,
        examples=[{"project": "my-project-123", "allowedSourceRanges": [_EXAMPLE_RANGE]}],
    )
    runpod: RunpodConfig | None = Field(default=None, examples=[{"podCount": 1}])
    # What the Hub said about the model at preview (None: not asked, or no answer).
    _model_facts: ModelFacts | None = PrivateAttr(default=None)
    _warnings: tuple[str, ...] = PrivateAttr(default=())

    @field_validator("model")
    @classmethod
    def _hf_model_id(cls, v: str) -> str:
        if v.lower().endswith(".gguf") or not re.fullmatch(r"[\w.-]+/[\w.-]+", v):
            raise ValueError(
                "not a Hugging Face model id like Qwen/Qwen2.5-7B-Instruct (GGUF files are not "
                "supported: serve a safetensors model)"
            )
        return v

    @field_validator("served_model_name")
    @classmethod
    def _served_name(cls, v: str | None) -> str | None:
        if v is not None and not _SERVED_NAME.fullmatch(v):
            raise ValueError(
                "clients send this name as the request's `model`, so it must be one word: "
                "letters, digits and . _ : / - (at most 128, no spaces), e.g. qwen-7b"
            )
        return v

    @field_validator("api_key")
    @classmethod
    def _key_shape(cls, v: str | None) -> str | None:
        if v is not None and (len(v) < 32 or not _BEARER_TOKEN.match(v)):
            raise ValueError(
                "must be at least 32 characters of letters, digits and -._~+/ so it can travel "
                "as a bearer token. Remove it to let Pulumi generate one, or set a longer one "
                "with `pulumi config set --secret llm-endpoint:apiKey`"
            )
        return v

    @property
    def model_facts(self) -> ModelFacts | None:
        return self._model_facts

    @property
    def warnings(self) -> tuple[str, ...]:
        """What could not be checked; `load` shows each as a `pulumi preview` warning."""
        return self._warnings

    @property
    def weights_gb(self) -> float | None:
        """The size the Hub lists when it answered (what will be downloaded), else
        modelWeightsGb, else the built-in table or the size in the model's name."""
        if self._model_facts is not None and self._model_facts.weights_gb is not None:
            return self._model_facts.weights_gb
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


# Enough rounds for: the bad keys removed, then required keys the removal left unset filled in.
_REPAIR_ROUNDS = 4


def _validate_keys(raw: Mapping[str, Any]) -> tuple[StackConfig | None, list[Problem], set[str]]:
    """Validate each key on its own, reporting every bad one. To still check the good keys
    against each other, the bad ones are removed (or, if required, replaced by their example)
    and validation repeats; the result serves only those cross-checks."""
    data = copy.deepcopy(dict(raw))
    problems: list[Problem] = []
    failed: set[str] = set()
    for _ in range(_REPAIR_ROUNDS):
        try:
            return StackConfig.model_validate(data), problems, failed
        except ValidationError as err:
            for e in err.errors(include_url=False):
                path = config_report.loc_path(e["loc"])
                if path not in failed:
                    problems.append(config_report.problem_from_pydantic(StackConfig, e))
                    failed.add(path)
                _stand_in(data, e)
    return None, problems, failed


def _stand_in(data: dict[str, Any], err: ErrorDetails) -> None:
    parts = config_report.loc_path(err["loc"]).split(".")
    parent: Any = data
    for part in parts[:-1]:
        parent = parent.get(part) if isinstance(parent, dict) else None
    if not isinstance(parent, dict):
        return
    info = config_report.field_at(StackConfig, ".".join(parts))
    if err["type"] == "missing" and info is not None and info.examples:
        parent[parts[-1]] = copy.deepcopy(info.examples[0])
    else:
        parent.pop(parts[-1], None)


def _plaintext_secrets(raw: Mapping[str, Any], secret_keys: frozenset[str]) -> list[Problem]:
    return [
        Problem(
            key,
            raw[key],
            "is written in plain text in the stack file, where anyone with the file (or its git "
            "history) can read it. Delete that line from Pulumi.<stack>.yaml and set it "
            f"encrypted with `pulumi config set --secret {PROJECT}:{key}` (it prompts for the "
            "value); if the file was committed or shared, revoke this one and make a new one",
        )
        for key in SECRET_KEYS
        if key in raw and key not in secret_keys
    ]


def _foreign_key_problems(foreign_keys: Iterable[str]) -> list[Problem]:
    problems = []
    for full_key in sorted(foreign_keys):
        namespace, _, key = full_key.partition(":")
        problems.append(
            Problem(
                full_key,
                None,
                f"namespace {namespace!r} is not one this program reads, so the setting would "
                f"be ignored. Ours is {PROJECT!r}: write `{PROJECT}:{key}` (a typo?), or remove "
                f"it. Namespaces allowed: {', '.join(sorted(KNOWN_NAMESPACES))}",
                foreign=True,
            )
        )
    return problems


# What the model checks cover, named in the warning when they could not run.
_HUB_CHECKS = (
    "that the repository has safetensors weights, whether it is gated, that the GPU count "
    "divides its attention heads, that maxModelLen is within its limit, and that its weights "
    "and the KV cache of maxModelLen fit in GPU memory"
)


def _consult_hub(cfg: StackConfig, lookup: HubLookup, failed: set[str]) -> list[Problem]:
    """Ask the Hub about the model; the facts go onto cfg for the model checks."""
    answer = lookup(cfg.model, cfg.hf_token)
    if isinstance(answer, ModelFacts):
        cfg._model_facts = answer
        return []
    if isinstance(answer, hub.Refusal):
        failed.add(answer.key)  # one message about the key, not a second from the table's guess
        value = cfg.model if answer.key == "model" else cfg.hf_token
        return [Problem(answer.key, value, answer.message)]
    sizes = "modelWeightsGb" if cfg.model_weights_gb else "the built-in table in infra/serving.py"
    return [
        Problem(
            "model",
            cfg.model,
            f"the Hugging Face Hub could not be asked ({answer.reason}), so these were NOT "
            f"checked: {_HUB_CHECKS}. Disks are sized from {sizes}",
            warning=True,
        )
    ]


def parse(
    raw: Mapping[str, Any],
    secret_keys: frozenset[str] | None = None,
    *,
    foreign_keys: Iterable[str] = (),
    hub_lookup: HubLookup | None = None,
) -> StackConfig:
    """Validate the namespace's keys (already JSON-decoded) into a StackConfig, or raise one
    ConfigError listing every problem. `secret_keys` are the keys set with --secret (values
    never shown, even under a misspelt name); None when unknown (a plain dict, as in tests),
    which skips the plain-text-secret check. `foreign_keys`: full keys in unknown namespaces.
    `hub_lookup` (load passes infra/hub.lookup) adds the checks of the model's own files."""
    cfg, problems, failed = _validate_keys(raw)
    if secret_keys is not None:
        problems += _plaintext_secrets(raw, secret_keys)
    problems += _foreign_key_problems(foreign_keys)
    if cfg is not None and hub_lookup is not None and not failed & {"model", "hfToken"}:
        problems += _consult_hub(cfg, hub_lookup, failed)
    if cfg is not None:
        problems += config_checks.run_checks(cfg, frozenset(failed))
    errors = [p for p in problems if not p.warning]
    if errors or cfg is None:
        raise ConfigError(config_report.format_problems(problems, secret_keys or frozenset()))
    shown = secret_keys or frozenset()
    cfg._warnings = tuple(config_report.format_warning(p, shown) for p in problems)
    return cfg


def _engine_config() -> dict[str, Any]:
    """Every key the engine passed, in any namespace: explicit runtime config (set by the
    engine or by mocks) over PULUMI_CONFIG. pulumi.Config only answers for keys we already
    know, so typo detection needs the whole set."""
    return {**runtime_config.get_config_env(), **runtime_config.CONFIG.get()}


def _namespace(merged: Mapping[str, Any]) -> dict[str, Any]:
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


def _secret_keys() -> frozenset[str]:
    """Keys of our namespace set with --secret. The engine names them in
    PULUMI_CONFIG_SECRET_KEYS; set_all_config (the mock runtime) keeps them in the SDK's own
    set, which has no public getter (is_config_secret asks one key at a time)."""
    prefix = f"{PROJECT}:"
    names = (*runtime_config.get_config_secret_keys_env(), *runtime_config._SECRET_KEYS.get())
    return frozenset(k[len(prefix) :] for k in names if k.startswith(prefix))


def load() -> StackConfig:
    """Read and validate this stack's config. Raises ConfigError with every problem at once."""
    merged = _engine_config()
    foreign = [k for k in merged if k.partition(":")[0] not in KNOWN_NAMESPACES]
    cfg = parse(_namespace(merged), _secret_keys(), foreign_keys=foreign, hub_lookup=hub.lookup)
    for warning in cfg.warnings:
        pulumi.log.warn(warning)
    return cfg
