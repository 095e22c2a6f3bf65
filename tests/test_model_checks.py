"""The model checked against the machine at preview, from the model's files on the Hub.

The real `huggingface_hub` client talks to a loopback stand-in for the Hub
(tests/support/hub_standin.py) through HF_ENDPOINT, as `pulumi preview` would talk to
huggingface.co.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from pulumi.runtime import config as runtime_config

from infra import config, hub, model_facts
from tests.support.hub_standin import HubStandIn, Repo, model_repo, running

GB = 10**9
# As published in Qwen/Qwen2.5-7B-Instruct's config.json (docs/facts/huggingface.md).
QWEN_7B = {
    "architectures": ["Qwen2ForCausalLM"],
    "hidden_size": 3584,
    "num_attention_heads": 28,
    "num_key_value_heads": 4,
    "num_hidden_layers": 28,
    "max_position_embeddings": 32768,
    "torch_dtype": "bfloat16",
}
QWEN_7B_SHARDS = {f"model-0000{i}-of-00004.safetensors": 3_830_000_000 for i in range(1, 5)}
# A made-up long-context model with full multi-head attention: 0.5 MiB of KV cache per token.
WIDE_KV = {
    "hidden_size": 4096,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "max_position_embeddings": 131072,
}
TOKEN = "hf_standin_token_0123456789"
GCP = {"project": "my-project-1", "allowedSourceRanges": ["203.0.113.0/24"]}
POD_IMAGE = "ghcr.io/acme/llm-endpoint-vllm:v0.33.0-proxy1"


def _repos() -> dict[str, Repo]:
    return {
        "Qwen/Qwen2.5-7B-Instruct": model_repo(QWEN_7B, QWEN_7B_SHARDS),
        "acme/wide-kv-8b": model_repo(WIDE_KV, {"model.safetensors": 15_300_000_000}),
        "acme/huge-38b": model_repo(QWEN_7B, {"model.safetensors": 38 * 2**30}),
        "acme/gated-7b": model_repo(QWEN_7B, QWEN_7B_SHARDS, gated=True),
        "acme/model-GGUF": Repo({"README.md": b"gguf", "model.Q4_K_M.gguf": 4 * GB}),
        # Sharded weights plus a consolidated copy of them: vLLM loads the shards only.
        "acme/with-consolidated": model_repo(
            QWEN_7B, {**QWEN_7B_SHARDS, "consolidated.safetensors": 15_320_000_000}
        ),
    }


@pytest.fixture
def hub_standin(monkeypatch: pytest.MonkeyPatch) -> Iterator[HubStandIn]:
    with running(HubStandIn(_repos(), accepted_tokens=frozenset({TOKEN}))) as standin:
        monkeypatch.setenv("HF_ENDPOINT", standin.url)
        yield standin


def parse(raw: dict[str, Any], timeout_s: float = 5.0) -> config.StackConfig:
    return config.parse(
        raw, hub_lookup=lambda model, token: hub.lookup(model, token, timeout_s=timeout_s)
    )


def problems(raw: dict[str, Any]) -> str:
    with pytest.raises(config.ConfigError) as err:
        parse(raw)
    return str(err.value)


# --- what the Hub's files say -------------------------------------------------------------


def test_the_hub_answer_is_read_through_the_real_client(hub_standin: HubStandIn) -> None:
    cfg = parse({"gcp": GCP})
    facts = cfg.model_facts
    assert facts is not None
    assert (facts.attention_heads, facts.kv_heads, facts.layers, facts.head_dim) == (28, 4, 28, 128)
    assert facts.max_len == 32768
    assert cfg.weights_gb == 15.3  # the four shards, from the Hub's listing
    assert cfg.warnings == ()
    paths = [(r.method, r.path) for r in hub_standin.requests]
    assert ("GET", "/api/models/Qwen/Qwen2.5-7B-Instruct") in paths
    assert any(
        p.endswith("/resolve/" + _repos()["Qwen/Qwen2.5-7B-Instruct"].sha + "/config.json")
        for _, p in paths
    )
    assert any(p.endswith("/model.safetensors.index.json") for _, p in paths)


def test_eight_gpus_cannot_split_28_attention_heads(hub_standin: HubStandIn) -> None:
    message = problems({"gcp": {**GCP, "machineType": "a2-highgpu-8g"}})
    assert message.startswith("Invalid stack configuration (1 problem):")
    assert (
        "llm-endpoint:gcp.machineType = 'a2-highgpu-8g': a2-highgpu-8g runs vLLM with "
        "tensor-parallel size 8 (one per GPU), which must divide Qwen/Qwen2.5-7B-Instruct's 28 "
        "attention heads" in message
    )
    assert "Use one of a2-highgpu-1g, a2-highgpu-2g, a2-highgpu-4g, a2-ultragpu-1g" in message


def test_pod_gpu_count_must_divide_the_heads(hub_standin: HubStandIn) -> None:
    message = problems({"runpod": {"image": POD_IMAGE, "gpuCount": 3}})
    assert "llm-endpoint:runpod.gpuCount = 3: gpuCount 3 runs vLLM with tensor-parallel" in message
    assert "Set gpuCount to 1 or 2 or 4 or 7" in message


def test_max_model_len_beyond_the_model_fails(hub_standin: HubStandIn) -> None:
    message = problems({"gcp": GCP, "maxModelLen": 131072})
    assert (
        "llm-endpoint:maxModelLen = 131072: Qwen/Qwen2.5-7B-Instruct handles at most 32768 "
        "tokens (its config.json), and vLLM refuses a longer maxModelLen. Set maxModelLen to "
        "32768 or less" in message
    )


@pytest.mark.parametrize(
    ("cfg", "limit"),
    [
        pytest.param(QWEN_7B, 32768, id="max_position_embeddings"),
        # vLLM 0.33.0 treats a YaRN config's max_position_embeddings as already scaled.
        pytest.param(
            {**QWEN_7B, "rope_scaling": {"type": "yarn", "factor": 4.0}}, 32768, id="yarn"
        ),
        pytest.param(
            {**QWEN_7B, "rope_scaling": {"rope_type": "linear", "factor": 2.0}},
            65536,
            id="linear-scaling-multiplies",
        ),
        pytest.param(
            {
                **QWEN_7B,
                "rope_parameters": {"full_attention": {"rope_type": "dynamic", "factor": 2.0}},
            },
            65536,
            id="nested-rope-parameters",
        ),
        pytest.param(
            {
                **QWEN_7B,
                "model_type": "gemma3",
                "rope_scaling": {"rope_type": "linear", "factor": 8.0},
            },
            32768,
            id="gemma3-already-scaled",
        ),
        pytest.param({"n_positions": 1024, "seq_length": 2048}, 1024, id="smallest-key"),
        pytest.param(
            {"max_position_embeddings": 4096, "model_max_length": 8192},
            8192,
            id="model_max_length-decides",
        ),
        pytest.param({"hidden_size": 64}, None, id="no-limit-named"),
    ],
)
def test_the_length_limit_is_derived_as_vllm_derives_it(
    cfg: dict[str, Any], limit: int | None
) -> None:
    assert model_facts.max_model_len_of(cfg) == limit


def test_kv_cache_of_max_model_len_must_fit_beside_the_weights(hub_standin: HubStandIn) -> None:
    """0.5 MiB per token: 65536 tokens need 32 GiB, but after 14.2 GiB of weights and vLLM's
    own ~2 GiB only ~19.8 GiB of 0.9 x 40 GiB are left."""
    message = problems({"gcp": GCP, "model": "acme/wide-kv-8b", "maxModelLen": 65536})
    assert message.startswith("Invalid stack configuration (1 problem):")
    assert (
        "llm-endpoint:maxModelLen = 65536: the KV cache for one 65536-token sequence needs "
        "32.0 GiB per GPU on a2-highgpu-1g" in message
    )
    assert "Set maxModelLen to 40449 or less" in message
    assert "a2-ultragpu-1g" in message
    assert parse({"gcp": GCP, "model": "acme/wide-kv-8b", "maxModelLen": 32768}).model_facts


def test_weights_larger_than_the_gpus_fail_on_the_machine_type(hub_standin: HubStandIn) -> None:
    message = problems(
        {"gcp": {**GCP, "bootDiskSizeGb": 200}, "model": "acme/huge-38b", "maxModelLen": 4096}
    )
    assert (
        "llm-endpoint:gcp.machineType = 'a2-highgpu-1g': acme/huge-38b does not fit on "
        "a2-highgpu-1g: 38.0 GiB of weights per GPU" in message
    )
    assert "Use a machine type with more or larger GPUs: a2-highgpu-2g, a2-highgpu-4g" in message


def test_the_pod_gpus_are_checked_too(hub_standin: HubStandIn) -> None:
    message = problems(
        {
            "runpod": {"image": POD_IMAGE, "gpuTypeIds": ["NVIDIA GeForce RTX 4090 24GB"]},
            "model": "acme/huge-38b",
            "maxModelLen": 4096,
        }
    )
    assert (
        "llm-endpoint:runpod.gpuTypeIds = 'NVIDIA GeForce RTX 4090 24GB': acme/huge-38b "
        "does not fit on 1 x NVIDIA GeForce RTX 4090 24GB" in message
    )


def test_a_pod_gpu_type_without_its_memory_in_the_name_is_a_warning(
    hub_standin: HubStandIn,
) -> None:
    cfg = parse({"runpod": {"image": POD_IMAGE, "gpuTypeIds": ["NVIDIA H100 NVL"]}})
    assert cfg.warnings == (
        "Not checked: llm-endpoint:runpod.gpuTypeIds = 'NVIDIA H100 NVL': its memory is not in "
        "its name, so whether the model fits was not checked",
    )


def test_a_gguf_only_repository_fails(hub_standin: HubStandIn) -> None:
    message = problems({"gcp": GCP, "model": "acme/model-GGUF", "modelWeightsGb": 4})
    assert (
        "llm-endpoint:model = 'acme/model-GGUF': acme/model-GGUF has no safetensors weights "
        "(only GGUF files, which vLLM does not serve)" in message
    )


def test_an_unknown_model_fails_with_one_message(hub_standin: HubStandIn) -> None:
    message = problems({"gcp": GCP, "model": "acme/no-such-model-7b"})
    assert message.startswith("Invalid stack configuration (1 problem):")
    assert "llm-endpoint:model = 'acme/no-such-model-7b': no model acme/no-such-model-7b" in message


def test_weights_come_from_the_index_not_every_safetensors_file(hub_standin: HubStandIn) -> None:
    assert parse({"gcp": GCP, "model": "acme/with-consolidated"}).weights_gb == 15.3


def test_the_disk_checks_use_the_hub_size(hub_standin: HubStandIn) -> None:
    message = problems(
        {"gcp": {**GCP, "bootDiskSizeGb": 100}, "model": "acme/huge-38b", "maxModelLen": 4096}
    )
    assert "gcp.bootDiskSizeGb = 100: too small" in message
    assert "~40.8 GB of weights" in message


# --- gated models and tokens ------------------------------------------------------------------


def test_a_gated_model_without_token_fails_once(hub_standin: HubStandIn) -> None:
    message = problems({"gcp": GCP, "model": "acme/gated-7b"})
    assert message.startswith("Invalid stack configuration (1 problem):")
    assert "llm-endpoint:hfToken = (not set): acme/gated-7b is gated on Hugging Face" in message


def test_a_gated_model_with_an_accepted_token_is_checked(hub_standin: HubStandIn) -> None:
    cfg = parse({"gcp": GCP, "model": "acme/gated-7b", "hfToken": TOKEN})
    assert cfg.model_facts is not None and cfg.model_facts.gated
    assert {r.authorization for r in hub_standin.requests} == {f"Bearer {TOKEN}"}


def test_a_rejected_token_fails_without_being_shown(hub_standin: HubStandIn) -> None:
    wrong = "hf_wrong_token_never_shown_0000"
    message = problems({"gcp": GCP, "model": "acme/gated-7b", "hfToken": wrong})
    assert "llm-endpoint:hfToken = <secret>: the Hugging Face Hub rejects this token" in message
    assert wrong not in message


# --- when the Hub cannot be asked -------------------------------------------------------------


def test_an_unreachable_hub_falls_back_to_the_table_with_a_warning() -> None:
    """conftest.py points HF_ENDPOINT at a closed loopback port."""
    started = time.monotonic()
    cfg = parse({"gcp": {**GCP, "machineType": "a2-highgpu-8g"}})
    assert time.monotonic() - started < 5
    assert cfg.model_facts is None
    assert cfg.weights_gb == 15.3  # infra/serving.py's table
    (warning,) = cfg.warnings
    assert warning.startswith(
        "Not checked: llm-endpoint:model = 'Qwen/Qwen2.5-7B-Instruct': the Hugging Face Hub "
        "could not be asked (ConnectError"
    )
    for unchecked in ("safetensors", "gated", "attention heads", "maxModelLen", "GPU memory"):
        assert unchecked in warning
    assert "Disks are sized from the built-in table in infra/serving.py" in warning


def test_a_stalled_hub_costs_the_deadline_not_more(monkeypatch: pytest.MonkeyPatch) -> None:
    with running(HubStandIn(_repos(), stall=True)) as standin:
        monkeypatch.setenv("HF_ENDPOINT", standin.url)
        started = time.monotonic()
        answer = hub.lookup("Qwen/Qwen2.5-7B-Instruct", None, timeout_s=0.2)
        elapsed = time.monotonic() - started
    assert isinstance(answer, hub.Unavailable)
    assert elapsed < 0.6 + 0.5
    assert standin.requests  # it did ask


def test_hf_hub_offline_skips_the_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.lookup("Qwen/Qwen2.5-7B-Instruct", None) == hub.Unavailable("HF_HUB_OFFLINE is set")


def test_the_unreachable_warning_is_also_listed_with_errors() -> None:
    message = problems({"gcp": {**GCP, "zone": "us-east4-c"}})
    assert "Invalid stack configuration (1 problem):\n  - llm-endpoint:gcp.zone" in message
    assert "\nAlso not checked:\n  - llm-endpoint:model = 'Qwen/Qwen2.5-7B-Instruct'" in message


def test_load_asks_the_hub(hub_standin: HubStandIn) -> None:
    """The program's own path: load() reads the engine's config and asks the Hub."""
    runtime_config.set_all_config(
        {"llm-endpoint:gcp": json.dumps({**GCP, "machineType": "a2-highgpu-8g"})}, []
    )
    with pytest.raises(config.ConfigError, match=r"must divide Qwen/Qwen2\.5-7B-Instruct's 28"):
        config.load()
