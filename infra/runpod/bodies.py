"""The request bodies this project sends to RunPod for a pod: create and update (PATCH).

Two ways to start the container (infra/runpod/bootstrap.py decides the command):
- the stock pinned vLLM image (`serving.VLLM_IMAGE`) with `entrypoint`/`cmd` replaced by the
  project's bootstrap (docs/facts/runpod.md ("entrypoint and cmd"), from RunPod's newer API
  documents);
- a custom image built from infra/runpod/image, whose own entrypoint runs the bootstrap, with
  vLLM's arguments in `args` (works with an API that does not know `entrypoint`/`cmd`).

Every body is measured before it is sent: RunPod answers 413 to a body over 102,400 bytes
(docs/facts/runpod.md ("Request size")), after the pod has been planned but before anything is
created, so a body too large is refused here with the reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from infra import serving
from infra.runpod import bootstrap
from infra.runpod.errors import RunpodError

Json = dict[str, Any]

# The volume holds vLLM's Hugging Face cache: the path serving.vllm_container_env's HF_HOME names.
HF_CACHE_PATH = serving.HF_CACHE_DIR
MAX_BODY_BYTES = 102_400


def body_bytes(body: Json) -> int:
    """Size of `body` as the client sends it (requests' `json=`: json.dumps, default
    separators, UTF-8)."""
    return len(json.dumps(body, allow_nan=False).encode())


def check_size(body: Json, what: str) -> Json:
    size = body_bytes(body)
    if size > MAX_BODY_BYTES:
        raise RunpodError(
            f"The {what} body is {size} bytes, over RunPod's limit of {MAX_BODY_BYTES} (it "
            "would be refused with 413). This is a bug in the request this project builds; "
            "nothing was sent."
        )
    return body


@dataclass(frozen=True)
class PodSpec:
    """Everything needed to create one pod. `env` holds only references to account secrets
    (`{{ RUNPOD_SECRET_<name> }}`), never a secret value; `key` is the endpoint key, used to
    check that the container answers with it, and never sent."""

    name: str
    image: str
    custom_image: bool
    args: list[str]
    env: dict[str, str]
    key: str = field(repr=False)
    gpu_type_ids: list[str]
    gpu_count: int
    data_center_ids: list[str]
    cloud: str
    container_disk_gb: int
    volume_gb: int
    min_cuda_version: str
    port: int
    ready_timeout_s: float

    @property
    def served_model(self) -> str:
        """The name `/v1/models` must list (vLLM's `--served-model-name`, else the model)."""
        if "--served-model-name" in self.args:
            return self.args[self.args.index("--served-model-name") + 1]
        return self.args[0]

    def candidates(self) -> list[tuple[str, str | None]]:
        """(GPU type, data center) in order of preference. docs/facts/runpod.md ("Create"):
        create places one GPU type and never falls back; the caller tries candidates in
        order."""
        dcs: list[str | None] = list(self.data_center_ids) or [None]
        return [(gpu, dc) for gpu in self.gpu_type_ids for dc in dcs]

    def container(self) -> Json:
        """Image, command and env: what a PATCH sends to change the running software."""
        return {
            "image": self.image,
            **bootstrap.launch_command(self.args, custom_image=self.custom_image),
            "env": dict(self.env),
        }

    def create_body(self, gpu_type_id: str, data_center_id: str | None) -> Json:
        body: Json = {
            "name": self.name,
            **self.container(),
            "gpu": {
                "id": gpu_type_id,
                "count": self.gpu_count,
                "minCudaVersion": self.min_cuda_version,
            },
            "cloud": self.cloud,
            "disk": self.container_disk_gb,
            "ports": [f"{self.port}/http"],
        }
        if data_center_id is not None:
            body["dataCenterIds"] = [data_center_id]
        if self.volume_gb:
            body["mounts"] = {"persistent": {"size": self.volume_gb, "path": HF_CACHE_PATH}}
        return check_size(body, "pod create")

    def update_body(self, *, was_custom_image: bool, container: bool, disk: bool) -> Json:
        """The PATCH for an in-place update. Leaving the stock image for a custom one clears
        the replaced entrypoint (`[]` clears, docs/facts/runpod.md ("entrypoint and cmd"))
        and sends vLLM's arguments as `cmd`, which describes the same command as `args`."""
        patch: Json = {}
        if container:
            patch.update(self.container())
            if self.custom_image and not was_custom_image:
                patch.pop("args", None)
                patch.update(entrypoint=[], cmd=list(self.args))
        if disk:
            patch["disk"] = self.container_disk_gb
        return check_size(patch, "pod update")
