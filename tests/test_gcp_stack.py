"""The program under Pulumi's mocks, with the shipped dev stack and its variants."""

from __future__ import annotations

import json
import runpy
from typing import Any

import pytest
from pulumi.runtime import rpc

from infra import config as stack_config_module
from infra import serving
from infra.gcp_catalog import IAP_SSH_RANGE
from tests.support.pulumi_harness import (
    MOCK_GENERATED_KEY,
    MOCK_IP,
    PROJECT_ROOT,
    RecordingMocks,
    is_secret,
    run_program,
    stack_config,
    stack_test,
    value,
)
from vm_agent.runtime_doc import RUNTIME_KEY, Runtime, parse

USER_KEY = "user-supplied-key-0123456789-abcdefghijklmnop"
HF_TOKEN = "hf_secretTOKENvalue0123456789abcdef"

INSTANCE = "gcp:compute/instance:Instance"
FIREWALL = "gcp:compute/firewall:Firewall"
SECRET = "gcp:secretmanager/secret:Secret"
SECRET_VERSION = "gcp:secretmanager/secretVersion:SecretVersion"
SECRET_ACCESSOR = "gcp:secretmanager/secretIamMember:SecretIamMember"


def firewall_rules(mocks: RecordingMocks, port: str) -> list[dict[str, Any]]:
    """The allow rules for one port."""
    return [
        r.inputs
        for r in mocks.of_type(FIREWALL)
        if "allows" in r.inputs and r.inputs["allows"][0]["ports"] == [port]
    ]


def deny_rules(mocks: RecordingMocks) -> list[dict[str, Any]]:
    return [r.inputs for r in mocks.of_type(FIREWALL) if "denies" in r.inputs]


def runtime_document(vm: dict[str, Any]) -> Runtime:
    return parse(vm["metadata"][RUNTIME_KEY])


def plain(v: Any) -> Any:
    return rpc.unwrap_rpc_secret(v) if rpc.is_rpc_secret(v) else v


def everything_but_secret_versions(mocks: RecordingMocks) -> str:
    """All inputs of every resource that is not meant to hold a secret, as one string."""
    return json.dumps(
        [r.inputs for r in mocks.resources if r.typ != SECRET_VERSION],
        default=str,
    )


@stack_test
async def test_dev_stack_declares_vm_firewall_address_account_and_secrets() -> None:
    outputs, mocks = await run_program(*stack_config("dev"))

    provider = mocks.one("pulumi:providers:gcp").inputs
    assert (provider["project"], provider["zone"], provider["region"]) == (
        "llm-endpoint-dev",
        "us-central1-a",
        "us-central1",
    )
    assert {r.inputs["service"] for r in mocks.of_type("gcp:projects/service:Service")} == {
        "compute.googleapis.com",
        "secretmanager.googleapis.com",
        "iam.googleapis.com",
        "cloudresourcemanager.googleapis.com",
    }

    account = mocks.one("gcp:serviceaccount/account:Account").inputs
    sa_member = f"serviceAccount:{account['accountId']}@example-project.iam.gserviceaccount.com"
    # The VM's account may write logs and read its own secrets, nothing else.
    project_roles = [r.inputs for r in mocks.of_type("gcp:projects/iAMMember:IAMMember")]
    assert [(r["role"], r["member"]) for r in project_roles] == [
        ("roles/logging.logWriter", sa_member)
    ]
    secrets = mocks.of_type(SECRET)
    assert sorted(s.inputs["secretId"] for s in secrets) == ["llm-dev-api-key", "llm-dev-tls-key"]
    accessors = [r.inputs for r in mocks.of_type(SECRET_ACCESSOR)]
    assert sorted((a["secretId"], a["role"], a["member"]) for a in accessors) == [
        ("llm-dev-api-key", "roles/secretmanager.secretAccessor", sa_member),
        ("llm-dev-tls-key", "roles/secretmanager.secretAccessor", sa_member),
    ]
    api_version, tls_version = (
        r.inputs for r in sorted(mocks.of_type(SECRET_VERSION), key=lambda r: r.name)
    )
    assert rpc.is_rpc_secret(api_version["secretData"])
    assert plain(api_version["secretData"]) == MOCK_GENERATED_KEY
    assert rpc.is_rpc_secret(tls_version["secretData"])
    assert "PRIVATE KEY" in plain(tls_version["secretData"])

    address = mocks.one("gcp:compute/address:Address").inputs
    assert (address["region"], address["addressType"]) == ("us-central1", "EXTERNAL")

    vm = mocks.one(INSTANCE).inputs
    tag = vm["tags"][0]
    [api_rule] = firewall_rules(mocks, "8000")
    assert api_rule["sourceRanges"] == ["203.0.113.0/24"]
    assert api_rule["targetTags"] == [tag]
    assert api_rule["direction"] == "INGRESS"
    assert api_rule["allows"] == [{"protocol": "tcp", "ports": ["8000"]}]
    [ssh_rule] = firewall_rules(mocks, "22")
    assert ssh_rule["sourceRanges"] == [IAP_SSH_RANGE]
    assert ssh_rule["targetTags"] == [tag]
    # The default network opens tcp:22 to the world (default-allow-ssh, priority 65534) and
    # every port to the VPC: deny rules on the VM's tag close both, below the allow rules.
    denies = deny_rules(mocks)
    assert sorted(d["sourceRanges"][0] for d in denies) == ["0.0.0.0/0", "::/0"]
    for deny in denies:
        assert deny["denies"] == [{"protocol": "tcp", "ports": ["22", "8000"]}]
        assert deny["targetTags"] == [tag]
        assert deny["priority"] > api_rule["priority"] == ssh_rule["priority"]
        assert deny["priority"] < 65534
    assert len(mocks.of_type(FIREWALL)) == 4

    assert vm["machineType"] == "a2-highgpu-1g"
    assert vm["zone"] == "us-central1-a"
    assert "guestAccelerators" not in vm  # A2 types come with their GPUs
    assert vm["scheduling"] == {
        "provisioningModel": "STANDARD",
        "preemptible": False,
        "automaticRestart": True,
        "onHostMaintenance": "TERMINATE",
    }
    init = vm["bootDisk"]["initializeParams"]
    assert init["size"] >= 200
    assert init["image"] == stack_config_module.DEFAULT_BOOT_IMAGE
    assert "nvidia-580" in init["image"]
    assert vm["shieldedInstanceConfig"] == {
        "enableSecureBoot": True,
        "enableVtpm": True,
        "enableIntegrityMonitoring": True,
    }
    assert vm["labels"]["app"] == "llm-endpoint"
    assert vm["labels"]["stack"] == "dev"
    assert vm["labels"]["team"] == "ml"
    assert vm["networkInterfaces"][0]["accessConfigs"][0]["natIp"] == MOCK_IP
    assert vm["serviceAccount"]["email"] == sa_member.removeprefix("serviceAccount:")
    assert vm["serviceAccount"]["scopes"] == ["https://www.googleapis.com/auth/cloud-platform"]
    # The runtime is plain metadata (updated in place); nothing replace-on-change carries it.
    assert "metadataStartupScript" not in vm
    assert "startup-script" not in vm["metadata"]
    doc = runtime_document(vm)
    assert doc.vllm.image == serving.VLLM_IMAGE
    assert doc.secrets.api_key.startswith("projects/123/secrets/gcp-api-key-version/versions/")
    assert doc.secrets.tls_key == "projects/123/secrets/gcp-tls-key-version/versions/1"
    assert vm["metadata"]["enable-guest-attributes"] == "TRUE"
    assert vm["metadata"]["user-data"].startswith("#cloud-config\n")

    assert await value(outputs["endpoint"]) == f"https://{MOCK_IP}:8000"
    assert "BEGIN CERTIFICATE" in await value(outputs["ca_cert"])
    assert await value(outputs["ip"]) == MOCK_IP
    assert await value(outputs["model"]) == "Qwen/Qwen2.5-7B-Instruct"
    assert await is_secret(outputs["api_key"])
    assert await value(outputs["api_key"]) == MOCK_GENERATED_KEY
    command = await value(outputs["smoke_test_command"])
    # As it runs in the user's shell, from the project directory (README, Quick start).
    assert command.startswith(
        "pulumi stack output ca_cert --stack dev > llm-endpoint-ca.pem && "
        'VLLM_API_KEY="$(pulumi stack output api_key --show-secrets --stack dev)" '
    )
    assert command.endswith(
        f"uv run python -m scripts.smoke_test https://{MOCK_IP}:8000 "
        "--ca-file llm-endpoint-ca.pem --model Qwen/Qwen2.5-7B-Instruct --wait 2700"
    )
    assert MOCK_GENERATED_KEY not in command
    assert await value(outputs["estimated_usd_per_hour"]) == 3.673
    cost = await value(outputs["estimated_cost_per_hour"])
    assert "estimate" in cost
    assert "2025-03" in cost
    assert "on demand" in cost

    assert MOCK_GENERATED_KEY not in everything_but_secret_versions(mocks)


@stack_test
async def test_spot_vm_is_spot_preemptible_without_restart_and_explicit_termination() -> None:
    outputs, mocks = await run_program(
        *stack_config("dev", {"gcp": {"spot": True, "spotTerminationAction": "DELETE"}})
    )
    assert mocks.one(INSTANCE).inputs["scheduling"] == {
        "provisioningModel": "SPOT",
        "preemptible": True,
        "automaticRestart": False,
        "onHostMaintenance": "TERMINATE",
        "instanceTerminationAction": "DELETE",
    }
    assert await value(outputs["estimated_usd_per_hour"]) == 1.293
    assert "spot" in await value(outputs["estimated_cost_per_hour"])


@stack_test
async def test_spot_defaults_to_stop_on_termination() -> None:
    _, mocks = await run_program(*stack_config("dev", {"gcp": {"spot": True}}))
    assert mocks.one(INSTANCE).inputs["scheduling"]["instanceTerminationAction"] == "STOP"


@stack_test
async def test_custom_ranges_split_by_ip_family_and_ssh_only_when_configured() -> None:
    _, mocks = await run_program(
        *stack_config(
            "dev",
            {
                "gcp": {
                    "allowedSourceRanges": ["198.51.100.0/24", "192.0.2.7/32", "2001:db8::/48"],
                    "sshViaIap": False,
                    "sshSourceRanges": [],
                }
            },
        )
    )
    api_rules = firewall_rules(mocks, "8000")
    assert sorted(tuple(r["sourceRanges"]) for r in api_rules) == [
        ("198.51.100.0/24", "192.0.2.7/32"),
        ("2001:db8::/48",),
    ]
    assert firewall_rules(mocks, "22") == []
    assert len(deny_rules(mocks)) == 2  # SSH stays closed, even on the default network


@stack_test
async def test_ssh_from_configured_ranges_plus_iap() -> None:
    _, mocks = await run_program(
        *stack_config("dev", {"gcp": {"sshSourceRanges": ["198.51.100.0/28"]}})
    )
    [ssh] = firewall_rules(mocks, "22")
    assert ssh["sourceRanges"] == ["198.51.100.0/28", IAP_SSH_RANGE]


@stack_test
async def test_world_open_needs_the_explicit_opt_in() -> None:
    _, mocks = await run_program(
        *stack_config(
            "dev", {"gcp": {"allowedSourceRanges": ["0.0.0.0/0"], "allowWorldOpen": True}}
        )
    )
    [rule] = firewall_rules(mocks, "8000")
    assert rule["sourceRanges"] == ["0.0.0.0/0"]


@stack_test
async def test_hf_token_and_user_key_are_secrets_kept_out_of_metadata_and_script() -> None:
    outputs, mocks = await run_program(
        *stack_config("dev", secrets={"apiKey": USER_KEY, "hfToken": HF_TOKEN})
    )
    assert mocks.of_type("random:index/randomPassword:RandomPassword") == []
    assert sorted(s.inputs["secretId"] for s in mocks.of_type(SECRET)) == [
        "llm-dev-api-key",
        "llm-dev-hf-token",
        "llm-dev-tls-key",
    ]
    versions = [r.inputs["secretData"] for r in mocks.of_type(SECRET_VERSION)]
    assert all(rpc.is_rpc_secret(v) for v in versions)
    assert sorted(plain(v) for v in versions)[-2:] == sorted([USER_KEY, HF_TOKEN])
    assert len(mocks.of_type(SECRET_ACCESSOR)) == 3

    vm = mocks.one(INSTANCE).inputs
    assert runtime_document(vm).secrets.hf_token is not None
    [tls_version] = [r for r in mocks.of_type(SECRET_VERSION) if r.name.endswith("tls-key-version")]
    tls_key = plain(tls_version.inputs["secretData"])
    for secret in (USER_KEY, HF_TOKEN, tls_key):
        assert secret not in json.dumps(vm["metadata"])
        assert secret not in everything_but_secret_versions(mocks)
        assert secret not in await value(outputs["smoke_test_command"])
    assert await is_secret(outputs["api_key"])
    assert await value(outputs["api_key"]) == USER_KEY


@stack_test
async def test_bigger_shape_and_custom_model_flow_into_the_vm() -> None:
    outputs, mocks = await run_program(
        *stack_config(
            "dev",
            {
                "model": "Qwen/Qwen2.5-14B-Instruct",
                "servedModelName": "qwen14",
                "gcp": {"machineType": "a2-ultragpu-2g", "zone": "us-east4-c", "gpuCount": 2},
            },
        )
    )
    vm = mocks.one(INSTANCE).inputs
    assert vm["machineType"] == "a2-ultragpu-2g"
    assert "guestAccelerators" not in vm
    doc = runtime_document(vm)
    assert doc.vllm.args[0] == "Qwen/Qwen2.5-14B-Instruct"
    assert doc.vllm.served_model_name == "qwen14"
    assert "--tensor-parallel-size 2" in " ".join(doc.vllm.args)
    assert await value(outputs["model"]) == "qwen14"
    assert await value(outputs["estimated_usd_per_hour"]) == pytest.approx(2 * 5.069)


@stack_test
async def test_main_module_runs_the_program() -> None:
    """`pulumi up` runs __main__.py; it must declare the same stack."""
    import pulumi
    from pulumi.runtime.stack import wait_for_rpcs

    config, secret_keys = stack_config("dev")
    pulumi.runtime.set_all_config(config, secret_keys)
    runpy.run_path(str(PROJECT_ROOT / "__main__.py"), run_name="__main__")
    await wait_for_rpcs(await_all_outstanding_tasks=False)
    from tests.support.pulumi_harness import _current_mocks

    assert len(_current_mocks[-1].of_type(INSTANCE)) == 1


@stack_test
async def test_bad_config_fails_before_any_resource_is_declared() -> None:
    with pytest.raises(stack_config_module.ConfigError) as err:
        await run_program(*stack_config("dev", {"gcp": {"machineType": "n1-standard-8"}}))
    assert "llm-endpoint:gcp.machineType = 'n1-standard-8': not an A100 machine type" in str(
        err.value
    )
    from tests.support.pulumi_harness import _current_mocks

    assert _current_mocks[-1].resources == []
