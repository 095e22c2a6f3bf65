"""Estimated hourly prices. An estimate, not a quote: spot prices move up to daily."""

from __future__ import annotations

from dataclasses import dataclass

PRICE_SOURCE = (
    "Google Cloud Billing catalog, us-central1, whole VM, as of 2025-03 "
    '(docs/facts/gcp.md, "Prices")'
)

# (on demand, spot) USD per hour for the one-GPU shapes; larger shapes scale with GPU count.
_PER_GPU_USD_HOUR: dict[str, tuple[float, float]] = {
    "a2-highgpu": (3.673, 1.293),
    "a2-megagpu": (3.673, 1.293),
    "a2-ultragpu": (5.069, 2.027),
}


@dataclass(frozen=True)
class HourlyEstimate:
    usd_per_hour: float
    basis: str

    def describe(self) -> str:
        return f"~${self.usd_per_hour:.2f}/h (estimate; {self.basis})"


def gcp_vm_estimate(machine_type: str, gpus: int, spot: bool) -> HourlyEstimate:
    family = machine_type.rsplit("-", 1)[0]
    on_demand, spot_price = _PER_GPU_USD_HOUR[family]
    per_gpu = spot_price if spot else on_demand
    basis = PRICE_SOURCE + (", spot" if spot else ", on demand")
    if gpus > 1:
        basis += f", scaled from the 1-GPU shape x{gpus}"
    return HourlyEstimate(round(per_gpu * gpus, 3), basis)


def gcp_group_estimate(machine_type: str, gpus: int, spot: bool, replicas: int) -> HourlyEstimate:
    """The whole group at its target size: `replicas` VMs. The load balancer's forwarding rule
    and the disks are not included (small next to the GPUs)."""
    one = gcp_vm_estimate(machine_type, gpus, spot)
    basis = f"{replicas} replicas x ~${one.usd_per_hour:.2f}/h; {one.basis}"
    basis += "; forwarding rule not included"
    return HourlyEstimate(round(one.usd_per_hour * replicas, 3), basis)
