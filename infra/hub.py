"""Ask the Hugging Face Hub about the configured model, at preview, within a short deadline.

Up to five requests through `huggingface_hub` (docs/facts/huggingface.md): the model's info
with its file sizes (`GET /api/models/<id>?blobs=True`), then its `config.json` and, for sharded
weights, `model.safetensors.index.json` (each a `HEAD` and a `GET` of
`/<id>/resolve/<commit>/<file>`). The answer is one of: the model's facts; a refusal the user
must fix (no such model, no access, no safetensors); or "could not ask" (offline, timeout, Hub
error), after which the preview goes on with the built-in table and a warning.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError
from huggingface_hub.utils.tqdm import disable_progress_bars

from infra.model_facts import INDEX_FILE, ModelFacts

DEFAULT_ENDPOINT = "https://huggingface.co"
# Per request; the whole lookup gets three of these, however many requests it makes.
DEFAULT_TIMEOUT_S = 8.0


@dataclass(frozen=True)
class Refusal:
    """The Hub answered, and the answer means the deployment would fail."""

    key: str  # the config key to fix: "model" or "hfToken"
    message: str


@dataclass(frozen=True)
class Unavailable:
    """The Hub could not be asked; `reason` says why (never contains a token)."""

    reason: str


HubAnswer = ModelFacts | Refusal | Unavailable


def endpoint() -> str:
    # Read at each call (huggingface_hub reads HF_ENDPOINT once, at import).
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def lookup(model: str, token: str | None, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> HubAnswer:
    """The Hub's answer about `model`, within 3 x timeout_s whatever the network does: the
    requests run in a worker thread that is abandoned (it is a daemon) at the deadline."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in {"1", "true", "yes", "on"}:
        return Unavailable("HF_HUB_OFFLINE is set")
    answers: list[HubAnswer] = []
    worker = threading.Thread(
        target=lambda: answers.append(_ask(model, token, timeout_s)),
        name="hub-lookup",
        daemon=True,
    )
    worker.start()
    worker.join(3 * timeout_s)
    if not answers:
        return Unavailable(f"{endpoint()} did not answer within {3 * timeout_s:g} s")
    return answers[0]


def _ask(model: str, token: str | None, timeout_s: float) -> HubAnswer:
    where = endpoint()
    try:
        info = HfApi(endpoint=where).model_info(
            model, files_metadata=True, timeout=timeout_s, token=token
        )
    except RepositoryNotFoundError:
        return Refusal(
            "model",
            f"no model {model} on the Hugging Face Hub ({where}); if it is private, set hfToken "
            "to a token that can read it. Check the spelling on huggingface.co",
        )
    except HfHubHTTPError as err:
        if token is not None and err.response.status_code == 401:
            return Refusal(
                "hfToken",
                "the Hugging Face Hub rejects this token (invalid credentials). Make a new "
                "read token on huggingface.co (Settings, Access Tokens) and set it with "
                "`pulumi config set --secret llm-endpoint:hfToken`",
            )
        return Unavailable(_why(err))
    except Exception as err:  # any failure to ask (network, 5xx, bad JSON) is "could not ask"
        return Unavailable(_why(err))
    files = {s.rfilename: s.size for s in info.siblings or []}
    refusal = _unservable(model, files)
    if refusal is not None:
        return refusal
    try:
        config, index = _download_json(model, info.sha, files, token, timeout_s)
    except GatedRepoError:
        return _no_access(model, token)
    except Exception as err:
        return Unavailable(_why(err))
    try:
        return ModelFacts.from_hub_files(model, config, files, index, bool(info.gated))
    except (KeyError, TypeError, ValueError) as err:
        return Unavailable(f"its config.json lacks what the checks read ({_why(err)})")


def _unservable(model: str, files: dict[str, int | None]) -> Refusal | None:
    if not any(f.endswith(".safetensors") for f in files):
        gguf = any(f.endswith(".gguf") for f in files)
        return Refusal(
            "model",
            f"{model} has no safetensors weights"
            + (" (only GGUF files, which vLLM does not serve)" if gguf else "")
            + ". Use the original (safetensors) repository of the model, e.g. "
            "Qwen/Qwen2.5-7B-Instruct",
        )
    if "config.json" not in files:
        return Refusal("model", f"{model} has no config.json, so vLLM cannot load it")
    return None


def _no_access(model: str, token: str | None) -> Refusal:
    if token is None:
        return Refusal(
            "hfToken",
            f"{model} is gated on Hugging Face: without a token the download fails after the "
            "GPU is already billing. Accept the model's licence on huggingface.co, then "
            "`pulumi config set --secret llm-endpoint:hfToken` (it prompts for the token)",
        )
    return Refusal(
        "hfToken",
        f"this token may not download {model} (gated). Accept the model's licence on "
        "huggingface.co with the account the token belongs to, or set another token",
    )


def _download_json(
    model: str, revision: str | None, files: dict[str, int | None], token: str | None, t: float
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    disable_progress_bars()
    wanted = ["config.json", *([INDEX_FILE] if INDEX_FILE in files else [])]
    found: list[dict[str, Any]] = []
    # A fresh cache each time: nothing is left in the user's home, and nothing stale is read.
    with tempfile.TemporaryDirectory(prefix="llm-endpoint-hub-") as cache:
        for name in wanted:
            path = hf_hub_download(
                model,
                name,
                revision=revision,
                cache_dir=cache,
                token=token,
                etag_timeout=t,
                endpoint=endpoint(),
            )
            found.append(json.loads(Path(path).read_text()))
    return found[0], (found[1] if len(found) > 1 else None)


def _why(err: BaseException) -> str:
    # Exception text from HTTP libraries can quote the request; keep the type and first line.
    first = str(err).splitlines()[0] if str(err) else ""
    return f"{type(err).__name__}: {first}"[:200]
