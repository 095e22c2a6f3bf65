"""What the project's two dynamic providers (pods, account secrets) share: the RunPod key from
the stack config, a client made per call, and errors with secrets blanked.

Constraints (docs/facts/pulumi.md ("Dynamic providers")): the engine's host process unpickles a
provider by reference and calls it from several threads sharing one instance, so the instance
holds no client, session, lock or logger, and never a key when pickled. `configure(req)`
receives the stack config with secrets unwrapped; the key is `llm-endpoint:runpodApiKey`, else
RUNPOD_API_KEY.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from pulumi.dynamic import ConfigureRequest, ResourceProvider
from pulumi.runtime import rpc

from infra.runpod.client import API_KEY_ENV, RunpodClient
from infra.runpod.errors import MissingApiKeyError, RunpodError, redact

PROVIDER_KEY = "__provider"
CONFIG_API_KEY = "llm-endpoint:runpodApiKey"  # namespaced: the host may not know the project
UNKNOWN = rpc.UNKNOWN  # what an unknown value looks like to a provider during preview


def plain(value: Any) -> Any:
    """The value of an RPC-wrapped secret (the host passes them wrapped in some paths)."""
    return rpc.unwrap_rpc_secret(value)


def secret_values(props: Mapping[str, Any], keys: tuple[str, ...], *extra: str | None) -> list[str]:
    values = (*(plain(props.get(k)) for k in keys), *extra)
    return [v for v in values if isinstance(v, str) and v]


@contextmanager
def redacted(values: list[str]) -> Iterator[None]:
    """Defence in depth: should an API answer ever echo a secret into an error message, it is
    blanked before the engine shows or logs the error."""
    try:
        yield
    except RunpodError as err:
        message = redact(str(err), values)
        if message == str(err):
            raise
        raise RunpodError(message) from None


class RunpodProviderBase(ResourceProvider):
    """`now`/`sleep` are injectable for tests; the defaults are module-level functions, which
    pickle by reference."""

    serialize_as_secret_always = True

    def __init__(
        self,
        now: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        super().__init__()
        self.now = now
        self.sleep = sleep
        self._api_key: str | None = None

    def __getstate__(self) -> dict[str, Any]:
        # Never pickle a key into the serialized provider (it is stored in the stack's state).
        state = dict(self.__dict__)
        state["_api_key"] = None
        return state

    def configure(self, req: ConfigureRequest) -> None:
        value = plain(req.config.get(CONFIG_API_KEY))
        self._api_key = value if isinstance(value, str) and value else None

    def runpod_key(self) -> str:
        key = self._api_key or os.environ.get(API_KEY_ENV)
        if not key:
            raise MissingApiKeyError()
        return key

    @contextmanager
    def client(self, values: list[str]) -> Iterator[RunpodClient]:
        """A client for this one call, on the provider's clock, its errors redacted."""
        with redacted(values), RunpodClient(self.runpod_key(), sleep=self.sleep, now=self.now) as c:
            yield c
