"""The Pulumi program: validate the config, declare what it asks for, export the outputs."""

from __future__ import annotations

from typing import Any

import pulumi

from infra import config
from infra.api_key import stack_api_key
from infra.gcp_vm import GcpVllmVm
from infra.runpod_pods import RunpodPods


def run() -> dict[str, Any]:
    """Declare the stack's resources and export its outputs; returns them for tests."""
    cfg = config.load()
    api_key = stack_api_key(cfg)
    outputs: dict[str, Any] = {
        "model": cfg.serving_for(1).served_model_name,
        "api_key": api_key,
    }

    if cfg.gcp is not None:
        vm = GcpVllmVm("gcp", cfg, api_key)
        outputs |= {
            "endpoint": vm.endpoint,
            "ip": vm.ip,
            # In group mode: the load balancer's address, and the group's name.
            ("instance_group" if cfg.gcp.group_mode else "instance_name"): vm.instance_name,
            "smoke_test_command": vm.smoke_test_command,
            "estimated_cost_per_hour": vm.estimated_cost,
            "estimated_usd_per_hour": vm.estimated_usd_per_hour,
        }
        if cfg.gcp.group_mode:
            outputs["replicas"] = vm.replicas
        if vm.serving_replica is not None:
            outputs["serving_replica"] = vm.serving_replica
        if vm.ca_cert_pem is not None:
            outputs["ca_cert"] = vm.ca_cert_pem  # public: clients pin it (--ca-file)

    # RunPod pods (issue 5)
    if cfg.runpod is not None:
        pods = RunpodPods("runpod", cfg, api_key)
        outputs |= {
            "runpod_endpoints": pods.endpoints,
            "runpod_pod_ids": pods.pod_ids,
            "runpod_cost_per_hour": pods.cost_per_hour,
        }

    for key, value in outputs.items():
        pulumi.export(key, value)
    return outputs
