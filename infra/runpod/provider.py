"""The Pulumi dynamic provider for one RunPod pod serving the vLLM endpoint.

Written for the engine's host process (docs/facts/pulumi.md, "Dynamic providers";
infra/runpod/provider_base.py says how: no client, lock or key on the instance, the RunPod key
from `configure`). `custom_timeouts` is ignored by dynamic providers, so every deadline here is
the provider's own, measured with the injectable clock.

Inputs (camelCase, as the component passes them): name, image, customImage, vllmArgs,
minCudaVersion, gpuTypeIds, gpuCount, dataCenterIds, cloud, containerDiskGb, volumeGb,
weightsGb, readyTimeoutMinutes, apiKey (secret: only to check that the pod answers with it; it
is never sent to RunPod with the pod), apiKeySecret and hfTokenSecret (names of the stack's
account secrets: the pod's env holds `{{ RUNPOD_SECRET_<name> }}` references), secretsVersion
(changes when a secret's value is rotated, which restarts the pod). `check` adds
bootstrapDigest (a hash of the bootstrap script and proxy config this code would put in the
pod) so that a change to them shows up as an in-place update. Outputs: the inputs plus podId,
podName, endpoint, gpuTypeId, dataCenterId, costPerHour, status.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    UpdateResult,
)

from infra.runpod import bootstrap, host_threads, journal
from infra.runpod.account_secrets import reference
from infra.runpod.bodies import PodSpec
from infra.runpod.errors import RunpodError
from infra.runpod.inputs import input_failures
from infra.runpod.lifecycle import POLL_INTERVAL_S, PodLifecycle, ReadyPod
from infra.runpod.probes import HealthCheck, KeyCheck, http_health, http_models
from infra.runpod.provider_base import (
    PROVIDER_KEY,
    UNKNOWN,
    RunpodProviderBase,
    plain,
    secret_values,
)
from infra.serving import PUBLIC_PORT

log = logging.getLogger(__name__)

SECRET_INPUTS = ("apiKey",)
# Changing these needs a different machine: the pod is replaced (a new one is created and made
# ready first, then the old one is deleted). gpuTypeIds/dataCenterIds only when the placed pod no
# longer fits the new list.
REPLACE_KEYS = ("name", "gpuCount", "cloud", "minCudaVersion", "volumeGb")
# Changing these is a PATCH of the container followed by a restart action (the OpenAPI document
# does not say a PATCH restarts it; `POST /v2/pods/{id}/action` restart does), on the same
# machine, which keeps the GPU: a replacement would have to find capacity again.
IN_PLACE_KEYS = (
    "apiKeySecret",
    "hfTokenSecret",
    "secretsVersion",
    "image",
    "customImage",
    "vllmArgs",
    "apiKey",
    "containerDiskGb",
    "bootstrapDigest",
)
CONTAINER_KEYS = frozenset(IN_PLACE_KEYS) - {"containerDiskGb"}
# State only: no call to RunPod.
STATE_ONLY_KEYS = ("readyTimeoutMinutes", "weightsGb", "gpuTypeIds", "dataCenterIds")
INPUT_KEYS = (*REPLACE_KEYS, *IN_PLACE_KEYS, *STATE_ONLY_KEYS)


def _inputs(props: Mapping[str, Any]) -> dict[str, Any]:
    return {k: plain(props[k]) for k in INPUT_KEYS if k in props}


def bootstrap_digest() -> str:
    text = bootstrap.render_bootstrap() + bootstrap.pod_proxy_config()
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def validate(news: Mapping[str, Any]) -> list[CheckFailure]:
    """One failure per bad field, each saying how to fix it (infra/runpod/inputs.py, the rules
    the stack config uses too). Unknown values (preview) pass."""
    return [CheckFailure(k, why) for k, why in input_failures(_inputs(news), UNKNOWN)]


class RunpodPodProvider(RunpodProviderBase):
    """See the module docstring. `now`/`sleep`/`health`/`models` are injectable for tests."""

    def __init__(
        self,
        now: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        health: HealthCheck = http_health,
        models: KeyCheck = http_models,
        poll_interval_s: float = POLL_INTERVAL_S,
    ) -> None:
        super().__init__(now, sleep)
        self.health = health
        self.models = models
        self.poll_interval_s = poll_interval_s

    @contextmanager
    def _session(self, props: Mapping[str, Any]) -> Iterator[PodLifecycle]:
        """A lifecycle on a client made for this one call (none is kept on the instance)."""
        values = secret_values(props, SECRET_INPUTS, self.runpod_key())
        with self.client(values) as client:
            yield PodLifecycle(
                client,
                now=self.now,
                sleep=self.sleep,
                health=self.health,
                models=getattr(self, "models", http_models),  # providers pickled before it
                poll_interval_s=getattr(self, "poll_interval_s", POLL_INTERVAL_S),
                secrets=values,
            )

    # -- check / diff ----------------------------------------------------------------------

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        inputs = dict(news)
        inputs.setdefault("dataCenterIds", [])
        inputs.setdefault("volumeGb", 0)
        inputs.setdefault("hfTokenSecret", "")
        inputs["bootstrapDigest"] = bootstrap_digest()
        return CheckResult(inputs, validate(inputs))

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        old, new = _inputs(olds), _inputs(news)
        changed = [k for k in INPUT_KEYS if old.get(k) != new.get(k)]
        replaces = [k for k in REPLACE_KEYS if k in changed]
        placed_gpu = plain(olds.get("gpuTypeId"))
        placed_dc = plain(olds.get("dataCenterId"))
        new_gpus = new.get("gpuTypeIds")
        if "gpuTypeIds" in changed and (
            new_gpus == UNKNOWN or not isinstance(new_gpus, list) or placed_gpu not in new_gpus
        ):
            replaces.append("gpuTypeIds")
        new_dcs = new.get("dataCenterIds") or []
        if (
            "dataCenterIds" in changed
            and new_dcs
            and (new_dcs == UNKNOWN or placed_dc not in new_dcs)
        ):
            replaces.append("dataCenterIds")
        if plain(olds.get("serving")) is False:
            replaces.append("serving")  # read() found it no longer serving: a new pod
        return DiffResult(
            changes=bool(changed) or bool(replaces),
            replaces=replaces,
            stables=["name"] if not replaces else [],
            delete_before_replace=False,
        )

    # -- create / read / update / delete ---------------------------------------------------

    def _spec(self, props: Mapping[str, Any], pod_name: str) -> PodSpec:
        p = _inputs(props)
        return PodSpec(
            name=pod_name,
            image=p["image"],
            custom_image=bool(p.get("customImage")),
            args=list(p["vllmArgs"]),
            env=bootstrap.pod_env(
                reference(p["apiKeySecret"]),
                reference(p["hfTokenSecret"]) if p.get("hfTokenSecret") else None,
            ),
            key=p["apiKey"],
            gpu_type_ids=list(p["gpuTypeIds"]),
            gpu_count=int(p["gpuCount"]),
            data_center_ids=list(p.get("dataCenterIds") or []),
            cloud=p["cloud"],
            container_disk_gb=int(p["containerDiskGb"]),
            volume_gb=int(p.get("volumeGb") or 0),
            min_cuda_version=p["minCudaVersion"],
            port=PUBLIC_PORT,
            ready_timeout_s=float(p["readyTimeoutMinutes"]) * 60,
        )

    @staticmethod
    def _outs(props: Mapping[str, Any], pod: ReadyPod) -> dict[str, Any]:
        return {
            **_inputs(props),
            "podId": pod.id,
            "podName": pod.name,
            "endpoint": pod.endpoint,
            "gpuTypeId": pod.gpu_type_id,
            "dataCenterId": pod.data_center_id,
            "costPerHour": pod.cost_per_hour,
            "status": pod.status,
            "serving": True,
            "notServingReason": "",
        }

    def create(self, props: dict[str, Any]) -> CreateResult:
        # A fresh name per create: after a lost answer the pod is looked up by this name, and a
        # replacement (created before the old pod is deleted) must not find the old one.
        pod_name = f"{plain(props['name'])}-{secrets.token_hex(4)}"
        host_threads.widen_host_pool()  # the other pods' creates must not queue behind this one
        with self._session(props) as lifecycle:
            self._recover(lifecycle, props)
            entry = journal.record(pod_name)  # before the POST: a SIGKILL from here on is found
            try:
                pod = lifecycle.create(self._spec(props, pod_name))
            finally:
                # Returned (the engine records the pod) or failed having cleaned up. Not run
                # when the process is killed: the entry then stays, and is an orphan.
                journal.done(entry)
        return CreateResult(pod.id, self._outs(props, pod))

    @staticmethod
    def _recover(lifecycle: PodLifecycle, props: Mapping[str, Any]) -> None:
        """Delete the pods of this stack whose create was interrupted by a kill (journal.py)."""
        base = str(plain(props.get("name") or ""))
        prefix = base.rsplit("-", 1)[0] + "-"  # llm-endpoint-<stack>-, every index
        for entry in journal.orphans(prefix):
            try:
                found = lifecycle.client.find_pods_by_name(entry.name)
                for pod in found:
                    lifecycle.delete(str(pod["id"]))
            except RunpodError as err:
                log.error("could not delete the pod of interrupted create %s: %s", entry.name, err)
                # (the error text names only the pod and the API answer, never a secret)
                continue  # the entry stays: the next call, or the leak finder, tries again
            journal.note_recovered(entry, [str(p["id"]) for p in found])

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        with self._session(props) as lifecycle:
            self._recover(lifecycle, props)
            pod = lifecycle.read(id_)
            if pod is None:
                # Gone (e.g. terminated from the console): an empty id makes `pulumi refresh`
                # drop it from the state instead of showing it forever (docs/facts/pulumi.md).
                return ReadResult("", {})
            reason = lifecycle.not_serving(pod, self._spec(props, str(pod.get("name"))))
        outs = {k: v for k, v in props.items() if k != PROVIDER_KEY}
        outs.update(
            podId=str(pod["id"]),
            podName=pod.get("name", outs.get("podName")),
            status=pod.get("status"),
            costPerHour=float(pod.get("cost") or 0.0),
            gpuTypeId=(pod.get("gpu") or {}).get("id", outs.get("gpuTypeId")),
            dataCenterId=pod.get("dataCenterId"),
            # A pod that stopped serving after it was ready (EXITED, ERROR, or its service no
            # longer answers): `diff` then replaces it, on `pulumi up --refresh`.
            serving=reason is None,
            notServingReason=reason or "",
        )
        return ReadResult(id_, outs)

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        host_threads.widen_host_pool()  # an update waits for readiness too
        with self._session(news) as lifecycle:
            self._recover(lifecycle, news)
        old, new = _inputs(olds), _inputs(news)
        changed = {k for k in IN_PLACE_KEYS if old.get(k) != new.get(k)}
        pod_name = str(plain(olds.get("podName")) or plain(news["name"]))
        spec = self._spec(news, pod_name)
        patch = spec.update_body(
            was_custom_image=bool(old.get("customImage")),
            container=bool(changed & CONTAINER_KEYS),
            disk="containerDiskGb" in changed,
        )
        with self._session(news) as lifecycle:
            if patch:
                pod = lifecycle.update_in_place(id_, patch, spec)
                return UpdateResult(self._outs(news, pod))
            current = lifecycle.read(id_)
        outs = {k: v for k, v in olds.items() if k != PROVIDER_KEY}
        outs.update(_inputs(news))
        if current is not None:
            outs.update(status=current.get("status"), costPerHour=float(current.get("cost") or 0))
        return UpdateResult(outs)

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        with self._session(props) as lifecycle:
            self._recover(lifecycle, props)
            lifecycle.delete(id_)
