"""A pod's life at RunPod: place it (placement.py), wait until it serves (probes.py), update it
in place, and delete it for sure. No Pulumi here; the provider turns these into
create/read/update/delete.

Every wait has a deadline on the injected clock (docs/facts/runpod.md ("Lessons"): SkyPilot
hangs without one; dstack gives pods 20 minutes, then terminates them), and the API calls made
during a wait are bounded by it too (`RunpodClient.deadline`), so a stalled API or a run of 429s
cannot hold a wait past its deadline by more than one poll. A pod that misses its deadline is
deleted before the error is raised, so a failed `pulumi up` leaves nothing billing.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from infra.runpod.bodies import Json, PodSpec
from infra.runpod.client import RunpodClient
from infra.runpod.errors import (
    ApiError,
    DeleteError,
    PlacementError,
    PodFailedError,
    RunpodError,
    TransportError,
    redact,
)
from infra.runpod.placement import CLEANUP_HINT, LIST_HINT, Placement
from infra.runpod.probes import (
    HealthCheck,
    KeyCheck,
    endpoint_url,
    http_health,
    http_models,
    serving_status,
    started_later,
)

log = logging.getLogger(__name__)

FAILED_STATUSES = frozenset({"ERROR", "EXITED", "TERMINATED"})
POLL_INTERVAL_S = 10.0
DELETE_TIMEOUT_S = 300.0
DELETE_POLL_S = 5.0
RESTART_CONFLICTS = 3

Now = Callable[[], float]
Sleep = Callable[[float], None]


@dataclass(frozen=True)
class ReadyPod:
    id: str
    name: str
    endpoint: str
    gpu_type_id: str
    data_center_id: str | None
    cost_per_hour: float
    status: str


def _money(usd: float) -> str:
    return f"${usd:,.2f}"


class PodLifecycle:
    """Lifecycle operations on one client, with an injectable clock (tests share a fake clock
    with the emulator, so state changes and deadlines happen in fake time)."""

    def __init__(
        self,
        client: RunpodClient,
        *,
        now: Now,
        sleep: Sleep,
        health: HealthCheck = http_health,
        models: KeyCheck = http_models,
        poll_interval_s: float = POLL_INTERVAL_S,
        secrets: Sequence[str | None] = (),
    ) -> None:
        self.client = client
        self.now = now
        self.sleep = sleep
        self.health = health
        self.models = models
        self.poll_interval_s = poll_interval_s
        self._secrets = tuple(secrets)
        self.placement = Placement(client, sleep, self.delete, self._secrets)

    def _r(self, value: object) -> str:
        """Text for a log line, with the secrets this lifecycle knows blanked."""
        return redact(str(value), self._secrets)

    # -- create ----------------------------------------------------------------------------

    def create(self, spec: PodSpec) -> ReadyPod:
        """Place the pod and wait until it serves. On any failure after placement the pod is
        deleted before the error is raised; the message says what happened and what it cost."""
        started = self.now()
        try:
            pod = self.placement.place(spec)
        except PlacementError as err:
            if err.pod_may_exist:
                self.delete_by_name_quietly(spec.name)
            raise
        except BaseException:
            # Interrupted during a POST or a back-off: a pod may exist that nobody will record.
            self.delete_by_name_quietly(spec.name)
            raise
        pod_id = str(pod["id"])
        cost = float(pod.get("cost") or 0.0)
        try:
            ready = self.wait_ready(pod_id, spec, started)
        except RunpodError as err:
            self._fail_and_clean_up(pod_id, cost, started, err)
        except BaseException:
            # Interrupted (Ctrl-C): still do not leave the pod billing. (A SIGKILL runs no
            # handler at all: the provider's journal covers that, infra/runpod/journal.py.)
            self._delete_quietly(pod_id)
            raise
        return self._ready(ready, spec)

    def _poll(self, pod_id: str) -> tuple[Json | None, str | None]:
        """The pod (None = gone), or ({}, why) when the API could not say this time."""
        try:
            return self.client.get_pod(pod_id), None
        except (TransportError, ApiError) as err:
            if isinstance(err, ApiError) and err.status < 500 and err.status != 429:
                raise
            return {}, f"status unknown ({err})"

    def wait_ready(
        self,
        pod_id: str,
        spec: PodSpec,
        started: float,
        *,
        restarted_after: str | None = None,
        require_restart: bool = False,
    ) -> Json:
        """Poll until the pod is RUNNING with a runtime and serves with the spec's key
        (probes.serving_status). With `require_restart`, also until its `startedAt` is later
        than `restarted_after` (the old container must not pass for the new one). Raises
        PodFailedError (without deleting) on a failed state or at the deadline."""
        deadline = started + spec.ready_timeout_s
        url = endpoint_url(pod_id, spec.port)
        last = "no answer yet"
        with self.client.deadline(deadline):
            while True:
                pod, unknown = self._poll(pod_id)
                if pod is None:
                    raise PodFailedError(f"pod {pod_id} disappeared while starting")
                status = pod.get("status")
                if status in FAILED_STATUSES:
                    raise PodFailedError(f"pod {pod_id} went {status} while starting")
                last = unknown or f"status {status}"
                fresh = not require_restart or started_later(pod.get("startedAt"), restarted_after)
                if status == "RUNNING" and not fresh:
                    last = "status RUNNING, but the container has not restarted (startedAt same)"
                elif status == "RUNNING" and pod.get("runtime"):
                    seen = serving_status(
                        url, spec.key, spec.served_model, self.health, self.models
                    )
                    if seen is None:
                        return pod
                    last = f"status RUNNING, {seen}"
                remaining = deadline - self.now()
                if remaining <= 0:
                    raise PodFailedError(
                        f"pod {pod_id} was not serving within "
                        f"{spec.ready_timeout_s / 60:g} minutes ({last})"
                    )
                self.sleep(min(self.poll_interval_s, remaining))

    def _ready(self, pod: Json, spec: PodSpec) -> ReadyPod:
        pod_id = str(pod["id"])
        return ReadyPod(
            id=pod_id,
            name=str(pod.get("name", spec.name)),
            endpoint=endpoint_url(pod_id, spec.port),
            gpu_type_id=str((pod.get("gpu") or {}).get("id", "")),
            data_center_id=pod.get("dataCenterId"),
            cost_per_hour=float(pod.get("cost") or 0.0),
            status=str(pod.get("status")),
        )

    def _fail_and_clean_up(
        self, pod_id: str, cost_per_hour: float, started: float, err: RunpodError
    ) -> NoReturn:
        minutes = max(0.0, self.now() - started) / 60
        spent = cost_per_hour * minutes / 60
        cost = f"it ran {minutes:.0f} min at {_money(cost_per_hour)}/h, roughly {_money(spent)}"
        try:
            self.delete(pod_id)
        except RunpodError as delete_err:
            raise PodFailedError(
                f"{err}; {cost}. Deleting it FAILED ({delete_err}): it may still be billing. "
                f"Delete pod {pod_id} in the RunPod console or run `{CLEANUP_HINT}`."
            ) from None
        raise PodFailedError(
            f"{err}; {cost}. The pod has been deleted. Its log (RunPod console, pod > Logs) "
            "says why it did not serve; check the image, model and "
            "`runpod.readyTimeoutMinutes` (the model download can take long on a cold pod), "
            "then run `pulumi up` again."
        ) from None

    def _delete_quietly(self, pod_id: str) -> None:
        try:
            self.delete(pod_id)
        except RunpodError as err:
            log.error(
                "pod %s may still be running: %s; run `%s`", pod_id, self._r(err), CLEANUP_HINT
            )

    def delete_by_name_quietly(self, name: str) -> list[str]:
        """Delete every pod named `name` (a create that failed or was interrupted may have made
        one); returns the ids deleted. Failures are logged with the way out; the original error
        is what the caller raises."""
        try:
            found = self.client.find_pods_by_name(name)
        except RunpodError as err:
            log.error(
                "could not check for a pod named %s (%s); one may be billing: run `%s`",
                name,
                self._r(err),
                CLEANUP_HINT,
            )
            return []
        if not found:
            log.warning(
                "no pod named %s is listed; one may still appear: check with `%s`", name, LIST_HINT
            )
        for pod in found:
            log.warning("deleting pod %s (%s) left by a failed create", pod.get("id"), name)
            self._delete_quietly(str(pod["id"]))
        return [str(p["id"]) for p in found]

    # -- read / update ---------------------------------------------------------------------

    def read(self, pod_id: str) -> Json | None:
        """The pod, or None when RunPod no longer has it (or only as TERMINATED)."""
        pod = self.client.get_pod(pod_id)
        if pod is None or pod.get("status") == "TERMINATED":
            return None
        return pod

    def not_serving(self, pod: Json, spec: PodSpec) -> str | None:
        """Why a pod that was ready no longer serves (for `pulumi refresh`), or None. One look,
        no wait: EXITED/ERROR (e.g. vLLM's bounded restarts ran out), or the readiness rule."""
        status = pod.get("status")
        if status in FAILED_STATUSES:
            return f"status {status}"
        if status != "RUNNING":
            return None  # starting or restarting: not a verdict yet
        return serving_status(
            endpoint_url(str(pod["id"]), spec.port),
            spec.key,
            spec.served_model,
            self.health,
            self.models,
        )

    def update_in_place(self, pod_id: str, patch: Json, spec: PodSpec) -> ReadyPod:
        """PATCH the container settings, restart the container, and wait until the NEW
        container serves: `startedAt` later than before the PATCH, `/health` 200, and
        `/v1/models` 200 with the new key. The API document does not say a PATCH restarts the
        container; it documents `POST /v2/pods/{id}/action {"action": "restart"}` for a
        RUNNING pod (`start` for EXITED/ERROR, 409 when not valid for the status). On failure
        the pod is left in place (it is still in the stack's state) and the message gives its
        cost and the way out."""
        started = self.now()
        deadline = started + spec.ready_timeout_s
        before = self.client.get_pod(pod_id)
        if before is None:
            raise PodFailedError(
                f"pod {pod_id} no longer exists at RunPod, so it cannot be updated. Run "
                "`pulumi refresh` (it drops the pod from the state), then `pulumi up`."
            )
        started_before = before.get("startedAt")
        pod = self.client.update_pod(pod_id, patch)
        cost = float(pod.get("cost") or 0.0)
        try:
            with self.client.deadline(deadline):
                self._restart_container(pod_id, started_before, deadline)
            ready = self.wait_ready(
                pod_id, spec, started, restarted_after=started_before, require_restart=True
            )
        except PodFailedError as err:
            raise PodFailedError(
                f"{err} after an in-place update. The pod still exists and costs "
                f"{_money(cost)}/h, and may not serve the new settings: fix the setting and "
                "run `pulumi up` again, or remove the pod with `pulumi destroy`."
            ) from None
        return self._ready(ready, spec)

    def restart(self, pod_id: str, timeout_s: float) -> None:
        """Restart the container (a rotated account secret reaches a pod only when it boots,
        docs/facts/runpod.md ("Account secrets")); the caller then waits for readiness."""
        before = self.client.get_pod(pod_id)
        if before is None:
            raise PodFailedError(f"pod {pod_id} no longer exists at RunPod")
        with self.client.deadline(self.now() + timeout_s):
            self._restart_container(pod_id, before.get("startedAt"), self.now() + timeout_s)

    def _restart_container(self, pod_id: str, started_before: object, deadline: float) -> None:
        """Make the container start again: `restart` a RUNNING pod, `start` an EXITED/ERROR
        one, wait while it is PROVISIONING/STARTING (then restart it, unless it has started
        since). A 409 re-reads the status and tries again."""
        conflicts = 0
        while True:
            pod = self.client.get_pod(pod_id)
            if pod is None or pod.get("status") == "TERMINATED":
                raise PodFailedError(f"pod {pod_id} disappeared while being updated")
            status = str(pod.get("status"))
            if started_later(pod.get("startedAt"), started_before):
                return  # it (re)started since: it runs the new settings
            action = (
                "restart" if status == "RUNNING" else "start" if status in FAILED_STATUSES else None
            )
            if action is not None:
                try:
                    self.client.pod_action(pod_id, action)
                    log.info("pod %s: %s sent to apply the update", pod_id, action)
                    return
                except RunpodError as err:
                    conflicts += 1
                    self._restart_refused(pod_id, action, status, err, conflicts)
            if self.now() >= deadline:
                raise PodFailedError(
                    f"pod {pod_id} stayed {status} and could not be restarted to apply the update"
                )
            self.sleep(self.poll_interval_s)

    def _restart_refused(
        self, pod_id: str, action: str, status: str, err: RunpodError, conflicts: int
    ) -> None:
        """A 409 (not valid for the status just read) is tried again a few times."""
        if not isinstance(err, ApiError) or err.status != 409:
            raise PodFailedError(
                f"RunPod did not {action} pod {pod_id} ({self._r(err)}), so the new "
                "settings are not running"
            ) from None
        if conflicts >= RESTART_CONFLICTS:
            raise PodFailedError(
                f"RunPod answered 409 to every attempt to {action} pod {pod_id} (status "
                f"{status}; last: {self._r(err.detail)}), so the new settings are not running"
            ) from None

    # -- delete ----------------------------------------------------------------------------

    def delete(self, pod_id: str, timeout_s: float = DELETE_TIMEOUT_S) -> None:
        """DELETE (404 = already gone), then poll until the pod is gone or TERMINATED. A delete
        that cannot be confirmed within `timeout_s` (API calls included) raises DeleteError."""
        deadline = self.now() + timeout_s
        with self.client.deadline(deadline):
            try:
                self.client.delete_pod(pod_id)
            except RunpodError as err:
                raise DeleteError(
                    f"Deleting RunPod pod {pod_id} failed: {err}. It may still be billing: run "
                    f"`pulumi destroy` again, or delete it in the RunPod console."
                ) from None
            self._confirm_deleted(pod_id, timeout_s, deadline)

    def _confirm_deleted(self, pod_id: str, timeout_s: float, deadline: float) -> None:
        polls = 0
        while True:
            try:
                pod = self.client.get_pod(pod_id)
            except RunpodError as err:
                pod = {"status": f"unknown ({err})"}
            if pod is None or pod.get("status") == "TERMINATED":
                log.info("pod %s is gone", pod_id)
                return
            if self.now() >= deadline:
                raise DeleteError(
                    f"RunPod pod {pod_id} still shows status {pod.get('status')} {timeout_s:g} s "
                    "after it was deleted; it may still be billing. Run `pulumi destroy` again, "
                    "or delete it in the RunPod console."
                )
            polls += 1
            if polls % 6 == 0:  # the DELETE may have been lost upstream: ask again
                try:
                    self.client.delete_pod(pod_id)
                except RunpodError as err:
                    log.warning("repeating the delete of pod %s failed: %s", pod_id, self._r(err))
            self.sleep(min(DELETE_POLL_S, max(0.0, deadline - self.now())))
