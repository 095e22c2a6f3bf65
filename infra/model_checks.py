"""The model against the machine, from the model's own files on the Hub (infra/hub.py).

Each check is what vLLM itself verifies at start-up (docs/facts/vllm.md, "Start-up checks"),
moved to `pulumi preview`, before a GPU bills: the tensor-parallel size (one per GPU) divides
the attention heads, `maxModelLen` is within the model's limit, and the weights plus the KV
cache of one `maxModelLen` sequence fit in the GPUs' memory at `gpuMemoryUtilization`.
They run only when the Hub answered (`cfg.model_facts`); otherwise config.py warns.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

from infra import gcp_catalog
from infra.config_checks import check
from infra.config_report import Problem
from infra.model_facts import MemoryFit, ModelFacts, memory_fit

if TYPE_CHECKING:
    from infra.config import StackConfig

# The smallest maxModelLen the config accepts: below it the model does not fit at all.
_MIN_LEN = 256
_GB_IN_GPU_NAME = re.compile(r"(\d+)\s*GB", re.IGNORECASE)


def _fits(cfg: StackConfig, facts: ModelFacts, gpu_gib: float, gpus: int) -> MemoryFit | None:
    if facts.weights_bytes is None:
        return None
    return memory_fit(
        facts,
        facts.weights_bytes,
        gpu_gib,
        gpus,
        cfg.gpu_memory_utilization,
        cfg.max_model_len,
    )


def _gcp_types_that_serve(cfg: StackConfig, facts: ModelFacts) -> list[str]:
    good = []
    for name, shape in gcp_catalog.A100_MACHINE_TYPES.items():
        fit = _fits(cfg, facts, gcp_catalog.GPU_MEMORY_GIB[shape.accelerator], shape.gpus)
        if facts.attention_heads % shape.gpus == 0 and (fit is None or fit.fits):
            good.append(name)
    return good


def _tp_message(facts: ModelFacts, gpus: int, what: str, fix: str) -> str:
    return (
        f"{what} runs vLLM with tensor-parallel size {gpus} (one per GPU), which must divide "
        f"{facts.model}'s {facts.attention_heads} attention heads: vLLM refuses to start "
        f"otherwise. {fix}"
    )


@check("model", "gcp.machineType")
def _gcp_gpus_divide_heads(cfg: StackConfig) -> Iterator[Problem]:
    g, facts = cfg.gcp, cfg.model_facts
    if g is None or facts is None or facts.attention_heads % g.shape.gpus == 0:
        return
    usable = _gcp_types_that_serve(cfg, facts) or ["none of the A100 machine types"]
    yield Problem(
        "gcp.machineType",
        g.machine_type,
        _tp_message(facts, g.shape.gpus, g.machine_type, f"Use one of {', '.join(usable)}"),
    )


@check("model", "runpod.gpuCount")
def _pod_gpus_divide_heads(cfg: StackConfig) -> Iterator[Problem]:
    rp, facts = cfg.runpod, cfg.model_facts
    if rp is None or facts is None or facts.attention_heads % rp.gpu_count == 0:
        return
    counts = [str(n) for n in range(1, 9) if facts.attention_heads % n == 0]
    yield Problem(
        "runpod.gpuCount",
        rp.gpu_count,
        _tp_message(
            facts,
            rp.gpu_count,
            f"gpuCount {rp.gpu_count}",
            f"Set gpuCount to {' or '.join(counts)}",
        ),
    )


@check("model", "maxModelLen")
def _max_len_within_the_model(cfg: StackConfig) -> Iterator[Problem]:
    facts = cfg.model_facts
    if facts is None or facts.max_len is None or cfg.max_model_len <= facts.max_len:
        return
    yield Problem(
        "maxModelLen",
        cfg.max_model_len,
        f"{facts.model} handles at most {facts.max_len} tokens (its config.json), and vLLM "
        f"refuses a longer maxModelLen. Set maxModelLen to {facts.max_len} or less",
    )


def _memory_problem(
    cfg: StackConfig, fit: MemoryFit, where: str, machine_key: str, machine_value: object, fix: str
) -> Problem:
    share = f"{fit.weights_gib:.1f} GiB of weights per GPU and ~2 GiB for vLLM itself"
    have = f"{cfg.gpu_memory_utilization:g} x GPU memory = {fit.gpu_budget_gib:.1f} GiB"
    if fit.longest_len_that_fits < _MIN_LEN:
        return Problem(
            machine_key,
            machine_value,
            f"{cfg.model} does not fit on {where}: {share} leave no room for the KV cache "
            f"within {have}. {fix}",
        )
    return Problem(
        "maxModelLen",
        cfg.max_model_len,
        f"the KV cache for one {cfg.max_model_len}-token sequence needs {fit.kv_gib:.1f} GiB "
        f"per GPU on {where}, beyond {share}, within {have}: vLLM refuses to start. Set "
        f"maxModelLen to {fit.longest_len_that_fits} or less, raise gpuMemoryUtilization, or "
        f"{fix[0].lower()}{fix[1:]}",
    )


@check("model", "maxModelLen", "gpuMemoryUtilization", "gcp.machineType")
def _fits_the_vm_gpus(cfg: StackConfig) -> Iterator[Problem]:
    g, facts = cfg.gcp, cfg.model_facts
    if g is None or facts is None:
        return
    fit = _fits(cfg, facts, gcp_catalog.GPU_MEMORY_GIB[g.shape.accelerator], g.shape.gpus)
    if fit is None or fit.fits:
        return
    usable = _gcp_types_that_serve(cfg, facts)
    fix = f"Use a machine type with more or larger GPUs: {', '.join(usable) or 'none fits'}"
    yield _memory_problem(cfg, fit, g.machine_type, "gcp.machineType", g.machine_type, fix)


def pod_gpu_memory_gib(gpu_type_id: str) -> float | None:
    """RunPod GPU type ids carry the memory in their name ("NVIDIA A100 80GB PCIe")."""
    found = _GB_IN_GPU_NAME.search(gpu_type_id)
    return float(found.group(1)) if found else None


@check("model", "maxModelLen", "gpuMemoryUtilization", "runpod.gpuCount", "runpod.gpuTypeIds")
def _fits_the_pod_gpus(cfg: StackConfig) -> Iterator[Problem]:
    rp, facts = cfg.runpod, cfg.model_facts
    if rp is None or facts is None:
        return
    for gpu_type in rp.gpu_type_ids:
        gib = pod_gpu_memory_gib(gpu_type)
        if gib is None:
            yield Problem(
                "runpod.gpuTypeIds",
                gpu_type,
                "its memory is not in its name, so whether the model fits was not checked",
                warning=True,
            )
            continue
        fit = _fits(cfg, facts, gib, rp.gpu_count)
        if fit is not None and not fit.fits:
            where = f"{rp.gpu_count} x {gpu_type}"
            fix = "Use GPU types with more memory, or more GPUs per pod (runpod.gpuCount)"
            yield _memory_problem(cfg, fit, where, "runpod.gpuTypeIds", gpu_type, fix)
