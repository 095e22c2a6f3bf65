"""16 pods (the config's maximum) become ready together through the real dynamic-provider host,
whose gRPC server has only 4 worker threads: every pod is posted before the first one can be
ready, so none waits for a thread (infra/runpod/host_threads.py). The timing ratio itself is
measured by scripts/bench_runpod_pods.py, not asserted here."""

from __future__ import annotations

from pathlib import Path

from infra.runpod.inputs import MAX_PODS
from tests.support import parallel_pods

SERVE_AFTER_S = 4.0  # each pod serves this long after it was created


def test_sixteen_creates_do_not_queue_behind_four_threads(tmp_path: Path):
    with (
        parallel_pods.emulator(SERVE_AFTER_S) as emu,
        parallel_pods.start_host(emu, tmp_path) as host,
    ):
        parallel_pods.configure(host)
        run = parallel_pods.create_at_once(host, emu, MAX_PODS, poll_s=0.5)
        assert len(run.post_times) == MAX_PODS
        # With 4 threads, pods 5-16 would be posted only after the first four were ready
        # (SERVE_AFTER_S later). All 16 were posted before any could serve.
        spread = run.post_times[-1] - run.post_times[0]
        assert spread < SERVE_AFTER_S, f"posts spread over {spread:.1f} s: queued behind threads"
        assert run.seconds < 2 * SERVE_AFTER_S + 2, run.seconds
        assert emu.live_pods() == []


def test_the_benchmark_script_prints_the_ratio(capsys):
    from scripts import bench_runpod_pods

    code = bench_runpod_pods.main(["--pods", "2", "--serve-after", "1", "--poll", "0.2"])
    out = capsys.readouterr().out
    assert "time(1) = " in out and "time(2)/time(1) = " in out
    assert code in (0, 1)  # the ratio is reported, not judged, at this tiny size
