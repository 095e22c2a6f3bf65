"""What a model needs from the machine, from its own files on the Hugging Face Hub.

`ModelFacts.from_hub_files` reads the model's `config.json` and its list of weight files (sizes,
and the safetensors index when the weights are sharded); the functions below are what vLLM
would check at start-up, on a GPU that already bills (docs/facts/vllm.md, "Start-up checks").
All pure: infra/hub.py fetches, these decide.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

GIB = 1 << 30
# What vLLM keeps beside weights and KV cache on each GPU: the CUDA context, activations at the
# profiled batch size and CUDA graphs. An estimate (docs/facts/vllm.md, "Memory"), on the safe
# side for the 1.5B-14B models this project serves.
RUNTIME_RESERVE_GIB = 2.0
# KV cache entries are 16-bit whatever the weights are stored as: vLLM's default kv-cache dtype
# follows the model dtype, and `--dtype auto` serves fp32 checkpoints as fp16.
KV_BYTES_PER_VALUE = 2
# vLLM 0.33.0's keys for the longest sequence a model supports; the smallest present wins.
_MAX_LEN_KEYS = (
    "max_position_embeddings",
    "n_positions",
    "max_seq_len",
    "seq_length",
    "model_max_length",
    "max_target_positions",
    "max_sequence_length",
    "max_seq_length",
    "seq_len",
)
# RoPE kinds whose factor vLLM does not multiply into the limit (already in it).
_ROPE_NOT_SCALING_LIMIT = frozenset(
    {"su", "longrope", "llama3", "yarn", "deepseek_yarn", "deepseek_llama_scaling"}
)
INDEX_FILE = "model.safetensors.index.json"


@dataclass(frozen=True)
class ModelFacts:
    model: str
    attention_heads: int
    kv_heads: int
    layers: int
    head_dim: int
    max_len: int | None
    weights_bytes: int | None  # safetensors weights as vLLM downloads them; None: none found
    gguf_only: bool
    gated: bool

    @property
    def weights_gb(self) -> float | None:
        return None if self.weights_bytes is None else round(self.weights_bytes / 1e9, 1)

    @classmethod
    def from_hub_files(
        cls,
        model: str,
        config: Mapping[str, Any],
        files: Mapping[str, int | None],
        index: Mapping[str, Any] | None,
        gated: bool,
    ) -> ModelFacts:
        """`files`: repo file name -> size in bytes; `index`: the safetensors index, if any."""
        text = config.get("text_config") or config  # multimodal models nest the language model
        heads = int(text["num_attention_heads"])
        head_dim = text.get("head_dim") or int(text["hidden_size"]) // heads
        return cls(
            model=model,
            attention_heads=heads,
            kv_heads=int(text.get("num_key_value_heads") or heads),
            layers=int(text["num_hidden_layers"]),
            head_dim=int(head_dim),
            max_len=max_model_len_of(text),
            weights_bytes=_safetensors_bytes(files, index),
            gguf_only=any(f.endswith(".gguf") for f in files)
            and not any(f.endswith(".safetensors") for f in files),
            gated=gated,
        )


def max_model_len_of(config: Mapping[str, Any]) -> int | None:
    """The longest `maxModelLen` vLLM 0.33.0 accepts for this config (without
    VLLM_ALLOW_LONG_MAX_MODEL_LEN), derived as vLLM derives it (docs/facts/vllm.md,
    "Start-up checks"). None: the config names no limit (vLLM then takes the one given)."""
    found = [n for k in _MAX_LEN_KEYS if (n := _number(config.get(k))) is not None]
    if not found:
        return None
    explicit = _number(config.get("model_max_length"))
    # Command-R style: model_max_length decides, rather than the smallest key.
    limit = explicit if explicit is not None else min(found)
    if "gemma3" not in str(config.get("model_type", "")):
        for rope in _rope_parameters(config):
            kind = rope.get("rope_type") or rope.get("type")
            factor = _number(rope.get("factor"))
            if kind not in _ROPE_NOT_SCALING_LIMIT and factor is not None:
                limit *= factor
                break  # vLLM assumes one factor for every layer type
    return int(limit if explicit is None else max(limit, explicit))


def _number(value: Any) -> float | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    return float(value) if ok else None


def _rope_parameters(config: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """`rope_parameters` (newer transformers; one dict per layer type when nested) or the
    older `rope_scaling`."""
    rope = config.get("rope_parameters") or config.get("rope_scaling")
    if not isinstance(rope, Mapping):
        return []
    nested = [v for v in rope.values() if isinstance(v, Mapping)]
    return nested if nested else [rope]


def _safetensors_bytes(
    files: Mapping[str, int | None], index: Mapping[str, Any] | None
) -> int | None:
    """Sharded weights are the files the index names (a repo may also hold a `consolidated`
    copy vLLM does not load); otherwise every *.safetensors file."""
    if index is not None:
        names = set((index.get("weight_map") or {}).values())
        sizes = [files.get(n) for n in names]
        if names and all(s is not None for s in sizes):
            return sum(s for s in sizes if s is not None)
        total = (index.get("metadata") or {}).get("total_size")
        return int(total) if isinstance(total, int | float) else None
    sizes = [s for f, s in files.items() if f.endswith(".safetensors")]
    if not sizes:
        return None
    return sum(s or 0 for s in sizes)


def kv_bytes_per_token(facts: ModelFacts, tensor_parallel: int) -> int:
    """KV cache one token needs on each GPU: keys and values, every layer, this GPU's share of
    the KV heads (replicated when there are fewer KV heads than GPUs)."""
    heads_here = max(1, facts.kv_heads // tensor_parallel)
    return 2 * facts.layers * heads_here * facts.head_dim * KV_BYTES_PER_VALUE


@dataclass(frozen=True)
class MemoryFit:
    gpu_budget_gib: float  # what vLLM may use on one GPU at the configured utilization
    weights_gib: float  # this GPU's share of the weights
    kv_gib: float  # KV cache for one sequence of maxModelLen tokens
    longest_len_that_fits: int

    @property
    def needed_gib(self) -> float:
        return self.weights_gib + self.kv_gib + RUNTIME_RESERVE_GIB

    @property
    def fits(self) -> bool:
        return self.needed_gib <= self.gpu_budget_gib


def memory_fit(
    facts: ModelFacts,
    weights_bytes: int,
    gpu_gib: float,
    gpus: int,
    utilization: float,
    max_model_len: int,
) -> MemoryFit:
    """vLLM refuses to start unless, after the weights, the KV cache can hold at least one
    sequence of max_model_len tokens within utilization x GPU memory."""
    budget = gpu_gib * utilization
    weights = weights_bytes / gpus / GIB
    per_token = kv_bytes_per_token(facts, gpus)
    room = (budget - weights - RUNTIME_RESERVE_GIB) * GIB
    longest = max(0, math.floor(room / per_token)) if room > 0 else 0
    return MemoryFit(budget, weights, max_model_len * per_token / GIB, longest)
