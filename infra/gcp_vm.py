"""A Google Cloud A100 VM serving vLLM on port 8000, behind a firewall and an allowlisting proxy."""

from __future__ import annotations

import ipaddress
import shlex

import pulumi
import pulumi_gcp as gcp

from infra import gcp_catalog, names, pricing, serving
from infra.config import GcpConfig, StackConfig
from infra.startup_script import StartupParams, render_startup_script

# FACTS.md (Google Cloud): Secret Manager from the VM needs the cloud-platform scope; what the
# VM may actually do is bounded by its service account's IAM roles, not by the scope.
_CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
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
_ALLOW_PRIORITY = 900
_DENY_PRIORITY = 1000
_WORLD = ("0.0.0.0/0", "::/0")


class GcpVllmVm(pulumi.ComponentResource):
    """Service account, secrets, static IP, firewall rules and the VM itself."""

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
        stack = pulumi.get_stack()
        base = names.slug("llm", stack, max_len=40)
        spec = cfg.serving_for(g.shape.gpus)

        provider = gcp.Provider(
            f"{name}-provider",
            project=g.project,
            region=g.region,
            zone=g.zone,
            opts=pulumi.ResourceOptions(parent=self),
        )
        child = pulumi.ResourceOptions(parent=self, provider=provider)
        labels = {"app": "llm-endpoint", "stack": names.slug(stack), **g.labels}

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

        account = gcp.serviceaccount.Account(
            f"{name}-sa",
            account_id=names.slug(base, "vm", max_len=30),
            display_name=f"llm-endpoint VM ({stack})",
            description="Runs the vLLM VM: reads its own secrets and writes logs, nothing else.",
            opts=after_apis,
        )
        member = account.email.apply(lambda email: f"serviceAccount:{email}")
        grants: list[pulumi.Resource] = [
            gcp.projects.IAMMember(
                f"{name}-log-writer",
                project=g.project,
                role="roles/logging.logWriter",
                member=member,
                opts=after_apis,
            )
        ]

        secret_values: dict[str, pulumi.Output[str]] = {"api-key": api_key}
        if cfg.hf_token is not None:
            secret_values["hf-token"] = pulumi.Output.secret(cfg.hf_token)
        secret_ids: dict[str, str] = {}
        for kind, value in secret_values.items():
            secret_id = names.slug(base, kind)
            secret_ids[kind] = secret_id
            secret = gcp.secretmanager.Secret(
                f"{name}-{kind}",
                secret_id=secret_id,
                replication={"auto": {}},
                labels=labels,
                opts=after_apis,
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
                    project=g.project,
                    secret_id=secret.secret_id,
                    role="roles/secretmanager.secretAccessor",
                    member=member,
                    opts=child,
                )
            )

        address = gcp.compute.Address(
            f"{name}-ip",
            name=names.slug(base, "ip"),
            region=g.region,
            address_type="EXTERNAL",
            labels=labels,
            opts=after_apis,
        )

        tag = names.slug(base, "vllm")
        self._firewall(
            name=name,
            base=base,
            g=g,
            tag=tag,
            ports=[str(serving.PUBLIC_PORT)],
            ranges=g.allowed_source_ranges,
            opts=after_apis,
        )
        ssh_ranges = [*g.ssh_source_ranges]
        if g.ssh_via_iap:
            ssh_ranges.append(gcp_catalog.IAP_SSH_RANGE)
        if ssh_ranges:
            self._firewall(
                name=name, base=base, g=g, tag=tag, ports=["22"], ranges=ssh_ranges, opts=after_apis
            )
        # Below the allow rules, above the default network's own rules.
        self._firewall(
            name=name,
            base=base,
            g=g,
            tag=tag,
            ports=["22", str(serving.PUBLIC_PORT)],
            ranges=list(_WORLD),
            opts=after_apis,
            deny=True,
        )

        if g.spot:
            # FACTS.md (Google Cloud): SPOT needs preemptible=true and automaticRestart=false;
            # an explicit instanceTerminationAction keeps state from flapping.
            scheduling = gcp.compute.InstanceSchedulingArgs(
                provisioning_model="SPOT",
                preemptible=True,
                automatic_restart=False,
                on_host_maintenance="TERMINATE",
                instance_termination_action=g.termination_action,
            )
        else:
            # GPU VMs cannot live-migrate: with MIGRATE the API refuses the instance.
            scheduling = gcp.compute.InstanceSchedulingArgs(
                provisioning_model="STANDARD",
                preemptible=False,
                automatic_restart=True,
                on_host_maintenance="TERMINATE",
            )

        script = render_startup_script(
            StartupParams(
                spec=spec,
                gcp_project=g.project,
                api_key_secret=secret_ids["api-key"],
                hf_token_secret=secret_ids.get("hf-token"),
                stop_on_failure=g.stop_on_failure,
                ready_timeout_minutes=g.ready_timeout_minutes,
                idle_stop_minutes=g.idle_stop_minutes,
            )
        )

        instance = gcp.compute.Instance(
            f"{name}-vm",
            name=names.slug(base, "vm"),
            zone=g.zone,
            machine_type=g.machine_type,
            # No guest_accelerators: A2 machine types come with their A100s attached
            # (FACTS.md, Google Cloud), and a second declaration could only contradict them.
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
                email=account.email, scopes=[_CLOUD_PLATFORM_SCOPE]
            ),
            scheduling=scheduling,
            shielded_instance_config=gcp.compute.InstanceShieldedInstanceConfigArgs(
                enable_secure_boot=g.secure_boot,
                enable_vtpm=True,
                enable_integrity_monitoring=True,
            ),
            tags=[tag],
            labels={**labels, "model": names.slug(spec.served_model_name)},
            # metadata_startup_script, not metadata["startup-script"], on purpose: GCE runs the
            # script only at boot, so an in-place metadata update would leave the old model or
            # settings serving while `pulumi up` reports success. Replacing the VM guarantees the
            # running endpoint matches the stack, at the price of a fresh boot (the static IP,
            # secrets and firewall stay). FACTS.md (Google Cloud) notes the difference.
            metadata_startup_script=script,
            metadata={"enable-oslogin": "TRUE"},
            allow_stopping_for_update=True,
            opts=pulumi.ResourceOptions.merge(
                child,
                pulumi.ResourceOptions(
                    depends_on=grants,
                    # The replacement needs the static IP and the GPU quota the old VM holds.
                    delete_before_replace=True,
                ),
            ),
        )

        estimate = pricing.gcp_vm_estimate(g.machine_type, g.shape.gpus, g.spot)
        self.ip = address.address
        self.endpoint = address.address.apply(lambda ip: f"http://{ip}:{serving.PUBLIC_PORT}")
        self.instance_name = instance.name
        self.model = spec.served_model_name
        self.estimated_cost = estimate.describe()
        self.estimated_usd_per_hour = estimate.usd_per_hour
        wait_seconds = g.ready_timeout_minutes * 60
        self.smoke_test_command = address.address.apply(
            lambda ip: smoke_test_command(ip, spec.served_model_name, wait_seconds)
        )
        self.register_outputs(
            {
                "endpoint": self.endpoint,
                "ip": self.ip,
                "instance_name": self.instance_name,
                "model": self.model,
            }
        )

    def _firewall(
        self,
        *,
        name: str,
        base: str,
        g: GcpConfig,
        tag: str,
        ports: list[str],
        ranges: list[str],
        opts: pulumi.ResourceOptions,
        deny: bool = False,
    ) -> None:
        """Rules for tcp `ports` from `ranges` to the VM's tag: allow rules at
        _ALLOW_PRIORITY, deny rules at _DENY_PRIORITY."""
        verb = "deny" if deny else "allow"
        # One rule may not mix IPv4 and IPv6 source ranges, so each family gets its own.
        for family in (4, 6):
            family_ranges = [r for r in ranges if ipaddress.ip_network(r).version == family]
            if not family_ranges:
                continue
            suffix = "tcp" + "-".join(ports) + ("" if family == 4 else "-v6")
            gcp.compute.Firewall(
                f"{name}-{verb}-{suffix}",
                name=names.slug(base, verb, suffix),
                network=g.network,
                direction="INGRESS",
                priority=_DENY_PRIORITY if deny else _ALLOW_PRIORITY,
                allows=None
                if deny
                else [gcp.compute.FirewallAllowArgs(protocol="tcp", ports=ports)],
                denies=[gcp.compute.FirewallDenyArgs(protocol="tcp", ports=ports)]
                if deny
                else None,
                source_ranges=family_ranges,
                target_tags=[tag],
                description=f"llm-endpoint: {verb} tcp:{','.join(ports)} to the vLLM VM from "
                + ("everywhere else" if deny else "the configured ranges"),
                opts=opts,
            )


def smoke_test_command(ip: str, model: str, wait_seconds: int) -> str:
    """The command README and the stack output give: the key comes from the stack's state
    through the environment, never on the command line; `--wait` is the VM's own ready
    deadline, so the smoke test does not give up on a boot the VM still waits for."""
    return (
        'VLLM_API_KEY="$(pulumi stack output api_key --show-secrets)" '
        f"python -m scripts.smoke_test {shlex.quote(ip)} --model {shlex.quote(model)} "
        f"--wait {wait_seconds}"
    )
