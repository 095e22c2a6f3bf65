"""What the VM runs, declared as data: the interface the single VM and the replicas share.

`declare_vm_runtime` declares the service account, its grants, the secrets (API key, HF token,
TLS server key) and, with TLS, the stack's CA and server certificate, and returns the whole
instance metadata: `user-data` (host setup, infra/host_setup.py), `llm-endpoint-runtime` (the
runtime document, vm_agent/runtime_doc.py), `llm-endpoint-agent` (the agent's code,
infra/agent_bundle.py), OS Login and guest attributes on. Every value is plain metadata, which
pulumi-gcp updates in place (docs/facts/pulumi.md, "Instance metadata"); the agent on the VM
applies a change within its watch timeout. No value in it is secret: secrets are named by
their Secret Manager version, so on a single VM a rotation is a new name in the document. In a
group the document goes into an instance template, which cannot change without replacing every
replica, so there the API key is named by its `latest` alias and each replica's agent polls it
(docs/scale-out.md, "Key rotation"): a rotation changes no template.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pulumi
import pulumi_gcp as gcp

from infra import group_runtime, names, proxy_config, serving
from infra.agent_bundle import agent_bundle_b64
from infra.config import GcpConfig, StackConfig
from infra.host_setup import user_data
from infra.tls import StackTls, declare_tls
from vm_agent import units
from vm_agent.runtime_doc import (
    AGENT_KEY,
    RUNTIME_KEY,
    ProxySpec,
    Runtime,
    SecretNames,
    VllmSpec,
)

# docs/facts/gcp.md ("Secret Manager from the VM"): Secret Manager needs the cloud-platform
# scope; what the VM may do is bounded by its service account's roles, not by the scope.
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
# Boot, first-boot install and pull come before the agent's own deadline starts counting.
WATCHDOG_SLACK_S = 30 * 60
# How often a replica re-reads the API key: a rotation reaches every replica within this plus
# one watch tick (30 s). One access a minute per replica is far inside Secret Manager's quota.
GROUP_KEY_POLL_S = 60
# docs/facts/gcp.md ("Secret versions and the latest alias"): the most recently created version.
LATEST = "latest"


@dataclass(frozen=True)
class VmRuntime:
    metadata: pulumi.Output[dict[str, str]]
    service_account_email: pulumi.Output[str]
    scopes: list[str]
    depends_on: list[pulumi.Resource]
    ca_cert_pem: pulumi.Output[str] | None
    # sha256 of the runtime document: the agent reports it once applied (`pulumi up` waits).
    runtime_digest: pulumi.Output[str]


@dataclass(frozen=True)
class GroupHooks:
    """For replicas in a managed instance group (issue 13): what the agent runs instead of
    powering off (`failure` or `idle` and the reason are appended), whether it restarts a
    vLLM that died after ready (the group's autohealing replaces the machine instead), and how
    often it re-reads the API key (named by its `latest` alias in a group; 0: never)."""

    stop_command: list[str] | None
    watch_after_ready: bool
    secret_poll_s: int = 0


def base_name() -> str:
    return names.slug("llm", pulumi.get_stack(), max_len=40)


def stack_labels(g: GcpConfig) -> dict[str, str]:
    return {"app": "llm-endpoint", "stack": names.slug(pulumi.get_stack()), **g.labels}


def group_hooks(g: GcpConfig) -> GroupHooks | None:
    """In group mode a replica leaves its group instead of powering off (infra/group_runtime.py:
    a group would recreate a VM that stopped itself), and a dead vLLM is autohealing's."""
    if not g.group_mode:
        return None
    return GroupHooks(
        stop_command=[group_runtime.LEAVE_GROUP_PATH],
        watch_after_ready=False,
        secret_poll_s=GROUP_KEY_POLL_S,
    )


@dataclass(frozen=True)
class SecretVersions:
    api_key: str
    hf_token: str | None
    tls_key: str | None


def proxy_conf(tls: bool) -> str:
    """The proxy's config as the VM's proxy container sees it (paths in the container)."""
    base = units.PROXY_DIR_IN_CONTAINER
    return proxy_config.render_proxy_config(
        listen_port=serving.PUBLIC_PORT,
        upstream=f"127.0.0.1:{serving.VLLM_INTERNAL_PORT}",
        auth_include=f"{base}/{units.AUTH_FILE_NAME}",
        temp_dir="/tmp",  # noqa: S108 (a private tmpfs in the proxy container)
        access_log="/dev/stdout",
        error_log="stderr",
        tls=proxy_config.TlsFiles(f"{base}/{units.TLS_CERT_NAME}", f"{base}/{units.TLS_KEY_NAME}")
        if tls
        else None,
        upstream_authorization=True,
    )


def build_runtime(
    g: GcpConfig,
    spec: serving.ServingSpec,
    versions: SecretVersions,
    tls_chain_pem: str | None,
    ca_cert_pem: str | None,
    group: GroupHooks | None = None,
) -> Runtime:
    """The runtime document for this config (pure: tests call it directly)."""
    hooks = group or GroupHooks(stop_command=None, watch_after_ready=True)
    return Runtime(
        vllm=VllmSpec(
            image=spec.image,
            args=spec.vllm_args(host="127.0.0.1", port=serving.VLLM_INTERNAL_PORT),
            env=serving.vllm_container_env(),
            served_model_name=spec.served_model_name,
            port=serving.VLLM_INTERNAL_PORT,
        ),
        proxy=ProxySpec(
            image=proxy_config.PROXY_IMAGE,
            port=serving.PUBLIC_PORT,
            nginx_conf=proxy_conf(tls_chain_pem is not None),
            tls_cert_pem=tls_chain_pem,
            ca_cert_pem=ca_cert_pem,
        ),
        secrets=SecretNames(versions.api_key, versions.hf_token, versions.tls_key),
        ready_timeout_s=g.ready_timeout_minutes * 60,
        idle_stop_minutes=g.idle_stop_minutes,
        stop_on_failure=g.stop_on_failure,
        stop_command=hooks.stop_command,
        watch_after_ready=hooks.watch_after_ready,
        secret_poll_s=hooks.secret_poll_s,
    )


def instance_metadata(g: GcpConfig, runtime_json: str) -> dict[str, str]:
    extra: dict[str, str] = {}
    watchdog_action: list[str] | None = None
    if g.group_mode:
        leave = group_runtime.render_leave_group(group_runtime.group_params(g))
        extra[group_runtime.LEAVE_GROUP_PATH] = leave
        watchdog_action = [
            group_runtime.LEAVE_GROUP_PATH,
            "failure",
            "not ready by the boot watchdog",
        ]
    return {
        "user-data": user_data(
            g.ready_timeout_minutes * 60 + WATCHDOG_SLACK_S,
            extra_files=extra,
            watchdog_action=watchdog_action,
        ),
        RUNTIME_KEY: runtime_json,
        AGENT_KEY: agent_bundle_b64(),
        "enable-oslogin": "TRUE",
        "enable-guest-attributes": "TRUE",
    }


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class _Secret:
    secret: gcp.secretmanager.Secret
    version: gcp.secretmanager.SecretVersion
    resources: list[pulumi.Resource]  # what a machine reading it depends on

    def latest(self) -> pulumi.Output[str]:
        """The `latest` alias: the same name whatever the version (a group's template)."""
        return self.secret.name.apply(lambda secret: f"{secret}/versions/{LATEST}")


def _secret(
    name: str, secret_id: str, value: pulumi.Input[str], member: pulumi.Output[str],
    project: str, labels: dict[str, str], opts: pulumi.ResourceOptions,
) -> _Secret:  # fmt: skip
    secret = gcp.secretmanager.Secret(
        name, secret_id=secret_id, replication={"auto": {}}, labels=labels, opts=opts
    )
    # pulumi-gcp marks secret_data secret; wrapping again keeps it so if that changes. A new
    # value replaces the version: explicitly the new one first, the old one deleted last, so
    # what a machine reads (pinned or `latest`) is never missing (docs/facts/gcp.md, "Secret
    # versions and the latest alias").
    version = gcp.secretmanager.SecretVersion(
        f"{name}-version",
        secret=secret.id,
        secret_data=pulumi.Output.secret(value),
        opts=pulumi.ResourceOptions.merge(
            opts, pulumi.ResourceOptions(delete_before_replace=False)
        ),
    )
    grant = gcp.secretmanager.SecretIamMember(
        f"{name}-accessor",
        project=project,
        secret_id=secret.secret_id,
        role="roles/secretmanager.secretAccessor",
        member=member,
        opts=opts,
    )
    return _Secret(secret, version, [version, grant])


def declare_vm_runtime(
    name: str,
    cfg: StackConfig,
    api_key: pulumi.Output[str],
    *,
    opts: pulumi.ResourceOptions,
    tls_ip: pulumi.Input[str] | None = None,
) -> VmRuntime:
    """See the module docstring. `opts` carries the parent and provider (and the APIs as
    dependencies); `tls_ip` None serves plain HTTP. In group mode (gcp.replicas >= 2) the
    account may also leave its group, and the agent leaves it instead of powering off."""
    assert cfg.gcp is not None
    g = cfg.gcp
    stack = pulumi.get_stack()
    base = base_name()
    labels = stack_labels(g)
    account = gcp.serviceaccount.Account(
        f"{name}-sa",
        account_id=names.slug(base, "vm", max_len=30),
        display_name=f"llm-endpoint VM ({stack})",
        description="Runs the vLLM VM: reads its own secrets and writes logs, nothing else.",
        opts=opts,
    )
    member = account.email.apply(lambda email: f"serviceAccount:{email}")
    depends: list[pulumi.Resource] = [
        gcp.projects.IAMMember(
            f"{name}-log-writer", project=g.project, role="roles/logging.logWriter",
            member=member, opts=opts,
        )
    ]  # fmt: skip
    if g.group_mode:
        depends += group_runtime.declare_leave_grant(name, g, member, opts)
    values: dict[str, pulumi.Input[str]] = {"api-key": api_key}
    if cfg.hf_token is not None:
        values["hf-token"] = pulumi.Output.secret(cfg.hf_token)
    tls = declare_tls(name, tls_ip, stack, opts) if tls_ip is not None else None
    if tls is not None:
        values["tls-key"] = tls.server_key_pem
    versions: dict[str, pulumi.Output[str]] = {}
    for kind, value in values.items():
        made = _secret(
            f"{name}-{kind}", names.slug(base, kind), value, member, g.project, labels, opts
        )
        # The machine still depends on the version (`depends`): no replica boots before one
        # exists. Only the key is polled: a TLS key comes with its certificate, which is in the
        # document anyway, and a new HF token (rare; only downloads use it) still rolls a group.
        versions[kind] = made.latest() if g.group_mode and kind == "api-key" else made.version.name
        depends += made.resources
    runtime_json = _runtime_json(cfg, g, versions, tls, group_hooks(g))
    return VmRuntime(
        metadata=runtime_json.apply(lambda text: instance_metadata(g, text)),
        service_account_email=account.email,
        scopes=[CLOUD_PLATFORM_SCOPE],
        depends_on=depends,
        ca_cert_pem=tls.ca_cert_pem if tls is not None else None,
        runtime_digest=runtime_json.apply(digest),
    )


def _runtime_json(
    cfg: StackConfig,
    g: GcpConfig,
    versions: dict[str, pulumi.Output[str]],
    tls: StackTls | None,
    group: GroupHooks | None,
) -> pulumi.Output[str]:
    spec = cfg.serving_for(g.shape.gpus)
    chain = tls.server_chain_pem if tls is not None else None
    ca = tls.ca_cert_pem if tls is not None else None
    return pulumi.Output.all(
        api_key=versions["api-key"],
        hf_token=versions.get("hf-token"),
        tls_key=versions.get("tls-key"),
        chain=chain,
        ca=ca,
    ).apply(
        lambda v: build_runtime(
            g,
            spec,
            SecretVersions(v["api_key"], v["hf_token"], v["tls_key"]),
            v["chain"],
            v["ca"],
            group,
        ).to_json()
    )
