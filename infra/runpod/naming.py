"""Pod names: how pods of this project and stack are recognised at RunPod.

A pod is named `llm-endpoint-<stack slug>-<index>-<8 hex>`: the project prefix finds every pod
this project made, the stack and index say which resource it belongs to, and the random suffix
is new for every create (after a lost create answer the pod is looked up by exact name, and a
replacement pod must not be mistaken for the one it replaces).
"""

from __future__ import annotations

import re

from infra.names import slug

PROJECT_PREFIX = "llm-endpoint-"
_SUFFIX = r"[0-9a-f]{8}"


def pod_base_name(stack: str, index: int) -> str:
    """The provider's `name` input; the provider appends the random suffix."""
    return f"{PROJECT_PREFIX}{slug(stack, max_len=30)}-{index}"


def stack_pattern(stack: str) -> re.Pattern[str]:
    """Matches the pods of exactly this stack (not of a stack whose name extends it)."""
    return re.compile(rf"^{re.escape(PROJECT_PREFIX + slug(stack, max_len=30))}-\d+-{_SUFFIX}$")


def is_project_pod(name: str) -> bool:
    return re.match(rf"^{re.escape(PROJECT_PREFIX)}.+-\d+-{_SUFFIX}$", name) is not None
