"""Checks across keys (zone against machine type, disk against model, ...), run all at once.

pydantic validates each key on its own; these checks run afterwards on every key that passed,
so one run reports every problem: a check is skipped only when a key it reads is itself wrong
(that key's own problem is reported instead). Each check names the keys it reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from infra import gcp_catalog, group_plan, serving
from infra.config_report import PROJECT, Problem
from infra.runpod import inputs

if TYPE_CHECKING:
    from infra.config import GcpConfig, StackConfig

Check = Callable[["StackConfig"], Iterator[Problem]]
_CHECKS: list[tuple[tuple[str, ...], Check]] = []

WORLD_OPEN = ("0.0.0.0/0", "::/0")
DEFAULT_BOOT_IMAGE = (
    "projects/ubuntu-os-accelerator-images/global/images/family/"
    "ubuntu-accelerator-2404-amd64-with-nvidia-580"
)
# docs/facts/huggingface.md ("Gated models"): meta-llama/* models are gated (they need HF_TOKEN
# and an accepted licence).
GATED_MODEL_PREFIXES = ("meta-llama/",)


def check(*keys: str) -> Callable[[Check], Check]:
    def register(fn: Check) -> Check:
        _CHECKS.append((keys, fn))
        return fn

    return register


def _overlaps(a: str, b: str) -> bool:
    return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def run_checks(cfg: StackConfig, failed: frozenset[str]) -> list[Problem]:
    """Every registered check whose keys all passed validation, in registration order."""
    problems: list[Problem] = []
    for keys, fn in _CHECKS:
        if not any(_overlaps(k, f) for k in keys for f in failed):
            problems.extend(fn(cfg))
    return problems


@check("gcp", "runpod")
def _something_to_deploy(cfg: StackConfig) -> Iterator[Problem]:
    if cfg.gcp is None and cfg.runpod is None:
        yield Problem(
            "gcp",
            None,
            f"the stack deploys nothing. Add an `{PROJECT}:gcp` object, an `{PROJECT}:runpod` "
            "object, or both (docs/configuration.md)",
        )


@check("gcp.zone", "gcp.machineType")
def _zone_offers_the_gpu(cfg: StackConfig) -> Iterator[Problem]:
    if (g := cfg.gcp) is None:
        return
    accelerator = g.shape.accelerator
    if g.zone not in gcp_catalog.A100_ZONES[accelerator]:
        offering = ", ".join(sorted(gcp_catalog.A100_ZONES[accelerator]))
        yield Problem(
            "gcp.zone",
            g.zone,
            f"zone does not offer {accelerator} (needed by {g.machine_type}). "
            f"Use one of {offering}",
        )


@check("gcp.zone", "gcp.region", "gcp.machineType")
def _zone_in_region_and_region_offers_the_gpu(cfg: StackConfig) -> Iterator[Problem]:
    if (g := cfg.gcp) is None or g.region_setting is None:
        return
    if g.zone_setting is not None and gcp_catalog.region_of(g.zone_setting) != g.region_setting:
        yield Problem(
            "gcp.zone",
            g.zone_setting,
            f"is not in gcp.region {g.region_setting!r}. Remove gcp.zone (the region's A100 "
            "zones are used) or make the two agree",
        )
    elif not g.region_zones:
        accelerator = g.shape.accelerator
        regions = sorted({gcp_catalog.region_of(z) for z in gcp_catalog.A100_ZONES[accelerator]})
        yield Problem(
            "gcp.machineType",
            g.machine_type,
            f"no zone of gcp.region {g.region_setting!r} offers {accelerator}. Set gcp.region "
            f"to one of {', '.join(regions)}, or pick an a2 machine type with the other A100 "
            "(a2-highgpu-* have A100 40GB, a2-ultragpu-* A100 80GB)",
        )


@check("gcp.gpuCount", "gcp.machineType")
def _gpu_count_matches(cfg: StackConfig) -> Iterator[Problem]:
    g = cfg.gcp
    if g is not None and g.gpu_count is not None and g.gpu_count != g.shape.gpus:
        yield Problem(
            "gcp.gpuCount",
            g.gpu_count,
            f"{g.machine_type} comes with {g.shape.gpus} GPU(s) attached. Set gpuCount to "
            f"{g.shape.gpus}, remove it, or pick the a2 machine type with that many GPUs",
        )


@check("gcp.spotTerminationAction", "gcp.spot")
def _spot_action_needs_spot(cfg: StackConfig) -> Iterator[Problem]:
    g = cfg.gcp
    if g is not None and g.spot_termination_action is not None and not g.spot:
        yield Problem(
            "gcp.spotTerminationAction",
            g.spot_termination_action,
            "only applies to spot VMs. Remove it, or set spot: true",
        )


@check("gcp.allowedSourceRanges", "gcp.sshSourceRanges", "gcp.allowWorldOpen")
def _not_world_open(cfg: StackConfig) -> Iterator[Problem]:
    if (g := cfg.gcp) is None or g.allow_world_open:
        return
    for key, ranges in (
        ("gcp.allowedSourceRanges", g.allowed_source_ranges),
        ("gcp.sshSourceRanges", g.ssh_source_ranges),
    ):
        open_ranges = [r for r in ranges if r in WORLD_OPEN]
        if open_ranges:
            yield Problem(
                key,
                open_ranges[0],
                "opens the endpoint to the whole internet. List your own networks instead, "
                "or set allowWorldOpen: true if that is really intended",
            )


@check("gcp.bootImage", "gcp.bootImageDriverMajor")
def _driver_new_enough(cfg: StackConfig) -> Iterator[Problem]:
    if (g := cfg.gcp) is None:
        return
    yield from _driver_problems(g)


def _driver_problems(g: GcpConfig) -> Iterator[Problem]:
    driver = g.driver_major
    if driver is None:
        yield Problem(
            "gcp.bootImage",
            g.boot_image,
            "the NVIDIA driver version cannot be read from the image name. Set "
            f"bootImageDriverMajor to the image's driver major version (>= "
            f"{serving.MIN_NVIDIA_DRIVER_MAJOR}), or use {DEFAULT_BOOT_IMAGE}",
        )
    elif driver < serving.MIN_NVIDIA_DRIVER_MAJOR:
        declared = g.boot_image_driver_major is not None
        yield Problem(
            "gcp.bootImageDriverMajor" if declared else "gcp.bootImage",
            g.boot_image_driver_major if declared else g.boot_image,
            f"NVIDIA driver {driver} is too old for {serving.VLLM_IMAGE} (CUDA "
            f"{serving.MIN_CUDA_VERSION} needs {serving.MIN_NVIDIA_DRIVER_MAJOR}+). Use an "
            f"image with driver {serving.MIN_NVIDIA_DRIVER_MAJOR}+, e.g. {DEFAULT_BOOT_IMAGE}",
        )


@check("model", "hfToken")
def _gated_model_has_token(cfg: StackConfig) -> Iterator[Problem]:
    """The Hub says whether the model is gated; without its answer, known gated families."""
    facts = cfg.model_facts
    gated = facts.gated if facts is not None else cfg.model.startswith(GATED_MODEL_PREFIXES)
    if gated and cfg.hf_token is None:
        yield Problem(
            "hfToken",
            None,
            f"{cfg.model} is gated on Hugging Face: without a token the download fails "
            "after the GPU is already billing. Accept the model's licence on huggingface.co, "
            f"then `pulumi config set --secret {PROJECT}:hfToken` (it prompts for the token)",
        )


@check("model", "modelWeightsGb")
def _weights_size_known(cfg: StackConfig) -> Iterator[Problem]:
    if cfg.weights_gb is None:
        yield Problem(
            "modelWeightsGb",
            None,
            f"the size of {cfg.model}'s weights is unknown. Set modelWeightsGb to the size "
            "of its safetensors files in GB, e.g. `llm-endpoint:modelWeightsGb: 15.3`",
        )


@check("gcp.bootDiskSizeGb", "model", "modelWeightsGb")
def _boot_disk_holds_the_model(cfg: StackConfig) -> Iterator[Problem]:
    if (g := cfg.gcp) is None or (weights := cfg.weights_gb) is None:
        return
    need = serving.minimum_boot_disk_gb(weights)
    if g.boot_disk_size_gb < need:
        yield Problem(
            "gcp.bootDiskSizeGb",
            g.boot_disk_size_gb,
            f"too small for the OS, the vLLM image and {cfg.model} "
            f"(~{weights:g} GB of weights). Set it to at least {need}",
        )


@check("runpod.containerDiskGb", "runpod.volumeGb", "model", "modelWeightsGb")
def _pod_disks_hold_the_model(cfg: StackConfig) -> Iterator[Problem]:
    if (rp := cfg.runpod) is None or (weights := cfg.weights_gb) is None:
        return
    # The same rule as the provider's check (infra/runpod/inputs.py).
    for which, why in inputs.disk_problems(rp.container_disk_gb, rp.volume_gb, weights):
        if which == "disk":
            yield Problem("runpod.containerDiskGb", rp.container_disk_gb, f"{cfg.model}: {why}")
        else:
            yield Problem("runpod.volumeGb", rp.volume_gb, f"{cfg.model}: {why}")


# --- group mode (gcp.replicas >= 2, docs/scale-out.md) ----------------------------------------


@check("gcp.replicas", "gcp.region", "gcp.zone", "gcp.machineType")
def _replicas_in_range(cfg: StackConfig) -> Iterator[Problem]:
    if (g := cfg.gcp) is None:
        return
    if g.replicas < 1:
        yield Problem(
            "gcp.replicas",
            g.replicas,
            "a stack serves at least one replica. Set 1 (one VM) or more (a group behind a "
            "load balancer); to stop serving, run `pulumi destroy` or remove llm-endpoint:gcp",
        )
    elif g.replicas > gcp_catalog.MAX_REPLICAS:
        yield Problem(
            "gcp.replicas",
            g.replicas,
            f"more than this program declares ({gcp_catalog.MAX_REPLICAS}; "
            f"{len(g.region_zones)} zone(s) of {g.region} offer {g.shape.accelerator}). Use at "
            f"most {gcp_catalog.MAX_REPLICAS}, or a bigger machine type per replica "
            "(docs/design-gke.md for more)",
        )


@check("gcp.replicas", "gcp.maxSurge", "gcp.idleMinReplicas")
def _group_keys_need_a_group(cfg: StackConfig) -> Iterator[Problem]:
    if (g := cfg.gcp) is None or g.group_mode:
        return
    for key, value in (("gcp.maxSurge", g.max_surge), ("gcp.idleMinReplicas", g.idle_min_replicas)):
        if value:
            yield Problem(key, value, "only applies to a group. Remove it, or set replicas: 2+")


@check("gcp.replicas", "gcp.zone", "gcp.region", "gcp.machineType")
def _group_zone_not_pinned(cfg: StackConfig) -> Iterator[Problem]:
    if (g := cfg.gcp) is None or not g.group_mode or g.zone_setting is None:
        return
    yield Problem(
        "gcp.zone",
        g.zone_setting,
        f"pins every replica to one zone, but replicas: {g.replicas} spread over the region's "
        f"zones. Remove gcp.zone and set gcp.region: {g.region} (its A100 zones: "
        f"{', '.join(g.region_zones)})",
    )


@check("gcp.replicas", "gcp.readyTimeoutMinutes", "gcp.stopOnFailure", "gcp.idleMinReplicas")
def _group_stops_fit_the_group(cfg: StackConfig) -> Iterator[Problem]:
    if (g := cfg.gcp) is None or not g.group_mode:
        return
    limit = group_plan.MAX_GROUP_READY_TIMEOUT_MINUTES
    if g.ready_timeout_minutes > limit:
        yield Problem(
            "gcp.readyTimeoutMinutes",
            g.ready_timeout_minutes,
            "too long for a group: autohealing must wait out a replica's cold start and Google "
            f"allows it at most {group_plan.MAX_INITIAL_DELAY_SECONDS} s. Set it to at most "
            f"{limit}",
        )
    if not g.stop_on_failure:
        yield Problem(
            "gcp.stopOnFailure",
            g.stop_on_failure,
            "a group's autohealing would recreate a broken replica that stays up, boot after "
            "boot, each billing GPU time. Keep it true (to debug a VM, use replicas: 1)",
        )
    if g.idle_min_replicas >= g.replicas:
        yield Problem(
            "gcp.idleMinReplicas",
            g.idle_min_replicas,
            f"must be below replicas ({g.replicas}): it is how many replicas idle ones leave "
            "serving. Lower it (0 lets an idle group empty itself)",
        )


@check("gcp.replicas", "gcp.gpuQuota", "gcp.maxSurge", "gcp.region", "gcp.machineType")
def _group_within_quota(cfg: StackConfig) -> Iterator[Problem]:
    g = cfg.gcp
    if g is None or not g.group_mode or g.gpu_quota is None or not g.region_zones:
        return
    if g.replicas > gcp_catalog.MAX_REPLICAS:
        return
    plan = g.plan_group()
    if plan.gpus_needed > g.gpu_quota:
        quotas = ", ".join(gcp_catalog.quota_names(g.shape.accelerator, g.spot))
        surge = f" + a surge of {plan.max_surge}" if plan.max_surge else ""
        yield Problem(
            "gcp.replicas",
            g.replicas,
            f"needs {plan.gpus_needed} GPUs in {g.region} ({g.replicas} x {g.shape.gpus}{surge}) "
            f"but gcp.gpuQuota is {g.gpu_quota}. Lower replicas or maxSurge, or raise the "
            f"quotas {quotas} (IAM & Admin > Quotas) and set gpuQuota to match",
        )
