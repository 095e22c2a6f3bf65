"""Errors raised by the RunPod client and lifecycle. Each message says what happened and what to
do next, and none ever carries a secret (the API key never reaches these classes)."""

from __future__ import annotations

from collections.abc import Iterable

KEY_HELP = (
    "Set it with `pulumi config set --secret runpodApiKey <key>` (or export RUNPOD_API_KEY); "
    "create a key in the RunPod console under Settings > API Keys"
)


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """`text` with every secret value blanked: API answers are quoted in errors and logs, and a
    careless answer could echo the pod's env."""
    for value in secrets:
        if value:
            text = text.replace(value, "<secret>")
    return text


class RunpodError(Exception):
    """Anything that went wrong talking to RunPod or running a pod."""


class MissingApiKeyError(RunpodError):
    def __init__(self) -> None:
        super().__init__(f"No RunPod API key is configured. {KEY_HELP}.")


class ApiError(RunpodError):
    """An HTTP error answer from the API, parsed from its RFC 9457 problem body.

    docs/facts/runpod.md ("Create"): errors are `{title,status,detail,errors[]}`; capacity has no
    code, only a `detail`.
    """

    def __init__(
        self,
        status: int,
        method: str,
        path: str,
        detail: str,
        errors: list[str] | None = None,
        retry_after: float | None = None,
    ) -> None:
        self.status = status
        self.method = method
        self.path = path
        self.detail = detail
        self.errors = list(errors or [])
        self.retry_after = retry_after
        extra = f" ({'; '.join(self.errors)})" if self.errors else ""
        super().__init__(f"RunPod API {method} {path} answered {status}: {detail}{extra}")


class AuthError(ApiError):
    """401: the key is missing, malformed, expired or revoked."""

    def __init__(self, status: int, method: str, path: str, detail: str) -> None:
        super().__init__(status, method, path, detail)
        self.args = (
            f"RunPod rejected the API key ({status} on {method} {path}: {detail}). "
            f"Check that the key is current and has read/write access to pods. {KEY_HELP}.",
        )


class TransportError(RunpodError):
    """No HTTP answer at all (connection refused or reset, timeout). For a POST this means the
    request may or may not have taken effect."""

    def __init__(self, method: str, path: str, cause: str) -> None:
        self.method = method
        self.path = path
        super().__init__(f"No answer from the RunPod API for {method} {path}: {cause}")


class PodFailedError(RunpodError):
    """A pod was created but never became ready; it has been deleted (or the message says that
    deleting it failed and how to clean up)."""


class PlacementError(RunpodError):
    """No candidate (GPU type, data center) accepted the pod. `pod_may_exist` is True when a
    create got no clear answer, so a pod under the name may exist despite the error."""

    def __init__(self, message: str, *, pod_may_exist: bool = False) -> None:
        super().__init__(message)
        self.pod_may_exist = pod_may_exist


class DeleteError(RunpodError):
    """A delete that could not be confirmed: the pod may still be billing."""
