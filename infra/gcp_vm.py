"""A Google Cloud A100 VM serving vLLM on port 8000, behind a firewall and an allowlisting proxy;
with gcp.replicas >= 2, a group of such VMs behind one load balancer (infra/gcp_group.py)."""

from __future__ import annotations

import ipaddress
import shlex
from typing import Any

import pulumi
import pulumi_gcp as gcp

from infra import gcp_catalog, gcp_group, names, pricing, serving
from infra.config import GcpConfig, StackConfig
from infra.vm_runtime import VmRuntime, base_name, declare_vm_runtime, stack_labels

# IAM and Resource Manager serve the service account and the project-level grant; a fresh
# project may have none of these on.
_REQUIRED_APIS = (
    "compute.googleapis.com",
    "secretmanager.googleapis.com",
    "iam.googleapis.com",
    "cloudresourcemanager.googleapis.com",
)
# Firewall priorities: lower wins. The allow rules beat the deny rules, and the deny rules beat
# the default network's own rules (default-allow-ssh opens tcp:22 to 0.0.0.0/0 at 65534, and
# default-allow-internal opens every port to the VPC), so only the configured ranges get in.
ALLOW_PRIORITY = 900
_DENY_PRIORITY = 1000
_WORLD = ("0.0.0.0/0", "::/0")


class GcpVllmVm(pulumi.ComponentResource):
    """Provider, APIs, the shared VM runtime (service account, secrets, startup script), the
    firewall rules, and either the VM itself with a static IP or, in group mode, the group."""

    endpoint: pulumi.Output[str]
    ip: pulumi.Output[str]
    instance_name: pulumi.Output[str]

    def __init__(
        self,
        name: str,
        cfg: StackConfig,
        api_key: pulumi.Output[str],
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("llm-endpoint:gcp:VllmVm", name, None, opts)
        assert cfg.gcp is not None
        g: GcpConfig = cfg.gcp
        base = base_name()
        provider = gcp.Provider(
            f"{name}-provider",
            project=g.project,
            region=g.region,
            zone=g.zone,
            opts=pulumi.ResourceOptions(parent=self),
        )
        child = pulumi.ResourceOptions(parent=self, provider=provider)
        # Keep the APIs on when the stack is destroyed: other things in the project may use them.
        apis = [
            gcp.projects.Service(
                f"{name}-api-{api.split('.')[0]}",
                service=api,
                disable_on_destroy=False,
                opts=child,
            )
            for api in _REQUIRED_APIS
        ]
        after_apis = pulumi.ResourceOptions.merge(child, pulumi.ResourceOptions(depends_on=apis))
        runtime = declare_vm_runtime(name, cfg, api_key, opts=after_apis)
        tag = names.slug(base, "vllm")
        declare_firewall(name, g, tag, after_apis)
        self.model = cfg.serving_for(g.shape.gpus).served_model_name
        self.replicas = g.replicas
        if g.group_mode:
            self._group(name, cfg, runtime, tag, after_apis)
        else:
            self._vm(name, cfg, runtime, tag, after_apis)
        self.register_outputs(
            {
                "endpoint": self.endpoint,
                "ip": self.ip,
                "instance_name": self.instance_name,
                "model": self.model,
            }
        )

    def _vm(
        self,
        name: str,
        cfg: StackConfig,
        runtime: VmRuntime,
        tag: str,
        opts: pulumi.ResourceOptions,
    ) -> None:
        assert cfg.gcp is not None
        g = cfg.gcp
        base = base_name()
        address = gcp.compute.Address(
            f"{name}-ip",
            name=names.slug(base, "ip"),
            region=g.region,
            address_type="EXTERNAL",
            labels=stack_labels(g),
            opts=opts,
        )
        instance = gcp.compute.Instance(
            f"{name}-vm",
            name=names.slug(base, "vm"),
            zone=g.zone,
            machine_type=g.machine_type,
            # No guest_accelerators: A2 machine types come with their A100s attached
            # (docs/facts/gcp.md, "GPUs come with A2 shapes"), and a second declaration could only
            # contradict them.
            boot_disk=gcp.compute.InstanceBootDiskArgs(
                auto_delete=True,
                initialize_params=gcp.compute.InstanceBootDiskInitializeParamsArgs(
                    image=g.boot_image,
                    size=g.boot_disk_size_gb,
                    type=g.boot_disk_type,
                ),
            ),
            network_interfaces=[
                gcp.compute.InstanceNetworkInterfaceArgs(
                    network=g.network,
                    access_configs=[
                        gcp.compute.InstanceNetworkInterfaceAccessConfigArgs(nat_ip=address.address)
                    ],
                )
            ],
            service_account=gcp.compute.InstanceServiceAccountArgs(
                email=runtime.service_account_email, scopes=runtime.scopes
            ),
            scheduling=gcp.compute.InstanceSchedulingArgs(**scheduling(g)),
            shielded_instance_config=gcp.compute.InstanceShieldedInstanceConfigArgs(**shielded(g)),
            tags=[tag],
            labels=vm_labels(g, self.model),
            # metadata_startup_script, not metadata["startup-script"], on purpose: GCE runs the
            # script only at boot, so an in-place metadata update would leave the old model or
            # settings serving while `pulumi up` reports success. Replacing the VM guarantees the
            # running endpoint matches the stack, at the price of a fresh boot (the static IP,
            # secrets and firewall stay). docs/facts/gcp.md ("Startup script changes in
            # pulumi-gcp") notes the difference.
            metadata_startup_script=runtime.startup_script,
            metadata=runtime.metadata,
            allow_stopping_for_update=True,
            opts=pulumi.ResourceOptions.merge(
                opts,
                pulumi.ResourceOptions(
                    depends_on=runtime.depends_on,
                    # The replacement needs the static IP and the GPU quota the old VM holds.
                    delete_before_replace=True,
                ),
            ),
        )
        estimate = pricing.gcp_vm_estimate(g.machine_type, g.shape.gpus, g.spot)
        self._set_endpoint(address.address, g, estimate)
        self.instance_name = instance.name

    def _group(
        self,
        name: str,
        cfg: StackConfig,
        runtime: VmRuntime,
        tag: str,
        opts: pulumi.ResourceOptions,
    ) -> None:
        assert cfg.gcp is not None
        g = cfg.gcp
        group = gcp_group.declare_group(
            name,
            g,
            runtime,
            template=gcp_group.TemplateParts(
                tag=tag,
                labels=vm_labels(g, self.model),
                scheduling=scheduling(g),
                shielded=shielded(g),
            ),
            opts=opts,
        )
        firewall_rule(
            name,
            g,
            tag,
            ports=[str(serving.PUBLIC_PORT)],
            ranges=list(gcp_catalog.HEALTH_CHECK_RANGES),
            opts=opts,
            label="health",
            description="Google's health checkers (the load balancer's and autohealing's)",
        )
        estimate = pricing.gcp_group_estimate(g.machine_type, g.shape.gpus, g.spot, g.replicas)
        self._set_endpoint(group.ip, g, estimate)
        self.instance_name = group.group_name
        self.serving_replica = group.serving_replica

    def _set_endpoint(
        self, ip: pulumi.Output[str], g: GcpConfig, estimate: pricing.HourlyEstimate
    ) -> None:
        self.ip = ip
        self.endpoint = ip.apply(lambda v: f"http://{v}:{serving.PUBLIC_PORT}")
        self.estimated_cost = estimate.describe()
        self.estimated_usd_per_hour = estimate.usd_per_hour
        wait_seconds = g.ready_timeout_minutes * 60
        model, stack = self.model, pulumi.get_stack()
        self.smoke_test_command = ip.apply(
            lambda v: smoke_test_command(v, model, wait_seconds, stack)
        )


def vm_labels(g: GcpConfig, served_model_name: str) -> dict[str, str]:
    return {**stack_labels(g), "model": names.slug(served_model_name)}


def shielded(g: GcpConfig) -> dict[str, bool]:
    return {
        "enable_secure_boot": g.secure_boot,
        "enable_vtpm": True,
        "enable_integrity_monitoring": True,
    }


def scheduling(g: GcpConfig) -> dict[str, Any]:
    """Scheduling arguments, the same for the VM and the group's template."""
    if g.spot:
        # docs/facts/gcp.md ("Spot VMs"): SPOT needs preemptible=true and
        # automaticRestart=false; an explicit instanceTerminationAction keeps state from flapping.
        return {
            "provisioning_model": "SPOT",
            "preemptible": True,
            "automatic_restart": False,
            "on_host_maintenance": "TERMINATE",
            "instance_termination_action": g.termination_action,
        }
    # GPU VMs cannot live-migrate: with MIGRATE the API refuses the instance.
    return {
        "provisioning_model": "STANDARD",
        "preemptible": False,
        "automatic_restart": True,
        "on_host_maintenance": "TERMINATE",
    }


def declare_firewall(name: str, g: GcpConfig, tag: str, opts: pulumi.ResourceOptions) -> None:
    """tcp:8000 from allowedSourceRanges, tcp:22 as configured, and deny rules for the rest."""
    firewall_rule(
        name,
        g,
        tag,
        ports=[str(serving.PUBLIC_PORT)],
        ranges=g.allowed_source_ranges,
        opts=opts,
    )
    ssh_ranges = [*g.ssh_source_ranges]
    if g.ssh_via_iap:
        ssh_ranges.append(gcp_catalog.IAP_SSH_RANGE)
    if ssh_ranges:
        firewall_rule(name, g, tag, ports=["22"], ranges=ssh_ranges, opts=opts)
    # Below the allow rules, above the default network's own rules.
    firewall_rule(
        name,
        g,
        tag,
        ports=["22", str(serving.PUBLIC_PORT)],
        ranges=list(_WORLD),
        opts=opts,
        deny=True,
    )


def firewall_rule(
    name: str,
    g: GcpConfig,
    tag: str,
    *,
    ports: list[str],
    ranges: list[str],
    opts: pulumi.ResourceOptions,
    deny: bool = False,
    label: str = "",
    description: str = "",
) -> None:
    """Rules for tcp `ports` from `ranges` to the VMs' tag: allow rules at ALLOW_PRIORITY, deny
    rules at _DENY_PRIORITY. `label` tells apart two allow rules for the same ports."""
    verb = "deny" if deny else "allow"
    base = base_name()
    # One rule may not mix IPv4 and IPv6 source ranges, so each family gets its own.
    for family in (4, 6):
        family_ranges = [r for r in ranges if ipaddress.ip_network(r).version == family]
        if not family_ranges:
            continue
        suffix = (label + "-" if label else "") + "tcp" + "-".join(ports)
        suffix += "" if family == 4 else "-v6"
        gcp.compute.Firewall(
            f"{name}-{verb}-{suffix}",
            name=names.slug(base, verb, suffix),
            network=g.network,
            direction="INGRESS",
            priority=_DENY_PRIORITY if deny else ALLOW_PRIORITY,
            allows=None if deny else [gcp.compute.FirewallAllowArgs(protocol="tcp", ports=ports)],
            denies=[gcp.compute.FirewallDenyArgs(protocol="tcp", ports=ports)] if deny else None,
            source_ranges=family_ranges,
            target_tags=[tag],
            description=f"llm-endpoint: {verb} tcp:{','.join(ports)} to the vLLM VM from "
            + (description or ("everywhere else" if deny else "the configured ranges")),
            opts=opts,
        )


def smoke_test_command(ip: str, model: str, wait_seconds: int, stack: str) -> str:
    """The command README and the stack output give, run from the project directory: the key
    comes from the stack's state through the environment, never on the command line; `uv run`
    brings the project's Python and its dependencies; `--wait` is the VM's own ready deadline,
    so the smoke test does not give up on a boot the VM still waits for."""
    key = f"pulumi stack output api_key --show-secrets --stack {shlex.quote(stack)}"
    return (
        f'VLLM_API_KEY="$({key})" '
        f"uv run python -m scripts.smoke_test {shlex.quote(ip)} --model {shlex.quote(model)} "
        f"--wait {wait_seconds}"
    )
