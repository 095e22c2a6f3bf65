"""Stack config validation: every error names the key, the bad value and the fix."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pulumi.runtime import config as runtime_config

from infra import config
from tests.support.pulumi_harness import stack_config

GCP_OK: dict[str, Any] = {"project": "my-project-1", "allowedSourceRanges": ["203.0.113.0/24"]}


def gcp(**changes: Any) -> dict[str, Any]:
    return {"gcp": {**GCP_OK, **changes}}


def error_of(raw: dict[str, Any]) -> str:
    with pytest.raises(config.ConfigError) as err:
        config.parse(raw)
    return str(err.value)


# (raw config, the exact "key = value" the message must name, words of the fix it must give)
ERROR_CASES = [
    pytest.param(
        gcp(machineType="n1-standard-8"),
        "llm-endpoint:gcp.machineType = 'n1-standard-8'",
        ["not an A100 machine type", "a2-highgpu-1g", "a2-ultragpu-1g"],
        id="machine-type-not-a100",
    ),
    pytest.param(
        gcp(zone="us-east4-c"),
        "llm-endpoint:gcp.zone = 'us-east4-c'",
        ["does not offer nvidia-tesla-a100", "us-central1-a"],
        id="zone-without-a100-40gb",
    ),
    pytest.param(
        gcp(machineType="a2-ultragpu-1g", zone="us-central1-b"),
        "llm-endpoint:gcp.zone = 'us-central1-b'",
        ["does not offer nvidia-a100-80gb", "us-central1-c"],
        id="zone-without-a100-80gb",
    ),
    pytest.param(
        gcp(allowedSourceRanges=["203.0.113.0/33"]),
        "llm-endpoint:gcp.allowedSourceRanges = ['203.0.113.0/33']",
        ["not a valid CIDR range", "e.g. 203.0.113.0/24"],
        id="malformed-cidr",
    ),
    pytest.param(
        gcp(allowedSourceRanges=["10.1.2.3/8"]),
        "llm-endpoint:gcp.allowedSourceRanges = ['10.1.2.3/8']",
        ["has host bits set"],
        id="cidr-with-host-bits",
    ),
    pytest.param(
        gcp(sshSourceRanges=["office"]),
        "llm-endpoint:gcp.sshSourceRanges = ['office']",
        ["not a valid CIDR range"],
        id="malformed-ssh-cidr",
    ),
    pytest.param(
        gcp(allowedSourceRanges=["198.51.100.0/24", "0.0.0.0/0"]),
        "llm-endpoint:gcp.allowedSourceRanges = '0.0.0.0/0'",
        ["whole internet", "allowWorldOpen: true"],
        id="world-open-ipv4",
    ),
    pytest.param(
        gcp(allowedSourceRanges=["::/0"]),
        "llm-endpoint:gcp.allowedSourceRanges = '::/0'",
        ["whole internet", "allowWorldOpen: true"],
        id="world-open-ipv6",
    ),
    pytest.param(
        gcp(sshSourceRanges=["0.0.0.0/0"]),
        "llm-endpoint:gcp.sshSourceRanges = '0.0.0.0/0'",
        ["whole internet"],
        id="world-open-ssh",
    ),
    pytest.param(
        gcp(allowedSourceRanges=[]),
        "llm-endpoint:gcp.allowedSourceRanges = []",
        ["at least 1 item"],
        id="no-source-ranges",
    ),
    pytest.param(
        gcp(bootDiskSizeGb=60),
        "llm-endpoint:gcp.bootDiskSizeGb = 60",
        ["too small", "Set it to at least 90"],
        id="boot-disk-too-small",
    ),
    pytest.param(
        {**gcp(bootDiskSizeGb=100), "model": "Qwen/Qwen2.5-14B-Instruct"},
        "llm-endpoint:gcp.bootDiskSizeGb = 100",
        ["too small", "Qwen/Qwen2.5-14B-Instruct", "at least 107"],
        id="boot-disk-too-small-for-bigger-model",
    ),
    pytest.param(
        gcp(spotTerminationAction="DELETE"),
        "llm-endpoint:gcp.spotTerminationAction = 'DELETE'",
        ["only applies to spot VMs", "spot: true"],
        id="spot-action-without-spot",
    ),
    pytest.param(
        gcp(spot=True, spotTerminationAction="HIBERNATE"),
        "llm-endpoint:gcp.spotTerminationAction = 'HIBERNATE'",
        ["'STOP' or 'DELETE'"],
        id="spot-action-unknown",
    ),
    pytest.param(
        gcp(gpuCount=2),
        "llm-endpoint:gcp.gpuCount = 2",
        ["a2-highgpu-1g comes with 1 GPU(s)", "Set gpuCount to 1"],
        id="gpu-count-mismatch",
    ),
    pytest.param(
        gcp(machineType="a2-highgpu-8g", gpuCount=4),
        "llm-endpoint:gcp.gpuCount = 4",
        ["comes with 8 GPU(s)"],
        id="gpu-count-mismatch-multi",
    ),
    pytest.param(
        gcp(project="My_Project"),
        "llm-endpoint:gcp.project = 'My_Project'",
        ["not a Google Cloud project id", "gcloud projects list"],
        id="bad-project-id",
    ),
    pytest.param(
        {"gcp": {"allowedSourceRanges": ["203.0.113.0/24"]}},
        "llm-endpoint:gcp.project = (not set)",
        ["required"],
        id="missing-project",
    ),
    pytest.param(
        gcp(bootImage="projects/x/global/images/family/ubuntu-2204-with-nvidia-535"),
        "llm-endpoint:gcp.bootImage = "
        "'projects/x/global/images/family/ubuntu-2204-with-nvidia-535'",
        ["driver 535 is too old", "580+"],
        id="old-driver-image",
    ),
    pytest.param(
        gcp(bootImage="projects/x/global/images/my-image"),
        "llm-endpoint:gcp.bootImage = 'projects/x/global/images/my-image'",
        ["cannot be read from the image name", "bootImageDriverMajor"],
        id="driver-unknown",
    ),
    pytest.param(
        gcp(bootImage="projects/x/global/images/my-image", bootImageDriverMajor=550),
        "llm-endpoint:gcp.bootImageDriverMajor = 550",
        ["too old"],
        id="driver-declared-too-old",
    ),
    pytest.param(
        gcp(zonee="us-central1-a"),
        "llm-endpoint:gcp.zonee = 'us-central1-a'",
        ["unknown key (a typo?)"],
        id="unknown-nested-key",
    ),
    pytest.param(
        {**gcp(), "modle": "x/y"},
        "llm-endpoint:modle = 'x/y'",
        ["unknown key (a typo?)"],
        id="unknown-top-level-key",
    ),
    pytest.param(
        {**gcp(), "model": "Llama-3-8B-Instruct.Q4_K_M.gguf"},
        "llm-endpoint:model = 'Llama-3-8B-Instruct.Q4_K_M.gguf'",
        ["not a Hugging Face model id", "safetensors"],
        id="gguf-model",
    ),
    pytest.param(
        {**gcp(), "model": "acme/house-model"},
        "llm-endpoint:modelWeightsGb = (not set)",
        ["size of acme/house-model's weights is unknown", "Set modelWeightsGb"],
        id="unknown-model-size",
    ),
    pytest.param(
        {**gcp(), "gpuMemoryUtilization": 1.5},
        "llm-endpoint:gpuMemoryUtilization = 1.5",
        ["less than or equal to 0.98"],
        id="memory-fraction-too-high",
    ),
    pytest.param(
        {**gcp(), "model": "meta-llama/Llama-3.1-8B-Instruct"},
        "llm-endpoint:hfToken = (not set)",
        ["is gated", "pulumi config set --secret llm-endpoint:hfToken"],
        id="gated-model-without-token",
    ),
    pytest.param(
        {"model": "Qwen/Qwen2.5-7B-Instruct"},
        "llm-endpoint:gcp = (not set)",
        ["deploys nothing", "llm-endpoint:runpod"],
        id="no-target",
    ),
]


@pytest.mark.parametrize(("raw", "names", "fix_words"), ERROR_CASES)
def test_config_error_names_key_value_and_fix(
    raw: dict[str, Any], names: str, fix_words: list[str]
) -> None:
    message = error_of(raw)
    assert message.startswith("Invalid stack configuration (1 problem):\n")
    assert f"  - {names}: " in message
    for word in fix_words:
        assert word in message


def test_several_problems_are_reported_in_one_message() -> None:
    message = error_of(gcp(machineType="n1-standard-8", zonee="x", allowedSourceRanges=["bad"]))
    assert message.startswith("Invalid stack configuration (3 problems):")
    assert "gcp.machineType" in message
    assert "gcp.zonee" in message
    assert "gcp.allowedSourceRanges" in message


def test_config_error_shows_without_traceback_in_pulumi() -> None:
    import pulumi

    assert issubclass(config.ConfigError, pulumi.RunError)


def test_secret_values_are_never_echoed_in_errors() -> None:
    key = "short-but-secret-value"
    message = error_of({**gcp(), "apiKey": key})
    assert "llm-endpoint:apiKey = <secret>: must be at least 32 characters" in message
    assert key not in message
    # A secret under a typo'd key is still hidden when it is named like a secret.
    message = error_of({**gcp(), "apiKey": "with space " * 4})
    assert "with space" not in message


def test_a_secret_under_a_misspelt_key_is_not_echoed() -> None:
    """`pulumi config set --secret apiKeyy ...` is an unknown key, and still a secret."""
    runtime_config.set_all_config(
        {"llm-endpoint:gcp": json.dumps(GCP_OK), "llm-endpoint:apiKeyy": "s3cr3t-value-here"},
        ["llm-endpoint:apiKeyy"],
    )
    with pytest.raises(config.ConfigError) as err:
        config.load()
    assert "llm-endpoint:apiKeyy = <secret>: unknown key" in str(err.value)
    assert "s3cr3t-value-here" not in str(err.value)


def test_world_open_is_allowed_with_the_opt_in() -> None:
    cfg = config.parse(gcp(allowedSourceRanges=["0.0.0.0/0", "::/0"], allowWorldOpen=True))
    assert cfg.gcp is not None
    assert cfg.gcp.allowed_source_ranges == ["0.0.0.0/0", "::/0"]


def test_defaults() -> None:
    cfg = config.parse(gcp())
    assert cfg.gcp is not None
    assert cfg.gcp.machine_type == "a2-highgpu-1g"
    assert cfg.gcp.zone == "us-central1-a"
    assert cfg.gcp.region == "us-central1"
    assert cfg.gcp.boot_disk_size_gb >= 200
    assert cfg.gcp.spot is False
    assert cfg.gcp.termination_action is None
    assert cfg.gcp.stop_on_failure is True
    assert cfg.gcp.idle_stop_minutes == 0
    assert cfg.model == "Qwen/Qwen2.5-7B-Instruct"
    spec = cfg.serving_for(cfg.gcp.shape.gpus)
    assert spec.served_model_name == cfg.model
    assert spec.image.startswith("vllm/vllm-openai:v")
    assert not spec.image.endswith(":latest")
    assert config.parse(gcp(spot=True)).gcp.termination_action == "STOP"  # type: ignore[union-attr]


def test_gated_model_with_token_is_accepted() -> None:
    cfg = config.parse({**gcp(), "model": "meta-llama/Llama-3.1-8B-Instruct", "hfToken": "hf_x"})
    assert cfg.weights_gb == 16.1


def test_runpod_only_stack_needs_no_gcp() -> None:
    cfg = config.parse({"runpod": {"image": "ghcr.io/acme/llm-endpoint-vllm:v0.33.0-proxy1"}})
    assert cfg.gcp is None
    assert cfg.runpod is not None


def test_shipped_dev_stack_file_validates() -> None:
    values, secret_keys = stack_config("dev")
    raw = {k.split(":", 1)[1]: json.loads(v) if v[:1] in "{[" else v for k, v in values.items()}
    cfg = config.parse(raw)
    assert cfg.gcp is not None
    assert secret_keys == []


def test_load_reads_engine_style_strings_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine passes every value as a string (objects as JSON), partly via PULUMI_CONFIG."""
    monkeypatch.setenv(
        "PULUMI_CONFIG",
        json.dumps({"llm-endpoint:maxModelLen": "4096", "other-project:ignored": "1"}),
    )
    runtime_config.set_all_config(
        {
            "llm-endpoint:gcp": json.dumps({**GCP_OK, "spot": True}),
            "llm-endpoint:gpuMemoryUtilization": "0.85",
            "llm-endpoint:model": "Qwen/Qwen2.5-3B-Instruct",
            "gcp:project": "provider-namespace-is-not-ours",
        },
        [],
    )
    cfg = config.load()
    assert cfg.max_model_len == 4096
    assert cfg.gpu_memory_utilization == 0.85
    assert cfg.model == "Qwen/Qwen2.5-3B-Instruct"
    assert cfg.gcp is not None
    assert cfg.gcp.spot is True


def test_load_rejects_unknown_keys_passed_by_the_engine() -> None:
    runtime_config.set_all_config(
        {"llm-endpoint:gcp": json.dumps(GCP_OK), "llm-endpoint:maxModelLenght": "4096"}, []
    )
    with pytest.raises(
        config.ConfigError, match=r"llm-endpoint:maxModelLenght = 4096: unknown key"
    ):
        config.load()
