"""The serving contract shared by the VM agent, the RunPod provider and the smoke test."""

from __future__ import annotations

from infra import serving

MODEL = "qwen"
LISTING = {"object": "list", "data": [{"id": MODEL, "object": "model"}]}


def test_env_without_secrets_has_no_secret_names() -> None:
    env = serving.vllm_container_env()
    assert serving.ENV_API_KEY not in env
    assert serving.ENV_HF_TOKEN not in env
    assert env["VLLM_NO_USAGE_STATS"] == "1"
    assert env["DO_NOT_TRACK"] == "1"


def test_env_caches_live_under_the_unprivileged_home() -> None:
    env = serving.vllm_container_env()
    assert env["HOME"] == serving.VLLM_HOME
    for key in ("HF_HOME", "VLLM_CACHE_ROOT", "TRITON_CACHE_DIR"):
        assert env[key].startswith(serving.VLLM_HOME + "/.cache/")
    assert env["HF_HOME"] == serving.HF_CACHE_DIR
    assert env["VLLM_CACHE_ROOT"] == serving.VLLM_CACHE_DIR


def test_env_with_secrets_adds_exactly_them() -> None:
    plain = serving.vllm_container_env()
    full = serving.vllm_container_env(api_key="k" * 40, hf_token="hf_x")
    assert {k: v for k, v in full.items() if k not in plain} == {
        "VLLM_API_KEY": "k" * 40,
        "HF_TOKEN": "hf_x",
    }
    assert "HF_TOKEN" not in serving.vllm_container_env(api_key="k", hf_token="")


def test_ready_needs_health_and_models_listing_the_model() -> None:
    assert serving.is_ready(200, 200, LISTING, MODEL)
    assert serving.not_ready_reason(200, 200, LISTING, MODEL) is None


def test_not_ready_cases_name_the_reason() -> None:
    cases: list[tuple[int | None, int | None, object, str]] = [
        (None, None, None, "GET /health -> no answer"),
        (503, None, None, "GET /health -> 503"),
        (200, 401, {"error": "Unauthorized"}, "GET /v1/models with the key -> 401"),
        (200, 200, {"data": [{"id": "other"}]}, "lists ['other'], not 'qwen'"),
        (200, 200, "not json", "lists no model"),
        (200, 200, {"data": None}, "lists no model"),
    ]
    for health, models, body, expected in cases:
        reason = serving.not_ready_reason(health, models, body, MODEL)
        assert reason is not None and expected in reason, (health, models, body, reason)
        assert not serving.is_ready(health, models, body, MODEL)
