"""A local emulator of the part of RunPod's REST API v2 this project uses.

Serves `/v2/pods` (list, create), `/v2/pods/{id}` (get, patch, delete), `/v2/pods/{id}/action`
(start, stop, restart, terminate), `/v2/catalog/gpus` and `/v2/account/secrets` (list, create, and
by id: update, delete), plus each pod's HTTP proxy (`/proxy/{podId}-{port}/health` and `/v1/models`,
answered as the pod's nginx would: `/v1/*` only with the key the running container was started with)
so readiness is tested end to end. A PATCH changes the pod's settings only; the container runs them
after its next start or restart (the OpenAPI document does not say a PATCH restarts it), and
`startedAt` moves then. Every request and every response is validated with openapi-core against the
project's own RunPod contract (`infra/runpod/api-contract.yaml`: the operations and fields the
project uses, written from RunPod's OpenAPI document and its newer reference pages); a request
outside it (an unknown field, a wrong type, an operation the contract does not list) gets the API's
422 problem answer, and every mismatch is kept in `violations` for tests to assert on.

Pod states change with an injectable clock (`FakeClock` in tests, shared with the provider), so
tests move through PROVISIONING -> STARTING -> RUNNING in fake time. Faults are scripted per test
through `RunpodEmulator.faults`.

Run it on its own (state changes in real time):
    python -m tests.support.runpod_emulator --port 8765 --api-key test-key
then point the client at it with the environment it prints.
"""

from __future__ import annotations

import argparse
import json
import re
import secrets
import shlex
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from openapi_core import Config, OpenAPI
from openapi_core.contrib.werkzeug import WerkzeugOpenAPIRequest, WerkzeugOpenAPIResponse
from werkzeug.serving import make_server
from werkzeug.wrappers import Request, Response

from tests.support import runpod_contract

SPEC_SERVER = "https://api.runpod.io"
# The contract's sources newer than RunPod's OpenAPI document (the `older_api` fault drops them).
NEWER_SOURCES = frozenset({"runpod-reference-pages-2026-11"})
_RUNPOD_HOST = "https://api.runpod.io/"
# docs/facts/runpod.md ("Request size"): larger bodies get 413, before authentication.
MAX_BODY_BYTES = 102_400
SECRET_REF = re.compile(r"\{\{\s*RUNPOD_SECRET_([A-Za-z0-9_.\-/]+)\s*\}\}")

_spec_lock = threading.Lock()
_spec_cache: dict[bool, OpenAPI] = {}


def openapi(*, newer: bool = True) -> OpenAPI:
    """The project's RunPod contract (infra/runpod/api-contract.yaml) as openapi-core's
    validator, built once per process: all of it, or (`newer=False`) without what RunPod's
    newer reference pages add, as an older API that refuses `entrypoint`/`cmd` as unknown
    fields."""
    with _spec_lock:
        if newer not in _spec_cache:
            without = frozenset() if newer else NEWER_SOURCES
            spec = runpod_contract.openapi_document(without)
            config = Config(extra_media_type_deserializers={"application/problem+json": json.loads})
            _spec_cache[newer] = OpenAPI.from_dict(spec, config=config)
        return _spec_cache[newer]


class FakeClock:
    """Monotonic fake time: `sleep` advances it instantly. Shared by emulator and provider."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self._now = start
        self._lock = threading.Lock()
        self.slept: list[float] = []

    def now(self) -> float:
        with self._lock:
            return self._now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self._now += max(0.0, seconds)
            self.slept.append(seconds)

    def advance(self, seconds: float) -> None:
        self.sleep(seconds)


class RealClock:
    """Wall-clock time (the emulator's `createdAt`/`startedAt` are derived from it)."""

    def now(self) -> float:
        return time.time()

    def sleep(self, seconds: float) -> None:
        time.sleep(seconds)


@dataclass
class Faults:
    """What goes wrong, scripted per test. Counters are consumed as requests arrive."""

    # (gpu type id, data center id); a None data center means "nowhere".
    no_capacity: set[tuple[str, str | None]] = field(default_factory=set)
    insufficient_balance: bool = False
    forbidden_gpus: set[str] = field(default_factory=set)
    # "METHOD /path-template" -> how many 429s to answer first.
    rate_limited: dict[str, int] = field(default_factory=dict)
    retry_after_s: int = 7
    create_5xx_before: int = 0  # answer 503 without creating anything
    create_5xx_after: int = 0  # create the pod, then answer 500
    create_lost_after: int = 0  # create the pod, then cut the connection mid-answer
    get_5xx: int = 0
    delete_5xx: int = 0
    stuck_provisioning: bool = False
    error_after_start: bool = False  # STARTING -> ERROR instead of RUNNING
    exit_after_start: bool = False  # STARTING -> EXITED
    never_healthy: bool = False  # RUNNING, but /health never answers 200
    # RUNNING with `runtime` still null for this long (docs/facts/runpod.md, "Pod status": seen
    # right after create), while the proxy already answers 200 (so only the runtime check holds
    # it back).
    runtime_null_s: float = 0.0
    vanish_after_s: float | None = None  # the pod disappears (console terminate, $0 balance)
    # After DELETE the pod keeps its status this long, then shows TERMINATED for 10 s, then 404.
    delete_takes_s: float = 0.0
    delete_ignored: bool = False  # DELETE answers 204 but the pod keeps running
    invalid_422: bool = False  # answer 422 to creates, naming a field
    echo_secret_in_422: bool = False  # ... and quote the env's key in it (a careless API)
    echo_env_in_errors: bool = False  # 400/5xx create answers quote the env (a careless API)
    # Pods younger than this are missing from GET /v2/pods (a pod still being made).
    list_lag_s: float = 0.0
    create_bad_body_after: int = 0  # create the pod, then answer 201 with an unreadable body
    action_409: int = 0  # answer 409 to this many pod actions (as for an invalid status)
    restart_ignores_settings: bool = False  # a restart keeps the container's old settings
    older_api: bool = False  # validate against the 2026-08 document: no entrypoint/cmd
    # Every API request takes this long (fake time) and then answers 504, as if the client's
    # timeout had fired: a stalled API.
    stall_s: float = 0.0
    always_429: bool = False  # every API request is rate-limited
    stall_methods: frozenset[str] = frozenset({"GET", "POST", "PATCH", "DELETE"})  # ... of these


@dataclass
class GpuOffer:
    id: str
    name: str
    memory: int
    secure_price: float
    community_price: float
    data_centers: list[str]


DEFAULT_CATALOG = [
    GpuOffer("NVIDIA A100 80GB PCIe", "A100 PCIe", 80, 1.64, 1.19, ["US-KS-2", "EU-RO-1"]),
    GpuOffer("NVIDIA A100-SXM4-80GB", "A100 SXM", 80, 1.74, 1.39, ["US-TX-3", "EU-RO-1"]),
    GpuOffer("NVIDIA H100 80GB HBM3", "H100 SXM", 80, 2.99, 2.69, ["US-TX-3"]),
]


@dataclass
class EmulatedPod:
    body: dict[str, Any]
    gpu_id: str
    data_center_id: str
    price_per_hour: float
    created_at: float
    started_at: float  # last (re)start (a restart/start action; a PATCH does not restart)
    # The settings the running container was started with; `body` (what GET shows) takes
    # PATCHes at once, the container only on its next start/restart.
    container: dict[str, Any] = field(default_factory=dict)
    exited: bool = False  # stopped (the `stop` action); `start` boots it again
    # The container could not start: a referenced account secret is missing (docs/facts:
    # "Deleting a secret that a deployment references makes that deployment fail").
    failed: bool = False
    deleted_at: float | None = None
    health_hits: int = 0


class RunpodEmulator:
    def __init__(
        self,
        *,
        api_key: str = "emulator-runpod-key-000000000000",
        clock: FakeClock | RealClock | None = None,
        provision_s: float = 30.0,
        start_s: float = 30.0,
        serve_after_s: float = 60.0,
        catalog: list[GpuOffer] | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.api_key = api_key
        self.clock = clock or FakeClock()
        self.provision_s = provision_s
        self.start_s = start_s
        self.serve_after_s = serve_after_s
        self.catalog = list(catalog or DEFAULT_CATALOG)
        self.faults = Faults()
        self.pods: dict[str, EmulatedPod] = {}
        self.requests: list[tuple[str, str, Any]] = []
        # (clock time, method, path) of every API request, for ordering and back-off checks.
        self.timeline: list[tuple[float, str, str]] = []
        self.violations: list[str] = []
        # Pods started with the stock vLLM image but not the project's entrypoint: vLLM would
        # listen on loopback with nothing in front, so RunPod's proxy would answer 502 forever.
        self.unsafe_starts: list[str] = []
        self.secrets: dict[str, dict[str, Any]] = {}
        self._lock = threading.RLock()
        self._spec = openapi()
        self._server = make_server(host, port, self._wsgi, threaded=True)
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    @property
    def proxy_url_template(self) -> str:
        return self.base_url + "/proxy/{pod_id}-{port}"

    def env(self) -> dict[str, str]:
        """Environment that points the project's client and provider at this emulator."""
        return {
            "RUNPOD_API_BASE_URL": self.base_url,
            "RUNPOD_PROXY_URL_TEMPLATE": self.proxy_url_template,
        }

    def start(self) -> RunpodEmulator:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        if self._thread:
            self._thread.join(timeout=5)

    def __enter__(self) -> RunpodEmulator:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    # -- state -----------------------------------------------------------------------------

    def status_of(self, pod: EmulatedPod) -> str | None:
        """Current status, or None once the pod is gone for good."""
        now = self.clock.now()
        f = self.faults
        if pod.deleted_at is not None:
            since = now - pod.deleted_at
            if since >= f.delete_takes_s:
                return "TERMINATED" if since < f.delete_takes_s + 10 else None
        if f.vanish_after_s is not None and now - pod.created_at >= f.vanish_after_s:
            return None
        if pod.exited:
            return "EXITED"
        if pod.failed:
            return "ERROR"
        if f.stuck_provisioning:
            return "PROVISIONING"
        age = now - pod.started_at
        if pod.started_at == pod.created_at and age < self.provision_s:
            return "PROVISIONING"
        warmup = self.provision_s if pod.started_at == pod.created_at else 0.0
        if age < warmup + self.start_s:
            return "STARTING"
        if f.error_after_start:
            return "ERROR"
        if f.exit_after_start:
            return "EXITED"
        return "RUNNING"

    def serving(self, pod: EmulatedPod) -> bool:
        if self.status_of(pod) != "RUNNING" or self.faults.never_healthy:
            return False
        if not self._starts_the_proxy(pod.container):
            return False
        if self.faults.runtime_null_s:
            return True
        warmup = self.provision_s if pod.started_at == pod.created_at else 0.0
        return self.clock.now() - pod.started_at >= warmup + self.start_s + self.serve_after_s

    def _runtime_pending(self, pod: EmulatedPod) -> bool:
        warmup = self.provision_s if pod.started_at == pod.created_at else 0.0
        running_since = pod.started_at + warmup + self.start_s
        return self.clock.now() - running_since < self.faults.runtime_null_s

    def live_pods(self) -> list[str]:
        """Ids of pods that still exist and bill (not deleted, not vanished)."""
        with self._lock:
            return [
                pid
                for pid, pod in self.pods.items()
                if self.status_of(pod) not in (None, "TERMINATED")
            ]

    def add_pod(self, name: str, gpu_id: str = "NVIDIA A100 80GB PCIe", age_s: float = 0.0) -> str:
        """Create a pod directly (as if from the console), for leak tests; `age_s` makes it
        that much older (created and started that long ago)."""
        body = {"name": name, "image": "some/image:1", "gpu": {"id": gpu_id, "count": 1}}
        with self._lock:
            pod_id = self._create(body, gpu_id, self._offer(gpu_id).data_centers[0])
            self.pods[pod_id].created_at -= age_s
            self.pods[pod_id].started_at -= age_s
            return pod_id

    def _offer(self, gpu_id: str) -> GpuOffer:
        return next(o for o in self.catalog if o.id == gpu_id)

    def _create(self, body: dict[str, Any], gpu_id: str, dc: str) -> str:
        pod_id = secrets.token_hex(7)
        offer = self._offer(gpu_id)
        cloud = body.get("cloud", "SECURE")
        count = int(body.get("gpu", {}).get("count", 1))
        price = offer.secure_price if cloud == "SECURE" else offer.community_price
        now = self.clock.now()
        self.pods[pod_id] = EmulatedPod(
            body=body,
            gpu_id=gpu_id,
            data_center_id=dc,
            price_per_hour=round(price * count, 4),
            created_at=now,
            started_at=now,
        )
        self._boot(pod_id, self.pods[pod_id])
        return pod_id

    def _resolve(self, env: dict[str, str]) -> dict[str, str]:
        """`env` with secret references replaced by the values (for the careless-API faults,
        which quote what they should not)."""

        def value_of(match: re.Match[str]) -> str:
            found = self._secret_by_name(match.group(1))
            return str(found["value"]) if found else ""

        return {k: SECRET_REF.sub(value_of, v) for k, v in env.items()}

    def _boot(self, pod_id: str, pod: EmulatedPod) -> None:
        """The container starts with the pod's settings; secret references in env are
        replaced by the secrets' current values (docs/facts/runpod.md ("Account secrets"))."""
        container = json.loads(json.dumps(pod.body))
        env = container.get("env") or {}
        missing: list[str] = []

        def value_of(match: re.Match[str]) -> str:
            found = self._secret_by_name(match.group(1))
            if found is None:
                missing.append(match.group(1))
                return ""
            return str(found["value"])

        container["env"] = {k: SECRET_REF.sub(value_of, v) for k, v in env.items()}
        pod.container, pod.failed = container, bool(missing)
        if not self._starts_the_proxy(container):
            self.unsafe_starts.append(pod_id)

    @staticmethod
    def _starts_the_proxy(container: dict[str, Any]) -> bool:
        """A stock vLLM image runs `vllm serve` unless its entrypoint is replaced."""
        image = str(container.get("image", ""))
        return not image.startswith("vllm/vllm-openai") or bool(container.get("entrypoint"))

    def restart(self, pod: EmulatedPod) -> None:
        """The container starts again, now with the pod's current settings."""
        pod_id = next(k for k, v in self.pods.items() if v is pod)
        if not self.faults.restart_ignores_settings:
            self._boot(pod_id, pod)
        pod.started_at = self.clock.now()
        pod.exited = False

    def container_key(self, pod: EmulatedPod) -> str | None:
        key = (pod.container.get("env") or {}).get("VLLM_API_KEY")
        return key if isinstance(key, str) and key else None

    def put_secret(self, name: str, value: str) -> str:
        """Create or rotate an account secret directly (as from the console)."""
        with self._lock:
            found = self._secret_by_name(name)
            now = _iso(self.clock.now())
            if found is not None:
                found.update(value=value, valueLastUpdatedAt=now)
                return str(found["id"])
            secret_id = secrets.token_hex(6)
            self.secrets[secret_id] = {
                "id": secret_id,
                "name": name,
                "value": value,
                "description": None,
                "createdAt": now,
                "valueLastUpdatedAt": now,
            }
            return secret_id

    def _secret_by_name(self, name: str) -> dict[str, Any] | None:
        return next((s for s in self.secrets.values() if s["name"] == name), None)

    def container_env(self, pod_id: str) -> dict[str, str]:
        """The env the running container sees (secret values substituted)."""
        return dict(self.pods[pod_id].container.get("env") or {})

    def _view(self, pod_id: str, pod: EmulatedPod) -> dict[str, Any] | None:
        status = self.status_of(pod)
        if status is None:
            return None
        b = pod.body
        running = status == "RUNNING"
        ports = list(b.get("ports", []))
        mounts: dict[str, Any] = dict(b.get("mounts") or {})
        created = _iso(pod.created_at)
        warmup = self.provision_s if pod.started_at == pod.created_at else 0.0
        started = _iso(pod.started_at + warmup) if status in ("STARTING", "RUNNING") else None
        return {
            "id": pod_id,
            "name": b["name"],
            "status": status,
            "actions": _ACTIONS.get(status, ["terminate"]),
            "image": b.get("image", ""),
            **_command_view(b),
            "disk": b.get("disk", 50),
            "mounts": mounts,
            "ports": ports,
            "env": dict(b.get("env", {})),
            "registry": None,
            "gpu": {"id": pod.gpu_id, "count": int(b.get("gpu", {}).get("count", 1))},
            "cloud": b.get("cloud", "SECURE"),
            "dataCenterId": pod.data_center_id,
            "cudaVersion": "13.0",
            "ssh": {"proxy": None, "direct": None},
            "template": None,
            "cost": pod.price_per_hour if status not in ("EXITED", "TERMINATED") else 0.0,
            "locked": False,
            "globalNetworking": {"enabled": False},
            "runtime": (
                None
                if running and self._runtime_pending(pod)
                else {
                    "uptime": int(self.clock.now() - pod.started_at),
                    "ports": [
                        {"private": int(p.split("/")[0]), "public": None, "type": "http"}
                        for p in ports
                    ],
                }
                if running
                else None
            ),
            "createdAt": created,
            "startedAt": started,
        }

    # -- HTTP ------------------------------------------------------------------------------

    def _wsgi(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        request = Request(environ)
        if request.path.startswith("/proxy/"):
            return self._proxy(request)(environ, start_response)
        response = self._api(request)
        return response(environ, start_response)

    def _problem(
        self, status: int, detail: str, errors: list[str] | None = None, **headers: str
    ) -> Response:
        titles = {
            400: "Bad Request",
            413: "Content Too Large",
            504: "Gateway Timeout",
            409: "Conflict",
            401: "Unauthorized",
            402: "Payment Required",
            403: "Forbidden",
            404: "Not Found",
            422: "Unprocessable Entity",
            429: "Too Many Requests",
            500: "Internal Server Error",
            503: "Service Unavailable",
        }
        body: dict[str, Any] = {"title": titles.get(status, "Error"), "status": status}
        body["detail"] = detail
        if errors:
            body["errors"] = errors
        response = Response(
            json.dumps(body), status=status, content_type="application/problem+json"
        )
        for k, v in headers.items():
            response.headers[k.replace("_", "-")] = v
        return response

    def _json(self, status: int, body: Any) -> Response:
        response = Response(json.dumps(body), status=status, content_type="application/json")
        response.headers["RateLimit"] = '"minute";r=59;t=60'
        response.headers["RateLimit-Policy"] = '"minute";q=60;w=60'
        return response

    def _consume(self, attr: str) -> bool:
        n = getattr(self.faults, attr)
        if n > 0:
            setattr(self.faults, attr, n - 1)
            return True
        return False

    def _api(self, request: Request) -> Response:
        if len(request.get_data()) > MAX_BODY_BYTES:
            return self._problem(413, f"request body larger than {MAX_BODY_BYTES} bytes")
        body = request.get_json(silent=True) if request.data else None
        with self._lock:
            self.requests.append((request.method, request.path, body))
            self.timeline.append((self.clock.now(), request.method, request.path))
        if self.faults.stall_s and request.method in self.faults.stall_methods:
            self.clock.sleep(self.faults.stall_s)
            return self._problem(504, "upstream timed out")
        if self.faults.always_429 and request.method in self.faults.stall_methods:
            return self._problem(429, "rate limited", Retry_After=str(self.faults.retry_after_s))
        if request.headers.get("Authorization") != f"Bearer {self.api_key}":
            return self._problem(401, "missing or invalid bearer token")
        oa_request = _RunpodRequest(request)
        spec = openapi(newer=False) if self.faults.older_api else self._spec
        errors = [str(e) for e in spec.iter_request_errors(oa_request)]
        if errors:
            self.violations.append(f"request {request.method} {request.path}: {errors}")
            return self._problem(422, "Request validation failed.", errors)
        response = self._route(request, body)
        if not getattr(response, "_lost", False):
            resp_errors = [
                str(e)
                for e in self._spec.iter_response_errors(
                    oa_request, WerkzeugOpenAPIResponse(response)
                )
            ]
            if resp_errors:
                self.violations.append(
                    f"response {request.method} {request.path} {response.status_code}: "
                    f"{resp_errors}"
                )
        return response

    def _route(self, request: Request, body: Any) -> Response:
        parts = request.path.strip("/").split("/")
        method = request.method
        template = "/" + "/".join(parts[:2] + (["{id}"] if len(parts) > 2 else []) + parts[3:])
        key = f"{method} {template}"
        if self.faults.rate_limited.get(key, 0) > 0:
            self.faults.rate_limited[key] -= 1
            return self._problem(
                429,
                "rate limit exceeded for the minute window",
                Retry_After=str(self.faults.retry_after_s),
            )
        with self._lock:
            if parts == ["v2", "catalog", "gpus"] and method == "GET":
                return self._json(200, {"gpus": [self._gpu_view(o) for o in self.catalog]})
            if parts == ["v2", "pods"] and method == "GET":
                now = self.clock.now()
                views = [
                    self._view(pid, p)
                    for pid, p in list(self.pods.items())
                    if now - p.created_at >= self.faults.list_lag_s
                ]
                return self._json(200, {"pods": [v for v in views if v is not None]})
            if parts == ["v2", "pods"] and method == "POST":
                return self._create_route(body)
            if len(parts) == 3 and parts[:2] == ["v2", "pods"]:
                return self._pod_route(method, parts[2], body)
            if len(parts) == 4 and parts[:2] == ["v2", "pods"] and parts[3] == "action":
                return self._action_route(parts[2], body)
            if parts[:3] == ["v2", "account", "secrets"]:
                return self._secrets_route(method, parts[3:], body, request.args.get("name"))
        return self._problem(404, "resource not found")

    def _gpu_view(self, o: GpuOffer) -> dict[str, Any]:
        return {
            "id": o.id,
            "name": o.name,
            "pool": None,
            "manufacturer": "NVIDIA",
            "memory": o.memory,
            "secure": True,
            "community": True,
            "price": {"secure": o.secure_price, "community": o.community_price},
            "maxCount": {"secure": 8, "community": 4},
        }

    def _create_route(self, body: dict[str, Any]) -> Response:
        f = self.faults
        if f.invalid_422:
            errors = ["$.disk: must be >= 20 for this image"]
            if f.echo_secret_in_422:
                key = self._resolve(body["env"]).get("VLLM_API_KEY")
                errors.append(f"$.env.VLLM_API_KEY: {key} is odd")
            return self._problem(422, "Request validation failed.", errors)
        env = body.get("env") or {}
        # A careless API quoting the endpoint key's value (the provider knows that one and
        # blanks it) and the HF token's reference (no value: the pod provider never has it).
        secret_env = {
            "VLLM_API_KEY": self._resolve(env).get("VLLM_API_KEY"),
            "HF_TOKEN": env.get("HF_TOKEN"),
        }
        echo = f" (env: {json.dumps(secret_env)})" if f.echo_env_in_errors else ""
        if self._consume("create_5xx_before"):
            return self._problem(503, "upstream unavailable" + echo)
        if f.insufficient_balance:
            return self._problem(402, "Insufficient balance to deploy this pod.")
        gpu_id = body["gpu"]["id"]
        if gpu_id in f.forbidden_gpus:
            return self._problem(403, "access denied to the requested GPU pool")
        offer = next((o for o in self.catalog if o.id == gpu_id), None)
        if offer is None:
            return self._problem(400, f"unknown GPU type {gpu_id!r}")
        wanted = body.get("dataCenterIds") or offer.data_centers
        placeable = [
            dc
            for dc in wanted
            if dc in offer.data_centers
            and (gpu_id, dc) not in f.no_capacity
            and (gpu_id, None) not in f.no_capacity
        ]
        if not placeable:
            return self._problem(
                400,
                "There are no longer any instances available with the requested specifications"
                + echo,
            )
        pod_id = self._create(body, gpu_id, placeable[0])
        if self._consume("create_5xx_after"):
            return self._problem(500, "internal error" + echo)
        if self._consume("create_lost_after"):
            return _LostResponse()
        if self._consume("create_bad_body_after"):
            bad = Response("<html>502 Bad Gateway</html>", status=201, content_type="text/html")
            bad._lost = True  # type: ignore[attr-defined]  # not validated: it is the fault
            return bad
        view = self._view(pod_id, self.pods[pod_id])
        return self._json(201, view)

    def _pod_route(self, method: str, pod_id: str, body: Any) -> Response:
        pod = self.pods.get(pod_id)
        view = self._view(pod_id, pod) if pod else None
        if method == "GET":
            if self._consume("get_5xx"):
                return self._problem(502, "bad gateway")
            if view is None:
                return self._problem(404, "pod not found")
            return self._json(200, view)
        if method == "DELETE":
            if self._consume("delete_5xx"):
                return self._problem(500, "internal error")
            if pod is None or view is None or view["status"] == "TERMINATED":
                return self._problem(404, "pod not found")
            if not self.faults.delete_ignored and pod.deleted_at is None:
                pod.deleted_at = self.clock.now()
            return Response(status=204, headers={"RateLimit": '"minute";r=59;t=60'})
        if method == "PATCH":
            if pod is None or view is None:
                return self._problem(404, "pod not found")
            # Settings only: the running container keeps its old image/env until restarted.
            # `[]` clears entrypoint/cmd (the image's own then applies).
            merged = {**pod.body, **body}
            for cleared in ("entrypoint", "cmd"):
                if merged.get(cleared) == []:
                    merged.pop(cleared)
            if "args" in body:
                merged.pop("entrypoint", None)
                merged.pop("cmd", None)
            pod.body = merged
            return self._json(200, self._view(pod_id, pod))
        return self._problem(404, "resource not found")

    def _action_route(self, pod_id: str, body: Any) -> Response:
        pod = self.pods.get(pod_id)
        view = self._view(pod_id, pod) if pod else None
        if pod is None or view is None:
            return self._problem(404, "pod not found")
        action = body["action"]
        if self._consume("action_409") or action not in view["actions"]:
            return self._problem(
                409, f"action {action!r} is not valid for a pod in status {view['status']}"
            )
        if action in ("restart", "start"):
            self.restart(pod)
        elif action == "stop":
            pod.exited = True
        elif action == "terminate":
            pod.deleted_at = self.clock.now()
            return Response(status=204, headers={"RateLimit": '"minute";r=59;t=60'})
        return self._json(200, self._view(pod_id, pod))

    def _secrets_route(self, method: str, rest: list[str], body: Any, name: str | None) -> Response:
        """Account secrets (newer documents): values are write-only, never in an answer."""
        now = _iso(self.clock.now())
        if not rest and method == "GET":
            found = [
                s
                for s in self.secrets.values()
                if name is None or s["name"].lower() == name.lower()
            ]
            return self._json(200, {"secrets": [_secret_view(s) for s in found]})
        if not rest and method == "POST":
            if body["name"].upper().startswith("RUNPOD"):
                return self._problem(400, "secret names must not start with RUNPOD")
            if self._secret_by_name(body["name"]) is not None:
                return self._problem(409, "a secret with this name exists")
            secret_id = secrets.token_hex(6)
            self.secrets[secret_id] = {
                **body,
                "id": secret_id,
                "createdAt": now,
                "valueLastUpdatedAt": now,
            }
            return self._json(201, _secret_view(self.secrets[secret_id]))
        secret = self.secrets.get(rest[0]) if len(rest) == 1 else None
        if secret is None:
            return self._problem(404, "secret not found")
        if method == "PATCH":
            secret.update(body)
            if "value" in body:
                secret["valueLastUpdatedAt"] = now
        elif method == "DELETE":
            del self.secrets[rest[0]]
            return Response(status=204, headers={"RateLimit": '"minute";r=59;t=60'})
        return self._json(200, _secret_view(secret))

    def _proxy(self, request: Request) -> Response:
        """RunPod's HTTP proxy for one pod port: 502 until the container serves, like the real
        proxy (docs/facts/runpod.md, "Proxy": 502 until the container listens)."""
        rest = request.path[len("/proxy/") :]
        target, _, path = rest.partition("/")
        pod_id, _, _port = target.rpartition("-")
        with self._lock:
            pod = self.pods.get(pod_id)
            if pod is None or self.status_of(pod) is None:
                return Response("no such pod", status=404)
            ok = self.serving(pod)
            key = self.container_key(pod)
            served = _served_model(pod.container)
            if path == "health":
                pod.health_hits += 1
        if not ok:
            return Response("bad gateway", status=502)
        if path == "health":
            return Response("", status=200)
        if path.startswith("v1/"):
            # The container's nginx: /v1/* only with the key it was started with.
            if key is None or request.headers.get("Authorization") != f"Bearer {key}":
                return Response("unauthorized", status=401)
            if path == "v1/models":
                listed = [{"id": served, "object": "model"}]
                return Response(
                    json.dumps({"object": "list", "data": listed}),
                    status=200,
                    content_type="application/json",
                )
        return Response("not found", status=404)


_ACTIONS = {
    "RUNNING": ["stop", "restart", "terminate"],
    "EXITED": ["start", "terminate"],
    "ERROR": ["start", "terminate"],
    "PROVISIONING": ["stop", "terminate"],
    "STARTING": ["stop", "terminate"],
}


def _served_model(container: dict[str, Any]) -> str:
    """What vLLM started with these settings would list: `--served-model-name`, else the
    model (the first argument)."""
    args = list(container.get("cmd") or shlex.split(str(container.get("args") or "")))
    if "--served-model-name" in args:
        return str(args[args.index("--served-model-name") + 1])
    return str(args[0]) if args else "served-model"


def _secret_view(secret: dict[str, Any]) -> dict[str, Any]:
    keys = ("id", "name", "createdAt", "description", "valueLastUpdatedAt")
    return {k: secret.get(k) for k in keys}


def _command_view(body: dict[str, Any]) -> dict[str, Any]:
    """`args` as stored, plus `entrypoint`/`cmd` (newer documents: a JSON object string when
    the command was given in exec form)."""
    if "entrypoint" in body or "cmd" in body:
        entrypoint, cmd = list(body.get("entrypoint", [])), list(body.get("cmd", []))
        args = json.dumps({"entrypoint": entrypoint, "cmd": cmd})
        return {"args": args, "entrypoint": entrypoint, "cmd": cmd}
    return {"args": body.get("args", ""), "entrypoint": [], "cmd": []}


def _iso(t: float) -> str:
    """RFC 3339 with microseconds (two restarts within a second still differ)."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")


class _RunpodRequest(WerkzeugOpenAPIRequest):
    """Validate as if the request had reached the documented server."""

    @property
    def host_url(self) -> str:
        return _RUNPOD_HOST


class _LostResponse(Response):
    """Headers promise a body that never comes: the client sees the connection cut."""

    _lost = True

    def __init__(self) -> None:
        def body() -> Iterator[bytes]:
            yield b'{"id":'
            raise ConnectionAbortedError("emulated lost answer")

        super().__init__(body(), status=201, content_type="application/json")
        self.headers["Content-Length"] = "4096"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--api-key", default="emulator-runpod-key-000000000000")
    parser.add_argument("--seconds-per-phase", type=float, default=5.0)
    args = parser.parse_args()
    emulator = RunpodEmulator(
        api_key=args.api_key,
        clock=RealClock(),
        provision_s=args.seconds_per_phase,
        start_s=args.seconds_per_phase,
        serve_after_s=args.seconds_per_phase,
        port=args.port,
    )
    for k, v in emulator.env().items():
        print(f"export {k}='{v}'")
    print("export RUNPOD_API_KEY=<the --api-key value>", flush=True)
    emulator._server.serve_forever()


if __name__ == "__main__":
    main()
