"""The stack's one API key: shared by every endpoint the stack declares."""

from __future__ import annotations

import pulumi
import pulumi_random as random

from infra.config import StackConfig


def stack_api_key(
    cfg: StackConfig, opts: pulumi.ResourceOptions | None = None
) -> pulumi.Output[str]:
    """The user's `apiKey` secret if set, else a key Pulumi generates once and keeps in state
    (encrypted), so it stays the same across updates. Always a secret Output."""
    if cfg.api_key is not None:
        return pulumi.Output.secret(cfg.api_key)
    # 48 characters from [A-Za-z0-9]: ~285 bits, and safe in a bearer header and an nginx map.
    generated = random.RandomPassword("api-key", length=48, special=False, opts=opts)
    return pulumi.Output.secret(generated.result)
