"""gcp.replicas under Pulumi's mocks: one replica is today's single VM, resource for resource;
two or more are a group behind a passthrough load balancer (infra/gcp_group.py)."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_gcp as gcp
import pytest
from cryptography import x509

from infra import gcp_catalog, group_plan, serving
from infra.config import GcpConfig
from tests.support.declared_stack import SECRET_VERSION, declared_config, group_stack
from tests.support.pulumi_harness import (
    MOCK_GENERATED_KEY,
    MOCK_IP,
    RecordingMocks,
    run_program,
    stack_config,
    stack_test,
    value,
)
from vm_agent.runtime_doc import RUNTIME_KEY, parse

TEMPLATE = "gcp:compute/instanceTemplate:InstanceTemplate"
GROUP = "gcp:compute/regionInstanceGroupManager:RegionInstanceGroupManager"
HEALTH_CHECK = "gcp:compute/regionHealthCheck:RegionHealthCheck"
BACKEND = "gcp:compute/regionBackendService:RegionBackendService"
FORWARDING_RULE = "gcp:compute/forwardingRule:ForwardingRule"
FIREWALL = "gcp:compute/firewall:Firewall"
INSTANCE = "gcp:compute/instance:Instance"
CUSTOM_ROLE = "gcp:projects/iAMCustomRole:IAMCustomRole"
IAM_MEMBER = "gcp:projects/iAMMember:IAMMember"
ADDRESS = "gcp:compute/address:Address"
GROUP_TYPES = {TEMPLATE, GROUP, HEALTH_CHECK, BACKEND, FORWARDING_RULE, CUSTOM_ROLE}

# What the dev stack (one VM) declared before groups existed, recorded from the previous
# commit's program under the same mocks: type and name (the name fixes the URN, so the same
# list means `pulumi up` after this change creates and deletes nothing).
TODAYS_DEV_STACK = sorted(
    [
        ("llm-endpoint:gcp:VllmVm", "gcp"),
        ("pulumi:providers:gcp", "gcp-provider"),
        ("random:index/randomPassword:RandomPassword", "api-key"),
        ("gcp:projects/service:Service", "gcp-api-compute"),
        ("gcp:projects/service:Service", "gcp-api-secretmanager"),
        ("gcp:projects/service:Service", "gcp-api-iam"),
        ("gcp:projects/service:Service", "gcp-api-cloudresourcemanager"),
        ("gcp:serviceaccount/account:Account", "gcp-sa"),
        ("gcp:projects/iAMMember:IAMMember", "gcp-log-writer"),
        ("gcp:secretmanager/secret:Secret", "gcp-api-key"),
        ("gcp:secretmanager/secretVersion:SecretVersion", "gcp-api-key-version"),
        ("gcp:secretmanager/secretIamMember:SecretIamMember", "gcp-api-key-accessor"),
        ("gcp:compute/address:Address", "gcp-ip"),
        ("gcp:compute/firewall:Firewall", "gcp-allow-tcp8000"),
        ("gcp:compute/firewall:Firewall", "gcp-allow-tcp22"),
        ("gcp:compute/firewall:Firewall", "gcp-deny-tcp22-8000"),
        ("gcp:compute/firewall:Firewall", "gcp-deny-tcp22-8000-v6"),
        ("gcp:compute/instance:Instance", "gcp-vm"),
        # Added by the VM runtime (issue 12): TLS, its key in Secret Manager, the serving wait.
        ("tls:index/privateKey:PrivateKey", "gcp-ca-key"),
        ("tls:index/selfSignedCert:SelfSignedCert", "gcp-ca"),
        ("tls:index/privateKey:PrivateKey", "gcp-server-key"),
        ("tls:index/certRequest:CertRequest", "gcp-server-csr"),
        ("tls:index/locallySignedCert:LocallySignedCert", "gcp-server-cert"),
        ("gcp:secretmanager/secret:Secret", "gcp-tls-key"),
        ("gcp:secretmanager/secretVersion:SecretVersion", "gcp-tls-key-version"),
        ("gcp:secretmanager/secretIamMember:SecretIamMember", "gcp-tls-key-accessor"),
        ("pulumi-python:dynamic:Resource", "gcp-serving"),
    ]
)


def allow_rules(mocks: RecordingMocks) -> list[dict[str, Any]]:
    return [r.inputs for r in mocks.of_type(FIREWALL) if "allows" in r.inputs]


@stack_test
async def test_one_replica_declares_exactly_todays_resources() -> None:
    for overrides in ({}, {"gcp": {"replicas": 1}}):
        _, mocks = await run_program(*stack_config("dev", overrides))
        assert sorted((r.typ, r.name) for r in mocks.resources) == TODAYS_DEV_STACK
        assert not GROUP_TYPES & {r.typ for r in mocks.resources}


@stack_test
async def test_two_replicas_declare_template_group_checks_and_balancer() -> None:
    outputs, mocks = await run_program(*group_stack())
    assert mocks.of_type(INSTANCE) == []
    template = mocks.one(TEMPLATE).inputs
    group = mocks.one(GROUP).inputs
    [lb_check, heal_check] = sorted(
        (r.inputs for r in mocks.of_type(HEALTH_CHECK)), key=lambda c: c["checkIntervalSec"]
    )
    backend = mocks.one(BACKEND).inputs
    rule = mocks.one(FORWARDING_RULE).inputs

    # The template carries the single VM's runtime: metadata, account, scopes, tag, scheduling.
    assert template["machineType"] == "a2-highgpu-1g"
    assert template["disks"][0]["sourceImage"].endswith(
        "ubuntu-accelerator-2404-amd64-with-nvidia-580"
    )
    assert template["disks"][0]["boot"] is True
    assert "metadataStartupScript" not in template
    doc = parse(template["metadata"][RUNTIME_KEY])
    # The key by its `latest` alias, polled by each replica (a rotation changes no template).
    assert doc.secrets.api_key == "projects/example-project/secrets/llm-dev-api-key/versions/latest"
    assert doc.secret_poll_s == 60
    assert doc.vllm.image == serving.VLLM_IMAGE
    assert doc.stop_command == ["/usr/local/sbin/llm-endpoint-leave-group"]
    assert doc.watch_after_ready is False
    assert "llm-endpoint-leave-group" in template["metadata"]["user-data"]
    assert template["serviceAccount"]["scopes"] == [
        "https://www.googleapis.com/auth/cloud-platform"
    ]
    assert template["scheduling"]["onHostMaintenance"] == "TERMINATE"
    tag = template["tags"][0]
    assert "guestAccelerators" not in template
    assert MOCK_GENERATED_KEY not in json.dumps(template)

    # A regional group over the zones that offer the A100, minus one so a roll keeps one up.
    assert group["region"] == "us-central1"
    assert group["distributionPolicyZones"] == ["us-central1-a"]
    assert group["distributionPolicyTargetShape"] == "BALANCED"
    assert group["targetSize"] == 2
    assert group["versions"][0]["instanceTemplate"].endswith("?uniqueId=1")
    healing = group["autoHealingPolicies"]
    assert healing["initialDelaySec"] == 25 * 60 + 1800 + 300 <= 3600
    assert healing["healthCheck"] == "gcp-heal-check-id"
    policy = group["updatePolicy"]
    assert (policy["maxSurgeFixed"], policy["maxUnavailableFixed"]) == (0, 1)
    assert policy["type"] == "PROACTIVE"
    assert policy["instanceRedistributionType"] == "NONE"  # what BALANCED requires
    assert group["instanceLifecyclePolicy"] == {
        "defaultActionOnFailure": "REPAIR",
        "forceUpdateOnRepair": "YES",
    }

    # Both checks ask the proxy's unauthenticated /health on the public port, over TLS.
    for check in (lb_check, heal_check):
        assert check["httpsHealthCheck"] == {"port": 8000, "requestPath": "/health"}
        assert "httpHealthCheck" not in check
    assert heal_check["unhealthyThreshold"] * heal_check["checkIntervalSec"] >= 60

    # Passthrough: EXTERNAL TCP backend service, long timeout, one forwarding rule on one IP.
    assert (backend["loadBalancingScheme"], backend["protocol"]) == ("EXTERNAL", "TCP")
    assert backend["timeoutSec"] == 3600
    assert backend["healthChecks"] == "gcp-lb-check-id"
    assert backend["backends"][0]["group"].endswith("/instanceGroups/llm-dev-group")
    assert rule["ipAddress"] == MOCK_IP
    assert (rule["portRange"], rule["ipProtocol"]) == ("8000", "TCP")
    assert rule["loadBalancingScheme"] == "EXTERNAL"
    assert rule["backendService"] == "gcp-backend-id"

    # The allowlist still decides who gets in (clients keep their addresses through the
    # balancer); Google's checkers get tcp:8000 only, which the proxy opens at /health only.
    rules = {tuple(r["sourceRanges"]): r for r in allow_rules(mocks)}
    assert rules[("203.0.113.0/24",)]["allows"] == [{"protocol": "tcp", "ports": ["8000"]}]
    health = rules[gcp_catalog.HEALTH_CHECK_RANGES]
    assert health["allows"] == [{"protocol": "tcp", "ports": ["8000"]}]
    assert all(r["targetTags"] == [tag] for r in allow_rules(mocks))

    assert await value(outputs["endpoint"]) == f"https://{MOCK_IP}:8000"
    assert await value(outputs["replicas"]) == 2
    assert await value(outputs["instance_group"]) == "llm-dev-group"
    assert await value(outputs["estimated_usd_per_hour"]) == pytest.approx(2 * 3.673)
    assert "2 replicas" in await value(outputs["estimated_cost_per_hour"])
    assert "instance_name" not in outputs

    # `pulumi up` waits for a replica of this template behind this balancer, within the
    # group's deadline (the autohealing delay), after the group and the balancer exist.
    [wait] = [r for r in mocks.resources if r.name == "gcp-serving"]
    assert wait.typ.startswith("pulumi-python:dynamic")
    assert wait.inputs["group"] == "llm-dev-group"
    assert wait.inputs["backend"] == backend["name"]
    assert wait.inputs["template"].endswith("?uniqueId=1")
    assert wait.inputs["deadline_s"] == healing["initialDelaySec"]
    assert "__provider" in wait.inputs


@stack_test
async def test_replicas_serve_tls_with_one_certificate_for_the_balancers_address() -> None:
    """TLS ends at each replica's nginx (the balancer passes packets through), so every replica
    presents the stack's certificate for the balancer's IP, made before the template."""
    outputs, mocks = await run_program(*group_stack())
    [address] = mocks.of_type(ADDRESS)  # the balancer's; no replica has a static one
    assert address.name == "gcp-lb-ip"
    rule = mocks.one(FORWARDING_RULE).inputs
    template = mocks.one(TEMPLATE).inputs
    doc = parse(template["metadata"][RUNTIME_KEY])
    assert doc.proxy.tls_cert_pem is not None
    assert f"listen {serving.PUBLIC_PORT} ssl;" in doc.proxy.nginx_conf
    assert doc.secrets.tls_key and "PRIVATE KEY" not in json.dumps(template)
    leaf = x509.load_pem_x509_certificates(doc.proxy.tls_cert_pem.encode())[0]
    san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    names = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    assert names == {rule["ipAddress"], "127.0.0.1"}
    assert await value(outputs["ca_cert"]) == doc.proxy.ca_cert_pem
    command = await value(outputs["smoke_test_command"])
    assert f"https://{MOCK_IP}:8000" in command and "--ca-file llm-endpoint-ca.pem" in command


@stack_test
async def test_plain_http_replicas_and_http_checks_only_when_asked() -> None:
    outputs, mocks = await run_program(*group_stack(tls=False))
    doc = parse(mocks.one(TEMPLATE).inputs["metadata"][RUNTIME_KEY])
    assert doc.proxy.tls_cert_pem is None and doc.secrets.tls_key is None
    for check in mocks.of_type(HEALTH_CHECK):
        assert check.inputs["httpHealthCheck"] == {"port": 8000, "requestPath": "/health"}
        assert "httpsHealthCheck" not in check.inputs
    assert await value(outputs["endpoint"]) == f"http://{MOCK_IP}:8000"
    assert "ca_cert" not in outputs
    assert "--ca-file" not in await value(outputs["smoke_test_command"])


@stack_test
async def test_wait_for_serving_false_declares_no_wait_in_a_group_either() -> None:
    outputs, mocks = await run_program(*group_stack(waitForServing=False))
    assert [r for r in mocks.resources if r.name == "gcp-serving"] == []
    assert "serving_replica" not in outputs
    assert await value(outputs["endpoint"]) == f"https://{MOCK_IP}:8000"


@stack_test
async def test_replica_may_leave_only_its_own_group() -> None:
    _, mocks = await run_program(*group_stack())
    role = mocks.one(CUSTOM_ROLE).inputs
    assert sorted(role["permissions"]) == [
        "compute.instanceGroupManagers.get",
        "compute.instanceGroupManagers.update",
        "compute.instances.delete",
    ]
    [grant] = [r.inputs for r in mocks.of_type(IAM_MEMBER) if "condition" in r.inputs]
    assert grant["role"] == f"projects/llm-endpoint-dev/roles/{role['roleId']}"
    expression = grant["condition"]["expression"]
    assert (
        '"projects/llm-endpoint-dev/regions/us-central1/instanceGroupManagers/llm-dev-group"'
        in expression
    )
    assert 'startsWith("llm-dev-replica-")' in expression


@stack_test
async def test_surge_spreads_over_more_zones_and_keeps_every_replica_serving() -> None:
    _, mocks = await run_program(*group_stack(replicas=3, maxSurge=4))
    group = mocks.one(GROUP).inputs
    assert group["distributionPolicyZones"] == [
        "us-central1-a",
        "us-central1-b",
        "us-central1-c",
        "us-central1-f",
    ]
    policy = group["updatePolicy"]
    assert (policy["maxSurgeFixed"], policy["maxUnavailableFixed"]) == (4, 0)


@stack_test
async def test_spot_replicas_come_back_through_the_group() -> None:
    outputs, mocks = await run_program(*group_stack(spot=True, replicas=3))
    template = mocks.one(TEMPLATE).inputs
    assert template["scheduling"]["provisioningModel"] == "SPOT"
    assert template["scheduling"]["instanceTerminationAction"] == "STOP"
    # A preempted VM is a failed VM the group did not stop: REPAIR recreates it.
    group = mocks.one(GROUP).inputs
    assert group["instanceLifecyclePolicy"]["defaultActionOnFailure"] == "REPAIR"
    assert await value(outputs["estimated_usd_per_hour"]) == pytest.approx(3 * 1.293)


@stack_test
async def test_preview_warns_with_quota_names_unless_gpu_quota_is_given(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    warnings: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", lambda msg, *a, **k: warnings.append(msg))
    await run_program(*group_stack(replicas=3))
    # (The other warning: the Hub is a closed port in tests, so the model checks are skipped.)
    [warning] = [w for w in warnings if "gcp.replicas" in w]
    assert "llm-endpoint:gcp.replicas = 3 needs 3 nvidia-tesla-a100 GPUs" in warning
    for quota in ("NVIDIA_A100_GPUS", "GPUS_ALL_REGIONS", "gcp.gpuQuota"):
        assert quota in warning
    warnings.clear()
    await run_program(*group_stack(replicas=3, gpuQuota=8))
    assert [w for w in warnings if "gcp.replicas" in w] == []


@stack_test
async def test_preview_warns_when_every_replica_lands_in_one_zone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    warnings: list[str] = []
    monkeypatch.setattr(pulumi.log, "warn", lambda msg, *a, **k: warnings.append(msg))
    await run_program(*group_stack(replicas=2, gpuQuota=8))
    [warning] = [w for w in warnings if "gcp.replicas" in w]
    assert "every replica runs in us-central1-a" in warning
    assert "replicas: 3+" in warning and "maxSurge: 2+" in warning
    warnings.clear()
    await run_program(*group_stack(replicas=2, gpuQuota=8, maxSurge=2))
    assert [w for w in warnings if "gcp.replicas" in w] == []


def _gcp(**keys: Any) -> GcpConfig:
    return GcpConfig.model_validate(
        {"project": "my-project-1", "allowedSourceRanges": ["203.0.113.0/24"], **keys}
    )


@pytest.mark.parametrize("surge", [0, 1, 2, 4])
def test_every_group_the_config_allows_keeps_a_replica_serving_within_google_limits(
    surge: int,
) -> None:
    """Every region, machine type and size: Google's rule for regional groups (fixed surge and
    unavailable each 0 or >= the zone count) holds, and a roll never takes all replicas down."""
    for machine_type, shape in gcp_catalog.A100_MACHINE_TYPES.items():
        regions = {gcp_catalog.region_of(z) for z in gcp_catalog.A100_ZONES[shape.accelerator]}
        for region in sorted(regions):
            for replicas in range(2, gcp_catalog.MAX_REPLICAS + 1):
                g = _gcp(region=region, machineType=machine_type, replicas=replicas, maxSurge=surge)
                plan = g.plan_group()
                zones = len(plan.zones)
                assert zones >= 1 and set(plan.zones) <= set(g.region_zones)
                assert plan.max_surge in (0,) or plan.max_surge >= zones
                assert plan.max_unavailable in (0,) or plan.max_unavailable >= zones
                assert plan.max_surge + plan.max_unavailable > 0
                assert plan.serving_during_roll >= 1
                assert 0 <= plan.initial_delay_seconds <= group_plan.MAX_INITIAL_DELAY_SECONDS
                watchdog = g.ready_timeout_minutes * 60 + group_plan.WATCHDOG_AFTER_DEADLINE_SECONDS
                assert plan.initial_delay_seconds > watchdog


KEY_A = "first-key-0123456789-abcdefghijklmnopqrstuv"
KEY_B = "second-key-0123456789-abcdefghijklmnopqrstu"


def _group_with_key(key: str) -> dict[str, Any]:
    config, secret_keys = group_stack()
    config["llm-endpoint:apiKey"] = key
    return declared_config(config, [*secret_keys, "llm-endpoint:apiKey"])


def test_key_rotation_leaves_the_template_byte_identical_so_the_group_does_not_roll() -> None:
    """A rotation is a new secret version; the template names the key's `latest` alias, so its
    inputs (and the group's version, and the serving wait) stay as they were: no new template,
    no roll. Each replica's agent picks the new value up by polling (tests/test_vm_agent.py,
    test_replica_*). The single VM's document still changes (tests/test_vm_runtime_stack.py)."""
    before, after = _group_with_key(KEY_A), _group_with_key(KEY_B)

    def version_data(found: dict[str, Any]) -> str:
        return json.dumps(found["inputs"][SECRET_VERSION]["gcp-api-key-version"], default=str)

    assert version_data(before) != version_data(after)  # the key did change
    for found in (before, after):
        assert KEY_A not in json.dumps(found["vm"]) and KEY_B not in json.dumps(found["vm"])
    assert json.dumps(before["vm"], sort_keys=True) == json.dumps(after["vm"], sort_keys=True)
    assert before["inputs"][GROUP] == after["inputs"][GROUP]
    assert before["waits"] == after["waits"]


def test_the_template_still_waits_for_the_key_version(monkeypatch: pytest.MonkeyPatch) -> None:
    """The document no longer names the version, so the dependency is explicit: the first
    replica never boots before a version exists for `latest` to resolve to."""
    seen: list[pulumi.ResourceOptions] = []

    class Recording(gcp.compute.InstanceTemplate):
        def __init__(self, resource_name: str, *args: Any, **kwargs: Any) -> None:
            seen.append(kwargs["opts"])
            super().__init__(resource_name, *args, **kwargs)

    monkeypatch.setattr(gcp.compute, "InstanceTemplate", Recording)
    _group_with_key(KEY_A)
    [opts] = seen
    depends = opts.depends_on if isinstance(opts.depends_on, list) else []
    names = {r.pulumi_resource_name for r in depends if isinstance(r, pulumi.Resource)}
    assert "gcp-api-key-version" in names
