"""What the lifecycle asks a pod's service, as opposed to RunPod's API: the pod's public URL,
`/health`, and `/v1/models` with the endpoint key.

A RUNNING pod is not yet serving (docs/facts/runpod.md ("Pod status")); readiness is the
service's own health check through RunPod's proxy, and only a container started with the
stack's key answers `/v1/models` with it (its nginx answers 401 to any other key).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import datetime

import requests

from infra import serving

PROXY_URL_TEMPLATE_ENV = "RUNPOD_PROXY_URL_TEMPLATE"
DEFAULT_PROXY_URL_TEMPLATE = "https://{pod_id}-{port}.proxy.runpod.net"
HEALTH_TIMEOUT_S = 10.0

HealthCheck = Callable[[str], int | None]
# (status, parsed JSON body): both, since ready means the list names the served model.
KeyCheck = Callable[[str, str], tuple[int | None, object]]


def endpoint_url(pod_id: str, port: int) -> str:
    """The pod's public URL for `port`: `https://{podId}-{port}.proxy.runpod.net`
    (docs/facts/runpod.md ("Proxy")); RUNPOD_PROXY_URL_TEMPLATE overrides it (tests serve on
    loopback)."""
    template = os.environ.get(PROXY_URL_TEMPLATE_ENV) or DEFAULT_PROXY_URL_TEMPLATE
    return template.format(pod_id=pod_id, port=port).rstrip("/")


def http_health(url: str) -> int | None:
    """Status of GET `url`/health, or None if nothing answered."""
    try:
        return requests.get(url + "/health", timeout=HEALTH_TIMEOUT_S).status_code
    except requests.RequestException:
        return None


def http_models(url: str, api_key: str) -> tuple[int | None, object]:
    """Status and JSON body of GET `url`/v1/models with the endpoint key ((None, None) if
    nothing answered; body None if it is not JSON)."""
    try:
        answer = requests.get(
            url + serving.MODELS_PATH,
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=HEALTH_TIMEOUT_S,
        )
    except requests.RequestException:
        return None, None
    try:
        return answer.status_code, answer.json()
    except ValueError:
        return answer.status_code, None


def serving_status(
    url: str, key: str, served_model: str, health: HealthCheck, models: KeyCheck
) -> str | None:
    """None when the pod is ready by the project's one definition (serving.not_ready_reason:
    `/health` 200, then `/v1/models` 200 with `key` listing `served_model`), else why not."""
    code = health(url)
    status, body = models(url, key) if code == 200 else (None, None)
    reason = serving.not_ready_reason(code, status, body, served_model)
    if reason is None:
        return None
    if code == 200 and status == 401:
        reason += " (an old container may still be serving, with another key)"
    return f"{url}: {reason}"


def started_later(current: object, before: object) -> bool:
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
