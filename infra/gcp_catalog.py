"""Google Cloud A100 machine shapes and the zones that offer them.

Facts: docs/facts/gcp.md ("A100 machine types", "Zones offering A100").
"""

from __future__ import annotations

from dataclasses import dataclass

A100_40GB = "nvidia-tesla-a100"
A100_80GB = "nvidia-a100-80gb"
# Memory of one GPU, GiB (the 40GB card has 40960 MiB, the 80GB card 81920 MiB).
GPU_MEMORY_GIB: dict[str, float] = {A100_40GB: 40.0, A100_80GB: 80.0}


@dataclass(frozen=True)
class MachineShape:
    gpus: int
    accelerator: str
    vcpus: int
    memory_gb: int


# A2 machine types come with their GPUs attached ("For the A and G series accelerator-optimized
# machine types, the specified GPU model automatically attaches",
# cloud.google.com/compute/docs/gpus), so the instance declares no guest accelerators.
A100_MACHINE_TYPES: dict[str, MachineShape] = {
    "a2-highgpu-1g": MachineShape(1, A100_40GB, 12, 85),
    "a2-highgpu-2g": MachineShape(2, A100_40GB, 24, 170),
    "a2-highgpu-4g": MachineShape(4, A100_40GB, 48, 340),
    "a2-highgpu-8g": MachineShape(8, A100_40GB, 96, 680),
    "a2-megagpu-16g": MachineShape(16, A100_40GB, 96, 1360),
    "a2-ultragpu-1g": MachineShape(1, A100_80GB, 12, 170),
    "a2-ultragpu-2g": MachineShape(2, A100_80GB, 24, 340),
    "a2-ultragpu-4g": MachineShape(4, A100_80GB, 48, 680),
    "a2-ultragpu-8g": MachineShape(8, A100_80GB, 96, 1360),
}

# Zones seen offering each A100 type (docs/facts/gcp.md, "Zones offering A100": a third-party
# catalog built from the GCP API; the official table is
# cloud.google.com/compute/docs/gpus/gpu-regions-zones).
# fmt: off
A100_ZONES: dict[str, frozenset[str]] = {
    A100_40GB: frozenset(
        {
            "us-central1-a",
            "us-central1-b",
            "us-central1-c",
            "us-central1-f",
            "us-east1-b",
            "us-west1-b",
            "us-west3-b",
            "us-west4-b",
            "europe-west4-a",
            "europe-west4-b",
            "me-west1-a",
            "me-west1-c",
            "asia-northeast1-a",
            "asia-northeast1-c",
            "asia-northeast3-a",
            "asia-northeast3-b",
            "asia-southeast1-a",
            "asia-southeast1-b",
            "asia-southeast1-c",
        }
    ),
    A100_80GB: frozenset(
        {
            "us-central1-a",
            "us-central1-c",
            "us-east4-c",
            "us-east5-a",
            "us-east5-b",
            "europe-west4-a",
            "asia-southeast1-c",
        }
    ),
}
# fmt: on

# Google's IAP TCP-forwarding range: SSH from here only means "through `gcloud compute ssh
# --tunnel-through-iap`", authorised by IAM rather than by network position.
IAP_SSH_RANGE = "35.235.240.0/20"


def region_of(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


# The most replicas a stack may ask for: a guard against a typo (16 A100 VMs bill ~$60/h on
# demand), not a Google limit. More needs the step after this one (docs/design-gke.md).
MAX_REPLICAS = 16

# Quotas a group of A100 VMs draws on, as named on the console's Quotas page and in
# `quotaExceeded` errors (docs/facts/gcp.md, "Quotas"): the regional GPU quota of the
# accelerator (spot VMs draw on the PREEMPTIBLE_ one where the project has it, else on the
# regular one), the global GPUS_ALL_REGIONS, and the regional A2 CPU quota.
_GPU_QUOTA = {A100_40GB: "NVIDIA_A100_GPUS", A100_80GB: "NVIDIA_A100_80GB_GPUS"}


def quota_names(accelerator: str, spot: bool) -> list[str]:
    gpu = _GPU_QUOTA[accelerator]
    names = [f"PREEMPTIBLE_{gpu}", gpu] if spot else [gpu]
    return [*names, "GPUS_ALL_REGIONS", "A2_CPUS"]


# Where Google's health checks come from (docs/facts/gcp.md, "Health checks"): the ranges for
# every health check (35.191.0.0/16, 130.211.0.0/22) plus the ones a backend service-based
# external passthrough Network Load Balancer's checks use (209.85.152.0/22, 209.85.204.0/22).
HEALTH_CHECK_RANGES = ("35.191.0.0/16", "130.211.0.0/22", "209.85.152.0/22", "209.85.204.0/22")
