"""What vLLM serves and how: the one place that names the image, the model and its arguments.

The GCP VM, the RunPod pods and the smoke test all take these values from here (or from
stack outputs derived from here), so a model or image change is made once.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

# docs/facts/vllm.md ("Version and image"): latest release on PyPI as of 2026-11 is 0.33.0;
# images are tagged `v<version>`.
# Never `latest`: a moving tag makes two `pulumi up` runs deploy different software.
VLLM_IMAGE_REPOSITORY = "vllm/vllm-openai"
VLLM_VERSION = "0.33.0"
VLLM_IMAGE = f"{VLLM_IMAGE_REPOSITORY}:v{VLLM_VERSION}"

# docs/facts/vllm.md ("CUDA and driver"): images since v0.20.0 are built on CUDA 13.0, which needs
# host driver 580+.
MIN_CUDA_VERSION = "13.0"
MIN_NVIDIA_DRIVER_MAJOR = 580

# The port clients use. vLLM itself listens elsewhere, reachable only by the allowlisting proxy
# in front of it (vLLM's --api-key guards only /v1, /v2, /inference and /cohere).
PUBLIC_PORT = 8000
VLLM_INTERNAL_PORT = 8001

DEFAULT_MODEL = "Qwen/Qwen2.5-7B-Instruct"

# Size of the weights as published (safetensors), in GB. Used to size disks; models not listed
# here are estimated from the parameter count in their name, or set with `modelWeightsGb`.
KNOWN_MODEL_WEIGHTS_GB: dict[str, float] = {
    "Qwen/Qwen2.5-7B-Instruct": 15.3,
    "Qwen/Qwen2.5-3B-Instruct": 6.2,
    "Qwen/Qwen2.5-1.5B-Instruct": 3.1,
    "Qwen/Qwen2.5-14B-Instruct": 29.6,
    "meta-llama/Llama-3.1-8B-Instruct": 16.1,
    "mistralai/Mistral-7B-Instruct-v0.3": 14.5,
}

# docs/facts/vllm.md ("Sizes"): the vllm-openai image is about 12 GB compressed and about
# 29 GB unpacked.
# A pull needs both at once.
VLLM_IMAGE_PULL_GB = 12 + 29
# Ubuntu with the NVIDIA driver and Docker, plus room for logs and the proxy image.
OS_AND_HEADROOM_GB = 30
# Bytes per parameter for bf16/fp16 safetensors, with a margin for tokenizer and config files.
_GB_PER_BILLION_PARAMS = 2.1
_PARAMS_IN_NAME = re.compile(r"(?<![0-9.])(\d+(?:\.\d+)?)[bB](?![a-zA-Z])")


def estimate_weights_gb(model: str) -> float | None:
    """Weights size for `model`: the table above, else from a parameter count like `7B` in the
    name, else None (the caller asks the user for `modelWeightsGb`)."""
    if model in KNOWN_MODEL_WEIGHTS_GB:
        return KNOWN_MODEL_WEIGHTS_GB[model]
    counts = [float(m) for m in _PARAMS_IN_NAME.findall(model.rsplit("/", 1)[-1])]
    if not counts:
        return None
    return round(max(counts) * _GB_PER_BILLION_PARAMS, 1)


def staged_download_gb(weights_gb: float) -> int:
    """Room the weights need while downloading: 20% over their size, since downloads are
    staged before they are moved into the cache."""
    return math.ceil(weights_gb * 1.2)


def minimum_boot_disk_gb(weights_gb: float) -> int:
    """Smallest VM boot disk that holds the OS, a pull of the vLLM image and the weights."""
    return OS_AND_HEADROOM_GB + VLLM_IMAGE_PULL_GB + staged_download_gb(weights_gb)


# A RunPod pod's container disk beside the weights: logs, nginx, Python caches. (The image itself
# is not on the container disk.)
POD_DISK_HEADROOM_GB = 10


def minimum_pod_container_disk_gb(weights_gb: float, volume_gb: int) -> int:
    """Without a volume the weights download to the container disk; with one, to the volume."""
    return POD_DISK_HEADROOM_GB + (0 if volume_gb else staged_download_gb(weights_gb))


@dataclass(frozen=True)
class ServingSpec:
    """How one vLLM server is run. Nothing secret lives here: the API key and HF token are
    passed to the container through its environment, never as arguments."""

    model: str
    served_model_name: str
    max_model_len: int
    gpu_memory_utilization: float
    tensor_parallel_size: int
    weights_gb: float
    image: str = VLLM_IMAGE

    def vllm_args(self, host: str = "127.0.0.1", port: int = VLLM_INTERNAL_PORT) -> list[str]:
        """Arguments after `vllm serve` (the image's entrypoint). The model comes first and
        positionally (`vllm serve <model_tag>`), the documented form: recent releases warn that
        the `--model` option of `vllm serve` is to be removed. The key is read from the
        VLLM_API_KEY environment variable, so it is not on any command line."""
        return [
            self.model,
            "--served-model-name",
            self.served_model_name,
            "--max-model-len",
            str(self.max_model_len),
            "--gpu-memory-utilization",
            f"{self.gpu_memory_utilization:g}",
            "--tensor-parallel-size",
            str(self.tensor_parallel_size),
            "--host",
            host,
            "--port",
            str(port),
        ]

    @property
    def min_boot_disk_gb(self) -> int:
        return minimum_boot_disk_gb(self.weights_gb)


# --- The serving contract (issue 12 item 8): one environment and one definition of "ready" ---
# Used by the VM agent (infra/vm_agent/agent.py), the RunPod provider and the smoke test, so the
# VM and the pods cannot drift apart again.

# vLLM runs as this unprivileged user inside its container (uid/gid fixed, so the host can
# own the cache directories it mounts without a matching name in the image's /etc/passwd).
VLLM_UID = 2000
VLLM_USER = "vllm"
# Its home inside the container: everything vLLM writes lives under it, and the host mounts
# its two caches there (docs/facts/vllm.md, "Caches").
VLLM_HOME = "/var/lib/vllm"
HF_CACHE_DIR = f"{VLLM_HOME}/.cache/huggingface"
VLLM_CACHE_DIR = f"{VLLM_HOME}/.cache/vllm"
# The names of the two secrets vLLM reads from its environment (docs/facts/vllm.md, "The API key").
ENV_API_KEY = "VLLM_API_KEY"
ENV_HF_TOKEN = "HF_TOKEN"  # noqa: S105 (a variable name, not a value)

# The two requests that define "ready" (both through the proxy, the second with the key).
HEALTH_PATH = "/health"
MODELS_PATH = "/v1/models"


def vllm_container_env(api_key: str | None = None, hf_token: str | None = None) -> dict[str, str]:
    """The whole environment of the vLLM process beyond its image's, on every target.

    Without arguments it is the non-secret part (safe in metadata, pod env and state); the
    machine that runs vLLM adds the secrets it fetched itself. Usage statistics are off
    everywhere; the user, home and caches are the unprivileged ones above, so a non-root vLLM
    finds writable caches (getpass.getuser() reads USER when uid 2000 has no passwd entry)."""
    env = {
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
        "HOME": VLLM_HOME,
        "USER": VLLM_USER,
        "HF_HOME": HF_CACHE_DIR,
        "VLLM_CACHE_ROOT": VLLM_CACHE_DIR,
        # Triton's kernel cache defaults to ~/.triton: keep it with the compile cache.
        "TRITON_CACHE_DIR": f"{VLLM_CACHE_DIR}/triton",
    }
    if api_key is not None:
        env[ENV_API_KEY] = api_key
    if hf_token:
        env[ENV_HF_TOKEN] = hf_token
    return env


def not_ready_reason(
    health_status: int | None,
    models_status: int | None,
    models_body: object,
    served_model_name: str,
) -> str | None:
    """Why the endpoint is not ready, or None when it is: `GET /health` answered 200 and
    `GET /v1/models` with the key answered 200 listing `served_model_name`. Statuses are None
    when nothing answered; `models_body` is the parsed JSON (anything else counts as no list)."""
    if health_status != 200:
        return f"GET {HEALTH_PATH} -> {health_status or 'no answer'}"
    if models_status != 200:
        return f"GET {MODELS_PATH} with the key -> {models_status or 'no answer'}"
    data = models_body.get("data") if isinstance(models_body, dict) else None
    ids = [m.get("id") for m in data or [] if isinstance(m, dict)]
    if served_model_name not in ids:
        return f"GET {MODELS_PATH} lists {ids or 'no model'}, not {served_model_name!r}"
    return None


def is_ready(
    health_status: int | None,
    models_status: int | None,
    models_body: object,
    served_model_name: str,
) -> bool:
    """The one definition of "ready" (see not_ready_reason)."""
    return not_ready_reason(health_status, models_status, models_body, served_model_name) is None
