"""N replicas across zones behind one Google Cloud load balancer (gcp.replicas >= 2).

Google's own machinery, nothing of ours in the data path (docs/scale-out.md): an instance
template carrying the same runtime as the single VM (infra/vm_runtime.py), a regional managed
instance group over the region's A100 zones (infra/group_plan.py picks them), health checks on
the proxy's unauthenticated /health, autohealing, and a backend service-based external
passthrough Network Load Balancer with one static IP.

Why a passthrough balancer: it forwards packets with the client's address intact
(docs/facts/gcp.md, "Load balancers"), so the VMs' firewall still decides who gets in, exactly
as for one VM (gcp.allowedSourceRanges), and TLS still ends at each VM's nginx. A proxy
balancer would see only its own addresses at the VMs and need a Cloud Armor policy instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_gcp as gcp

from infra import gcp_catalog, group_plan, group_runtime, names, serving
from infra.balancer_wait import BalancerWait
from infra.config import GcpConfig
from infra.vm_runtime import VmRuntime, base_name, stack_labels


@dataclass(frozen=True)
class CheckTiming:
    interval: int
    timeout: int
    healthy: int
    unhealthy: int


# The balancer's view of a replica: probe often, take it out after two misses (10 s).
LB_CHECK = CheckTiming(interval=5, timeout=5, healthy=2, unhealthy=2)
# Autohealing's view: recreating a VM costs a cold start, so only after a minute of misses.
HEAL_CHECK = CheckTiming(interval=10, timeout=5, healthy=2, unhealthy=6)
# A backend service's timeoutSec defaults to 30 s, too short for a long generation; as long as
# the proxy's own limit on /v1/* (startup/nginx.conf.j2: proxy_read_timeout 3600s).
BACKEND_TIMEOUT_SECONDS = 3600
# When a roll or a resize removes a replica, its open connections get this long to finish.
DRAINING_SECONDS = 300
# BALANCED: VMs go where capacity is while staying as spread as possible; Google recommends it
# for serving on GPUs. It needs proactive redistribution off (docs/facts/gcp.md).
TARGET_SHAPE = "BALANCED"


@dataclass(frozen=True)
class TemplateParts:
    """What the template shares with the single VM (infra/gcp_vm.py builds them)."""

    tag: str
    labels: dict[str, str]
    scheduling: dict[str, Any]
    shielded: dict[str, bool]


@dataclass(frozen=True)
class Group:
    group_name: pulumi.Output[str]
    plan: group_plan.GroupPlan
    # None with gcp.waitForServing: false.
    wait: BalancerWait | None


def declare_group(
    name: str,
    g: GcpConfig,
    runtime: VmRuntime,
    *,
    address: gcp.compute.Address,
    template: TemplateParts,
    opts: pulumi.ResourceOptions,
) -> Group:
    """`address` is the balancer's static IP (made first: with TLS the replicas' certificate
    names it)."""
    plan = g.plan_group()
    _warn_about_quota(g, plan)
    tmpl = _template(name, g, runtime, template, opts)
    heal = _health_check(name, "heal", g, HEAL_CHECK, opts)
    manager = _group(name, g, plan, tmpl, heal, opts)
    lb_check = _health_check(name, "lb", g, LB_CHECK, opts)
    backend = gcp.compute.RegionBackendService(
        f"{name}-backend",
        name=names.slug(base_name(), "backend"),
        region=g.region,
        load_balancing_scheme="EXTERNAL",
        protocol="TCP",
        health_checks=lb_check.id,
        backends=[
            gcp.compute.RegionBackendServiceBackendArgs(
                group=manager.instance_group, balancing_mode="CONNECTION"
            )
        ],
        timeout_sec=BACKEND_TIMEOUT_SECONDS,
        connection_draining_timeout_sec=DRAINING_SECONDS,
        opts=opts,
    )
    rule = gcp.compute.ForwardingRule(
        f"{name}-lb",
        name=names.slug(base_name(), "lb"),
        region=g.region,
        ip_address=address.address,
        ip_protocol="TCP",
        port_range=str(serving.PUBLIC_PORT),
        load_balancing_scheme="EXTERNAL",
        backend_service=backend.id,
        labels=stack_labels(g),
        opts=opts,
    )
    # `pulumi up` waits for a replica of this template to serve through the balancer. A dynamic
    # resource: no gcp provider, only the parent.
    wait = (
        BalancerWait(
            f"{name}-serving",
            project=g.project,
            region=g.region,
            group=manager.name,
            backend=backend.name,
            template=tmpl.self_link_unique,
            deadline_s=plan.initial_delay_seconds,
            opts=pulumi.ResourceOptions(parent=opts.parent, depends_on=[manager, backend, rule]),
        )
        if g.wait_for_serving
        else None
    )
    return Group(group_name=manager.name, plan=plan, wait=wait)


def _template(
    name: str,
    g: GcpConfig,
    runtime: VmRuntime,
    parts: TemplateParts,
    opts: pulumi.ResourceOptions,
) -> gcp.compute.InstanceTemplate:
    """The single VM's settings as a template. Templates cannot change: any change makes a new
    one (hence a name prefix) and the group rolls to it (docs/scale-out.md, "Rolls")."""
    return gcp.compute.InstanceTemplate(
        f"{name}-template",
        # GCE names are at most 63 characters; the provider appends 26 to a prefix of at most 37.
        name_prefix=names.slug(base_name(), "replica", max_len=36) + "-",
        machine_type=g.machine_type,
        disks=[
            gcp.compute.InstanceTemplateDiskArgs(
                boot=True,
                auto_delete=True,
                source_image=g.boot_image,
                disk_size_gb=g.boot_disk_size_gb,
                disk_type=g.boot_disk_type,
            )
        ],
        # An ephemeral external address per replica, for the image and weight downloads (the
        # single VM uses its static one); the firewall covers it like the balancer's.
        network_interfaces=[
            gcp.compute.InstanceTemplateNetworkInterfaceArgs(
                network=g.network,
                access_configs=[gcp.compute.InstanceTemplateNetworkInterfaceAccessConfigArgs()],
            )
        ],
        service_account=gcp.compute.InstanceTemplateServiceAccountArgs(
            email=runtime.service_account_email, scopes=runtime.scopes
        ),
        scheduling=gcp.compute.InstanceTemplateSchedulingArgs(**parts.scheduling),
        shielded_instance_config=gcp.compute.InstanceTemplateShieldedInstanceConfigArgs(
            **parts.shielded
        ),
        tags=[parts.tag],
        labels=parts.labels,
        metadata=runtime.metadata,
        opts=pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(depends_on=runtime.depends_on)
        ),
    )


def _health_check(
    name: str, role: str, g: GcpConfig, timing: CheckTiming, opts: pulumi.ResourceOptions
) -> gcp.compute.RegionHealthCheck:
    """GET /health on the proxy's port, which the proxy answers without a key; over TLS when
    the replicas serve it (Google's checkers do not verify the certificate, docs/facts/gcp.md,
    "Health checks", so the stack's own CA needs no trust from them)."""
    port, path = serving.PUBLIC_PORT, "/health"
    return gcp.compute.RegionHealthCheck(
        f"{name}-{role}-check",
        name=names.slug(base_name(), role, "check"),
        region=g.region,
        https_health_check=(
            gcp.compute.RegionHealthCheckHttpsHealthCheckArgs(port=port, request_path=path)
            if g.tls
            else None
        ),
        http_health_check=(
            None
            if g.tls
            else gcp.compute.RegionHealthCheckHttpHealthCheckArgs(port=port, request_path=path)
        ),
        check_interval_sec=timing.interval,
        timeout_sec=timing.timeout,
        healthy_threshold=timing.healthy,
        unhealthy_threshold=timing.unhealthy,
        opts=opts,
    )


def _group(
    name: str,
    g: GcpConfig,
    plan: group_plan.GroupPlan,
    template: gcp.compute.InstanceTemplate,
    heal: gcp.compute.RegionHealthCheck,
    opts: pulumi.ResourceOptions,
) -> gcp.compute.RegionInstanceGroupManager:
    return gcp.compute.RegionInstanceGroupManager(
        f"{name}-group",
        name=group_runtime.group_name(),
        base_instance_name=group_runtime.base_instance_name(),
        region=g.region,
        distribution_policy_zones=list(plan.zones),
        distribution_policy_target_shape=TARGET_SHAPE,
        target_size=g.replicas,
        versions=[
            gcp.compute.RegionInstanceGroupManagerVersionArgs(
                name="primary", instance_template=template.self_link_unique
            )
        ],
        auto_healing_policies=gcp.compute.RegionInstanceGroupManagerAutoHealingPoliciesArgs(
            health_check=heal.id, initial_delay_sec=plan.initial_delay_seconds
        ),
        update_policy=gcp.compute.RegionInstanceGroupManagerUpdatePolicyArgs(
            type="PROACTIVE",
            minimal_action="REPLACE",
            most_disruptive_allowed_action="REPLACE",
            max_surge_fixed=plan.max_surge,
            max_unavailable_fixed=plan.max_unavailable,
            replacement_method="SUBSTITUTE",
            instance_redistribution_type="NONE",
        ),
        # Repair (recreate) failed VMs, a preempted spot VM included, with the current template.
        instance_lifecycle_policy=gcp.compute.RegionInstanceGroupManagerInstanceLifecyclePolicyArgs(
            default_action_on_failure="REPAIR", force_update_on_repair="YES"
        ),
        wait_for_instances=False,
        opts=opts,
    )


def quota_warning(g: GcpConfig, plan: group_plan.GroupPlan) -> str | None:
    """Shown at preview when gcp.gpuQuota does not say the quota is there."""
    if g.gpu_quota is not None:
        return None
    quotas = ", ".join(gcp_catalog.quota_names(g.shape.accelerator, g.spot))
    return (
        f"llm-endpoint:gcp.replicas = {g.replicas} needs {plan.gpus_needed} "
        f"{g.shape.accelerator} GPUs in {g.region} at once. Check the quotas {quotas} "
        "(IAM & Admin > Quotas): without them the group keeps retrying and serves fewer "
        "replicas. Set gcp.gpuQuota to your regional GPU quota to have preview check it."
    )


def zone_warning(g: GcpConfig, plan: group_plan.GroupPlan) -> str | None:
    """Shown at preview when every replica lands in one zone: the group still repairs and
    brings spot VMs back, but a zone without capacity or an outage takes all of them."""
    if len(plan.zones) > 1:
        return None
    more = len(g.region_zones) > 1
    fix = (
        "Set replicas: 3+ (zones = replicas - 1 without surge) or maxSurge: 2+ to spread them"
        if more
        else f"Only {plan.zones[0]} of {g.region} offers {g.shape.accelerator}: pick another "
        "region to spread them"
    )
    return (
        f"llm-endpoint:gcp.replicas = {g.replicas}: every replica runs in {plan.zones[0]}, so a "
        f"zone without capacity or an outage takes them all. {fix} (docs/scale-out.md, 'Rolls')."
    )


def _warn_about_quota(g: GcpConfig, plan: group_plan.GroupPlan) -> None:
    for message in (quota_warning(g, plan), zone_warning(g, plan)):
        if message:
            pulumi.log.warn(message)
