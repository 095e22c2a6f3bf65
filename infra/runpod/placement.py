"""Placing a pod: try each (GPU type, data center) candidate in order until RunPod takes it.

The rules are RunPod's documented reaction table for `POST /v2/pods` (docs/facts/runpod.md
("Create")): 400 = rule broken or no capacity -> next candidate; 402 = insufficient balance ->
stop at once; 403 = no access to that pool -> skip it; 422 = fix the request, never retry; 429
= wait for Retry-After (the client does that); 5xx or no answer = the pod may have been made
anyway ("a create can fail with 5xx after the pod was made, and the pod bills on"), so look it
up by name before posting again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from infra.runpod.bodies import Json, PodSpec
from infra.runpod.client import RunpodClient
from infra.runpod.errors import ApiError, PlacementError, RunpodError, TransportError, redact

log = logging.getLogger(__name__)

CREATE_5XX_ATTEMPTS = 3
# After a 5xx or lost create answer, wait this long (doubling per failure) before looking the pod
# up by name: a pod still being made server-side may not be listed at once.
LOST_CREATE_BACKOFF_S = 10.0
# Before giving up, the last lookup waits this long after the last POST, so that "no pod was
# listed" means something.
LOST_CREATE_SETTLE_S = 60.0
CLEANUP_HINT = "python -m scripts.runpod_pods --stack <stack> --delete-unknown"
LIST_HINT = "python -m scripts.runpod_pods --stack <stack>"
# Fields only RunPod's newer API documents describe: an API that rejects them is older.
NEWER_FIELDS = ("entrypoint", "cmd")
CUSTOM_IMAGE_HINT = (
    "Use a custom image instead, whose own entrypoint runs the bootstrap: build "
    "infra/runpod/image (or take the one the repository's `pod-image` workflow publishes on a "
    "tag) and set `pulumi config set --path llm-endpoint:runpod.image "
    'ghcr.io/<owner>/llm-endpoint-vllm:<tag>` (docs/runpod.md, "Custom image")'
)


def _money(usd: float) -> str:
    return f"${usd:,.2f}"


@dataclass
class Placement:
    """One placement attempt's collaborators: the API, the clock's sleep, a confirmed delete
    (for duplicates a lost create made) and the secrets to blank in log lines."""

    client: RunpodClient
    sleep: Callable[[float], None]
    delete: Callable[[str], None]
    secrets: Sequence[str | None] = ()

    def _r(self, value: object) -> str:
        return redact(str(value), self.secrets)

    def place(self, spec: PodSpec) -> Json:
        """Create the pod on the first candidate that accepts it; returns the API's pod. A
        PlacementError has `pod_may_exist` set once any create got no clear answer."""
        tried = _Tried()
        for gpu, dc in spec.candidates():
            where = f"{gpu} in {dc or 'any data center'} ({spec.cloud})"
            try:
                pod = self._place_on(spec, gpu, dc, where, tried)
            except PlacementError as stop:
                stop.pod_may_exist = stop.pod_may_exist or tried.uncertain
                raise
            if pod is not None:
                return pod
        raise self._nothing_placed(tried)

    def _place_on(
        self, spec: PodSpec, gpu: str, dc: str | None, where: str, tried: _Tried
    ) -> Json | None:
        """The pod, or None when this candidate refused it (the reason is added to `tried`).
        Repeats a create that got no clear answer, but only after looking for its pod."""
        body = spec.create_body(gpu, dc)
        failed: RunpodError | None = None
        for failures in range(1, CREATE_5XX_ATTEMPTS + 1):
            try:
                pod = self.client.create_pod(body)
            except ApiError as err:
                if err.status < 500:
                    tried.refused.append(self._refusal(spec, gpu, where, err))
                    return None
                failed = err
            except TransportError as err:
                failed = err
            else:
                log.info("pod %s created on %s", pod.get("id"), where)
                return pod
            tried.uncertain = True
            found = self._look_after_lost_create(spec.name, where, failed, failures)
            if found is not None:
                return found
        raise PlacementError(
            f"RunPod's API kept failing while creating a pod on {where} "
            f"({CREATE_5XX_ATTEMPTS} attempts, last: {failed}). No pod named '{spec.name}' was "
            f"listed {LOST_CREATE_SETTLE_S:g} s after the last attempt, so none should be "
            f"billing; a pod may still appear: check with `{LIST_HINT}` (and "
            "https://uptime.runpod.io), then run `pulumi up` again later.",
            pod_may_exist=True,
        )

    def _look_after_lost_create(
        self, name: str, where: str, failed: RunpodError | None, failures: int
    ) -> Json | None:
        """Wait (longer each time, longest before the last look), then look the pod up."""
        last = failures >= CREATE_5XX_ATTEMPTS
        wait = LOST_CREATE_SETTLE_S if last else LOST_CREATE_BACKOFF_S * 2 ** (failures - 1)
        log.warning(
            "create on %s got no clear answer (%s); looking the pod up by name in %g s",
            where,
            self._r(failed),
            wait,
        )
        self.sleep(wait)
        found = self._find_after_lost_create(name, where, failed)
        if found is not None:
            log.info("the pod %s exists after all: using it", found.get("id"))
        return found

    def _nothing_placed(self, tried: _Tried) -> PlacementError:
        refused = "; ".join(tried.refused)
        hint = (
            " Every candidate was refused with 400, which can also mean the request breaks a "
            "RunPod rule rather than a lack of capacity."
            if tried.refused and all(r.endswith("(400)") for r in tried.refused)
            else ""
        )
        nothing = (
            "nothing was created"
            if not tried.uncertain
            else f"no pod was confirmed (a pod may exist; run `{LIST_HINT}`)"
        )
        return PlacementError(
            f"No candidate took the pod, so {nothing}. Tried: {refused}.{hint} Add GPU "
            "types to `llm-endpoint:runpod.gpuTypeIds` or data centers to "
            "`runpod.dataCenterIds` (or remove dataCenterIds to let RunPod choose), try "
            "`runpod.cloud: COMMUNITY`, or run `pulumi up` again later.",
            pod_may_exist=tried.uncertain,
        )

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
            raise PlacementError(_invalid_request(spec, err))
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

    def _find_after_lost_create(
        self, name: str, where: str, err: RunpodError | None
    ) -> Json | None:
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
            log.warning("pod %s duplicates %s (%s): deleting it", extra.get("id"), keep["id"], name)
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


@dataclass
class _Tried:
    """What one placement has seen so far: refusals to report, and whether any create got no
    clear answer (then a pod may exist whatever happens next)."""

    refused: list[str] = field(default_factory=list)
    uncertain: bool = False


def _invalid_request(spec: PodSpec, err: ApiError) -> str:
    """The message for a 422: an API that does not know `entrypoint`/`cmd` says so, with the
    way out (a custom image needs neither)."""
    fields = "; ".join(err.errors) or err.detail
    text = f"{err.detail} {' '.join(err.errors)}"
    if not spec.custom_image and any(name in text for name in NEWER_FIELDS):
        return (
            f"RunPod rejected the pod request (422: {fields}): this API does not accept "
            "`entrypoint`/`cmd`, which the stock vLLM image needs to start the project's "
            f"proxy in front of vLLM. No pod was created. {CUSTOM_IMAGE_HINT}."
        )
    return (
        f"RunPod rejected the pod request as invalid (422): {fields}. This is a bug in the "
        "request this project builds, or a value in `llm-endpoint:runpod` RunPod does not "
        "accept; retrying will not help. No pod was created."
    )
