"""N pods created at once through Pulumi's real dynamic-provider host, as the engine sends them
(one Create call per resource, all in flight together), against the emulator in real time.
Used by the parallelism test and by scripts/bench_runpod_pods.py."""

from __future__ import annotations

import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path

from pulumi.dynamic.dynamic import serialize_provider
from pulumi.runtime.proto import provider_pb2

from infra.runpod.journal import JOURNAL_DIR_ENV
from infra.runpod.provider import RunpodPodProvider
from tests.support.provider_host import Host, provider_host, struct
from tests.support.runpod_emulator import RealClock, RunpodEmulator
from tests.support.runpod_testing import (
    ENDPOINT_KEY,
    HF_TOKEN,
    KEY_SECRET,
    RUNPOD_KEY,
    TOKEN_SECRET,
    pod_inputs,
)

URN = "urn:pulumi:bench::llm-endpoint::pulumi-python:dynamic/llm-endpoint:RunpodPod::runpod-{i}"


@dataclass
class Run:
    pods: int
    seconds: float
    post_times: list[float]  # when each pod was created, emulator clock


def emulator(serve_after_s: float) -> RunpodEmulator:
    emu = RunpodEmulator(
        api_key=RUNPOD_KEY,
        clock=RealClock(),
        provision_s=0,
        start_s=0,
        serve_after_s=serve_after_s,
    )
    emu.put_secret(KEY_SECRET, ENDPOINT_KEY)
    emu.put_secret(TOKEN_SECRET, HF_TOKEN)
    return emu


def create_at_once(host: Host, emu: RunpodEmulator, n: int, poll_s: float) -> Run:
    """`n` creates in flight together; returns when all are ready, then deletes the pods."""
    provider = serialize_provider(RunpodPodProvider(poll_interval_s=poll_s))
    requests = []
    for i in range(n):
        news = {**pod_inputs(name=f"llm-endpoint-bench-{i}"), "__provider": provider}
        urn = URN.format(i=i)
        checked = host.stub.Check(
            provider_pb2.CheckRequest(urn=urn, olds=struct({}), news=struct(news))
        )
        assert list(checked.failures) == [], checked.failures
        requests.append(provider_pb2.CreateRequest(urn=urn, properties=checked.inputs))
    before = set(emu.pods)
    start = time.monotonic()
    futures = [host.stub.Create.future(r) for r in requests]
    created = [f.result(timeout=600) for f in futures]
    seconds = time.monotonic() - start
    posts = sorted(p.created_at for k, p in emu.pods.items() if k not in before)
    deletes = [
        host.stub.Delete.future(
            provider_pb2.DeleteRequest(id=c.id, urn=r.urn, properties=c.properties)
        )
        for c, r in zip(created, requests, strict=True)
    ]
    for d in deletes:
        d.result(timeout=600)
    return Run(n, seconds, posts)


def start_host(emu: RunpodEmulator, workdir: Path) -> AbstractContextManager[Host]:
    env = {**emu.env(), JOURNAL_DIR_ENV: str(workdir / "journal")}
    return provider_host(env, workdir / "host.stderr")


def configure(host: Host) -> None:
    host.stub.Configure(
        provider_pb2.ConfigureRequest(args=struct({"llm-endpoint:runpodApiKey": RUNPOD_KEY}))
    )
