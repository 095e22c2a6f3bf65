"""The agent's loop: watch the metadata, apply the runtime document, keep vLLM serving or stop.

One loop, one thread. Each turn waits on the metadata server (`wait_for_change` with a
timeout, so the wait is also the loop's tick), applies a changed document, then takes one
step: while vLLM starts, probe readiness (serving.not_ready_reason through the proxy, the one
definition of ready) and count failed starts; once ready, watch for death, hangs and
idleness. It reports its state as guest attributes and, for what matters, on the serial
console. It powers the VM off when vLLM failed `max_failed_starts` starts in a row (2), when
the ready deadline passes, or when idle for `idle_stop_minutes`: a GPU that bills while nothing
serves is the failure this exists to prevent. A slow load is never a failed start: a start
fails only when vLLM's container exits. In a group, where the document names the API key's
`latest` alias, it also re-reads the key every `secret_poll_s` on the same tick and applies a
new value with a proxy reload (`_poll_api_key`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import secrets as token_source
from dataclasses import dataclass, field
from typing import Protocol

from infra import serving
from vm_agent import units
from vm_agent.gce import ApiError
from vm_agent.host import Host, HostError
from vm_agent.runtime_doc import AGENT_KEY, GUEST_NAMESPACE, RUNTIME_KEY, Runtime, parse

STARTING_TICK_S = 10
READY_TICK_S = 30
SECRET_RETRY_S = 30
# A new IAM grant or secret version can take minutes to be visible (403/404 meanwhile).
SECRET_PATIENCE_S = 600
LOG_TAIL_LINES = 60


class Clock(Protocol):
    def now(self) -> float: ...
    def sleep(self, seconds: float) -> None: ...


class MetadataSource(Protocol):
    def watch_attributes(
        self, last_etag: str | None, timeout_s: int
    ) -> tuple[dict[str, str], str]: ...
    def set_guest_attribute(self, namespace: str, key: str, value: str) -> None: ...


class SecretSource(Protocol):
    def access(self, version_name: str) -> str: ...


class GiveUp(Exception):
    """Stop trying: the message is the reason reported and written to the console."""


@dataclass
class _Secrets:
    api_key: str
    hf_token: str | None
    tls_key: str | None


@dataclass
class Agent:
    host: Host
    metadata: MetadataSource
    secret_source: SecretSource
    clock: Clock
    phase: str = "waiting"  # waiting, starting, ready, failed, powered-off
    reason: str = "no runtime document yet"
    restarts: int = 0
    failed_starts: int = 0
    rt: Runtime | None = None
    _runtime_text: str | None = None
    _document: str = ""  # sha256 of the document being applied (`pulumi up` waits for it)
    _agent_code: str | None = None
    _etag: str | None = None
    _attrs: dict[str, str] = field(default_factory=dict)
    _secrets: _Secrets | None = None
    _key_read_at: float = 0.0  # when the API key was last read (group mode polls it)
    _applied: dict[str, str] = field(default_factory=dict)
    _deadline: float = 0.0
    _started_at: float = 0.0
    _unhealthy_since: float | None = None
    _last_active: float = 0.0
    _last_activity: str | None = None
    _reported: dict[str, str] = field(default_factory=dict)

    # --- the loop ------------------------------------------------------------------------------

    def run(self, max_turns: int | None = None) -> str:
        """Turns until the VM powers off or the agent's code changed (then systemd starts the
        new one); returns why it stopped."""
        turns = 0
        while self.phase != "powered-off":
            if max_turns is not None and turns >= max_turns:
                return "max turns"
            turns += 1
            if self.turn() == "agent changed":
                self.console("the agent's code changed in metadata: restarting with it")
                return "agent changed"
        return "powered off"

    def turn(self) -> str | None:
        self._watch()
        code = self._attrs.get(AGENT_KEY)
        if self._agent_code is None:
            self._agent_code = code
        elif code != self._agent_code:
            return "agent changed"
        text = self._attrs.get(RUNTIME_KEY)
        try:
            if text is not None and text != self._runtime_text:
                self._runtime_text = text
                self._document = hashlib.sha256(text.encode()).hexdigest()
                self.apply(text)
            self._poll_api_key()
            self.step()
        except GiveUp as stop:
            self.give_up(str(stop))
        self.report()
        return None

    def _watch(self) -> None:
        tick = STARTING_TICK_S if self.phase in ("starting", "waiting") else READY_TICK_S
        try:
            self._attrs, self._etag = self.metadata.watch_attributes(self._etag, tick)
        except (ApiError, ValueError) as err:
            print(f"llm-endpoint-agent: metadata server: {err}; retrying in {tick}s", flush=True)
            self.clock.sleep(tick)

    # --- applying a runtime document -----------------------------------------------------------

    def apply(self, text: str) -> None:
        try:
            rt = parse(text)
        except ValueError as err:
            raise GiveUp(f"the runtime document cannot be applied: {err}") from None
        missing = self.host.missing_commands()
        if missing:
            raise GiveUp(
                f"host setup incomplete: {', '.join(missing)} missing (cloud-init's output is on "
                "the serial console: look for its package install errors)"
            )
        first = self.rt is None
        self.rt = rt
        self._secrets = self._fetch_secrets(rt)
        self._key_read_at = self.clock.now()
        self._write_files(rt, self._secrets)
        self._apply_vllm(rt, self._secrets, first)
        self._apply_proxy(rt)
        self.host.write_file(units.APPLIED_FILE, json.dumps(self._applied), 0o600)
        if rt.stop_on_failure:
            self.host.remove_file(units.NO_STOP_FLAG)
        else:
            self.host.write_file(units.NO_STOP_FLAG, "stopOnFailure is off\n", 0o644)

    def _fetch_secrets(self, rt: Runtime) -> _Secrets:
        def get(name: str | None, what: str) -> str | None:
            return None if name is None else self._fetch_secret(name, what)

        api_key = get(rt.secrets.api_key, "API key")
        assert api_key is not None
        return _Secrets(
            api_key,
            get(rt.secrets.hf_token, "Hugging Face token"),
            get(rt.secrets.tls_key, "TLS key"),
        )

    def _fetch_secret(self, name: str, what: str) -> str:
        give_up_at = self.clock.now() + SECRET_PATIENCE_S
        while True:
            try:
                return self.secret_source.access(name)
            except ApiError as err:
                if err.status not in (None, 403, 404, 429) or self.clock.now() >= give_up_at:
                    raise GiveUp(
                        f"could not read the {what} ({err}). The VM's service account needs "
                        "roles/secretmanager.secretAccessor on it (pulumi up grants it)"
                    ) from None
                print(f"llm-endpoint-agent: {what}: {err}; retrying", flush=True)
                self.clock.sleep(SECRET_RETRY_S)

    def _internal_key(self) -> str:
        key = (self.host.read_file(units.INTERNAL_KEY_FILE) or "").strip()
        if not key:
            key = token_source.token_urlsafe(32)
            self.host.write_file(units.INTERNAL_KEY_FILE, key + "\n", 0o600)
        return key

    def _write_files(self, rt: Runtime, s: _Secrets) -> None:
        h = self.host
        for path, mode in ((units.ETC_DIR, 0o700), (units.PROXY_DIR, 0o700),
                           (units.STATE_DIR, 0o700), (units.RUN_DIR, 0o755)):  # fmt: skip
            h.make_dir(path, mode)
        h.make_dir(units.VLLM_HOME_ON_HOST, 0o700, owner=serving.VLLM_UID)
        internal = self._internal_key()
        try:
            h.write_file(units.ENV_FILE, units.env_file(rt, internal, s.hf_token), 0o600)
            self._write_auth(s.api_key)
        except ValueError as err:
            raise GiveUp(f"a secret has the wrong form: {err}") from None
        proxy = units.PROXY_DIR
        h.write_file(f"{proxy}/{units.NGINX_CONF_NAME}", rt.proxy.nginx_conf, 0o644)
        if rt.proxy.tls_cert_pem:
            if not s.tls_key:
                raise GiveUp("TLS is on but the runtime names no TLS key secret")
            h.write_file(f"{proxy}/{units.TLS_CERT_NAME}", rt.proxy.tls_cert_pem, 0o644)
            h.write_file(f"{proxy}/{units.TLS_KEY_NAME}", s.tls_key, 0o600)

    def _write_auth(self, api_key: str) -> None:
        """The proxy's key check (root-only: it holds the key); nginx re-reads it on a reload.
        ValueError if the key is not a bearer token."""
        auth = units.auth_include(api_key, self._internal_key())
        self.host.write_file(f"{units.PROXY_DIR}/{units.AUTH_FILE_NAME}", auth, 0o600)

    def _poll_api_key(self) -> None:
        """Group mode: the document names the key's `latest` alias, so a rotation changes
        neither the document nor the group's template (no roll). Every `secret_poll_s` the key
        is read again and a new value applied as on one VM: key file rewritten, nginx reloaded,
        vLLM untouched (it keeps the internal key). A failed read or reload keeps the key in use
        and is retried at the next poll: a serving replica does not stop over a blip."""
        rt, current = self.rt, self._secrets
        if rt is None or current is None or not rt.secret_poll_s:
            return
        now = self.clock.now()
        if self.phase not in ("starting", "ready") or now - self._key_read_at < rt.secret_poll_s:
            return
        self._key_read_at = now
        try:
            key = self.secret_source.access(rt.secrets.api_key)
            if key == current.api_key:
                return
            self._write_auth(key)
            if self.host.unit_state(units.PROXY_UNIT) in ("active", "activating"):
                self.host.reload(units.PROXY_UNIT)
        except (ApiError, ValueError, HostError) as err:
            # The messages name the secret and the HTTP status or the rule broken, never a value.
            print(f"llm-endpoint-agent: API key poll: {err}; keeping the key in use, retrying "
                  f"in {rt.secret_poll_s}s", flush=True)  # fmt: skip
            return
        current.api_key = key
        self.console(f"the API key changed ({rt.secrets.api_key}): proxy reloaded, vLLM kept")

    def _apply_vllm(self, rt: Runtime, s: _Secrets, first: bool) -> None:
        fingerprint = rt.vllm_fingerprint(s.hf_token)
        if first:
            saved = self.host.read_file(units.APPLIED_FILE)
            self._applied = json.loads(saved) if saved else {}
        running = self.host.unit_state(units.VLLM_UNIT) in ("active", "activating")
        if running and self._applied.get("vllm") == fingerprint:
            if first:  # an agent restart: adopt the running vLLM, re-check readiness
                self._begin_wait(rt, fresh=True)
            return
        self.console(
            f"{'starting' if first else 'applying a new configuration to'} vLLM "
            f"({rt.vllm.image}, serving {rt.vllm.served_model_name})"
        )
        self._start_vllm(rt, fresh=True)
        self._applied["vllm"] = fingerprint

    def _apply_proxy(self, rt: Runtime) -> None:
        fingerprint = rt.proxy_fingerprint()
        running = self.host.unit_state(units.PROXY_UNIT) in ("active", "activating")
        if running and self._applied.get("proxy") == fingerprint:
            # Key, certificate or config changed: nginx re-reads them on a reload, in seconds.
            self.host.reload(units.PROXY_UNIT)
            return
        self.host.install_unit(units.PROXY_UNIT, units.proxy_unit(rt))
        self._ensure_image(rt.proxy.image)
        self.host.start(units.PROXY_UNIT)
        self._applied["proxy"] = fingerprint

    def _begin_wait(self, rt: Runtime, *, fresh: bool) -> None:
        now = self.clock.now()
        if fresh:
            self._deadline = now + rt.ready_timeout_s
            self.failed_starts = 0
        self.phase, self._started_at, self._unhealthy_since = "starting", now, None
        self.reason = "vLLM is starting"

    def _start_vllm(self, rt: Runtime, *, fresh: bool) -> None:
        self._begin_wait(rt, fresh=fresh)
        self._ensure_image(rt.vllm.image)
        self.host.install_unit(
            units.VLLM_UNIT, units.vllm_unit(rt, self.host.memory_mb(), self.host.cpu_count())
        )
        self.host.start(units.VLLM_UNIT)

    def _ensure_image(self, image: str) -> None:
        if self.host.image_present(image):
            return
        remaining = self._deadline - self.clock.now()
        self.phase, self.reason = "starting", f"pulling {image}"
        self.report()
        try:
            self.host.pull(image, remaining)
        except HostError as err:
            raise GiveUp(f"could not pull {image} before the ready deadline: {err}") from None

    # --- one step ------------------------------------------------------------------------------

    def step(self) -> None:
        if self.rt is None:
            return
        if self.phase == "starting":
            self._step_starting(self.rt)
        elif self.phase == "ready":
            self._step_ready(self.rt)

    def _step_starting(self, rt: Runtime) -> None:
        state = self.host.unit_state(units.VLLM_UNIT)
        if state in ("failed", "inactive"):
            self._failed_start(rt, f"vLLM exited before it was ready (unit {state})")
            return
        problem = self.not_ready()
        now = self.clock.now()
        if problem is None:
            self.phase, self.failed_starts = "ready", 0
            self.reason = f"serving {rt.vllm.served_model_name}"
            self._last_active, self._last_activity = now, None
            self.host.write_file(units.READY_FLAG, "ready\n", 0o644)
            self._stop_quietly(units.WATCHDOG_TIMER)
            self.console(f"ready: {self.reason} after {now - self._started_at:.0f}s")
        elif now >= self._deadline:
            minutes = rt.ready_timeout_s // 60
            raise GiveUp(f"vLLM was not ready within {minutes} minutes ({problem})")
        else:
            self.reason = f"loading ({problem})"

    def _failed_start(self, rt: Runtime, why: str) -> None:
        self.failed_starts += 1
        if self.failed_starts >= rt.max_failed_starts:
            raise GiveUp(f"vLLM failed {self.failed_starts} starts in a row: {why}")
        self.restarts += 1
        self.console(f"{why}; starting it again ({self.failed_starts} of "
                     f"{rt.max_failed_starts} failed starts)")  # fmt: skip
        self._start_vllm(rt, fresh=False)

    def _step_ready(self, rt: Runtime) -> None:
        if self.host.unit_state(units.PROXY_UNIT) not in ("active", "activating"):
            self.restarts += 1
            self.console("the proxy stopped; starting it again")
            self.host.start(units.PROXY_UNIT)
        if rt.watch_after_ready and self.host.unit_state(units.VLLM_UNIT) not in (
            "active",
            "activating",
        ):
            self._died(rt, "vLLM exited after it was ready")
            return
        base = f"http://127.0.0.1:{rt.vllm.port}"
        health, _ = self.host.http_get(base + serving.HEALTH_PATH, {}, None, 10)
        now = self.clock.now()
        if health != 200 and rt.watch_after_ready:
            self._unhealthy_since = self._unhealthy_since or now
            if now - self._unhealthy_since >= rt.hung_grace_s:
                self._died(rt, f"vLLM's /health failed for {rt.hung_grace_s // 60} minutes")
            return
        self._unhealthy_since = None
        _, metrics = self.host.http_get(base + "/metrics", {}, None, 10)
        self._check_idle(rt, metrics if isinstance(metrics, str) else "", now)

    def _died(self, rt: Runtime, why: str) -> None:
        """A death after ready counts as a failed start: one more and the VM powers off."""
        self.restarts += 1
        self.console(f"{why}; starting it again")
        self._start_vllm(rt, fresh=True)
        self.failed_starts = 1

    def _check_idle(self, rt: Runtime, metrics: str, now: float) -> None:
        busy, activity = idle_signals(metrics)
        if busy or activity != self._last_activity:
            self._last_active, self._last_activity = now, activity
        idle_minutes = int((now - self._last_active) // 60)
        if not rt.idle_stop_minutes or idle_minutes < rt.idle_stop_minutes:
            return
        why = (
            f"idle: vLLM served nothing for {idle_minutes} minutes "
            f"(idleStopMinutes = {rt.idle_stop_minutes})"
        )
        if not rt.stop_command:
            raise GiveUp(why)
        # A replica asks its group, which may keep it (at its minimum size): it keeps serving,
        # and asks again after another idle period. If the group removes it, the VM goes.
        self.console(f"{why}; asking the group ({rt.stop_command[0]})")
        try:
            self.host.run([*rt.stop_command, "idle", why])
        except HostError as err:
            self.console(f"{rt.stop_command[0]} idle: {err}")
        self._last_active = now

    def idle_minutes(self) -> int:
        if self.phase != "ready":
            return 0
        return int((self.clock.now() - self._last_active) // 60)

    def not_ready(self) -> str | None:
        """serving.not_ready_reason through the proxy, with the key, as a client sees it."""
        assert self.rt is not None and self._secrets is not None
        proxy = self.rt.proxy
        scheme = "https" if proxy.tls_cert_pem else "http"
        base = f"{scheme}://127.0.0.1:{proxy.port}"
        health, _ = self.host.http_get(base + serving.HEALTH_PATH, {}, proxy.ca_cert_pem, 10)
        models: tuple[int | None, object] = (None, None)
        if health == 200:
            auth = {"Authorization": f"Bearer {self._secrets.api_key}"}
            models = self.host.http_get(base + serving.MODELS_PATH, auth, proxy.ca_cert_pem, 10)
        return serving.not_ready_reason(health, *models, self.rt.vllm.served_model_name)

    # --- stopping and reporting ----------------------------------------------------------------

    def give_up(self, reason: str) -> None:
        rt = self.rt
        self.reason = reason
        self.console(f"FAILED: {reason}" if not reason.startswith("idle") else reason)
        if not reason.startswith("idle"):
            self.console(f"last lines of {units.VLLM_UNIT}:")
            for line in self.host.log_tail(units.VLLM_UNIT, LOG_TAIL_LINES):
                self.console(f"  vllm| {line}")
        if rt is not None and not rt.stop_on_failure and not reason.startswith("idle"):
            self.phase = "failed"
            self.console("stopOnFailure is off: the VM stays up for debugging and keeps billing")
            return
        self.phase = "powered-off"
        self.report()
        self.console("powering the VM off so that it stops billing GPU time; start it again "
                     "with `gcloud compute instances start` (docs/troubleshooting.md)")  # fmt: skip
        if rt is not None and rt.stop_command:
            try:
                self.host.run([*rt.stop_command, "failure", reason])
                return
            except HostError as err:
                self.console(f"{rt.stop_command[0]} failed ({err}); powering off instead")
        try:
            self.host.poweroff()
        except HostError as err:
            self.console(f"poweroff failed: {err}")

    def _stop_quietly(self, unit: str) -> None:
        with contextlib.suppress(HostError):
            self.host.stop(unit)

    def console(self, message: str) -> None:
        self.host.console(f"llm-endpoint-agent: {message}")

    def state(self) -> dict[str, str]:
        return {
            "state": self.phase,
            "reason": self.reason,
            "restarts": str(self.restarts),
            "failed-starts": str(self.failed_starts),
            "idle-minutes": str(self.idle_minutes()),
            "document": self._document,
        }

    def report(self) -> None:
        """Guest attributes: readable through the Compute API without SSH or port 8000."""
        for key, value in self.state().items():
            if self._reported.get(key) == value:
                continue
            try:
                self.metadata.set_guest_attribute(GUEST_NAMESPACE, key, value)
                self._reported[key] = value
            except ApiError as err:
                print(f"llm-endpoint-agent: guest attribute {key}: {err}", flush=True)


def idle_signals(metrics: str) -> tuple[bool, str]:
    """(busy, activity) from vLLM's Prometheus text (docs/facts/vllm.md, "Metrics for
    idleness"): busy while requests run or wait; `activity` changes whenever a request
    completes or tokens are made.
    Without any of these series (renamed in a new vLLM) it reports busy: never idle by
    mistake."""
    busy, done, found = 0.0, 0.0, 0
    for line in metrics.splitlines():
        name = line.split("{", 1)[0].split(" ", 1)[0]
        try:
            value = float(line.rsplit(" ", 1)[-1])
        except ValueError:
            continue
        if name in ("vllm:num_requests_running", "vllm:num_requests_waiting"):
            busy, found = busy + value, found + 1
        elif name in ("vllm:request_success_total", "vllm:generation_tokens_total"):
            done, found = done + value, found + 1
    return busy > 0 or found == 0, f"{done:.0f}"
