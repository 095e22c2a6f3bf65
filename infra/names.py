"""Names for cloud resources derived from the stack, within each provider's rules."""

from __future__ import annotations

import re


def slug(*parts: str, max_len: int = 63) -> str:
    """Lowercase letters, digits and hyphens, starting with a letter, at most `max_len` long:
    valid as a GCE resource name, network tag, service-account id or Secret Manager id."""
    text = re.sub(r"[^a-z0-9]+", "-", "-".join(parts).lower()).strip("-")
    if not text or not text[0].isalpha():
        text = f"x-{text}"
    return text[:max_len].rstrip("-")
