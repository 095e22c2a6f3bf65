"""What every llm-endpoint VM runs and may do: ONE declaration shared by the single VM
(infra/gcp_vm.py) and the instance template of a group (infra/gcp_group.py), so both carry the
same runtime, secrets and service account.

Declares the VM's service account (logs, its own secrets, and in group mode leaving its group),
the Secret Manager secrets, and renders the startup script (infra/startup_script.py), which
holds only secret *names*.
"""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from infra import group_runtime, names
from infra.config import GcpConfig, StackConfig
from infra.startup_script import StartupParams, render_startup_script

# Secret Manager from the VM needs the cloud-platform scope (docs/facts/gcp.md, "Secret Manager
# from the VM"); what the VM may actually do is bounded by its service account's IAM roles, not
# by the scope.
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"


@dataclass(frozen=True)
class VmRuntime:
    """`metadata`: the instance metadata besides the startup script. `startup_script`: the
    script, for `metadata_startup_script` (replace on change, see infra/gcp_vm.py)."""

    metadata: pulumi.Output[dict[str, str]]
    startup_script: str
    service_account_email: pulumi.Output[str]
    scopes: list[str]
    depends_on: list[pulumi.Resource]
    ca_cert_pem: pulumi.Output[str] | None


def base_name() -> str:
    return names.slug("llm", pulumi.get_stack(), max_len=40)


def stack_labels(g: GcpConfig) -> dict[str, str]:
    return {"app": "llm-endpoint", "stack": names.slug(pulumi.get_stack()), **g.labels}


def declare_vm_runtime(
    name: str,
    cfg: StackConfig,
    api_key: pulumi.Output[str],
    *,
    opts: pulumi.ResourceOptions,
    tls_ip: pulumi.Input[str] | None = None,
) -> VmRuntime:
    """Service account, its grants, the secrets and the startup script. `opts` carries the
    parent, provider and the dependency on the project's APIs. `tls_ip` is accepted for the
    runtime's TLS (the VM runtime issue); plain HTTP on port 8000 until then."""
    del tls_ip
    assert cfg.gcp is not None
    g = cfg.gcp
    base = base_name()
    account = gcp.serviceaccount.Account(
        f"{name}-sa",
        account_id=names.slug(base, "vm", max_len=30),
        display_name=f"llm-endpoint VM ({pulumi.get_stack()})",
        description="Runs the vLLM VM: reads its own secrets and writes logs, nothing else.",
        opts=opts,
    )
    member = account.email.apply(lambda email: f"serviceAccount:{email}")
    grants: list[pulumi.Resource] = [
        gcp.projects.IAMMember(
            f"{name}-log-writer",
            project=g.project,
            role="roles/logging.logWriter",
            member=member,
            opts=opts,
        )
    ]
    secret_ids = _declare_secrets(name, cfg, api_key, member, grants, opts)
    if g.group_mode:
        grants.extend(group_runtime.declare_leave_grant(name, g, member, opts))
    script = render_startup_script(
        StartupParams(
            spec=cfg.serving_for(g.shape.gpus),
            gcp_project=g.project,
            api_key_secret=secret_ids["api-key"],
            hf_token_secret=secret_ids.get("hf-token"),
            stop_on_failure=g.stop_on_failure,
            ready_timeout_minutes=g.ready_timeout_minutes,
            idle_stop_minutes=g.idle_stop_minutes,
            group=group_runtime.group_params(g) if g.group_mode else None,
        )
    )
    return VmRuntime(
        metadata=pulumi.Output.from_input({"enable-oslogin": "TRUE"}),
        startup_script=script,
        service_account_email=account.email,
        scopes=[CLOUD_PLATFORM_SCOPE],
        depends_on=grants,
        ca_cert_pem=None,
    )


def _declare_secrets(
    name: str,
    cfg: StackConfig,
    api_key: pulumi.Output[str],
    member: pulumi.Output[str],
    grants: list[pulumi.Resource],
    opts: pulumi.ResourceOptions,
) -> dict[str, str]:
    """One Secret Manager secret per value, readable by the VM's account only; returns the
    secret ids by kind. Appends the versions and accessor grants to `grants`."""
    assert cfg.gcp is not None
    secret_values: dict[str, pulumi.Output[str]] = {"api-key": api_key}
    if cfg.hf_token is not None:
        secret_values["hf-token"] = pulumi.Output.secret(cfg.hf_token)
    # The versions and grants need no API dependency of their own: they follow their secret.
    child = pulumi.ResourceOptions(parent=opts.parent, provider=opts.provider)
    secret_ids: dict[str, str] = {}
    for kind, value in secret_values.items():
        secret_id = names.slug(base_name(), kind)
        secret_ids[kind] = secret_id
        secret = gcp.secretmanager.Secret(
            f"{name}-{kind}",
            secret_id=secret_id,
            replication={"auto": {}},
            labels=stack_labels(cfg.gcp),
            opts=opts,
        )
        # pulumi-gcp marks secret_data secret; wrapping again keeps it so if that changes.
        grants.append(
            gcp.secretmanager.SecretVersion(
                f"{name}-{kind}-version",
                secret=secret.id,
                secret_data=pulumi.Output.secret(value),  # type: ignore[arg-type]
                opts=child,
            )
        )
        grants.append(
            gcp.secretmanager.SecretIamMember(
                f"{name}-{kind}-accessor",
                project=cfg.gcp.project,
                secret_id=secret.secret_id,
                role="roles/secretmanager.secretAccessor",
                member=member,
                opts=child,
            )
        )
    return secret_ids
