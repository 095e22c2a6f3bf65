"""The stack's RunPod account secrets: the endpoint key and the HF token live there, and pods
get only `{{ RUNPOD_SECRET_<name> }}` references in their env, so `GET /v2/pods` never shows a
value (docs/facts/runpod.md ("Account secrets")).

One secret per value and stack, named `<prefix>-api-key` / `<prefix>-hf-token`, the prefix
derived from the stack (`llm-endpoint-<stack>`) unless `runpod.secretPrefix` sets one. A rotated
value reaches a pod only when it boots, so the pods take the secret's `valueLastUpdatedAt` as an
input: a rotation changes it, and the pod provider restarts the pod and waits for the new key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from infra.names import slug
from infra.runpod.client import Json, RunpodClient
from infra.runpod.errors import ApiError, RunpodError, TransportError

log = logging.getLogger(__name__)

LOST_CREATE_WAIT_S = 10.0


def default_prefix(stack: str) -> str:
    return f"llm-endpoint-{slug(stack, max_len=40)}"


def secret_names(prefix: str) -> tuple[str, str]:
    """(endpoint key secret, HF token secret)."""
    return f"{prefix}-api-key", f"{prefix}-hf-token"


def reference(name: str) -> str:
    """What a pod's env holds instead of the value; RunPod substitutes it at boot."""
    return "{{ RUNPOD_SECRET_" + name + " }}"


class AccountSecrets:
    def __init__(self, client: RunpodClient, sleep: Callable[[float], None]) -> None:
        self.client = client
        self.sleep = sleep

    def ensure(self, name: str, value: str, description: str) -> Json:
        """The secret named `name`, holding `value`: created, or (left by a stack whose state
        was lost) adopted and given the value. A create without a clear answer is looked up
        by name before anything else, as for pods."""
        found = self.client.find_secret(name)
        if found is not None:
            log.warning(
                "account secret %s exists already: adopting it, with the stack's value", name
            )
            return self.client.update_secret(str(found["id"]), value)
        try:
            return self.client.create_secret(name, value, description)
        except (TransportError, ApiError) as err:
            if isinstance(err, ApiError) and err.status < 500 and err.status != 409:
                raise RunpodError(
                    f"RunPod refused to create the account secret {name} ({err.status}: "
                    f"{err.detail}). Check `llm-endpoint:runpod.secretPrefix` (names must not "
                    "start with RUNPOD) and that the RunPod key may manage secrets."
                ) from None
            self.sleep(LOST_CREATE_WAIT_S)
            again = self.client.find_secret(name)
            if again is None:
                raise RunpodError(
                    f"Creating the account secret {name} got no clear answer ({err}) and it is "
                    "not listed: run `pulumi up` again."
                ) from None
            return self.client.update_secret(str(again["id"]), value)

    def delete(self, secret_id: str, name: str) -> None:
        if not self.client.delete_secret(secret_id):
            log.info("account secret %s (%s) was already gone", name, secret_id)
