"""vLLM's route inventory (docs/facts/vllm-routes.json, written by scripts/vllm_routes.py from
vLLM's own app), for the proxy tests.

    from tests.support.route_inventory import load_routes

    for route in load_routes():
        route.path, route.kind, route.methods   # "/v1/responses/{response_id}", "http", ("GET",)
        route.example                           # "/v1/responses/x1": parameters filled in
        route.guarded                           # under /v1/: the proxy forwards it with the key
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

INVENTORY = Path(__file__).resolve().parents[2] / "docs" / "facts" / "vllm-routes.json"


@dataclass(frozen=True)
class Route:
    path: str
    kind: str  # "http", "websocket" or "mount" (a prefix)
    methods: tuple[str, ...]
    variants: tuple[str, ...]

    @property
    def example(self) -> str:
        """The path with each `{parameter}` filled in."""
        return re.sub(r"\{[^}]+\}", "x1", self.path)

    @property
    def guarded(self) -> bool:
        return self.path.startswith("/v1/")


@cache
def load_inventory() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(INVENTORY.read_text())
    return data


def load_routes() -> tuple[Route, ...]:
    return tuple(
        Route(r["path"], r["kind"], tuple(r["methods"]), tuple(r["variants"]))
        for r in load_inventory()["routes"]
    )
