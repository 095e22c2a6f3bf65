"""Many pods at the speed of one in Pulumi's dynamic-provider host.

The host (`python -m pulumi.dynamic`) serves the engine's calls from a gRPC server on a
`ThreadPoolExecutor(max_workers=4)`, and a create holds its thread for the whole readiness wait
(docs/facts/pulumi.md ("Dynamic providers")): 16 pods became ready in waves of 4, four times as
long as one. The host offers no setting for it. So the first create or update in a host process
widens the pool that runs it: it finds the executor whose worker is the calling thread, raises
its limit, and starts a worker for every call already queued behind the four.

This reaches into two internals (the executor's `_max_workers`, `_threads`, `_work_queue` and
`_adjust_thread_count`, stable in CPython's concurrent.futures since 3.8), chosen over the
alternatives that change what a resource means (one resource for all pods, or a create that
returns before the pod serves). It fails safe: if the executor is not found or the internals
differ, nothing changes and pods are ready in waves, as before. Outside a host (tests calling the
provider directly, the Pulumi mocks) the calling thread is no pool worker, and nothing happens.
`tests/test_runpod_host_parallel.py` proves it through the real host.
"""

from __future__ import annotations

import gc
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

# 16 pods (the config's maximum) waiting at once, plus room for the engine's other calls.
HOST_WORKERS = 24

_done = threading.Event()
_lock = threading.Lock()


def _pool_of_this_thread() -> ThreadPoolExecutor | None:
    me = threading.current_thread()
    # The host's pool names its workers this way (no thread_name_prefix); any other thread
    # (a test, the mocks' runtime) is not a pool worker: skip the heap scan.
    if not me.name.startswith("ThreadPoolExecutor-"):
        return None
    for obj in gc.get_objects():
        try:
            if isinstance(obj, ThreadPoolExecutor) and me in getattr(obj, "_threads", ()):
                return obj
        except ReferenceError:  # a dead weak proxy among the heap's objects
            continue
    return None


def widen_host_pool(workers: int = HOST_WORKERS) -> bool:
    """Once per process: let the pool running this call run `workers` calls at once. True if
    a pool was widened (now or before)."""
    if _done.is_set():
        return True
    with _lock:
        if _done.is_set():
            return True
        try:
            pool = _pool_of_this_thread()
            if pool is None:
                return False
            pool._max_workers = max(pool._max_workers, workers)
            for _ in range(pool._work_queue.qsize()):
                pool._adjust_thread_count()  # a worker for each call queued behind the four
        except (AttributeError, TypeError) as err:  # another Python's internals: stay as is
            log.info("could not widen the provider host's thread pool (%s)", err)
            return False
        _done.set()
        log.info("provider host thread pool widened to %d workers", workers)
        return True
