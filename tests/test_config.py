"""Stack config validation: every error names the key, the bad value and the fix."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pulumi.runtime import config as runtime_config
from pydantic import BaseModel

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
        [
            "must not be empty",
            'Example: `allowedSourceRanges: ["198.51.100.7/32"]` under `llm-endpoint:gcp`',
        ],
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
        ["required but not set", 'Example: `project: "my-project-123"` under `llm-endpoint:gcp`'],
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
    # Group mode (gcp.replicas >= 2, docs/scale-out.md).
    pytest.param(
        gcp(replicas=0),
        "llm-endpoint:gcp.replicas = 0",
        ["at least one replica", "pulumi destroy"],
        id="replicas-zero",
    ),
    pytest.param(
        gcp(replicas=17, region="us-central1"),
        "llm-endpoint:gcp.replicas = 17",
        ["at most 16", "4 zone(s) of us-central1"],
        id="replicas-above-the-limit",
    ),
    pytest.param(
        gcp(replicas=2, zone="us-central1-a"),
        "llm-endpoint:gcp.zone = 'us-central1-a'",
        ["Remove gcp.zone", "gcp.region: us-central1", "us-central1-b"],
        id="zone-pinned-with-replicas",
    ),
    pytest.param(
        gcp(region="us-west1", machineType="a2-ultragpu-1g", replicas=2),
        "llm-endpoint:gcp.machineType = 'a2-ultragpu-1g'",
        ["no zone of gcp.region 'us-west1' offers nvidia-a100-80gb", "us-central1"],
        id="machine-type-no-zone-of-region-offers",
    ),
    pytest.param(
        gcp(region="europe-west4", zone="us-central1-a"),
        "llm-endpoint:gcp.zone = 'us-central1-a'",
        ["is not in gcp.region 'europe-west4'"],
        id="zone-outside-region",
    ),
    pytest.param(
        gcp(replicas=3, region="us-central1", gpuQuota=2),
        "llm-endpoint:gcp.replicas = 3",
        ["needs 3 GPUs", "gpuQuota is 2", "NVIDIA_A100_GPUS", "GPUS_ALL_REGIONS"],
        id="replicas-above-quota",
    ),
    pytest.param(
        gcp(replicas=2, region="us-central1", maxSurge=1, gpuQuota=2, spot=True),
        "llm-endpoint:gcp.replicas = 2",
        ["needs 3 GPUs", "a surge of 1", "PREEMPTIBLE_NVIDIA_A100_GPUS"],
        id="surge-above-spot-quota",
    ),
    pytest.param(
        gcp(replicas=2, region="us-central1", readyTimeoutMinutes=60),
        "llm-endpoint:gcp.readyTimeoutMinutes = 60",
        ["3600 s", "at most 25"],
        id="group-ready-timeout-beyond-autohealing-limit",
    ),
    pytest.param(
        gcp(replicas=2, region="us-central1", stopOnFailure=False),
        "llm-endpoint:gcp.stopOnFailure = False",
        ["recreate a broken replica", "replicas: 1"],
        id="group-without-stop-on-failure",
    ),
    pytest.param(
        gcp(replicas=2, region="us-central1", idleMinReplicas=2),
        "llm-endpoint:gcp.idleMinReplicas = 2",
        ["below replicas (2)"],
        id="idle-minimum-not-below-replicas",
    ),
    pytest.param(
        gcp(maxSurge=1),
        "llm-endpoint:gcp.maxSurge = 1",
        ["only applies to a group", "replicas: 2+"],
        id="surge-without-group",
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
        json.dumps({"llm-endpoint:maxModelLen": "4096", "pulumi:tags": "{}"}),
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


# --- every problem in one run ----------------------------------------------------------------


def test_a_bad_key_does_not_hide_the_checks_of_the_others() -> None:
    """A wrong machine type used to stop the world-open check from running at all."""
    message = error_of(gcp(machineType="n1-standard-4", allowedSourceRanges=["0.0.0.0/0"]))
    assert message.startswith("Invalid stack configuration (2 problems):")
    assert "llm-endpoint:gcp.machineType = 'n1-standard-4': not an A100 machine type" in message
    assert "llm-endpoint:gcp.allowedSourceRanges = '0.0.0.0/0': opens the endpoint" in message


def test_four_mistakes_give_four_messages() -> None:
    raw = {
        **gcp(
            machineType="n1-standard-4",
            allowedSourceRanges=["0.0.0.0/0"],
            spotTerminationAction="DELETE",
            bootDiskSizeGb=60,
        ),
        "model": "meta-llama/Llama-3.1-8B-Instruct",
    }
    message = error_of(raw)
    assert message.startswith("Invalid stack configuration (5 problems):")
    for key in (
        "gcp.machineType",
        "gcp.allowedSourceRanges",
        "gcp.spotTerminationAction",
        "gcp.bootDiskSizeGb",
        "hfToken",
    ):
        assert f"  - llm-endpoint:{key} = " in message


def test_a_check_that_reads_a_bad_key_is_skipped_not_guessed() -> None:
    """The zone check needs the machine type: with a bad machine type it says nothing about
    the zone (the default machine type would be a guess), and reports the machine type."""
    message = error_of(gcp(machineType="n1-standard-4", zone="us-east4-c"))
    assert message.startswith("Invalid stack configuration (1 problem):")
    assert "gcp.zone" not in message


def test_a_required_key_replaced_for_the_cross_checks_is_reported_once() -> None:
    message = error_of({"gcp": {"project": "Bad_Id", "allowedSourceRanges": "203.0.113.0/24"}})
    assert message.startswith("Invalid stack configuration (2 problems):")
    assert message.count("gcp.project") == 1
    assert message.count("gcp.allowedSourceRanges") == 1


@pytest.mark.parametrize(
    ("raw", "line"),
    [
        pytest.param(
            gcp(allowedSourceRanges="203.0.113.0/24"),
            "llm-endpoint:gcp.allowedSourceRanges = '203.0.113.0/24': Input should be a valid "
            'list. Example: `allowedSourceRanges: ["198.51.100.7/32"]` under `llm-endpoint:gcp`',
            id="string-for-list",
        ),
        pytest.param(
            {**gcp(), "maxModelLen": "lots"},
            "llm-endpoint:maxModelLen = 'lots': Input should be a valid integer, unable to parse "
            "string as an integer. Example: `llm-endpoint:maxModelLen: 8192` in "
            "Pulumi.<stack>.yaml",
            id="string-for-int",
        ),
        pytest.param(
            {"gcp": "my-project-123"},
            "llm-endpoint:gcp = 'my-project-123': Input should be a valid dictionary or instance "
            'of GcpConfig. Example: `llm-endpoint:gcp: {"project": "my-project-123", '
            '"allowedSourceRanges": ["198.51.100.7/32"]}`',
            id="string-for-object",
        ),
        pytest.param(
            {"runpod": {"image": "ghcr.io/a/llm-endpoint-vllm:v0.33.0-1", "gpuTypeIds": []}},
            "llm-endpoint:runpod.gpuTypeIds = []: must not be empty. Example: `gpuTypeIds: "
            '["NVIDIA A100 80GB PCIe", "NVIDIA A100-SXM4-80GB"]` under `llm-endpoint:runpod`',
            id="empty-list",
        ),
    ],
)
def test_type_errors_name_the_key_and_show_a_correct_example(
    raw: dict[str, Any], line: str
) -> None:
    assert f"  - {line}" in error_of(raw)


def _fields(model: type[BaseModel], prefix: str = "") -> list[tuple[str, Any]]:
    out = []
    for name, info in model.model_fields.items():
        key = prefix + str(info.validation_alias or name)
        out.append((key, info))
    return out


EVERY_KEY = [
    *(k for k, _ in _fields(config.StackConfig)),
    *(k for k, _ in _fields(config.GcpConfig, "gcp.")),
    *(k for k, _ in _fields(config.RunpodConfig, "runpod.")),
]


@pytest.mark.parametrize("key", EVERY_KEY)
def test_every_key_has_a_correct_example(key: str) -> None:
    """The example a message shows must itself be accepted, next to a valid stack."""
    from infra import config_report

    if key in config.SECRET_KEYS:
        assert "pulumi config set --secret" in (
            config_report.example_of(config.StackConfig, key) or ""
        )
        return
    info = config_report.field_at(config.StackConfig, key)
    assert info is not None and info.examples, f"{key} has no example on its Field"
    example = info.examples[0]
    base: dict[str, Any] = {
        **gcp(),
        "runpod": {"image": "ghcr.io/acme/llm-endpoint-vllm:v0.33.0-proxy1"},
    }
    if "." in key:
        section, leaf = key.split(".")
        base[section] = {**base[section], leaf: example}
        if leaf == "spotTerminationAction":
            base[section]["spot"] = True
    else:
        base[key] = example
    config.parse(base)


def test_every_key_is_described_in_docs_configuration() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[1] / "docs" / "configuration.md").read_text()
    missing = [k for k in EVERY_KEY if f"`{k}`" not in doc]
    assert not missing, f"docs/configuration.md does not describe {missing}"


# --- keys outside the namespace, secrets in plain text, names clients type ------------------


def _engine(values: dict[str, Any], secret_keys: list[str]) -> str:
    runtime_config.set_all_config(
        {k: v if isinstance(v, str) else json.dumps(v) for k, v in values.items()}, secret_keys
    )
    with pytest.raises(config.ConfigError) as err:
        config.load()
    return str(err.value)


def test_a_misspelt_namespace_fails_instead_of_being_ignored() -> None:
    message = _engine({"llm-endpont:gcp": GCP_OK, "llm-endpoint:maxModelLen": "4096"}, [])
    assert message.startswith("Invalid stack configuration (2 problems):")
    assert "  - llm-endpont:gcp: namespace 'llm-endpont' is not one this program reads" in message
    assert "write `llm-endpoint:gcp`" in message
    # ... and since the gcp object went to the wrong namespace, nothing is deployed.
    assert "llm-endpoint:gcp = (not set): the stack deploys nothing" in message


def test_a_misspelt_namespace_never_shows_its_value() -> None:
    message = _engine({"llm-endpoint:gcp": GCP_OK, "lm-endpoint:hfToken": "hf_sekrit"}, [])
    assert "lm-endpoint:hfToken: namespace" in message
    assert "hf_sekrit" not in message


def test_provider_and_pulumi_namespaces_are_allowed() -> None:
    runtime_config.set_all_config(
        {"llm-endpoint:gcp": json.dumps(GCP_OK), "gcp:project": "p", "pulumi:tags": "{}"}, []
    )
    assert config.load().gcp is not None


@pytest.mark.parametrize("key", config.SECRET_KEYS)
def test_a_secret_written_in_plain_text_fails_without_echoing_it(key: str) -> None:
    value = "plain-text-secret-" + "x" * 40
    message = _engine({"llm-endpoint:gcp": GCP_OK, f"llm-endpoint:{key}": value}, [])
    assert f"llm-endpoint:{key} = <secret>: is written in plain text in the stack file" in message
    assert f"pulumi config set --secret llm-endpoint:{key}" in message
    assert value not in message


def test_a_secret_set_with_secret_is_accepted() -> None:
    runtime_config.set_all_config(
        {"llm-endpoint:gcp": json.dumps(GCP_OK), "llm-endpoint:hfToken": "hf_x"},
        ["llm-endpoint:hfToken"],
    )
    assert config.load().hf_token == "hf_x"


def test_secret_keys_named_by_the_engine_env_are_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real engine names secret keys in PULUMI_CONFIG_SECRET_KEYS."""
    monkeypatch.setenv("PULUMI_CONFIG_SECRET_KEYS", json.dumps(["llm-endpoint:hfToken"]))
    runtime_config.set_all_config(
        {"llm-endpoint:gcp": json.dumps(GCP_OK), "llm-endpoint:hfToken": "hf_x"}, []
    )
    assert config.load().hf_token == "hf_x"


@pytest.mark.parametrize("name", ["my model", "qwen\t7b", "", "-leading-dash", "q" * 129])
def test_served_model_name_must_be_one_word(name: str) -> None:
    message = error_of({**gcp(), "servedModelName": name})
    assert f"llm-endpoint:servedModelName = {name!r}: clients send this name" in message


def test_served_model_name_accepts_hub_style_names() -> None:
    assert config.parse({**gcp(), "servedModelName": "Qwen/Qwen2.5-7B:v1"}).served_model_name


def test_region_alone_picks_its_first_a100_zone_and_a_zone_gives_its_region() -> None:
    europe = config.parse(gcp(region="europe-west4", machineType="a2-ultragpu-1g")).gcp
    assert europe is not None
    assert (europe.zone, europe.region, europe.region_zones) == (
        "europe-west4-a",
        "europe-west4",
        ["europe-west4-a"],
    )
    default = config.parse(gcp()).gcp
    assert default is not None
    assert (default.zone, default.region, default.replicas) == ("us-central1-a", "us-central1", 1)


def test_a_group_without_a_ready_timeout_gets_the_longest_autohealing_can_wait_out() -> None:
    group = config.parse(gcp(replicas=2, region="us-central1")).gcp
    assert group is not None and group.ready_timeout_minutes == 25
    assert group.plan_group().initial_delay_seconds == 3600
    single = config.parse(gcp()).gcp
    assert single is not None and single.ready_timeout_minutes == 45
    explicit = config.parse(gcp(replicas=2, region="us-central1", readyTimeoutMinutes=20)).gcp
    assert explicit is not None and explicit.ready_timeout_minutes == 20
