"""The stack's RunPod account secrets: the secret provider against the emulator (values
write-only there), a rotation through both providers, and names RunPod would refuse."""

from __future__ import annotations

import pytest

from infra import config
from infra.config import ConfigError
from infra.runpod.account_secrets import default_prefix, reference, secret_names
from infra.runpod.secret_provider import RunpodSecretProvider
from tests.support.runpod_emulator import FakeClock, RunpodEmulator
from tests.support.runpod_testing import (
    ENDPOINT_KEY,
    KEY_SECRET,
    NEW_ENDPOINT_KEY,
    configured,
    pod_inputs,
)

pytest_plugins = ["tests.support.runpod_fixtures"]


@pytest.fixture
def secrets_provider(clock: FakeClock, emulator: RunpodEmulator) -> RunpodSecretProvider:
    return configured(RunpodSecretProvider(now=clock.now, sleep=clock.sleep))


def _props(name: str, value: str) -> dict[str, object]:
    return {"name": name, "value": value, "description": "test"}


def test_create_rotate_and_delete_a_secret(secrets_provider, emulator):
    made = secrets_provider.create(_props("llm-endpoint-s1-api-key", ENDPOINT_KEY))
    stored = emulator.secrets[made.id]
    assert stored["name"] == "llm-endpoint-s1-api-key" and stored["value"] == ENDPOINT_KEY
    assert made.outs["secretId"] == made.id and made.outs["version"]

    read = secrets_provider.read(made.id, made.outs)
    assert read.id == made.id

    news = _props("llm-endpoint-s1-api-key", NEW_ENDPOINT_KEY)
    assert secrets_provider.diff(made.id, made.outs, news).replaces == []
    rotated = secrets_provider.update(made.id, made.outs, news)
    assert emulator.secrets[made.id]["value"] == NEW_ENDPOINT_KEY
    assert rotated.outs["version"] != made.outs["version"]  # the pods restart on this

    secrets_provider.delete(made.id, rotated.outs)
    assert made.id not in emulator.secrets
    secrets_provider.delete(made.id, rotated.outs)  # already gone: fine
    assert secrets_provider.read(made.id, rotated.outs).id == ""
    # No answer ever carried a value back (values are write-only).
    assert all("value" not in (b or {}) for m, p, b in emulator.requests if m == "GET")


def test_a_secret_left_by_a_lost_state_is_adopted_with_the_stack_value(secrets_provider, emulator):
    old = emulator.put_secret("llm-endpoint-s2-api-key", "stale-value-0123456789abcdefghijkl")
    made = secrets_provider.create(_props("llm-endpoint-s2-api-key", ENDPOINT_KEY))
    assert made.id == old and emulator.secrets[old]["value"] == ENDPOINT_KEY


@pytest.mark.parametrize("name", ["RUNPOD_key", "runpod-x", "9lives", "a b", "x" * 200])
def test_names_runpod_would_refuse_fail_check(secrets_provider, name):
    failures = secrets_provider.check({}, _props(name, ENDPOINT_KEY)).failures
    assert [f.property for f in failures] == ["name"]


@pytest.mark.parametrize(
    ("prefix", "fragment"),
    [("RunPod-prod", "reserves names starting with RUNPOD"), ("prod stack", "letters, digits")],
)
def test_a_bad_secret_prefix_fails_at_preview_with_key_value_and_fix(prefix, fragment):
    with pytest.raises(ConfigError) as err:
        config.parse({"runpod": {"secretPrefix": prefix}})
    assert f"llm-endpoint:runpod.secretPrefix = {prefix!r}" in str(err.value)
    assert fragment in str(err.value)


def test_default_names_come_from_the_stack_and_never_start_with_runpod():
    assert secret_names(default_prefix("runpod")) == (
        "llm-endpoint-runpod-api-key",
        "llm-endpoint-runpod-hf-token",
    )
    assert reference("x-api-key") == "{{ RUNPOD_SECRET_x-api-key }}"


def test_rotation_updates_the_secret_then_restarts_the_pod_on_the_new_key(
    provider, secrets_provider, emulator
):
    secret_id = next(k for k, v in emulator.secrets.items() if v["name"] == KEY_SECRET)
    secret_outs = {**_props(KEY_SECRET, ENDPOINT_KEY), "secretId": secret_id, "version": "v1"}
    pod = provider.create(provider.check({}, pod_inputs()).inputs)

    # What `pulumi up` does after `pulumi config set --secret apiKey <new>`: the secret first
    # (the pods depend on it), then each pod with the secret's new version.
    rotated = secrets_provider.update(secret_id, secret_outs, _props(KEY_SECRET, NEW_ENDPOINT_KEY))
    news = provider.check(
        {}, pod_inputs(apiKey=NEW_ENDPOINT_KEY, secretsVersion=rotated.outs["version"])
    ).inputs
    assert provider.diff(pod.id, pod.outs, news).replaces == []
    updated = provider.update(pod.id, pod.outs, news)

    assert emulator.container_env(pod.id)["VLLM_API_KEY"] == NEW_ENDPOINT_KEY
    actions = [b for m, p, b in emulator.requests if p == f"/v2/pods/{pod.id}/action"]
    assert actions == [{"action": "restart"}]
    assert updated.outs["status"] == "RUNNING"
    provider.delete(pod.id, updated.outs)
    # The emulator fixture then checks that no pod create or update body held either key.


def test_a_pod_whose_secret_is_gone_fails_to_start_and_is_deleted(provider, emulator):
    emulator.secrets.clear()  # e.g. deleted from the console
    with pytest.raises(Exception, match="went ERROR"):
        provider.create(provider.check({}, pod_inputs(readyTimeoutMinutes=5)).inputs)
    assert emulator.live_pods() == []
