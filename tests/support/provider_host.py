"""Pulumi's real dynamic-provider host (`python -m pulumi.dynamic`, run from the project root as
the engine runs it), started for a test and reached over its ResourceProvider gRPC interface."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format, struct_pb2  # type: ignore[import-untyped]
from pulumi.runtime.proto import provider_pb2_grpc

ROOT = Path(__file__).resolve().parents[2]


def struct(props: dict[str, Any]) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(props)
    return s


def as_dict(s: struct_pb2.Struct) -> dict[str, Any]:
    props: dict[str, Any] = json_format.MessageToDict(s)
    return props


@dataclass
class Host:
    proc: subprocess.Popen[bytes]
    stub: provider_pb2_grpc.ResourceProviderStub
    stderr: Path


@contextmanager
def provider_host(env_extra: dict[str, str], stderr: Path) -> Iterator[Host]:
    """The host with RUNPOD_*/PULUMI_* from this environment removed and `env_extra` added."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "PULUMI_"))}
    env |= env_extra
    with stderr.open("ab") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pulumi.dynamic"],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=err,
        )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline().decode().strip())
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=30)
        yield Host(proc, provider_pb2_grpc.ResourceProviderStub(channel), stderr)
        channel.close()
    finally:
        if proc.poll() is None:
            proc.terminate()
        proc.wait(timeout=30)
