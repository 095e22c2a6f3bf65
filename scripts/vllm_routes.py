"""Write vLLM's route inventory, from vLLM itself, to docs/facts/vllm-routes.json.

The proxy tests (tests/test_proxy_routes.py) read that file: every `/v1/*` route must pass with
the key and get 401 without, every other route must get 403. Regenerate it on every vLLM version
bump (docs/security.md, "The route inventory"):

    python3 -m venv /tmp/vllm-venv
    /tmp/vllm-venv/bin/pip install vllm==<infra/serving.py VLLM_VERSION>
    /tmp/vllm-venv/bin/python -m scripts.vllm_routes          # from the repository root

It runs under a Python that has vLLM (not the project's environment: vLLM is a multi-GB download
with CUDA libraries) and needs neither a GPU nor a model: for each variant below it parses the
arguments with vLLM's own `vllm serve` argument parser, builds the model configuration from a
tiny Hugging Face `config.json` it writes to a temporary directory (no weights, no network),
and builds the application with vLLM's own `build_app(args, supported_tasks, model_config)`
(vllm/entrypoints/launchers/app.py), which registers the routers exactly as `vllm serve` does
for a model with those tasks. `VLLM_TARGET_DEVICE=cpu` only lets vLLM pick a platform for its
config objects; nothing runs on it. The routes are then read off the app.

A variant is a set of supported tasks (what the model can do: docs/facts/vllm.md, "Which
routes exist") plus any switch that adds routes (environment variables, flags). The inventory
is their union; each route names the variants that have it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.serving import VLLM_VERSION

ROOT = Path(__file__).resolve().parent.parent
OUTPUT = ROOT / "docs" / "facts" / "vllm-routes.json"

# Tiny model configs: enough for vLLM's ModelConfig (architecture, sizes), never loaded.
_BERT = {
    "model_type": "bert",
    "hidden_size": 32,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 37,
    "vocab_size": 100,
    "max_position_embeddings": 64,
    "type_vocab_size": 2,
}
MODELS: dict[str, dict[str, Any]] = {
    "decoder": {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "vocab_size": 128,
        "max_position_embeddings": 256,
    },
    "embedding": {"architectures": ["BertModel"], **_BERT},
    "classifier": {
        "architectures": ["BertForSequenceClassification"],
        "id2label": {"0": "A", "1": "B"},
        **_BERT,
    },
    "scorer": {
        "architectures": ["BertForSequenceClassification"],
        "id2label": {"0": "SCORE"},
        **_BERT,
    },
    "token-classifier": {
        "architectures": ["BertForTokenClassification"],
        "id2label": {"0": "A", "1": "B"},
        **_BERT,
    },
}


@dataclass(frozen=True)
class Variant:
    name: str
    model: str  # a key of MODELS
    tasks: tuple[str, ...]
    args: tuple[str, ...] = ()
    env: dict[str, str] = field(default_factory=dict)


_POOLING = ("--runner", "pooling")
VARIANTS = (
    # What this project deploys: a chat model (infra/serving.py).
    Variant("generate", "decoder", ("generate",)),
    Variant("transcription", "decoder", ("generate", "transcription")),
    Variant("realtime", "decoder", ("generate", "realtime")),
    Variant("render", "decoder", ("render",)),
    Variant("embed", "embedding", ("embed",), _POOLING),
    Variant("token_embed", "embedding", ("token_embed",), _POOLING),
    Variant("classify", "classifier", ("classify",), _POOLING),
    Variant("classify-scoring", "scorer", ("classify",), _POOLING),
    Variant("token_classify", "token-classifier", ("token_classify",), _POOLING),
    Variant("embed&token_classify", "token-classifier", ("embed&token_classify",), _POOLING),
    Variant("plugin", "embedding", ("plugin",), _POOLING),
    # Switches that add routes; none is set by this project.
    Variant("dev-mode", "decoder", ("generate",), env={"VLLM_SERVER_DEV_MODE": "1"}),
    Variant("cohere-api", "decoder", ("generate",), env={"VLLM_ENABLE_COHERE_API": "1"}),
    Variant(
        "runtime-lora", "decoder", ("generate",), env={"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"}
    ),
    Variant("fault-tolerance", "decoder", ("generate",), ("--enable-fault-tolerance",)),
    Variant("scale-out", "decoder", ("generate",), ("--enable-scale-out",)),
    Variant("tokens-only", "decoder", ("generate",), ("--tokens-only",)),
)


def _routes_of(app: Any) -> list[dict[str, Any]]:
    """Method(s), path and kind of each route of a Starlette/FastAPI app."""
    from starlette.routing import Mount, WebSocketRoute

    found = []
    for route in app.routes:
        if isinstance(route, Mount):
            kind, methods = "mount", ["*"]
            pattern = route.path_regex.pattern
        elif isinstance(route, WebSocketRoute) or type(route).__name__ == "APIWebSocketRoute":
            kind, methods, pattern = "websocket", ["GET"], None
        else:
            kind, methods, pattern = "http", sorted(getattr(route, "methods", None) or []), None
        entry: dict[str, Any] = {"path": route.path, "kind": kind, "methods": methods}
        if pattern is not None:
            entry["pattern"] = pattern
        found.append(entry)
    return found


def _build(variant: Variant, model_dir: Path) -> list[dict[str, Any]]:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.common.cli_args import make_arg_parser
    from vllm.entrypoints.launchers.app import build_app
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    argv = ["--model", str(model_dir), "--skip-tokenizer-init", *variant.args]
    args = make_arg_parser(FlexibleArgumentParser()).parse_args(argv)
    model_config = AsyncEngineArgs.from_cli_args(args).create_model_config()
    saved = {name: os.environ.get(name) for name in variant.env}
    os.environ.update(variant.env)
    try:
        return _routes_of(build_app(args, variant.tasks, model_config))
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def inventory(model_root: Path) -> dict[str, Any]:
    import vllm

    for name, config in MODELS.items():
        (model_root / name).mkdir()
        (model_root / name / "config.json").write_text(json.dumps(config))
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for variant in VARIANTS:
        for route in _build(variant, model_root / variant.model):
            entry = merged.setdefault(
                (route["path"], route["kind"]), {**route, "methods": [], "variants": []}
            )
            entry["methods"] = sorted(set(entry["methods"]) | set(route["methods"]))
            if variant.name not in entry["variants"]:
                entry["variants"].append(variant.name)
    return {
        "vllm_version": vllm.__version__,
        "generated_by": "python -m scripts.vllm_routes",
        "about": (
            "Every route of vLLM's OpenAI-compatible server, read from the app vLLM's own "
            "build_app makes for each variant (supported tasks plus route switches). kind: "
            "http (methods as registered), websocket, or mount (a prefix: every path matching "
            "pattern reaches it)."
        ),
        "variants": [
            {"name": v.name, "tasks": list(v.tasks), "args": list(v.args), "env": v.env}
            for v in VARIANTS
        ],
        "routes": sorted(merged.values(), key=lambda r: (r["path"], r["kind"])),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--output", type=Path, default=OUTPUT)
    options = parser.parse_args(argv)
    os.environ.setdefault("VLLM_TARGET_DEVICE", "cpu")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import vllm
    except ImportError:
        print("vllm is not installed in this Python; see this script's docstring", file=sys.stderr)
        return 2
    if vllm.__version__ != VLLM_VERSION:
        print(
            f"this Python has vllm {vllm.__version__}, the project serves {VLLM_VERSION} "
            f"(infra/serving.py): install vllm=={VLLM_VERSION}",
            file=sys.stderr,
        )
        return 2
    with tempfile.TemporaryDirectory(prefix="vllm-routes-") as tmp:
        data = inventory(Path(tmp))
    options.output.write_text(json.dumps(data, indent=2) + "\n")
    print(f"{len(data['routes'])} routes of vllm {data['vllm_version']} -> {options.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
