"""How a replica in a group stops without fighting the group (docs/scale-out.md, "Rules").

A managed instance group recreates a VM that stops for a reason the group did not start (it
"repairs" it: docs/facts/gcp.md, "Managed instance groups"), so a replica that powered itself
off would come back, boot, fail or idle again, and bill in a loop. In a group, a replica that
must stop therefore leaves the group instead: `llm-endpoint-leave-group` (rendered from
startup/leave_group.sh.j2) asks the Compute API to delete this VM from its group, which also
lowers the group's target size, so nothing recreates it. Powering off is its fallback only.

- `failure` (startup failed, or still not ready when the watchdog fires): always leaves.
- `idle` (gcp.idleStopMinutes): leaves only if at least gcp.idleMinReplicas settled replicas
  of the group (listManagedInstances: nothing scheduled, running) sort before it by name. The
  lowest-named replicas never leave on idle, so replicas that go idle at the same moment, each
  deciding alone on its own read of the list, cannot take the group below the minimum: no lock
  is needed (docs/scale-out.md, "Rules: self-stop and the group", has what it does not cover).

The VM's service account gets a custom role with just the permissions that takes, on this
group and its instances only (an IAM condition on the resource name).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jinja2
import pulumi
import pulumi_gcp as gcp

from infra import names
from infra.config import GcpConfig

LEAVE_GROUP_PATH = "/usr/local/sbin/llm-endpoint-leave-group"
# What listManagedInstances and deleteInstances take (docs/facts/gcp.md, "Listing a group's
# instances", "Managed instance groups"): the group's get (the list) and update (the delete),
# and deleting the instance itself.
LEAVE_PERMISSIONS = (
    "compute.instanceGroupManagers.get",
    "compute.instanceGroupManagers.update",
    "compute.instances.delete",
)
# How often a failing replica asks the API before it falls back to powering off. An idle one
# asks once, right after reading the list its decision rests on.
LEAVE_ATTEMPTS = 5
LEAVE_RETRY_SECONDS = 30

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).resolve().parent.parent / "startup"),
    undefined=jinja2.StrictUndefined,
    keep_trailing_newline=True,
    autoescape=False,  # shell text: values are validated GCE names and integers
)


@dataclass(frozen=True)
class GroupParams:
    project: str
    region: str
    group: str
    base_instance_name: str
    idle_min_replicas: int


def group_name() -> str:
    return names.slug("llm", pulumi.get_stack(), "group", max_len=50)


def base_instance_name() -> str:
    # Instances are named <base>-<4 random characters> by the group.
    return names.slug("llm", pulumi.get_stack(), "replica", max_len=50)


def group_params(g: GcpConfig) -> GroupParams:
    return GroupParams(
        project=g.project,
        region=g.region,
        group=group_name(),
        base_instance_name=base_instance_name(),
        idle_min_replicas=g.idle_min_replicas,
    )


def render_leave_group(params: GroupParams) -> str:
    """The `llm-endpoint-leave-group <failure|idle> <reason>` script (no secret in it)."""
    for value in (params.project, params.region, params.group, params.base_instance_name):
        if value != names.slug(value):
            raise ValueError(f"{value!r} is not a GCE name")
    return _env.get_template("leave_group.sh.j2").render(
        p=params, attempts=LEAVE_ATTEMPTS, retry_seconds=LEAVE_RETRY_SECONDS
    )


def leave_condition(params: GroupParams) -> str:
    """CEL: the group itself, or an instance named after the group's base name."""
    group = f"projects/{params.project}/regions/{params.region}/instanceGroupManagers/"
    instances = f"projects/{params.project}/zones/{params.region}-"
    return (
        f'resource.name == "{group}{params.group}" || '
        f'(resource.name.startsWith("{instances}") && '
        f'resource.name.extract("/instances/{{name}}").startsWith("{params.base_instance_name}-"))'
    )


def declare_leave_grant(
    name: str, g: GcpConfig, member: pulumi.Output[str], opts: pulumi.ResourceOptions
) -> list[pulumi.Resource]:
    """The custom role and its conditional grant to the VM's service account."""
    params = group_params(g)
    role = gcp.projects.IAMCustomRole(
        f"{name}-leave-group-role",
        project=g.project,
        role_id=names.slug(params.group, "leave").replace("-", "_"),
        title=f"llm-endpoint: leave group {params.group}",
        description="Lets a replica delete itself from its managed instance group.",
        permissions=list(LEAVE_PERMISSIONS),
        opts=opts,
    )
    grant = gcp.projects.IAMMember(
        f"{name}-leave-group",
        project=g.project,
        role=role.name,
        member=member,
        condition=gcp.projects.IAMMemberConditionArgs(
            title="own group only",
            description=f"Only {params.group} and its instances",
            expression=leave_condition(params),
        ),
        opts=opts,
    )
    return [role, grant]
