"""A pod's life at RunPod: place it on the first candidate that takes it, wait until it serves,
and delete it for sure. No Pulumi here; the provider turns these into create/read/update/delete.

The rules come from RunPod's documented reaction table for `POST /v2/pods` (FACTS.md (RunPod)):
400 = rule broken or no capacity -> next candidate; 402 = insufficient balance -> stop at once;
403 = no access to that pool -> skip it; 422 = fix the request, never retry; 429 = wait for
Retry-After (the client does that); 5xx = retry the same candidate, but only after looking the
pod up by name, since "a create can fail with 5xx after the pod was made, and the pod bills on".

Readiness is the service's own health check through RunPod's proxy, not the pod's status:
FACTS.md (RunPod): "A running pod is not yet serving", and RUNNING has been seen with `runtime`
still null. Every wait has a deadline (FACTS.md (RunPod): SkyPilot hangs without one; dstack
gives pods 20 minutes, then terminates them), and a pod that misses it is deleted before the
error is raised, so a failed `pulumi up` leaves nothing billing.
"""

from __future__ import annotations

import logging
import os
import shlex
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import NoReturn

import requests

from infra.runpod.bootstrap import ENV_API_KEY
from infra.runpod.client import Json, RunpodClient
from infra.runpod.errors import (
    ApiError,
    DeleteError,
    PlacementError,
    PodFailedError,
    RunpodError,
    TransportError,
    redact,
)

log = logging.getLogger(__name__)

PROXY_URL_TEMPLATE_ENV = "RUNPOD_PROXY_URL_TEMPLATE"
DEFAULT_PROXY_URL_TEMPLATE = "https://{pod_id}-{port}.proxy.runpod.net"
HF_CACHE_PATH = "/root/.cache/huggingface"  # FACTS.md (vLLM): the image's HF cache
FAILED_STATUSES = frozenset({"ERROR", "EXITED", "TERMINATED"})
POLL_INTERVAL_S = 10.0
HEALTH_TIMEOUT_S = 10.0
DELETE_TIMEOUT_S = 300.0
DELETE_POLL_S = 5.0
CREATE_5XX_ATTEMPTS = 3
# After a 5xx or lost create answer, wait this long (doubling per failure) before looking the pod
# up by name: a pod still being made server-side may not be listed at once (FACTS.md (RunPod):
# "a create can fail with 5xx after the pod was made").
LOST_CREATE_BACKOFF_S = 10.0
# Before giving up, the last lookup waits this long after the last POST, so that "no pod was
# listed" means something.
LOST_CREATE_SETTLE_S = 60.0
RESTART_CONFLICTS = 3
CLEANUP_HINT = "python -m scripts.runpod_pods --stack <stack> --delete-unknown"
LIST_HINT = "python -m scripts.runpod_pods --stack <stack>"

Now = Callable[[], float]
Sleep = Callable[[float], None]
HealthCheck = Callable[[str], int | None]
KeyCheck = Callable[[str, str], int | None]


def endpoint_url(pod_id: str, port: int) -> str:
    """The pod's public URL for `port`. FACTS.md (RunPod): `https://{podId}-{port}.proxy.runpod.net`;
    RUNPOD_PROXY_URL_TEMPLATE overrides it (tests serve `/health` on loopback)."""
    template = os.environ.get(PROXY_URL_TEMPLATE_ENV) or DEFAULT_PROXY_URL_TEMPLATE
    return template.format(pod_id=pod_id, port=port).rstrip("/")


def http_health(url: str) -> int | None:
    """Status of GET `url`/health, or None if nothing answered."""
    try:
        return requests.get(url + "/health", timeout=HEALTH_TIMEOUT_S).status_code
    except requests.RequestException:
        return None


def http_models(url: str, api_key: str) -> int | None:
    """Status of GET `url`/v1/models with the endpoint key, or None if nothing answered. Only
    a container started with this key answers 200 (its nginx answers 401 to any other key)."""
    try:
        return requests.get(
            url + "/v1/models",
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=HEALTH_TIMEOUT_S,
        ).status_code
    except requests.RequestException:
        return None


def _started_later(current: object, before: object) -> bool:
    """Whether the pod's `startedAt` shows a (re)start after `before` (the value read before an
    update). Later when both parse as timestamps, else merely different (and present)."""
    if not isinstance(current, str) or not current:
        return False
    if not isinstance(before, str) or not before:
        return True
    try:
        return datetime.fromisoformat(current) > datetime.fromisoformat(before)
    except (ValueError, TypeError):  # unparseable, or one with a zone and one without
        return current != before


@dataclass(frozen=True)
class PodSpec:
    """Everything needed to create one pod. `env` holds secrets: never log or show it."""

    name: str
    image: str
    args: list[str]
    env: dict[str, str] = field(repr=False)
    gpu_type_ids: list[str]
    gpu_count: int
    data_center_ids: list[str]
    cloud: str
    container_disk_gb: int
    volume_gb: int
    min_cuda_version: str
    port: int
    ready_timeout_s: float

    def candidates(self) -> list[tuple[str, str | None]]:
        """(GPU type, data center) in order of preference. FACTS.md (RunPod): create "places one
        GPU type and never falls back: the caller tries candidates in order"."""
        dcs: list[str | None] = list(self.data_center_ids) or [None]
        return [(gpu, dc) for gpu in self.gpu_type_ids for dc in dcs]

    def create_body(self, gpu_type_id: str, data_center_id: str | None) -> Json:
        body: Json = {
            "name": self.name,
            "image": self.image,
            "args": shlex.join(self.args),
            "env": dict(self.env),
            "gpu": {
                "id": gpu_type_id,
                "count": self.gpu_count,
                "minCudaVersion": self.min_cuda_version,
            },
            "cloud": self.cloud,
            "disk": self.container_disk_gb,
            "ports": [f"{self.port}/http"],
        }
        if data_center_id is not None:
            body["dataCenterIds"] = [data_center_id]
        if self.volume_gb:
            body["mounts"] = {"persistent": {"size": self.volume_gb, "path": HF_CACHE_PATH}}
        return body


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

    def _r(self, value: object) -> str:
        """Text for a log line, with the secrets this lifecycle knows blanked."""
        return redact(str(value), self._secrets)

    # -- create ----------------------------------------------------------------------------

    def hourly_price(self, spec: PodSpec, gpu_type_id: str) -> float | None:
        """List price for this pod from the catalog (per GPU x count), None if unknown."""
        try:
            gpus = self.client.gpu_types()
        except RunpodError:
            return None
        for gpu in gpus:
            if gpu.get("id") == gpu_type_id:
                per_gpu = gpu.get("price", {}).get(spec.cloud.lower())
                return float(per_gpu) * spec.gpu_count if per_gpu is not None else None
        return None

    def place(self, spec: PodSpec) -> Json:
        """Create the pod on the first candidate that accepts it; returns the API's pod. A
        PlacementError has `pod_may_exist` set once any create got no clear answer."""
        refused: list[str] = []
        last_400: str | None = None
        uncertain = False
        for gpu, dc in spec.candidates():
            where = f"{gpu} in {dc or 'any data center'} ({spec.cloud})"
            body = spec.create_body(gpu, dc)
            failures = 0
            while True:
                failed: RunpodError
                try:
                    pod = self.client.create_pod(body)
                except ApiError as err:
                    if err.status < 500:
                        try:
                            refused.append(self._refusal(spec, gpu, where, err))
                        except PlacementError as stop:
                            stop.pod_may_exist = uncertain
                            raise
                        if err.status == 400:
                            last_400 = err.detail
                        break
                    failed = err
                except TransportError as err:
                    failed = err
                else:
                    log.info("pod %s created on %s", pod.get("id"), where)
                    return pod
                # 5xx or no answer: the pod may exist anyway. Never POST again before looking,
                # and give a pod still being made time to be listed before looking.
                uncertain = True
                failures += 1
                last = failures >= CREATE_5XX_ATTEMPTS
                wait = LOST_CREATE_SETTLE_S if last else LOST_CREATE_BACKOFF_S * 2 ** (failures - 1)
                log.warning(
                    "create on %s got no clear answer (%s); looking the pod up by name in %g s",
                    where,
                    self._r(failed),
                    wait,
                )
                self.sleep(wait)
                found = self._find_after_lost_create(spec.name, where, failed)
                if found is not None:
                    log.info("the pod %s exists after all: using it", found.get("id"))
                    return found
                if last:
                    raise PlacementError(
                        f"RunPod's API kept failing while creating a pod on {where} "
                        f"({failures} attempts, last: {failed}). No pod named '{spec.name}' was "
                        f"listed {wait:g} s after the last attempt, so none should be billing; "
                        f"a pod may still appear: check with `{LIST_HINT}` (and "
                        "https://uptime.runpod.io), then run `pulumi up` again later.",
                        pod_may_exist=True,
                    ) from None
        tried = "; ".join(refused)
        hint = (
            " Every candidate was refused with 400, which can also mean the request breaks a "
            f"RunPod rule rather than a lack of capacity; the last answer was: {last_400}."
            if last_400 is not None and all(r.endswith("(400)") for r in refused)
            else ""
        )
        nothing = (
            "nothing was created"
            if not uncertain
            else f"no pod was confirmed (a pod may exist; run `{LIST_HINT}`)"
        )
        raise PlacementError(
            f"No candidate took the pod, so {nothing}. Tried: {tried}.{hint} Add GPU "
            "types to `llm-endpoint:runpod.gpuTypeIds` or data centers to "
            "`runpod.dataCenterIds` (or remove dataCenterIds to let RunPod choose), try "
            "`runpod.cloud: COMMUNITY`, or run `pulumi up` again later.",
            pod_may_exist=uncertain,
        )

    def _refusal(self, spec: PodSpec, gpu: str, where: str, err: ApiError) -> str:
        """Decide on a 4xx answer to a create: raise to stop, or say why to move on."""
        if err.status == 402:
            price = self.hourly_price(spec, gpu)
            cost = (
                f"about {_money(price)}/hour ({spec.gpu_count} x {gpu}, {spec.cloud} cloud)"
                if price is not None
                else f"an unknown hourly price ({spec.gpu_count} x {gpu})"
            )
            raise PlacementError(
                f"RunPod refused the pod: insufficient balance (402: {err.detail}). This pod "
                f"costs {cost}, and RunPod requires at least one hour of credit to deploy. Add "
                "credit in the RunPod console (Billing), then run `pulumi up` again. No pod was "
                "created."
            )
        if err.status == 422:
            fields = "; ".join(err.errors) or err.detail
            raise PlacementError(
                f"RunPod rejected the pod request as invalid (422): {fields}. This is a bug in "
                "the request this project builds, or a value in `llm-endpoint:runpod` RunPod "
                "does not accept; retrying will not help. No pod was created."
            )
        if err.status == 429:
            raise PlacementError(
                f"RunPod kept rate-limiting pod creation (429: {err.detail}). Wait a minute and "
                "run `pulumi up` again. No pod was created."
            )
        if err.status == 403:
            return f"{where}: no access to this pool (403)"
        if err.status == 400:
            log.info("no capacity on %s: %s", where, self._r(err.detail))
            return f"{where}: {err.detail} (400)"
        raise PlacementError(f"Creating a pod on {where} failed: {err}. No pod was created.")

    def _find_after_lost_create(self, name: str, where: str, err: RunpodError) -> Json | None:
        """The pod a lost create made, if listed. If several are (each POST made one), the
        oldest is kept and the others are deleted, each delete confirmed."""
        try:
            found = self.client.find_pods_by_name(name)
        except RunpodError as lookup_err:
            raise PlacementError(
                f"Creating the pod on {where} failed ({err}) and looking it up by name failed "
                f"too ({lookup_err}). A pod named '{name}' may exist and bill: "
                f"check the RunPod console or run `{CLEANUP_HINT}`.",
                pod_may_exist=True,
            ) from None
        if not found:
            return None
        found.sort(key=lambda p: (str(p.get("createdAt") or ""), str(p.get("id"))))
        keep, extras = found[0], found[1:]
        for extra in extras:
            log.warning(
                "pod %s is a duplicate of %s (both named %s): deleting it",
                extra.get("id"),
                keep.get("id"),
                name,
            )
            try:
                self.delete(str(extra["id"]))
            except RunpodError as delete_err:
                raise PlacementError(
                    f"Creating the pod on {where} made {len(found)} pods named '{name}', and "
                    f"deleting the duplicate {extra.get('id')} failed ({delete_err}). Pods "
                    f"named '{name}' may be billing: run `{CLEANUP_HINT}`.",
                    pod_may_exist=True,
                ) from None
        return keep

    def wait_ready(
        self,
        pod_id: str,
        spec: PodSpec,
        started: float,
        *,
        restarted_after: str | None = None,
        require_restart: bool = False,
    ) -> Json:
        """Poll until the pod is RUNNING with a runtime, `/health` answers 200 through its proxy
        URL and `/v1/models` answers 200 with the spec's key (only a container started with
        that key does). With `require_restart`, also until its `startedAt` is later than
        `restarted_after` (the old container must not pass for the new one). Raises
        PodFailedError (without deleting) on a failed state or the deadline."""
        deadline = started + spec.ready_timeout_s
        url = endpoint_url(pod_id, spec.port)
        key = spec.env.get(ENV_API_KEY, "")
        last = "no answer yet"
        while True:
            try:
                pod = self.client.get_pod(pod_id)
            except (TransportError, ApiError) as err:
                if isinstance(err, ApiError) and err.status < 500 and err.status != 429:
                    raise
                pod, last = {}, f"status unknown ({err})"
            if pod is None:
                raise PodFailedError(f"pod {pod_id} disappeared while starting")
            status = pod.get("status")
            if status in FAILED_STATUSES:
                raise PodFailedError(f"pod {pod_id} went {status} while starting")
            if status:
                last = f"status {status}"
            fresh = not require_restart or _started_later(pod.get("startedAt"), restarted_after)
            if status == "RUNNING" and not fresh:
                last = "status RUNNING, but the container has not restarted (startedAt unchanged)"
            elif status == "RUNNING" and pod.get("runtime"):
                code = self.health(url)
                keyed = self.models(url, key) if code == 200 else None
                if keyed == 200:
                    return pod
                last = (
                    f"status RUNNING, {url}/health answered {code or 'nothing'}"
                    if code != 200
                    else f"status RUNNING, {url}/v1/models answered {keyed or 'nothing'} with "
                    "the stack's key (an old container may still be serving)"
                )
            remaining = deadline - self.now()
            if remaining <= 0:
                minutes = spec.ready_timeout_s / 60
                raise PodFailedError(
                    f"pod {pod_id} was not serving within {minutes:g} minutes ({last})"
                )
            self.sleep(min(self.poll_interval_s, remaining))

    def create(self, spec: PodSpec) -> ReadyPod:
        """Place the pod and wait until it serves. On any failure after placement the pod is
        deleted before the error is raised; the message says what happened and what it cost."""
        started = self.now()
        try:
            pod = self.place(spec)
        except PlacementError as err:
            if err.pod_may_exist:
                self._delete_by_name_quietly(spec.name)
            raise
        except BaseException:
            # Interrupted during a POST or a back-off: a pod may exist that nobody will record.
            self._delete_by_name_quietly(spec.name)
            raise
        pod_id = str(pod["id"])
        cost = float(pod.get("cost") or 0.0)
        try:
            ready = self.wait_ready(pod_id, spec, started)
        except RunpodError as err:
            self._fail_and_clean_up(pod_id, cost, started, err)
        except BaseException:
            # Interrupted (Ctrl-C, engine cancel): still do not leave the pod billing.
            self._delete_quietly(pod_id)
            raise
        return self._ready(ready, spec)

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
            f"{err}; {cost}. The pod has been deleted. Check the image, model and "
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

    def _delete_by_name_quietly(self, name: str) -> None:
        """Delete every pod named `name` (a create that failed or was interrupted may have made
        one). Failures are logged with the way out; the original error is what the caller
        raises."""
        try:
            found = self.client.find_pods_by_name(name)
        except RunpodError as err:
            log.error(
                "could not check for a pod named %s (%s); one may be billing: run `%s`",
                name,
                self._r(err),
                CLEANUP_HINT,
            )
            return
        if not found:
            log.warning(
                "no pod named %s is listed; one may still appear: check with `%s`", name, LIST_HINT
            )
        for pod in found:
            log.warning("deleting pod %s (%s) left by a failed create", pod.get("id"), name)
            self._delete_quietly(str(pod["id"]))

    # -- read / update ---------------------------------------------------------------------

    def read(self, pod_id: str) -> Json | None:
        """The pod, or None when RunPod no longer has it (or only as TERMINATED)."""
        pod = self.client.get_pod(pod_id)
        if pod is None or pod.get("status") == "TERMINATED":
            return None
        return pod

    def update_in_place(self, pod_id: str, patch: Json, spec: PodSpec) -> ReadyPod:
        """PATCH the container settings, restart the container, and wait until the NEW
        container serves: `startedAt` later than before the PATCH, `/health` 200, and
        `/v1/models` 200 with the new key. The OpenAPI document does not say a PATCH restarts
        the container; it documents `POST /v2/pods/{id}/action {"action": "restart"}` for a
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

    def _restart_container(self, pod_id: str, started_before: object, deadline: float) -> None:
        """Make the container start again after a PATCH: `restart` a RUNNING pod, `start` an
        EXITED/ERROR one, wait while it is PROVISIONING/STARTING (then restart it, unless it
        has started since the PATCH). A 409 re-reads the status and tries again."""
        conflicts = 0
        while True:
            pod = self.client.get_pod(pod_id)
            if pod is None or pod.get("status") == "TERMINATED":
                raise PodFailedError(f"pod {pod_id} disappeared while being updated")
            status = str(pod.get("status"))
            if _started_later(pod.get("startedAt"), started_before):
                return  # it (re)started after the PATCH: it runs the new settings
            action = (
                "restart" if status == "RUNNING" else "start" if status in FAILED_STATUSES else None
            )
            if action is not None:
                try:
                    self.client.pod_action(pod_id, action)
                    log.info("pod %s: %s sent to apply the update", pod_id, action)
                    return
                except RunpodError as err:
                    if not isinstance(err, ApiError) or err.status != 409:
                        raise PodFailedError(
                            f"RunPod did not {action} pod {pod_id} ({self._r(err)}), so the new "
                            "settings are not running"
                        ) from None
                    conflicts += 1
                    if conflicts >= RESTART_CONFLICTS:
                        raise PodFailedError(
                            f"RunPod answered 409 to every attempt to {action} pod {pod_id} "
                            f"(status {status}; last: {self._r(err.detail)}), so the new "
                            "settings are not running"
                        ) from None
            if self.now() >= deadline:
                raise PodFailedError(
                    f"pod {pod_id} stayed {status} and could not be restarted to apply the update"
                )
            self.sleep(self.poll_interval_s)

    # -- delete ----------------------------------------------------------------------------

    def delete(self, pod_id: str, timeout_s: float = DELETE_TIMEOUT_S) -> None:
        """DELETE (404 = already gone), then poll until the pod is gone or TERMINATED. A delete
        that cannot be confirmed within `timeout_s` raises DeleteError."""
        deadline = self.now() + timeout_s
        try:
            self.client.delete_pod(pod_id)
        except RunpodError as err:
            raise DeleteError(
                f"Deleting RunPod pod {pod_id} failed: {err}. It may still be billing: run "
                f"`pulumi destroy` again, or delete it in the RunPod console."
            ) from None
        polls = 0
        status = "unknown"
        while True:
            try:
                pod = self.client.get_pod(pod_id)
            except RunpodError as err:
                pod, status = {"status": "unknown"}, f"unknown ({err})"
            if pod is None or pod.get("status") == "TERMINATED":
                log.info("pod %s is gone", pod_id)
                return
            status = str(pod.get("status"))
            if self.now() >= deadline:
                raise DeleteError(
                    f"RunPod pod {pod_id} still shows status {status} {timeout_s:g} s after it "
                    "was deleted; it may still be billing. Run `pulumi destroy` again, or delete "
                    "it in the RunPod console."
                )
            polls += 1
            if polls % 6 == 0:  # the DELETE may have been lost upstream: ask again
                try:
                    self.client.delete_pod(pod_id)
                except RunpodError as err:
                    log.warning("repeating the delete of pod %s failed: %s", pod_id, self._r(err))
            self.sleep(min(DELETE_POLL_S, max(0.0, deadline - self.now())))
