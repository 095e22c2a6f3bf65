"""Try the project's tools with no cloud account: `python -m scripts.offline`.

Starts, on loopback only, the two stand-ins the test suite uses:
- the vLLM stand-in (tests/support/vllm_standin.py), playing a correctly deployed endpoint: the
  proxy's rules (only /health and keyed /v1/* answered) in front of a vLLM that serves one model;
- the RunPod API emulator (tests/support/runpod_emulator.py), which checks every request against
  the project's RunPod contract, with two pods in it: one a stack knows, one left behind.

It prints the commands to try (the smoke test, the leak finder) with everything they need on
their command line, and runs until Ctrl-C (or SIGTERM), then stops both servers and exits 0.
The keys it prints are made up for this run and open nothing but these local stand-ins.
"""

from __future__ import annotations

import argparse
import logging
import secrets
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from types import FrameType
from typing import TextIO

from tests.support.runpod_emulator import RealClock, RunpodEmulator
from tests.support.vllm_standin import DEFAULT_MODEL, StandinConfig, VllmStandin, run_standin

READY = "Ready. Ctrl-C stops both."
# Older than the leak finder's default --min-age-minutes (30), so it judges them.
POD_AGE_S = 2 * 3600.0


@dataclass(frozen=True)
class Offline:
    vllm: VllmStandin
    vllm_key: str
    runpod: RunpodEmulator
    known_pod: str
    leaked_pod: str


@contextmanager
def started(vllm_port: int = 0, runpod_port: int = 0, phase_s: float = 5.0) -> Iterator[Offline]:
    """Both servers, running until the block ends (each is stopped even if the other fails)."""
    vllm_key = "offline-" + secrets.token_urlsafe(24)
    runpod_key = "offline-" + secrets.token_urlsafe(24)
    with ExitStack() as stack:
        vllm = stack.enter_context(
            run_standin(StandinConfig.deployed(api_key=vllm_key), port=vllm_port)
        )
        runpod = RunpodEmulator(
            api_key=runpod_key,
            clock=RealClock(),
            provision_s=phase_s,
            start_s=phase_s,
            serve_after_s=phase_s,
            port=runpod_port,
        )
        stack.enter_context(runpod)
        known = runpod.add_pod(f"llm-endpoint-offline-0-{secrets.token_hex(4)}", age_s=POD_AGE_S)
        leaked = runpod.add_pod(f"llm-endpoint-offline-1-{secrets.token_hex(4)}", age_s=POD_AGE_S)
        yield Offline(vllm, vllm_key, runpod, known, leaked)


def commands(o: Offline) -> list[tuple[str, str]]:
    """(what it shows, the command) pairs, each runnable as printed from the project root."""
    smoke = f"VLLM_API_KEY={o.vllm_key} uv run python -m scripts.smoke_test"
    runpod_env = " ".join(f"{k}={v}" for k, v in sorted(o.runpod.env().items()))
    leaks = f"{runpod_env} RUNPOD_API_KEY={o.runpod.api_key} uv run python -m scripts.runpod_pods"
    return [
        ("the smoke test passes", f"{smoke} {o.vllm.url} --model {DEFAULT_MODEL}"),
        ("the same, as JSON", f"{smoke} {o.vllm.url} --json"),
        ("the leak finder flags the pod no stack knows", f"{leaks} --known-ids {o.known_pod}"),
        ("... and deletes it", f"{leaks} --known-ids {o.known_pod} --delete-unknown --yes"),
    ]


def describe(o: Offline, out: TextIO) -> None:
    print("llm-endpoint offline: stand-ins on loopback, no cloud account needed.", file=out)
    print(f"  vLLM stand-in (a deployed endpoint, model {DEFAULT_MODEL}): {o.vllm.url}", file=out)
    print(f"  RunPod API emulator: {o.runpod.base_url}", file=out)
    print(f"    pod {o.known_pod}: known to a stack; pod {o.leaked_pod}: left behind", file=out)
    print("Try, from the project root, in another shell:", file=out)
    for what, command in commands(o):
        print(f"  # {what}\n  {command}", file=out)
    print(READY, file=out, flush=True)


def main(argv: Sequence[str] | None = None, out: TextIO = sys.stdout) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.offline", description=__doc__)
    parser.add_argument("--vllm-port", type=int, default=0, help="default: any free port")
    parser.add_argument("--runpod-port", type=int, default=0, help="default: any free port")
    parser.add_argument(
        "--seconds-per-phase",
        type=float,
        default=5.0,
        help="how long a new pod in the emulator provisions, starts and loads (each)",
    )
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # not a line per emulator request
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        with started(args.vllm_port, args.runpod_port, args.seconds_per_phase) as offline:
            describe(offline, out)
            while not stop.wait(0.5):
                pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    print("Stopped both.", file=out, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
