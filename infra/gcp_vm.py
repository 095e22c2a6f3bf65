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
from infra.serving_wait import ServingWait
from infra.vm_runtime import (
    WATCHDOG_SLACK_S,
    VmRuntime,
    base_name,
    declare_vm_runtime,
    stack_labels,
)

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
    """Provider, APIs, the shared VM runtime (infra/vm_runtime.py: service account, secrets,
    TLS, the runtime as metadata), the firewall rules, and either the VM itself with a static
    IP and a wait until it serves, or, in group mode, the group."""

    endpoint: pulumi.Output[str]
    ip: pulumi.Output[str]
    instance_name: pulumi.Output[str]
    ca_cert_pem: pulumi.Output[str] | None = None
    # Group mode, once `pulumi up` waited: the replica that served first through the balancer.
    serving_replica: pulumi.Output[str] | None = None

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
        tag = names.slug(base, "vllm")
        declare_firewall(name, g, tag, after_apis)
        self.model = cfg.serving_for(g.shape.gpus).served_model_name
        self.replicas = g.replicas
        # The endpoint's static IP comes before the runtime: with TLS the server certificate
        # names it. In group mode it is the balancer's, which passes packets through, so TLS
        # still ends at each replica's nginx, every replica presenting that one certificate.
        address = static_address(name, "lb-ip" if g.group_mode else "ip", g, after_apis)
        tls_ip = address.address if g.tls else None
        runtime = declare_vm_runtime(name, cfg, api_key, opts=after_apis, tls_ip=tls_ip)
        self.ca_cert_pem = runtime.ca_cert_pem
        if g.group_mode:
            self._group(name, g, tag, address, runtime, after_apis)
        else:
            self._vm(name, g, tag, address, runtime, after_apis)
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
        g: GcpConfig,
        tag: str,
        address: gcp.compute.Address,
        runtime: VmRuntime,
        opts: pulumi.ResourceOptions,
    ) -> None:
        instance = self._instance(name, g, tag, address, runtime, opts)
        waited: list[pulumi.Resource] = [instance]
        if g.wait_for_serving:
            waited = [
                ServingWait(
                    f"{name}-serving",
                    project=g.project,
                    zone=g.zone,
                    instance=instance.name,
                    document=runtime.runtime_digest,
                    deadline_s=g.ready_timeout_minutes * 60 + WATCHDOG_SLACK_S,
                    opts=pulumi.ResourceOptions(parent=self, depends_on=[instance]),
                )
            ]
        estimate = pricing.gcp_vm_estimate(g.machine_type, g.shape.gpus, g.spot)
        self._set_endpoint(address.address, g, estimate, tls=g.tls, waited=waited)
        self.instance_name = instance.name

    def _instance(
        self,
        name: str,
        g: GcpConfig,
        tag: str,
        address: gcp.compute.Address,
        runtime: VmRuntime,
        opts: pulumi.ResourceOptions,
    ) -> gcp.compute.Instance:
        return gcp.compute.Instance(
            f"{name}-vm",
            name=names.slug(base_name(), "vm"),
            zone=g.zone,
            machine_type=g.machine_type,
            # No guest_accelerators: A2 machine types come with their A100s attached
            # (docs/facts/gcp.md, "GPUs come with A2 shapes"); a second declaration could only
            # contradict them.
            # The boot disk holds the image and both caches: kept across reboots.
            boot_disk=gcp.compute.InstanceBootDiskArgs(
                auto_delete=True,
                initialize_params=gcp.compute.InstanceBootDiskInitializeParamsArgs(
                    image=g.boot_image, size=g.boot_disk_size_gb, type=g.boot_disk_type
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
            # Everything the VM runs is plain metadata, which pulumi-gcp updates in place
            # (docs/facts/pulumi.md, "Instance metadata"): a change of model, arguments, limits,
            # idle or deadline settings, or keys reaches the running VM's agent, which applies it
            # without a new VM, disk, image pull or weights download. No
            # metadata_startup_script: that one replaces the VM on any change.
            metadata=runtime.metadata,
            allow_stopping_for_update=True,
            opts=pulumi.ResourceOptions.merge(
                opts,
                pulumi.ResourceOptions(
                    depends_on=runtime.depends_on,
                    # What still replaces the VM (machine type, image, disk, zone) needs the
                    # static IP and the GPU quota the old VM holds.
                    delete_before_replace=True,
                ),
            ),
        )

    def _group(
        self,
        name: str,
        g: GcpConfig,
        tag: str,
        address: gcp.compute.Address,
        runtime: VmRuntime,
        opts: pulumi.ResourceOptions,
    ) -> None:
        group = gcp_group.declare_group(
            name,
            g,
            runtime,
            address=address,
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
        waited: list[pulumi.Resource] = [group.wait] if group.wait is not None else []
        self._set_endpoint(address.address, g, estimate, tls=g.tls, waited=waited)
        self.instance_name = group.group_name
        self.serving_replica = group.wait.replica if group.wait is not None else None

    def _set_endpoint(
        self,
        ip: pulumi.Output[str],
        g: GcpConfig,
        estimate: pricing.HourlyEstimate,
        *,
        tls: bool,
        waited: list[pulumi.Resource],
    ) -> None:
        """The endpoint is an output only once the wait (if any) is over: nothing downstream
        uses it before the VM serves."""
        scheme = "https" if tls else "http"
        ready = pulumi.Output.all(*[r.urn for r in waited])
        self.ip = ip
        self.endpoint = pulumi.Output.all(ip, ready).apply(
            lambda v: f"{scheme}://{v[0]}:{serving.PUBLIC_PORT}"
        )
        self.estimated_cost = estimate.describe()
        self.estimated_usd_per_hour = estimate.usd_per_hour
        wait_seconds = g.ready_timeout_minutes * 60
        model, stack = self.model, pulumi.get_stack()
        self.smoke_test_command = self.endpoint.apply(
            lambda url: smoke_test_command(url, model, wait_seconds, stack, tls)
        )


def static_address(
    name: str, role: str, g: GcpConfig, opts: pulumi.ResourceOptions
) -> gcp.compute.Address:
    """The endpoint's static external IP: the VM's (`ip`) or the balancer's (`lb-ip`)."""
    return gcp.compute.Address(
        f"{name}-{role}",
        name=names.slug(base_name(), role),
        region=g.region,
        address_type="EXTERNAL",
        labels=stack_labels(g),
        opts=opts,
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


CA_FILE = "llm-endpoint-ca.pem"


def smoke_test_command(
    endpoint: str, model: str, wait_seconds: int, stack: str, tls: bool = True
) -> str:
    """The command README and the stack output give, run from the project directory: the key
    comes from the stack's state through the environment, never on the command line; with TLS
    the stack's CA is written to a file first and passed as --ca-file; `uv run` brings the
    project's Python and its dependencies; `--wait` is the VM's own ready deadline, so the smoke
    test does not give up on a start the VM still waits for."""
    s = shlex.quote(stack)
    ca = f"pulumi stack output ca_cert --stack {s} > {CA_FILE} && " if tls else ""
    ca_arg = f" --ca-file {CA_FILE}" if tls else ""
    key = f"pulumi stack output api_key --show-secrets --stack {s}"
    return (
        f'{ca}VLLM_API_KEY="$({key})" '
        f"uv run python -m scripts.smoke_test {shlex.quote(endpoint)}{ca_arg} "
        f"--model {shlex.quote(model)} --wait {wait_seconds}"
    )
