"""The VM agent against a fake metadata server and a fake Secret Manager (real HTTP on
loopback), a recording host that simulates the containers, and a fake clock."""

from __future__ import annotations

import dataclasses
import re
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
import requests

from infra import group_runtime, proxy_config, serving
from infra.vm_runtime import GROUP_KEY_POLL_S
from tests.support.nginx import run_proxy
from tests.support.vllm_standin import StandinConfig, run_standin
from tests.support.vm_agent_fakes import (
    FakeClock,
    FakeMetadataServer,
    RecordingHost,
    VllmBehaviour,
    _SecretState,
    fake_metadata_server,
    fake_secret_manager,
)
from vm_agent import units
from vm_agent.agent import READY_TICK_S, Agent
from vm_agent.gce import Metadata, SecretManager
from vm_agent.runtime_doc import (
    AGENT_KEY,
    RUNTIME_KEY,
    ProxySpec,
    Runtime,
    SecretNames,
    VllmSpec,
    parse,
)

KEY_V1 = "projects/1/secrets/llm-dev-api-key/versions/1"
KEY_V2 = "projects/1/secrets/llm-dev-api-key/versions/2"
OLD_KEY = "old-key-" + "a" * 40
NEW_KEY = "new-key-" + "b" * 40
IMAGE = serving.VLLM_IMAGE


def runtime(**changes: object) -> Runtime:
    vllm = VllmSpec(
        image=IMAGE,
        args=[
            "Qwen/Qwen2.5-7B-Instruct",
            "--served-model-name",
            "qwen",
            "--port",
            str(serving.VLLM_INTERNAL_PORT),
        ],
        env=serving.vllm_container_env(),
        served_model_name="qwen",
        port=serving.VLLM_INTERNAL_PORT,
    )
    proxy = ProxySpec(
        image=proxy_config.PROXY_IMAGE,
        port=serving.PUBLIC_PORT,
        nginx_conf="# nginx\n",
        tls_cert_pem=None,
        ca_cert_pem=None,
    )
    rt = Runtime(
        vllm=vllm,
        proxy=proxy,
        secrets=SecretNames(api_key=KEY_V1),
        ready_timeout_s=2700,
        idle_stop_minutes=0,
        stop_on_failure=True,
    )
    return dataclasses.replace(rt, **changes)  # type: ignore[arg-type]


@dataclass
class Rig:
    clock: FakeClock
    host: RecordingHost
    meta: FakeMetadataServer
    agent: Agent

    def publish(self, rt: Runtime) -> None:
        self.meta.set_attributes(**{RUNTIME_KEY: rt.to_json()})

    def turns_until(self, phase: str, limit: int = 2000) -> None:
        for _ in range(limit):
            if self.agent.phase == phase:
                return
            self.agent.turn()
        raise AssertionError(f"never {phase}: {self.agent.state()}")

    def vllm_starts(self) -> int:
        return self.host.calls.count(("start", units.VLLM_UNIT))


@contextmanager
def rig(
    behaviours: list[VllmBehaviour] | None = None, rt: Runtime | None = None, refuse_first: int = 0
) -> Iterator[Rig]:
    clock = FakeClock()
    host = RecordingHost(clock, behaviours or [VllmBehaviour()])
    values = {KEY_V1: OLD_KEY, KEY_V2: NEW_KEY}
    with fake_metadata_server(clock) as meta, fake_secret_manager(values) as (sm_url, sm):
        sm.refuse_first = refuse_first
        metadata = Metadata(meta.url)
        agent = Agent(host, metadata, SecretManager(metadata, sm_url), clock)
        meta.set_attributes(**{AGENT_KEY: "agent-v1", RUNTIME_KEY: (rt or runtime()).to_json()})
        yield Rig(clock, host, meta, agent)


def test_document_round_trips() -> None:
    rt = runtime(idle_stop_minutes=30)
    assert parse(rt.to_json()) == rt


def test_first_boot_pulls_once_starts_both_units_and_becomes_ready() -> None:
    with rig() as r:
        r.turns_until("ready")
        assert ("pull", IMAGE) in r.host.calls
        assert r.host.calls.count(("start", units.PROXY_UNIT)) == 1
        assert r.vllm_starts() == 1
        assert r.meta.guest("state") == "ready"
        assert r.host.files[units.READY_FLAG] == "ready\n"
        assert ("stop", units.WATCHDOG_TIMER) in r.host.calls


def test_point1_settings_change_is_applied_without_restart_or_pull() -> None:
    with rig() as r:
        r.turns_until("ready")
        calls = len(r.host.calls)
        r.publish(runtime(idle_stop_minutes=90, ready_timeout_s=3600))
        r.agent.turn()
        later = r.host.calls[calls:]
        assert ("start", units.VLLM_UNIT) not in later
        assert not [c for c in later if c[0] == "pull"]
        assert r.agent.phase == "ready"
        assert r.agent.rt is not None and r.agent.rt.idle_stop_minutes == 90


def test_point1_model_change_restarts_vllm_on_the_same_caches_without_pulling() -> None:
    with rig() as r:
        r.turns_until("ready")
        mount = f"{units.VLLM_HOME_ON_HOST}:{serving.VLLM_HOME}"
        assert mount in r.host.units[units.VLLM_UNIT]
        pulls = [c for c in r.host.calls if c[0] == "pull"]
        new = runtime()
        new = dataclasses.replace(
            new,
            vllm=dataclasses.replace(new.vllm, args=[*new.vllm.args, "--max-model-len", "4096"]),
        )
        r.publish(new)
        r.agent.turn()
        assert r.agent.phase == "starting"
        r.turns_until("ready")
        assert r.vllm_starts() == 2
        assert [c for c in r.host.calls if c[0] == "pull"] == pulls  # image not pulled again
        assert mount in r.host.units[units.VLLM_UNIT]  # same weights and compile cache
        assert "--max-model-len 4096" in r.host.units[units.VLLM_UNIT]


def test_point2_key_rotation_refuses_old_key_and_accepts_new_within_two_minutes() -> None:
    with rig() as r:
        r.turns_until("ready")
        proxy = f"https://127.0.0.1:{serving.PUBLIC_PORT}/v1/models"
        assert r.host.http_get(proxy, {"Authorization": f"Bearer {OLD_KEY}"}, None, 1)[0] == 200
        changed_at = r.clock.now()
        r.publish(runtime(secrets=SecretNames(api_key=KEY_V2)))
        r.agent.turn()
        assert ("reload", units.PROXY_UNIT) in r.host.calls
        assert r.clock.now() - changed_at < 120
        assert r.host.http_get(proxy, {"Authorization": f"Bearer {OLD_KEY}"}, None, 1)[0] == 401
        assert r.host.http_get(proxy, {"Authorization": f"Bearer {NEW_KEY}"}, None, 1)[0] == 200
        assert r.vllm_starts() == 1  # vLLM keeps its internal key: no model reload
        assert OLD_KEY not in r.host.files[units.ENV_FILE]


def test_point3_deterministic_failure_powers_off_after_two_starts_with_log_tail() -> None:
    with rig([VllmBehaviour(ready_after_s=None, exit_after_s=20)]) as r:
        r.turns_until("powered-off")
        assert r.vllm_starts() == 2
        assert r.host.powered_off
        console = "\n".join(r.host.console_lines)
        assert "failed 2 starts in a row" in console
        assert "vllm| ValueError: bad argument" in console
        assert r.clock.now() - 1000 < 300  # minutes, not the 45-minute deadline
        assert r.meta.guest("state") == "powered-off"
        assert "failed 2 starts" in (r.meta.guest("reason") or "")


def test_point3_one_crash_then_success_is_not_a_power_off() -> None:
    with rig([VllmBehaviour(ready_after_s=None, exit_after_s=20), VllmBehaviour()]) as r:
        r.turns_until("ready")
        assert r.vllm_starts() == 2
        assert not r.host.powered_off
        assert r.meta.guest("restarts") == "1"


def test_point3_slow_first_load_is_not_a_failure_before_the_deadline() -> None:
    with rig([VllmBehaviour(ready_after_s=2600)]) as r:
        r.turns_until("ready")
        assert r.vllm_starts() == 1
        assert not r.host.powered_off
        assert r.clock.now() - 1000 >= 2600


def test_point3_load_past_the_deadline_powers_off_with_the_reason() -> None:
    with rig([VllmBehaviour(ready_after_s=None)]) as r:
        r.turns_until("powered-off")
        assert r.vllm_starts() == 1
        reason = r.meta.guest("reason") or ""
        assert "not ready within 45 minutes" in reason
        assert "GET /health -> 502" in reason
        assert 2700 <= r.clock.now() - 1000 < 2700 + 60


def test_death_after_ready_restarts_once_then_powers_off() -> None:
    with rig([VllmBehaviour(ready_after_s=60, exit_after_s=3600),
              VllmBehaviour(ready_after_s=None, exit_after_s=30)]) as r:  # fmt: skip
        r.turns_until("ready")
        r.turns_until("powered-off")
        assert r.vllm_starts() == 2
        assert "failed 2 starts" in (r.meta.guest("reason") or "")


def test_stop_on_failure_off_keeps_the_vm_up_and_says_so() -> None:
    rt = runtime(stop_on_failure=False)
    with rig([VllmBehaviour(ready_after_s=None, exit_after_s=20)], rt=rt) as r:
        r.turns_until("failed")
        assert not r.host.powered_off
        assert any("keeps billing" in line for line in r.host.console_lines)
        assert r.host.files[units.NO_STOP_FLAG]


def test_point4_caches_survive_agent_restarts_and_reboots() -> None:
    with rig() as r:
        r.turns_until("ready")
        mode, owner = r.host.modes[units.VLLM_HOME_ON_HOST]
        assert (mode, owner) == (0o700, serving.VLLM_UID)
        env = r.host.files[units.ENV_FILE]
        assert f"HF_HOME={serving.HF_CACHE_DIR}\n" in env
        assert f"VLLM_CACHE_ROOT={serving.VLLM_CACHE_DIR}\n" in env
        # The agent restarts (new code): it adopts the running vLLM, no restart.
        second = Agent(r.host, r.agent.metadata, r.agent.secret_source, r.clock)
        r.agent = second
        r.turns_until("ready")
        assert r.vllm_starts() == 1
        # A reboot: units are down, the home directory (boot disk) is the same.
        r.host.active.clear()
        r.agent = Agent(r.host, r.agent.metadata, r.agent.secret_source, r.clock)
        r.turns_until("ready")
        assert r.vllm_starts() == 2
        assert f"{units.VLLM_HOME_ON_HOST}:{serving.VLLM_HOME}" in r.host.units[units.VLLM_UNIT]


def test_point9_vllm_runs_unprivileged_with_capabilities_dropped() -> None:
    with rig() as r:
        r.turns_until("ready")
        unit = r.host.units[units.VLLM_UNIT]
        assert f"--user {serving.VLLM_UID}:{serving.VLLM_UID}" in unit
        assert "--cap-drop ALL" in unit and "--cap-add" not in unit
        assert "--security-opt no-new-privileges" in unit
        proxy = r.host.units[units.PROXY_UNIT]
        assert "--cap-add CHOWN --cap-add SETUID --cap-add SETGID" in proxy  # drops to nginx


def test_point10_idle_minutes_reported_and_idle_stop_powers_off() -> None:
    with rig(rt=runtime(idle_stop_minutes=30)) as r:
        r.turns_until("ready")
        while r.clock.now() - r.host.active[units.VLLM_UNIT] < 600:
            r.agent.turn()
        assert int(r.meta.guest("idle-minutes") or "0") >= 8
        r.host.metrics = "vllm:num_requests_running 0\nvllm:request_success_total 5\n"
        r.agent.turn()
        assert r.meta.guest("idle-minutes") == "0"
        r.turns_until("powered-off")
        assert "idle: vLLM served nothing for 30 minutes" in (r.meta.guest("reason") or "")


def test_renamed_metrics_never_count_as_idle() -> None:
    with rig(rt=runtime(idle_stop_minutes=5)) as r:
        r.host.metrics = "some_other_metric 1\n"
        r.turns_until("ready")
        for _ in range(40):
            r.agent.turn()
        assert r.agent.phase == "ready"


def test_secret_refused_at_first_is_retried_then_used() -> None:
    with rig(refuse_first=3) as r:
        r.turns_until("ready")
        assert r.meta.guest("state") == "ready"


def test_missing_docker_powers_off_naming_cloud_init() -> None:
    with rig() as r:
        r.host.missing = ["docker"]
        r.turns_until("powered-off")
        assert "docker missing" in (r.meta.guest("reason") or "")


def test_agent_code_change_ends_the_run_for_systemd_to_restart() -> None:
    with rig() as r:
        r.turns_until("ready")
        r.meta.set_attributes(**{AGENT_KEY: "agent-v2"})
        assert r.agent.run(max_turns=5) == "agent changed"


def test_secrets_never_reach_guest_attributes_console_or_units() -> None:
    with rig([VllmBehaviour(ready_after_s=None, exit_after_s=20)]) as r:
        r.turns_until("powered-off")
        public = [*r.meta.state.guest.values(), *r.host.console_lines, *r.host.units.values()]
        assert not [text for text in public if OLD_KEY in text]
        assert r.host.modes[units.ENV_FILE][0] == 0o600
        assert r.host.modes[f"{units.PROXY_DIR}/{units.AUTH_FILE_NAME}"][0] == 0o600


def test_auth_include_matches_the_proxy_contract() -> None:
    text = units.auth_include(OLD_KEY, "internal")
    assert text.startswith(proxy_config.render_auth_include(OLD_KEY))
    assert 'default "Bearer internal";' in text
    with pytest.raises(ValueError):
        units.auth_include("bad key", "internal")


def test_group_stop_command_replaces_poweroff_and_falls_back_to_it() -> None:
    rt = runtime(stop_command=[group_runtime.LEAVE_GROUP_PATH])
    with rig([VllmBehaviour(ready_after_s=None, exit_after_s=20)], rt=rt) as r:
        r.turns_until("powered-off")
        [run] = [c for c in r.host.calls if c[0] == "run"]
        assert run[1:3] == (group_runtime.LEAVE_GROUP_PATH, "failure")
        assert "failed 2 starts" in run[3]
        assert not r.host.powered_off
    with rig([VllmBehaviour(ready_after_s=None, exit_after_s=20)],
             rt=runtime(stop_command=["/bin/false"])) as r:  # fmt: skip
        r.turns_until("powered-off")
        assert r.host.powered_off


def test_without_watch_after_ready_a_dead_vllm_is_left_to_the_group() -> None:
    rt = runtime(watch_after_ready=False)
    with rig([VllmBehaviour(ready_after_s=60, exit_after_s=600)], rt=rt) as r:
        r.turns_until("ready")
        for _ in range(60):
            r.agent.turn()
        assert r.vllm_starts() == 1 and not r.host.powered_off


def test_group_idle_asks_the_group_and_keeps_serving() -> None:
    rt = runtime(stop_command=[group_runtime.LEAVE_GROUP_PATH], idle_stop_minutes=30)
    with rig(rt=rt) as r:
        r.turns_until("ready")
        started = r.clock.now()
        while not [c for c in r.host.calls if c[0] == "run"]:
            r.agent.turn()
        [run] = [c for c in r.host.calls if c[0] == "run"]
        assert run[1:3] == (group_runtime.LEAVE_GROUP_PATH, "idle")
        assert "served nothing for 30 minutes" in run[3]
        assert 30 * 60 <= r.clock.now() - started < 31 * 60
        assert r.agent.phase == "ready" and not r.host.powered_off


# --- group mode: the key by its `latest` alias, polled (docs/scale-out.md, "Key rotation") ----

KEY_LATEST = "projects/1/secrets/llm-dev-api-key/versions/latest"
POLL_S = GROUP_KEY_POLL_S  # what a group's document sets
MODELS_URL = f"https://127.0.0.1:{serving.PUBLIC_PORT}{serving.MODELS_PATH}"


@contextmanager
def replica_rig(
    rt: Runtime | None = None, values: dict[str, str] | None = None
) -> Iterator[tuple[Rig, _SecretState]]:
    """`rig()` with a Secret Manager the test can change (its `values`, `refuse_first`) and, by
    default, a replica's document: the key by its `latest` alias, polled every POLL_S."""
    doc = rt or runtime(secrets=SecretNames(api_key=KEY_LATEST), secret_poll_s=POLL_S)
    with rig(rt=doc) as r, fake_secret_manager(values or {KEY_LATEST: OLD_KEY}) as (url, sm):
        r.agent.secret_source = SecretManager(Metadata(r.meta.url), url)
        yield r, sm


def answers(r: Rig, key: str) -> int | None:
    return r.host.http_get(MODELS_URL, {"Authorization": f"Bearer {key}"}, None, 1)[0]


def reloads(r: Rig) -> int:
    return r.host.calls.count(("reload", units.PROXY_UNIT))


def test_replica_applies_a_rotated_key_within_one_poll_as_a_reload_not_a_restart() -> None:
    with replica_rig() as (r, sm):
        r.turns_until("ready")
        document, before = r.meta.guest("document"), reloads(r)
        assert answers(r, OLD_KEY) == 200
        sm.values[KEY_LATEST] = NEW_KEY  # `pulumi up` made a new version; the document is as it was
        rotated_at = r.clock.now()
        while answers(r, NEW_KEY) != 200 and r.clock.now() - rotated_at <= POLL_S + READY_TICK_S:
            r.agent.turn()
        assert answers(r, NEW_KEY) == 200 and answers(r, OLD_KEY) == 401
        assert r.clock.now() - rotated_at <= POLL_S + READY_TICK_S  # a poll, plus one watch tick
        assert reloads(r) == before + 1
        assert r.vllm_starts() == 1 and r.agent.phase == "ready"
        assert r.meta.guest("document") == document
        assert r.host.modes[f"{units.PROXY_DIR}/{units.AUTH_FILE_NAME}"][0] == 0o600
        assert any("API key changed" in line for line in r.host.console_lines)
        # The same value at later polls: read, nothing rewritten or reloaded.
        reads = sm.accessed.count(KEY_LATEST)
        for _ in range(12):
            r.agent.turn()
        assert sm.accessed.count(KEY_LATEST) > reads and reloads(r) == before + 1
        public = [*r.meta.state.guest.values(), *r.host.console_lines, *r.host.units.values()]
        assert not [text for text in public if OLD_KEY in text or NEW_KEY in text]


@pytest.mark.parametrize("failure", ["refused", "missing", "not a bearer token"])
def test_replica_keeps_its_key_when_a_poll_fails_and_retries(
    failure: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with replica_rig() as (r, sm):
        r.turns_until("ready")
        before = reloads(r)
        if failure == "refused":
            sm.values[KEY_LATEST], sm.refuse_first = NEW_KEY, 2  # two polls answered 403
        elif failure == "missing":
            del sm.values[KEY_LATEST]  # 404
        else:
            sm.values[KEY_LATEST] = "a key with spaces"
        started = r.clock.now()
        while r.clock.now() - started < 2 * POLL_S:
            r.agent.turn()
        assert answers(r, OLD_KEY) == 200 and reloads(r) == before
        assert r.agent.phase == "ready" and not r.host.powered_off
        printed = capsys.readouterr().out
        assert "API key poll" in printed and "keeping the key in use" in printed
        assert OLD_KEY not in printed and NEW_KEY not in printed and "spaces" not in printed
        sm.values[KEY_LATEST] = NEW_KEY  # the next poll that reads it applies it
        while answers(r, NEW_KEY) != 200 and r.clock.now() - started < 4 * POLL_S:
            r.agent.turn()
        assert answers(r, NEW_KEY) == 200 and reloads(r) == before + 1


def test_single_vm_never_polls_the_key() -> None:
    assert runtime().secret_poll_s == 0
    legacy = runtime().to_json().replace(',"secret_poll_s":0', "")
    assert "secret_poll_s" not in legacy and parse(legacy).secret_poll_s == 0  # older documents
    with replica_rig(runtime(), {KEY_V1: OLD_KEY}) as (r, sm):
        r.turns_until("ready")
        reads = len(sm.accessed)
        for _ in range(40):  # 20 minutes of ready ticks
            r.agent.turn()
        assert len(sm.accessed) == reads == 1 and reloads(r) == 0


def test_replica_rotation_reaches_the_real_nginx_and_vllm_keeps_its_internal_key() -> None:
    """The same poll with Debian's nginx as the proxy (the agent's key file, a real reload by
    SIGHUP) in front of the vLLM stand-in, which accepts only the VM-internal key."""
    internal = "internal-" + "c" * 40
    auth_file = f"{units.PROXY_DIR}/{units.AUTH_FILE_NAME}"
    with (
        run_standin(StandinConfig(api_key=internal, models=("qwen",))) as vllm,
        run_proxy(
            upstream=f"127.0.0.1:{vllm.port}",
            auth_include_text=units.auth_include(OLD_KEY, internal),
            upstream_authorization=True,
        ) as proxy,
        replica_rig() as (r, sm),
    ):

        def reload(unit: str) -> None:
            (proxy.prefix / "proxy-auth.conf").write_text(r.host.files[auth_file])
            proxy.process.send_signal(signal.SIGHUP)  # what `systemctl reload` sends nginx

        def through_nginx(url: str, headers: dict[str, str], ca: str | None) -> tuple[int, object]:
            target = re.sub(r"^https?://[^/]+", proxy.url, url)
            got = requests.get(target, headers=headers, timeout=5)
            is_json = got.ok and got.content and "json" in got.headers.get("Content-Type", "")
            return got.status_code, got.json() if is_json else None

        r.host.files[units.INTERNAL_KEY_FILE] = internal + "\n"
        r.host.on_reload, r.host.proxy_probe = reload, through_nginx
        r.turns_until("ready")  # ready judged through the real nginx, with the old key
        sm.values[KEY_LATEST] = NEW_KEY
        for _ in range((POLL_S + READY_TICK_S) // READY_TICK_S):
            r.agent.turn()
        assert reloads(r) == 1 and r.vllm_starts() == 1
        # nginx applies a reload in its own time (new workers); give it a few real seconds.
        deadline = time.monotonic() + 10
        while answers(r, NEW_KEY) != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert answers(r, NEW_KEY) == 200 and answers(r, OLD_KEY) == 401
        # vLLM saw only its internal key, before and after the rotation (no restart needed).
        keyed = [q for q in vllm.requests if q.path.startswith("/v1/")]
        assert len(keyed) >= 2 and {q.auth for q in keyed} == {"valid"}
