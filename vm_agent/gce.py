"""The Compute Engine metadata server and Secret Manager, over plain HTTP with urllib.

Facts relied on (docs/facts/gcp.md): every request to the metadata server carries
`Metadata-Flavor: Google` ("Metadata server"); `?wait_for_change=true` on a directory with
`recursive=true` holds the request until something below it changes or `timeout_sec` passes,
and `last_etag` makes a change made between two requests return at once ("Waiting for
metadata changes"); guest attributes are written with PUT under
`instance/guest-attributes/<namespace>/<key>` when the instance has
`enable-guest-attributes=TRUE` ("Guest attributes"); Secret Manager returns a version's
value base64-encoded in `payload.data` ("Secret Manager from the VM").
"""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass

METADATA_URL = "http://metadata.google.internal/computeMetadata/v1"
SECRET_MANAGER_URL = "https://secretmanager.googleapis.com/v1"  # noqa: S105 (a URL)
_FLAVOR = {"Metadata-Flavor": "Google"}


class ApiError(Exception):
    """An HTTP answer other than success; `status` None when nothing answered."""

    def __init__(self, what: str, status: int | None, message: str) -> None:
        super().__init__(f"{what}: HTTP {status or 'no answer'}: {message}")
        self.status = status


def _request(
    url: str, *, what: str, headers: dict[str, str], timeout: float, data: bytes | None = None
) -> tuple[bytes, dict[str, str]]:
    method = "PUT" if data is not None else "GET"
    req = urllib.request.Request(url, data=data, headers=headers, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            return resp.read(), dict(resp.headers.items())
    except urllib.error.HTTPError as err:
        raise ApiError(what, err.code, _error_message(err.read())) from None
    except (urllib.error.URLError, OSError) as err:
        raise ApiError(what, None, str(getattr(err, "reason", err))) from None


def _error_message(body: bytes) -> str:
    """A Google API error's `error.message` (never holds a secret value), else the start."""
    try:
        return str(json.loads(body)["error"]["message"])[:300]
    except (ValueError, KeyError, TypeError):
        return body[:200].decode(errors="replace")


@dataclass
class Metadata:
    base_url: str = METADATA_URL

    def watch_attributes(self, last_etag: str | None, timeout_s: int) -> tuple[dict[str, str], str]:
        """All instance attributes and their ETag, once they differ from `last_etag` or after
        `timeout_s` (then the same ones come back). The first call (no ETag) returns at once."""
        query = {"recursive": "true", "alt": "json"}
        if last_etag is not None:
            query |= {"wait_for_change": "true", "last_etag": last_etag}
            query["timeout_sec"] = str(timeout_s)
        url = f"{self.base_url}/instance/attributes/?{urllib.parse.urlencode(query)}"
        body, headers = _request(
            url, what="metadata server", headers=_FLAVOR, timeout=timeout_s + 10
        )
        values = json.loads(body)
        etag = headers.get("ETag") or headers.get("Etag") or ""
        return {str(k): str(v) for k, v in values.items()}, etag

    def token(self) -> str:
        """An access token of the VM's service account (kept in memory only)."""
        url = f"{self.base_url}/instance/service-accounts/default/token"
        body, _ = _request(url, what="metadata server (token)", headers=_FLAVOR, timeout=30)
        return str(json.loads(body)["access_token"])

    def set_guest_attribute(self, namespace: str, key: str, value: str) -> None:
        url = f"{self.base_url}/instance/guest-attributes/{namespace}/{key}"
        _request(url, what="guest attributes", headers=_FLAVOR, timeout=10, data=value.encode())

    def instance_value(self, path: str) -> str:
        body, _ = _request(
            f"{self.base_url}/instance/{path}", what="metadata server", headers=_FLAVOR, timeout=10
        )
        return body.decode()


@dataclass
class SecretManager:
    metadata: Metadata
    base_url: str = SECRET_MANAGER_URL

    def access(self, version_name: str) -> str:
        """The value of `projects/P/secrets/S/versions/N`. Raises ApiError (403 and 404 are
        what a fresh IAM grant or version looks like for a while: the caller retries)."""
        auth = {"Authorization": f"Bearer {self.metadata.token()}"}
        url = f"{self.base_url}/{urllib.parse.quote(version_name)}:access"
        body, _ = _request(url, what=f"Secret Manager ({version_name})", headers=auth, timeout=30)
        try:
            return base64.b64decode(json.loads(body)["payload"]["data"]).decode()
        except (ValueError, KeyError, TypeError) as err:
            raise ApiError(f"Secret Manager ({version_name})", 200, f"bad body: {err}") from None
