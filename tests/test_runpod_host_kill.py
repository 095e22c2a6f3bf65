"""No pod left billing when the provider process dies: the real dynamic-provider host is killed
with SIGKILL while a create waits for readiness (as the engine kills provider processes), and
the next run (a `pulumi up` creating the pod again, or the leak finder) deletes the pod the dead
create left, and says so (infra/runpod/journal.py)."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path

from pulumi.dynamic.dynamic import serialize_provider
from pulumi.runtime.proto import provider_pb2

from infra.runpod import journal
from infra.runpod.provider import RunpodPodProvider
from scripts import runpod_pods
from tests.support.provider_host import as_dict, provider_host, struct
from tests.support.runpod_emulator import RealClock, RunpodEmulator
from tests.support.runpod_testing import (
    ENDPOINT_KEY,
    HF_TOKEN,
    KEY_SECRET,
    RUNPOD_KEY,
    TOKEN_SECRET,
    pod_inputs,
)

URN = "urn:pulumi:test::llm-endpoint::pulumi-python:dynamic/llm-endpoint:RunpodPod::runpod-0"


def _emulator() -> RunpodEmulator:
    # vLLM "loads" for an hour: the create is still waiting when the host is killed.
    emu = RunpodEmulator(
        api_key=RUNPOD_KEY, clock=RealClock(), provision_s=0, start_s=0, serve_after_s=3600
    )
    emu.put_secret(KEY_SECRET, ENDPOINT_KEY)
    emu.put_secret(TOKEN_SECRET, HF_TOKEN)
    return emu


def _create_in_host_then_kill(emu: RunpodEmulator, env: dict[str, str], stderr: Path) -> str:
    """Start a create in a real host, SIGKILL the host mid-wait; the id of the pod it left."""
    with provider_host(env, stderr) as host:
        host.stub.Configure(
            provider_pb2.ConfigureRequest(args=struct({"llm-endpoint:runpodApiKey": RUNPOD_KEY}))
        )
        news = {**pod_inputs(), "__provider": serialize_provider(RunpodPodProvider())}
        checked = host.stub.Check(
            provider_pb2.CheckRequest(urn=URN, olds=struct({}), news=struct(news))
        )
        pending = host.stub.Create.future(
            provider_pb2.CreateRequest(urn=URN, properties=checked.inputs)
        )
        deadline = time.monotonic() + 60
        while not emu.pods and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # a few readiness polls
        assert emu.pods, "the create never posted a pod"
        os.kill(host.proc.pid, signal.SIGKILL)
        host.proc.wait(timeout=30)
        assert pending.exception(timeout=30) is not None  # the engine saw the host die
    (left,) = emu.live_pods()
    return left


def test_the_next_create_deletes_the_pod_a_killed_host_left_and_says_so(tmp_path: Path):
    with _emulator() as emu:
        env = {**emu.env(), journal.JOURNAL_DIR_ENV: str(tmp_path / "journal")}
        left = _create_in_host_then_kill(emu, env, tmp_path / "host1.stderr")
        # The pod bills on and is in no state: only the journal knows it.
        (entry,) = (tmp_path / "journal").glob("llm-endpoint-test-0-*.json")
        assert json.loads(entry.read_text())["name"] == emu.pods[left].body["name"]

        emu.serve_after_s = 0  # the next pod comes up at once
        with provider_host(env, tmp_path / "host2.stderr") as host:
            host.stub.Configure(
                provider_pb2.ConfigureRequest(
                    args=struct({"llm-endpoint:runpodApiKey": RUNPOD_KEY})
                )
            )
            news = {**pod_inputs(), "__provider": serialize_provider(RunpodPodProvider())}
            checked = host.stub.Check(
                provider_pb2.CheckRequest(urn=URN, olds=struct({}), news=struct(news))
            )
            created = host.stub.Create(
                provider_pb2.CreateRequest(urn=URN, properties=checked.inputs)
            )
            assert as_dict(created.properties)["status"] == "RUNNING"
            assert emu.live_pods() == [created.id]  # the orphan is gone, the new pod serves
            host.stub.Delete(
                provider_pb2.DeleteRequest(id=created.id, urn=URN, properties=created.properties)
            )
        assert emu.live_pods() == []
        said = (tmp_path / "journal" / journal.RECOVERED_LOG).read_text()
        assert f"deleted pod(s) {left}" in said and "interrupted" in said
        assert f"deleted pod(s) {left}" in (tmp_path / "host2.stderr").read_text()
        assert not list((tmp_path / "journal").glob("*.json"))


def test_the_leak_finder_deletes_the_pod_a_killed_host_left_even_when_young(
    tmp_path: Path, monkeypatch
):
    with _emulator() as emu:
        env = {**emu.env(), journal.JOURNAL_DIR_ENV: str(tmp_path / "journal")}
        left = _create_in_host_then_kill(emu, env, tmp_path / "host.stderr")
        for k, v in {**env, "RUNPOD_API_KEY": RUNPOD_KEY}.items():
            monkeypatch.setenv(k, v)
        out = io.StringIO()
        code = runpod_pods.main(
            ["--known-ids", "--delete-unknown", "--yes"], out=out, run=_no_pulumi
        )
        text = out.getvalue()
        assert "INTERRUPTED CREATE" in text and f"deleted {left}" in text
        assert emu.live_pods() == [] and code == 0
        assert "interrupted" in (tmp_path / "journal" / journal.RECOVERED_LOG).read_text()


def _no_pulumi(*_args: object, **_kwargs: object) -> subprocess.CompletedProcess[str]:
    raise AssertionError("the leak finder must not need the Pulumi CLI with --known-ids")
