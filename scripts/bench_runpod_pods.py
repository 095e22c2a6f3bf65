"""Benchmark: how much longer 16 pods take to become ready than 1, through Pulumi's real
dynamic-provider host and the local RunPod emulator (real time; nothing leaves loopback).

    python -m scripts.bench_runpod_pods [--pods 16] [--serve-after 8] [--poll 1]

Each pod serves `--serve-after` seconds after it is created; the provider polls every `--poll`
seconds. It measures one create, then `--pods` creates sent together (as the engine sends them),
in the same host process, and prints time(N)/time(1). Target: at most 1.25. Without
infra/runpod/host_threads.py the host's 4 threads make it about N/4.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

from tests.support import parallel_pods


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m scripts.bench_runpod_pods")
    parser.add_argument("--pods", type=int, default=16)
    parser.add_argument("--serve-after", type=float, default=8.0)
    parser.add_argument("--poll", type=float, default=1.0)
    args = parser.parse_args(argv)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # the emulator's request log
    with (
        tempfile.TemporaryDirectory() as tmp,
        parallel_pods.emulator(args.serve_after) as emu,
        parallel_pods.start_host(emu, Path(tmp)) as host,
    ):
        parallel_pods.configure(host)
        one = parallel_pods.create_at_once(host, emu, 1, args.poll)
        many = parallel_pods.create_at_once(host, emu, args.pods, args.poll)
        left = emu.live_pods()
    ratio = many.seconds / one.seconds
    print(f"time(1) = {one.seconds:.2f} s")
    print(f"time({args.pods}) = {many.seconds:.2f} s")
    print(f"time({args.pods})/time(1) = {ratio:.2f} (target <= 1.25)")
    if left:
        print(f"pods left running in the emulator: {left}", file=sys.stderr)
        return 2
    return 0 if ratio <= 1.25 else 1


if __name__ == "__main__":
    sys.exit(main())
