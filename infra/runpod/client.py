"""A small client for RunPod's REST API v2: HTTP, auth, error parsing and retries, nothing else.

The contract is RunPod's REST API v2 (docs/facts/runpod.md): server `https://api.runpod.io`,
paths under `/v2`. Pod lifecycle decisions (which candidate next, when a pod is ready) live in
`placement` and `lifecycle`, not here.

Retries follow the API's documented reaction table (docs/facts/runpod.md ("Create")): 429 waits for
`Retry-After` and is always safe to repeat (the request was not processed); 5xx and lost answers
are repeated only for idempotent calls (GET, PATCH, DELETE). A POST that fails with 5xx or gets
no answer is handed back to the caller, because the pod may have been created anyway.

The base URL comes from RUNPOD_API_BASE_URL, the variable RunPod's own SDK reads (there it is the
host, e.g. `https://api.runpod.io`; a value ending in `/v2` is accepted too). Tests point it at
the local emulator.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any
from urllib.parse import quote

import requests
from tenacity import RetryCallState, Retrying, retry_if_exception

from infra.runpod.errors import ApiError, AuthError, MissingApiKeyError, TransportError

API_BASE_URL_ENV = "RUNPOD_API_BASE_URL"
API_KEY_ENV = "RUNPOD_API_KEY"
DEFAULT_API_BASE_URL = "https://api.runpod.io"
_DEFAULT_RETRY_AFTER_S = 5.0
# A Retry-After longer than this is not honoured as given: a broken or hostile header must not
# stall a `pulumi up` (or a delete that is cleaning up a billing pod) for hours.
MAX_RETRY_AFTER_S = 120.0
_MAX_BACKOFF_S = 30.0
# A request made with little time left still gets this long to answer (one last poll).
_MIN_TIMEOUT_S = 1.0

Sleep = Callable[[float], None]
Now = Callable[[], float]
Json = dict[str, Any]


def api_base_url() -> str:
    """The API host: RUNPOD_API_BASE_URL if set, else the public API. Paths add `/v2/...`."""
    url = (os.environ.get(API_BASE_URL_ENV) or DEFAULT_API_BASE_URL).rstrip("/")
    return url.removesuffix("/v2")


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _problem(response: requests.Response) -> tuple[str, list[str]]:
    """`detail` and `errors` of an RFC 9457 problem body; the raw text if it is not one."""
    try:
        body = response.json()
    except ValueError:
        return (response.text.strip()[:300] or response.reason or "no detail"), []
    if not isinstance(body, dict):
        return str(body)[:300], []
    detail = str(body.get("detail") or body.get("title") or response.reason or "no detail")
    errors = body.get("errors")
    return detail, [str(e) for e in errors] if isinstance(errors, list) else []


class RunpodClient:
    """One client per operation (the Pulumi provider builds a fresh one in every call, so no
    session is shared between its threads or pickled with it)."""

    def __init__(
        self,
        api_key: str | None,
        *,
        base_url: str | None = None,
        sleep: Sleep = time.sleep,
        now: Now = time.monotonic,
        timeout_s: float = 30.0,
        attempts: int = 5,
    ) -> None:
        if not api_key:
            raise MissingApiKeyError()
        self.base_url = (base_url or api_base_url()).rstrip("/").removesuffix("/v2")
        self._sleep = sleep
        self._now = now
        self._timeout_s = timeout_s
        self._attempts = attempts
        self._deadline: float | None = None
        self._session = requests.Session()
        self._session.headers["Authorization"] = f"Bearer {api_key}"
        self._session.headers["User-Agent"] = "llm-endpoint (pulumi dynamic provider)"

    def __repr__(self) -> str:  # never show the session's headers
        return f"RunpodClient(base_url={self.base_url!r})"

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> RunpodClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @contextmanager
    def deadline(self, at: float) -> Iterator[None]:
        """Bound every call made inside by `at` (on the `now` clock): a retry or a Retry-After
        wait that would end past it is not made (the error is raised instead), and a request's
        timeout shrinks to the time left (at least _MIN_TIMEOUT_S, so the last poll is still
        made). Without this, a stalled API holds one call for attempts x timeout plus
        back-off (165 s with the defaults), none of it counted by the caller's deadline."""
        outer = self._deadline
        self._deadline = at if outer is None else min(outer, at)
        try:
            yield
        finally:
            self._deadline = outer

    def _timeout(self) -> float:
        if self._deadline is None:
            return self._timeout_s
        return max(_MIN_TIMEOUT_S, min(self._timeout_s, self._deadline - self._now()))

    def _stop(self, state: RetryCallState) -> bool:
        if state.attempt_number >= self._attempts:
            return True
        return self._deadline is not None and self._now() + state.upcoming_sleep > self._deadline

    # -- transport -------------------------------------------------------------------------

    def _send_once(
        self,
        method: str,
        path: str,
        *,
        body: Json | None,
        params: dict[str, str] | None,
        ok: Iterable[int],
        forbidden_is_auth: bool,
    ) -> requests.Response:
        try:
            response = self._session.request(
                method,
                self.base_url + path,
                json=body,
                params=params,
                timeout=self._timeout(),
            )
        except requests.RequestException as err:
            # The exception text can include the URL, never headers: safe to show.
            raise TransportError(method, path, type(err).__name__) from None
        if response.status_code in set(ok):
            return response
        detail, errors = _problem(response)
        if response.status_code == 401 or (response.status_code == 403 and forbidden_is_auth):
            raise AuthError(response.status_code, method, path, detail)
        raise ApiError(
            response.status_code, method, path, detail, errors, retry_after=_retry_after(response)
        )

    def _wait(self, state: RetryCallState) -> float:
        err = state.outcome.exception() if state.outcome else None
        if isinstance(err, ApiError) and err.status == 429:
            wait = err.retry_after if err.retry_after is not None else _DEFAULT_RETRY_AFTER_S
            return min(wait, MAX_RETRY_AFTER_S)
        return float(min(_MAX_BACKOFF_S, 2 ** (state.attempt_number - 1)))

    def _request(
        self,
        method: str,
        path: str,
        *,
        body: Json | None = None,
        params: dict[str, str] | None = None,
        ok: Iterable[int] = (200,),
        idempotent: bool,
        forbidden_is_auth: bool = True,
    ) -> requests.Response:
        ok = tuple(ok)

        def retryable(err: BaseException) -> bool:
            if isinstance(err, AuthError):
                return False
            if isinstance(err, ApiError):
                return err.status == 429 or (idempotent and err.status >= 500)
            return idempotent and isinstance(err, TransportError)

        retrying = Retrying(
            retry=retry_if_exception(retryable),
            stop=self._stop,
            wait=self._wait,
            sleep=self._sleep,
            reraise=True,
        )
        response: requests.Response = retrying(
            self._send_once,
            method,
            path,
            body=body,
            params=params,
            ok=ok,
            forbidden_is_auth=forbidden_is_auth,
        )
        return response

    # -- pods ------------------------------------------------------------------------------

    def list_pods(self) -> list[Json]:
        pods = self._request("GET", "/v2/pods", idempotent=True).json()["pods"]
        return list(pods)

    def find_pods_by_name(self, name: str) -> list[Json]:
        return [p for p in self.list_pods() if p.get("name") == name]

    def get_pod(self, pod_id: str) -> Json | None:
        """The pod, or None if RunPod does not know it (GET answers 404)."""
        try:
            pod: Json = self._request("GET", _pod_path(pod_id), idempotent=True).json()
        except ApiError as err:
            if err.status == 404:
                return None
            raise
        return pod

    def create_pod(self, body: Json) -> Json:
        """POST once (repeating only on 429). A 5xx or lost answer propagates: the caller must
        look the pod up by name before trying again. A success whose body cannot be read or has
        no pod id is a lost answer too (TransportError): the pod may exist all the same."""
        response = self._request(
            "POST", "/v2/pods", body=body, ok=(200, 201), idempotent=False, forbidden_is_auth=False
        )
        try:
            pod = response.json()
        except ValueError:
            raise TransportError("POST", "/v2/pods", "unreadable success answer") from None
        if not isinstance(pod, dict) or not pod.get("id"):
            raise TransportError("POST", "/v2/pods", "success answer without a pod id")
        return pod

    def pod_action(self, pod_id: str, action: str) -> Json | None:
        """`POST /v2/pods/{id}/action` (start, stop, restart, terminate): the pod after the
        action, or None for terminate (204). 409 (not valid for the pod's status) is raised as
        ApiError for the caller to decide. Repeated on 5xx: a second restart costs only time."""
        response = self._request(
            "POST",
            _pod_path(pod_id) + "/action",
            body={"action": action},
            ok=(200, 204),
            idempotent=True,
        )
        if response.status_code == 204:
            return None
        pod: Json = response.json()
        return pod

    def update_pod(self, pod_id: str, body: Json) -> Json:
        pod: Json = self._request("PATCH", _pod_path(pod_id), body=body, idempotent=True).json()
        return pod

    def delete_pod(self, pod_id: str) -> bool:
        """Terminate the pod. False if it was already gone (404)."""
        try:
            self._request("DELETE", _pod_path(pod_id), ok=(200, 204), idempotent=True)
        except ApiError as err:
            if err.status == 404:
                return False
            raise
        return True

    # -- account secrets (RunPod's newer API documents: docs/facts/runpod.md) ---------------

    def find_secret(self, name: str) -> Json | None:
        """The secret named `name` (metadata only: values are never returned), or None. The
        `name` filter is case-insensitive, so the exact name is matched here."""
        found = self._request(
            "GET", "/v2/account/secrets", params={"name": name}, idempotent=True
        ).json()["secrets"]
        return next((s for s in found if s.get("name") == name), None)

    def create_secret(self, name: str, value: str, description: str) -> Json:
        """POST once (repeating only on 429): the caller looks the secret up by name after a
        lost answer, as for pods."""
        body = {"name": name, "value": value, "description": description}
        secret: Json = self._request(
            "POST", "/v2/account/secrets", body=body, ok=(200, 201), idempotent=False
        ).json()
        return secret

    def update_secret(self, secret_id: str, value: str) -> Json:
        """Rotate the value; pods see it when they next boot."""
        secret: Json = self._request(
            "PATCH", _secret_path(secret_id), body={"value": value}, idempotent=True
        ).json()
        return secret

    def delete_secret(self, secret_id: str) -> bool:
        """Delete the secret. False if it was already gone (404)."""
        try:
            self._request("DELETE", _secret_path(secret_id), ok=(200, 204), idempotent=True)
        except ApiError as err:
            if err.status == 404:
                return False
            raise
        return True

    # -- catalog ---------------------------------------------------------------------------

    def gpu_types(self) -> list[Json]:
        gpus = self._request("GET", "/v2/catalog/gpus", idempotent=True).json()["gpus"]
        return list(gpus)


def _pod_path(pod_id: str) -> str:
    return "/v2/pods/" + quote(pod_id, safe="")


def _secret_path(secret_id: str) -> str:
    return "/v2/account/secrets/" + quote(secret_id, safe="")
