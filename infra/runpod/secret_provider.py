"""The Pulumi dynamic provider for one RunPod account secret (infra/runpod/account_secrets.py).

Inputs: name, value (secret), description. Outputs: the inputs plus secretId and version, a
random token that changes with every write of the value: pods take it as an input, so a
rotation restarts them (a secret's value reaches a pod only when it boots). `pulumi destroy`
deletes the secret after the pods that reference it (they depend on it).
"""

from __future__ import annotations

import secrets
from typing import Any

from pulumi.dynamic import (
    CheckFailure,
    CheckResult,
    CreateResult,
    DiffResult,
    ReadResult,
    UpdateResult,
)

from infra.runpod.account_secrets import AccountSecrets
from infra.runpod.inputs import secret_name_problem
from infra.runpod.provider_base import PROVIDER_KEY, UNKNOWN, RunpodProviderBase, plain

SECRET_INPUTS = ("value",)


class RunpodSecretProvider(RunpodProviderBase):
    def _values(self, props: dict[str, Any]) -> list[str]:
        value = plain(props.get("value"))
        return [v for v in (value, self._api_key) if isinstance(v, str) and v]

    def check(self, _olds: dict[str, Any], news: dict[str, Any]) -> CheckResult:
        failures = []
        name = plain(news.get("name"))
        if name != UNKNOWN:
            problem = secret_name_problem(name) if isinstance(name, str) else "is required"
            if problem:
                failures.append(CheckFailure("name", problem))
        value = plain(news.get("value"))
        if value != UNKNOWN and (not isinstance(value, str) or not value):
            failures.append(CheckFailure("value", "must be a non-empty string"))
        return CheckResult(dict(news), failures)

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        renamed = plain(olds.get("name")) != plain(news.get("name"))
        changed = renamed or any(
            plain(olds.get(k)) != plain(news.get(k)) for k in ("value", "description")
        )
        return DiffResult(
            changes=changed, replaces=["name"] if renamed else [], delete_before_replace=False
        )

    def _outs(self, props: dict[str, Any], secret_id: str) -> dict[str, Any]:
        keep = {k: plain(props.get(k)) for k in ("name", "value", "description")}
        return {**keep, "secretId": secret_id, "version": secrets.token_hex(8)}

    def create(self, props: dict[str, Any]) -> CreateResult:
        with self.client(self._values(props)) as client:
            made = AccountSecrets(client, self.sleep).ensure(
                plain(props["name"]), plain(props["value"]), plain(props.get("description") or "")
            )
        return CreateResult(str(made["id"]), self._outs(props, str(made["id"])))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        with self.client(self._values(props)) as client:
            found = client.find_secret(str(plain(props.get("name"))))
        if found is None or str(found.get("id")) != id_:
            return ReadResult("", {})  # deleted elsewhere: refresh drops it, up makes it again
        return ReadResult(id_, {k: v for k, v in props.items() if k != PROVIDER_KEY})

    def update(self, id_: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        if plain(olds.get("value")) == plain(news.get("value")):
            outs = {k: v for k, v in olds.items() if k != PROVIDER_KEY}
            outs["description"] = plain(news.get("description"))
            return UpdateResult(outs)
        with self.client(self._values(news)) as client:
            client.update_secret(id_, plain(news["value"]))
        return UpdateResult(self._outs(news, id_))

    def delete(self, id_: str, props: dict[str, Any]) -> None:
        with self.client(self._values(props)) as client:
            AccountSecrets(client, self.sleep).delete(id_, str(plain(props.get("name"))))
