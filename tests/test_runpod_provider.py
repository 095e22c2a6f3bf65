"""The RunPod pod provider's real code against the local RunPod emulator, one scenario per test.

Every test ends with the emulator fixture's checks: no pod left running unless the test says so,
no contract violation (requests and responses validated against the project's RunPod contract), and
no secret in captured logs or output.
"""

from __future__ import annotations

import json
from typing import Any

import dill
import pytest
import requests
from pulumi.dynamic import DiffResult

from infra.runpod import bootstrap, client, placement, probes
from infra.runpod.errors import (
    AuthError,
    DeleteError,
    MissingApiKeyError,
    PlacementError,
    PodFailedError,
    RunpodError,
)
from infra.runpod.provider import RunpodPodProvider
from tests.support.runpod_emulator import FakeClock, RunpodEmulator
from tests.support.runpod_testing import (
    ENDPOINT_KEY,
    HF_TOKEN,
    IMAGE,
    NEW_ENDPOINT_KEY,
    RUNPOD_KEY,
    SECRETS,
    SERVING,
    Leaks,
    configured,
    pod_inputs,
)

pytest_plugins = ["tests.support.runpod_fixtures"]

A100_PCIE = "NVIDIA A100 80GB PCIe"
A100_SXM = "NVIDIA A100-SXM4-80GB"


def posts(emulator: RunpodEmulator) -> list[dict[str, Any]]:
    return [b for m, p, b in emulator.requests if m == "POST" and p == "/v2/pods"]


def checked(provider: RunpodPodProvider, **overrides: Any) -> dict[str, Any]:
    result = provider.check({}, pod_inputs(**overrides))
    assert result.failures == []
    return result.inputs


def assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


# -- create, read, delete ------------------------------------------------------------------


def test_create_waits_for_health_then_read_and_delete(provider, emulator, clock):
    result = provider.create(checked(provider))

    pod_id = result.id
    outs = result.outs
    assert outs["podId"] == pod_id
    assert outs["endpoint"] == emulator.proxy_url_template.format(pod_id=pod_id, port=8000)
    assert outs["gpuTypeId"] == A100_PCIE
    assert outs["dataCenterId"] == "US-KS-2"
    assert outs["costPerHour"] == pytest.approx(1.64)
    assert outs["status"] == "RUNNING"
    assert outs["podName"].startswith("llm-endpoint-test-0-")
    # Ready means /health answered 200 through the proxy, which the emulator serves only after
    # provisioning (30 s) + starting (30 s) + vLLM loading (60 s) in fake time.
    assert emulator.serving(emulator.pods[pod_id])
    assert emulator.pods[pod_id].health_hits >= 1
    assert clock.now() - 1_000_000.0 >= 120

    (body,) = posts(emulator)
    # The stock image, started with the project's entrypoint stub and vLLM's arguments as cmd.
    assert body["image"] == IMAGE == "vllm/vllm-openai:v0.33.0"
    assert body["entrypoint"] == [
        "/bin/sh",
        "-c",
        bootstrap.entrypoint_stub(),
        "llm-endpoint-entrypoint",
    ]
    assert body["cmd"] == SERVING.vllm_args()
    assert "args" not in body
    assert "--host" in body["cmd"] and "127.0.0.1" in body["cmd"]
    assert body["ports"] == ["8000/http"]
    assert body["gpu"] == {"id": A100_PCIE, "count": 1, "minCudaVersion": "13.0"}
    assert body["cloud"] == "SECURE" and body["disk"] == 50
    assert "dataCenterIds" not in body
    # The key and the token are account-secret references, substituted by RunPod at boot.
    assert body["env"]["VLLM_API_KEY"] == "{{ RUNPOD_SECRET_llm-endpoint-test-api-key }}"
    assert body["env"]["HF_TOKEN"] == "{{ RUNPOD_SECRET_llm-endpoint-test-hf-token }}"
    assert emulator.container_env(pod_id)["VLLM_API_KEY"] == ENDPOINT_KEY
    assert emulator.container_env(pod_id)["HF_TOKEN"] == HF_TOKEN
    assert body["env"]["LLM_ENDPOINT_BOOTSTRAP_B64"] == bootstrap.b64(bootstrap.render_bootstrap())
    assert body["env"]["LLM_ENDPOINT_PROXY_CONF_B64"] == bootstrap.b64(bootstrap.pod_proxy_config())
    # The key travels only as the two secret env values, never in args or the proxy config.
    assert ENDPOINT_KEY not in json.dumps([body["entrypoint"], body["cmd"]])
    assert ENDPOINT_KEY not in bootstrap.pod_proxy_config()

    read = provider.read(pod_id, outs)
    assert read.id == pod_id
    assert read.outs["status"] == "RUNNING"
    assert read.outs["costPerHour"] == pytest.approx(1.64)

    provider.delete(pod_id, outs)
    assert emulator.live_pods() == []


def test_create_places_in_requested_data_centers_in_order(provider, emulator):
    emulator.faults.no_capacity = {(A100_PCIE, "US-KS-2"), (A100_PCIE, "EU-RO-1")}
    result = provider.create(checked(provider, dataCenterIds=["US-KS-2", "EU-RO-1", "US-TX-3"]))

    tried = [(b["gpu"]["id"], b["dataCenterIds"]) for b in posts(emulator)]
    assert tried == [
        (A100_PCIE, ["US-KS-2"]),
        (A100_PCIE, ["EU-RO-1"]),
        (A100_PCIE, ["US-TX-3"]),  # 400: the PCIe card is not offered there
        (A100_SXM, ["US-KS-2"]),  # 400: nor the SXM card here
        (A100_SXM, ["EU-RO-1"]),
    ]
    assert result.outs["gpuTypeId"] == A100_SXM
    assert result.outs["dataCenterId"] == "EU-RO-1"
    provider.delete(result.id, result.outs)


def test_no_capacity_anywhere_creates_nothing_and_says_what_to_try(provider, emulator):
    emulator.faults.no_capacity = {(A100_PCIE, None), (A100_SXM, None)}
    with pytest.raises(PlacementError) as err:
        provider.create(checked(provider))
    message = str(err.value)
    assert "nothing was created" in message
    assert A100_PCIE in message and A100_SXM in message
    assert "no longer any instances available" in message
    assert "gpuTypeIds" in message
    assert len(posts(emulator)) == 2
    assert emulator.pods == {}


def test_insufficient_balance_stops_at_once_and_names_the_hourly_cost(provider, emulator):
    emulator.faults.insufficient_balance = True
    with pytest.raises(PlacementError) as err:
        provider.create(checked(provider, gpuCount=2))
    message = str(err.value)
    assert "insufficient balance" in message
    assert "$3.28/hour" in message  # 2 x $1.64 from the catalog
    assert "No pod was created" in message
    assert len(posts(emulator)) == 1  # no other candidate tried
    assert emulator.pods == {}


def test_forbidden_pool_is_skipped(provider, emulator):
    emulator.faults.forbidden_gpus = {A100_PCIE}
    result = provider.create(checked(provider))
    assert [b["gpu"]["id"] for b in posts(emulator)] == [A100_PCIE, A100_SXM]
    assert result.outs["gpuTypeId"] == A100_SXM
    provider.delete(result.id, result.outs)


def test_rate_limit_waits_for_retry_after(provider, emulator, clock):
    emulator.faults.rate_limited = {"POST /v2/pods": 2}
    emulator.faults.retry_after_s = 7
    result = provider.create(checked(provider))
    assert clock.slept[:2] == [7.0, 7.0]
    assert len(posts(emulator)) == 3
    assert len(emulator.pods) == 1
    provider.delete(result.id, result.outs)


def test_5xx_before_creating_backs_off_and_looks_up_by_name_between_the_posts(provider, emulator):
    emulator.faults.create_5xx_before = 1
    result = provider.create(checked(provider))
    bodies = posts(emulator)
    assert len(bodies) == 2
    assert bodies[0]["name"] == bodies[1]["name"] == result.outs["podName"]
    creates = [(t, m, p) for t, m, p in emulator.timeline if p == "/v2/pods"]
    assert [m for _, m, _ in creates] == ["POST", "GET", "POST"]
    (first_post, _, _), (lookup, _, _), (second_post, _, _) = creates
    # The lookup waits for a pod still being made to be listed, and comes right before the POST.
    assert lookup - first_post >= placement.LOST_CREATE_BACKOFF_S
    assert second_post == lookup
    assert len(emulator.pods) == 1
    provider.delete(result.id, result.outs)


def test_a_pod_listed_only_after_a_while_is_found_not_duplicated(provider, emulator):
    emulator.faults.create_5xx_after = 1
    emulator.faults.list_lag_s = 5  # GET /v2/pods shows a new pod only after 5 s
    result = provider.create(checked(provider))
    assert len(posts(emulator)) == 1
    assert list(emulator.pods) == [result.id]
    provider.delete(result.id, result.outs)


def test_several_pods_under_the_name_keep_one_and_delete_the_others(provider, emulator):
    # The first pod is not listed yet at the first lookup, so the POST is repeated and makes
    # a second; the next lookup sees both.
    emulator.faults.create_5xx_after = 2
    emulator.faults.list_lag_s = placement.LOST_CREATE_BACKOFF_S * 1.5
    result = provider.create(checked(provider))
    assert len(posts(emulator)) == 2
    first, second = list(emulator.pods)
    assert result.id == first  # the oldest is kept
    assert emulator.live_pods() == [first]
    assert ("DELETE", f"/v2/pods/{second}") in [(m, p) for m, p, _ in emulator.requests]
    provider.delete(result.id, result.outs)


def test_unreadable_201_is_a_lost_answer_and_the_pod_is_found(provider, emulator):
    emulator.faults.create_bad_body_after = 1
    result = provider.create(checked(provider))
    assert len(posts(emulator)) == 1
    assert list(emulator.pods) == [result.id]
    assert result.outs["status"] == "RUNNING"
    provider.delete(result.id, result.outs)


def test_interrupt_after_a_lost_create_deletes_the_pod_it_made(clock, emulator):
    interrupted: list[float] = []

    def sleep(seconds: float) -> None:
        clock.sleep(seconds)
        if not interrupted:  # Ctrl-C at the end of the first back-off
            interrupted.append(seconds)
            raise KeyboardInterrupt

    provider = configured(RunpodPodProvider(now=clock.now, sleep=sleep))
    emulator.faults.create_5xx_after = 1
    emulator.faults.list_lag_s = 1  # not listed at once: nothing has recorded its id yet
    with pytest.raises(KeyboardInterrupt):
        provider.create(checked(provider))
    assert interrupted, "the interrupt came during the back-off after the lost create"
    assert len(emulator.pods) == 1
    assert emulator.live_pods() == []
    assert [m for m, _, _ in emulator.requests].count("DELETE") == 1


@pytest.mark.parametrize("fault", ["create_5xx_after", "create_lost_after"])
def test_failed_answer_after_creating_finds_the_pod_instead_of_a_duplicate(
    provider, emulator, fault
):
    setattr(emulator.faults, fault, 1)
    result = provider.create(checked(provider))
    assert len(posts(emulator)) == 1
    assert list(emulator.pods) == [result.id]
    assert result.outs["status"] == "RUNNING"
    provider.delete(result.id, result.outs)


def test_api_failing_on_every_create_gives_up_without_orphans(provider, emulator):
    emulator.faults.create_5xx_before = 10
    with pytest.raises(PlacementError) as err:
        provider.create(checked(provider))
    message = str(err.value)
    assert "kept failing" in message
    assert "nothing is billing" not in message
    assert "was listed 60 s after the last attempt" in message
    assert "python -m scripts.runpod_pods --stack <stack>" in message
    assert len(posts(emulator)) == 3
    # Each POST was preceded (after the first) and the give-up followed by a lookup.
    kinds = [m for _, m, p in emulator.timeline if p == "/v2/pods"]
    assert kinds[:6] == ["POST", "GET", "POST", "GET", "POST", "GET"]
    assert emulator.pods == {}


def test_logs_never_show_secrets_echoed_by_api_errors(provider, emulator, caplog):
    emulator.faults.echo_env_in_errors = True
    emulator.faults.no_capacity = {(A100_PCIE, None)}  # 400 quoting the env
    emulator.faults.create_5xx_after = 1  # then 500 quoting the env
    result = provider.create(checked(provider))
    assert "no capacity on" in caplog.text and "got no clear answer" in caplog.text
    assert "<secret>" in caplog.text
    assert_no_secret(caplog.text)
    provider.delete(result.id, result.outs)


def test_retry_after_is_capped(provider, emulator, clock):
    emulator.faults.rate_limited = {"GET /v2/pods/{id}": 2}
    emulator.faults.retry_after_s = 3600
    assert provider.read("nope", {}).id == ""
    assert clock.slept == [client.MAX_RETRY_AFTER_S] * 2 == [120.0, 120.0]


@pytest.mark.parametrize("echo", [False, True])
def test_422_names_the_offending_fields_and_is_not_retried(provider, emulator, echo):
    emulator.faults.invalid_422 = True
    emulator.faults.echo_secret_in_422 = echo
    with pytest.raises(RunpodError) as err:
        provider.create(checked(provider))
    assert "$.disk" in str(err.value)
    assert_no_secret(str(err.value))
    assert ("<secret>" in str(err.value)) is echo
    assert "retrying will not help" in str(err.value)
    assert len(posts(emulator)) == 1


# -- readiness failures: the pod is deleted before the error ---------------------------------


def test_pod_stuck_provisioning_is_deleted_at_the_deadline(provider, emulator, clock):
    emulator.faults.stuck_provisioning = True
    with pytest.raises(PodFailedError) as err:
        provider.create(checked(provider, readyTimeoutMinutes=20))
    message = str(err.value)
    assert "not serving within 20 minutes" in message
    assert "status PROVISIONING" in message
    assert "$1.64/h" in message and "roughly $0.5" in message  # ~20 min at $1.64/h
    assert "has been deleted" in message
    assert emulator.live_pods() == []
    assert 20 * 60 <= clock.now() - 1_000_000.0 < 20 * 60 + 60


def test_pod_that_goes_error_is_deleted(provider, emulator):
    emulator.faults.error_after_start = True
    with pytest.raises(PodFailedError) as err:
        provider.create(checked(provider))
    assert "went ERROR" in str(err.value)
    assert emulator.live_pods() == []
    assert any(m == "DELETE" for m, _, _ in emulator.requests)


def test_pod_that_never_serves_health_is_deleted(provider, emulator):
    emulator.faults.never_healthy = True
    with pytest.raises(PodFailedError) as err:
        provider.create(checked(provider, readyTimeoutMinutes=5))
    assert "GET /health -> 502" in str(err.value)
    assert emulator.live_pods() == []


def test_pod_that_vanishes_while_starting_fails_and_read_drops_it(provider, emulator):
    emulator.faults.vanish_after_s = 45
    with pytest.raises(PodFailedError) as err:
        provider.create(checked(provider))
    assert "disappeared" in str(err.value)
    assert emulator.live_pods() == []


def test_read_of_a_pod_terminated_elsewhere_returns_empty_id(provider, emulator, clock):
    result = provider.create(checked(provider))
    emulator.pods.pop(result.id)  # terminated from the console
    read = provider.read(result.id, result.outs)
    assert read.id == ""
    assert read.outs == {}


def test_running_without_runtime_is_not_ready_even_if_health_answers(provider, emulator, clock):
    emulator.faults.runtime_null_s = 300
    result = provider.create(checked(provider))
    pod = emulator.pods[result.id]
    # RUNNING from 60 s, runtime only from 360 s: readiness waited for both.
    assert clock.now() - pod.created_at >= 360
    assert result.outs["status"] == "RUNNING"
    provider.delete(result.id, result.outs)


def test_transient_5xx_while_polling_is_retried(provider, emulator):
    emulator.faults.get_5xx = 2
    result = provider.create(checked(provider))
    assert result.outs["status"] == "RUNNING"
    provider.delete(result.id, result.outs)


# -- delete ----------------------------------------------------------------------------------


def test_slow_delete_is_polled_until_gone(provider, emulator, clock):
    result = provider.create(checked(provider))
    emulator.faults.delete_takes_s = 40
    emulator.faults.delete_5xx = 1
    emulator.faults.rate_limited = {"DELETE /v2/pods/{id}": 1}
    before = clock.now()
    provider.delete(result.id, result.outs)
    assert emulator.live_pods() == []
    assert clock.now() - before >= 40
    assert [p["status"] for p in _list(emulator) if p["id"] == result.id] in ([], ["TERMINATED"])


def test_delete_of_a_pod_already_gone_succeeds(provider, emulator):
    result = provider.create(checked(provider))
    emulator.pods.pop(result.id)
    provider.delete(result.id, result.outs)
    assert emulator.live_pods() == []


def test_unconfirmed_delete_is_an_error(provider, emulator, leaks: Leaks):
    result = provider.create(checked(provider))
    emulator.faults.delete_ignored = True
    leaks.allowed.add(result.id)
    with pytest.raises(DeleteError) as err:
        provider.delete(result.id, result.outs)
    assert "may still be billing" in str(err.value)
    assert result.id in str(err.value)
    assert emulator.live_pods() == [result.id]
    repeats = [m for m, p, _ in emulator.requests if m == "DELETE"]
    assert len(repeats) > 1  # the delete was asked again while waiting


def _list(emulator: RunpodEmulator) -> list[dict[str, Any]]:
    from infra.runpod.client import RunpodClient

    with RunpodClient(RUNPOD_KEY, base_url=emulator.base_url) as client:
        return client.list_pods()


# -- keys ------------------------------------------------------------------------------------


def test_missing_runpod_key_says_where_to_set_it(clock, emulator):
    provider = configured(RunpodPodProvider(now=clock.now, sleep=clock.sleep), key=None)
    with pytest.raises(MissingApiKeyError) as err:
        provider.create(checked(provider))
    assert "pulumi config set --secret runpodApiKey" in str(err.value)
    assert "RUNPOD_API_KEY" in str(err.value)
    assert emulator.requests == []


def test_key_from_environment_is_used_when_config_has_none(clock, emulator, monkeypatch):
    monkeypatch.setenv("RUNPOD_API_KEY", RUNPOD_KEY)
    provider = configured(RunpodPodProvider(now=clock.now, sleep=clock.sleep), key=None)
    result = provider.create(checked(provider))
    assert result.outs is not None and result.outs["status"] == "RUNNING"
    provider.delete(result.id, result.outs)
    assert emulator.live_pods() == []


def test_rejected_runpod_key_says_where_to_set_it(clock, emulator):
    provider = configured(
        RunpodPodProvider(now=clock.now, sleep=clock.sleep), key="rpa_WrongKey000000000000"
    )
    with pytest.raises(AuthError) as err:
        provider.read("abc", {})
    assert "rejected the API key" in str(err.value)
    assert "pulumi config set --secret runpodApiKey" in str(err.value)
    assert "rpa_WrongKey" not in str(err.value)


# -- check, diff, update ---------------------------------------------------------------------


def test_check_names_each_bad_field(provider, emulator):
    bad = pod_inputs(
        gpuTypeIds=[],
        gpuCount=9,
        cloud="PUBLIC",
        containerDiskGb=20,
        volumeGb=5,
        minCudaVersion="13",
        readyTimeoutMinutes=0,
        image="vllm/vllm-openai:latest",
    )
    failures = {f.property: f.reason for f in provider.check({}, bad).failures}
    assert set(failures) == {
        "gpuTypeIds",
        "gpuCount",
        "cloud",
        "volumeGb",
        "minCudaVersion",
        "readyTimeoutMinutes",
        "image",
        "containerDiskGb",  # volumeGb 5 is invalid, so 20 GB must hold the weights too
    }
    small = provider.check({}, pod_inputs(containerDiskGb=20)).failures
    assert [(f.property, "at least 29" in f.reason) for f in small] == [("containerDiskGb", True)]
    with_volume = provider.check({}, pod_inputs(containerDiskGb=20, volumeGb=30)).failures
    assert with_volume == []
    for untagged in (
        "ghcr.io/example/llm-endpoint-vllm",
        "registry.example:5000/llm-endpoint-vllm",
        "ghcr.io/example/llm-endpoint-vllm:",
    ):
        failures = provider.check({}, pod_inputs(image=untagged)).failures
        assert [f.property for f in failures] == ["image"], untagged
        assert "tag" in failures[0].reason
    digest = "ghcr.io/example/llm-endpoint-vllm@sha256:" + "a" * 64
    assert provider.check({}, pod_inputs(image=digest)).failures == []
    assert provider.check({}, pod_inputs(image="registry.example:5000/x/y:v1")).failures == []
    no_key = pod_inputs()
    del no_key["apiKey"]
    assert [f.property for f in provider.check({}, no_key).failures] == ["apiKey"]
    for f in provider.check({}, pod_inputs(apiKey="short")).failures:
        assert_no_secret(f.reason)


def test_diff_marks_replacements_and_in_place_changes(provider, emulator):
    olds = {
        **checked(provider),
        "__provider": "serialized-a",
        "podId": "p1",
        "gpuTypeId": A100_PCIE,
        "dataCenterId": "US-KS-2",
    }

    def diff(**changes: Any) -> DiffResult:
        news = {**checked(provider, **changes), "__provider": "serialized-b"}
        result: DiffResult = provider.diff("p1", olds, news)
        return result

    same = diff()
    assert same.changes is False and same.replaces == []  # __provider is not compared

    image = diff(image="ghcr.io/example/llm-endpoint-vllm:v0.33.0-proxy2")
    assert image.changes is True and image.replaces == []

    key = diff(apiKey=NEW_ENDPOINT_KEY)
    assert key.changes is True and key.replaces == []

    count = diff(gpuCount=2)
    assert count.replaces == ["gpuCount"]
    assert count.delete_before_replace is False

    assert diff(cloud="COMMUNITY").replaces == ["cloud"]
    assert diff(volumeGb=40).replaces == ["volumeGb"]

    still_fits = diff(gpuTypeIds=[A100_SXM, A100_PCIE])
    assert still_fits.changes is True and still_fits.replaces == []
    assert diff(gpuTypeIds=[A100_SXM]).replaces == ["gpuTypeIds"]
    assert diff(dataCenterIds=["US-KS-2", "EU-RO-1"]).replaces == []
    assert diff(dataCenterIds=["EU-RO-1"]).replaces == ["dataCenterIds"]
    assert diff(readyTimeoutMinutes=30).replaces == []


def test_update_in_place_patches_and_waits_until_serving_again(provider, emulator, clock):
    created = provider.create(checked(provider))
    olds = {**created.outs, "__provider": "x"}
    new_image = "ghcr.io/example/llm-endpoint-vllm:v0.33.0-proxy2"
    news = checked(provider, image=new_image, customImage=True, readyTimeoutMinutes=25)
    before = clock.now()

    updated = provider.update(created.id, olds, news)

    patches = [(p, b) for m, p, b in emulator.requests if m == "PATCH"]
    assert len(patches) == 1
    path, body = patches[0]
    assert path == f"/v2/pods/{created.id}"
    assert body["image"] == new_image
    # Leaving the stock image: the replaced entrypoint is cleared, vLLM's arguments stay.
    assert body["entrypoint"] == [] and body["cmd"] == SERVING.vllm_args()
    assert body["env"]["VLLM_API_KEY"] == "{{ RUNPOD_SECRET_llm-endpoint-test-api-key }}"
    assert "disk" not in body
    assert updated.outs["image"] == new_image
    assert updated.outs["readyTimeoutMinutes"] == 25
    assert updated.outs["podId"] == created.id
    assert clock.now() - before >= 90  # restarted container had to come up again
    assert list(emulator.pods) == [created.id]  # same pod, no replacement
    provider.delete(created.id, updated.outs)


NEW_KEY = NEW_ENDPOINT_KEY
NEW_IMAGE = "ghcr.io/example/llm-endpoint-vllm:v0.33.0-proxy2"


def _models_status(emulator: RunpodEmulator, pod_id: str, key: str) -> int:
    url = emulator.proxy_url_template.format(pod_id=pod_id, port=8000) + "/v1/models"
    return requests.get(url, headers={"Authorization": f"Bearer {key}"}, timeout=10).status_code


def _started_at(emulator: RunpodEmulator, pod_id: str) -> str | None:
    view = emulator._view(pod_id, emulator.pods[pod_id])
    assert view is not None
    started: str | None = view["startedAt"]
    return started


def _pod_calls(emulator: RunpodEmulator, pod_id: str) -> list[tuple[str, str, Any]]:
    return [
        (m, p.removeprefix(f"/v2/pods/{pod_id}"), b)
        for m, p, b in emulator.requests
        if m in ("PATCH", "POST") and p.startswith(f"/v2/pods/{pod_id}")
    ]


def test_update_restarts_the_container_and_waits_for_the_new_one(provider, emulator, clock):
    created = provider.create(checked(provider))
    before = _started_at(emulator, created.id)
    assert _models_status(emulator, created.id, ENDPOINT_KEY) == 200

    # A rotation: the stack's secret resource writes the new value first (its new version is
    # the pod's secretsVersion); the pod restarts to read it.
    emulator.put_secret("llm-endpoint-test-api-key", NEW_KEY)
    news = checked(provider, apiKey=NEW_KEY, secretsVersion="v2", image=NEW_IMAGE, customImage=True)
    updated = provider.update(created.id, {**created.outs, "__provider": "x"}, news)

    calls = _pod_calls(emulator, created.id)
    assert [(m, p) for m, p, _ in calls] == [("PATCH", ""), ("POST", "/action")]
    assert calls[1][2] == {"action": "restart"}
    pod = emulator.pods[created.id]
    assert pod.container["image"] == NEW_IMAGE
    assert pod.container["env"]["VLLM_API_KEY"] == NEW_KEY
    after = _started_at(emulator, created.id)
    assert before is not None and after is not None and after > before
    # The new container serves the new key; the old key is refused.
    assert _models_status(emulator, created.id, NEW_KEY) == 200
    assert _models_status(emulator, created.id, ENDPOINT_KEY) == 401
    assert updated.outs["status"] == "RUNNING"
    provider.delete(created.id, updated.outs)


def test_started_at_comparison():
    later = probes.started_later
    assert later("2026-06-01T12:02:00.000001Z", "2026-06-01T12:02:00Z")
    assert not later("2026-06-01T12:02:00Z", "2026-06-01T12:02:00Z")
    assert not later(None, "2026-06-01T12:02:00Z")  # not started (yet) is not a restart
    assert later("2026-06-01T12:02:00Z", None)  # it was not running before
    assert later("2026-06-01T12:02:00", "2026-06-01T12:00:00Z")  # mixed zones: differs
    assert later("soon", "before")


def test_update_of_an_exited_pod_starts_it(provider, emulator):
    created = provider.create(checked(provider))
    emulator.pods[created.id].exited = True  # stopped from the console
    updated = provider.update(
        created.id, created.outs, checked(provider, image=NEW_IMAGE, customImage=True)
    )
    actions = [b for m, p, b in _pod_calls(emulator, created.id) if p == "/action"]
    assert actions == [{"action": "start"}]
    assert emulator.pods[created.id].container["image"] == NEW_IMAGE
    assert updated.outs["status"] == "RUNNING"
    provider.delete(created.id, updated.outs)


def test_update_that_cannot_restart_fails_clearly_and_leaves_the_pod(
    provider, emulator, leaks: Leaks
):
    created = provider.create(checked(provider))
    emulator.faults.action_409 = 10
    with pytest.raises(PodFailedError) as err:
        provider.update(
            created.id, created.outs, checked(provider, image=NEW_IMAGE, customImage=True)
        )
    message = str(err.value)
    assert "409" in message and "restart" in message
    assert "still exists" in message and "$1.64/h" in message
    assert emulator.pods[created.id].container["image"] == IMAGE  # old container, not "ready"
    provider.delete(created.id, created.outs)
    assert emulator.live_pods() == []


def test_update_is_not_ready_while_the_old_key_is_served(provider, emulator, clock):
    created = provider.create(checked(provider))
    emulator.faults.restart_ignores_settings = True  # restarts, but with the old settings
    emulator.put_secret("llm-endpoint-test-api-key", NEW_KEY)
    news = checked(provider, apiKey=NEW_KEY, secretsVersion="v2", readyTimeoutMinutes=5)
    with pytest.raises(PodFailedError) as err:
        provider.update(created.id, created.outs, news)
    message = str(err.value)
    assert "GET /v1/models with the key -> 401" in message
    assert "not serving within 5 minutes" in message
    assert_no_secret(message)
    provider.delete(created.id, created.outs)
    assert emulator.live_pods() == []


def test_update_of_state_only_fields_makes_no_api_change(provider, emulator):
    created = provider.create(checked(provider))
    news = checked(provider, readyTimeoutMinutes=30, gpuTypeIds=[A100_SXM, A100_PCIE])
    updated = provider.update(created.id, created.outs, news)
    assert not [m for m, _, _ in emulator.requests if m == "PATCH"]
    assert updated.outs["readyTimeoutMinutes"] == 30
    assert updated.outs["gpuTypeIds"] == [A100_SXM, A100_PCIE]
    assert updated.outs["podId"] == created.id
    provider.delete(created.id, updated.outs)


# -- provider rules --------------------------------------------------------------------------


def test_provider_pickles_without_key_or_client(clock: FakeClock):
    provider = RunpodPodProvider()
    configured(provider)
    data = dill.dumps(provider, recurse=True)
    assert RUNPOD_KEY.encode() not in data
    restored = dill.loads(data)  # noqa: S301 (bytes made just above)
    assert isinstance(restored, RunpodPodProvider)
    assert restored._api_key is None
    assert not any("Session" in type(v).__name__ for v in vars(restored).values())


def test_one_provider_instance_serves_four_threads_at_once(provider, emulator):
    """docs/facts/pulumi.md ("Dynamic providers"): one provider instance, a pool of 4 threads."""
    from concurrent.futures import ThreadPoolExecutor

    inputs = [checked(provider, name=f"llm-endpoint-test-{i}") for i in range(4)]
    with ThreadPoolExecutor(max_workers=4) as pool:
        created = list(pool.map(provider.create, inputs))
    ids = {c.id for c in created}
    assert len(ids) == 4 and set(emulator.live_pods()) == ids
    assert len({c.outs["podName"] for c in created}) == 4
    assert len(posts(emulator)) == 4  # no duplicate creates
    with ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(lambda c: provider.delete(c.id, c.outs), created))
    assert emulator.live_pods() == []


# -- a pod that stops serving after it was ready ------------------------------------------


@pytest.mark.parametrize("how", ["exited", "error", "never_healthy"])
def test_refresh_reports_a_pod_that_stopped_serving_and_up_replaces_it(provider, emulator, how):
    created = provider.create(checked(provider))
    fine = provider.read(created.id, created.outs)
    assert fine.outs["serving"] is True and fine.outs["notServingReason"] == ""
    assert provider.diff(created.id, fine.outs, checked(provider)).replaces == []

    if how == "exited":
        emulator.pods[created.id].exited = True  # vLLM's bounded restarts ran out
    elif how == "error":
        emulator.faults.error_after_start = True
    else:
        emulator.faults.never_healthy = True  # RUNNING, but nothing answers any more
    refreshed = provider.read(created.id, created.outs)
    assert refreshed.id == created.id  # still billing (or stopped): not dropped, replaced
    assert refreshed.outs["serving"] is False
    assert refreshed.outs["notServingReason"]
    diff = provider.diff(created.id, refreshed.outs, checked(provider))
    assert diff.changes and "serving" in diff.replaces
    assert diff.delete_before_replace is False  # the new pod serves before the old one goes
    provider.delete(created.id, refreshed.outs)
