"""The Compute API over HTTP as `pulumi up`'s waits read it (infra/serving_wait.py,
infra/balancer_wait.py): JSON in and out with the deployer's application-default credentials
(google-auth), an HTTP error status raised as `requests.HTTPError`.

Facts relied on (docs/facts/pulumi.md, "Dynamic providers"): the waits' providers are pickled,
and their methods run on a pool of threads of the provider host sharing one instance, so this
client holds no session and no credentials, only where to call and how: a session is made for
each call and closed after it. `session` replaces the authorised session (tests point the
client at a loopback stand-in with a plain `requests.Session`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import google.auth
import requests
from google.auth.transport.requests import AuthorizedSession

COMPUTE_URL = "https://compute.googleapis.com/compute/v1"
CLOUD_PLATFORM_SCOPE = "https://www.googleapis.com/auth/cloud-platform"
COMPUTE_READONLY_SCOPE = "https://www.googleapis.com/auth/compute.readonly"
# A call's bound; the waits pass what is left of their deadline when that is less.
CALL_TIMEOUT_S = 30.0
# The least a wait gives a call near its deadline (a wait may overrun it by this much).
MIN_CALL_S = 1.0


@dataclass(frozen=True)
class HttpComputeApi:
    """The Compute API at `base_url` with credentials for `scope`."""

    base_url: str = COMPUTE_URL
    scope: str = CLOUD_PLATFORM_SCOPE
    session: Callable[[], requests.Session] | None = None

    def get_json(
        self, path: str, params: dict[str, str], timeout_s: float = CALL_TIMEOUT_S
    ) -> dict[str, Any]:
        return self._call("GET", path, timeout_s, params=params)

    def post_json(self, path: str, body: dict[str, Any], timeout_s: float) -> dict[str, Any]:
        return self._call("POST", path, timeout_s, body=body)

    def _session(self) -> requests.Session:
        if self.session is not None:
            return self.session()
        credentials, _ = google.auth.default(scopes=[self.scope])
        return AuthorizedSession(credentials)  # type: ignore[no-untyped-call]

    def _call(
        self,
        method: str,
        path: str,
        timeout_s: float,
        *,
        params: dict[str, str] | None = None,
        body: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        with self._session() as session:
            response = session.request(
                method, f"{self.base_url}/{path}", params=params, json=body, timeout=timeout_s
            )
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result


def worth_waiting_out(err: Exception) -> bool:
    """Whether a wait should poll again after `err` (a `requests` error or a garbled body):
    no connection, a timeout, a garbled body, 429 or 5xx may be gone at the next poll; 401,
    403 and 404 (credentials, permission, a name that does not exist) will not change."""
    if isinstance(err, requests.HTTPError):
        code = err.response.status_code if err.response is not None else None
        return code is None or code == 429 or code >= 500
    return True


def describe(err: Exception) -> str:
    return f"{type(err).__name__}: {err}"


def call_timeouts(deadline: float, clock: Callable[[], float]) -> Callable[[], float]:
    """For a wait that ends at `deadline` on `clock`: each call's timeout, taken when the call
    starts, is what is left then, at most CALL_TIMEOUT_S and at least MIN_CALL_S."""
    return lambda: max(MIN_CALL_S, min(CALL_TIMEOUT_S, deadline - clock()))


def credentials_hint(project: str) -> str:
    """What to check when the API refuses a wait's read (401/403/404)."""
    return (
        f"your application-default credentials have read access in project {project} "
        "(roles/compute.viewer; `gcloud auth application-default login`)"
    )
