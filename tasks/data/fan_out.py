"""Independent pieces of one stage's work (near dedup's signature shards and its bands) as Ray
tasks, when the stage itself runs on Ray (the `ray` task runner puts each Prefect task in a
Ray worker): the pieces then spread over the cluster's nodes instead of one worker's CPU.

Anywhere else (threads, dask, a plain process) there is no fan-out and the stage does the
work itself, streaming, as before. The pieces read and write files under the stage's
temporary folder, so every node must see the workspace at the same path (the ray runner
asks that already); what goes through Ray's object store is small (row counts, the rows of a
band that share a bucket).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("mlora.fan_out")

# Seconds between progress lines while the pieces run.
PROGRESS_SECONDS = 10.0


class RayFanOut:
    """Runs fn(*args) for each args as a Ray task (one CPU each) on the connected cluster."""

    def map(self, fn: Callable[..., Any], arguments: list[tuple], what: str) -> list[Any]:
        """The results in the order of `arguments`; a line of progress (done, rate, ETA) every
        PROGRESS_SECONDS and one at the end naming how many nodes ran the pieces."""
        import ray

        remote = ray.remote(num_cpus=1)(_on_node).options(name=what)
        refs = [remote.remote(fn, *args) for args in arguments]
        t0 = last = time.perf_counter()
        pending = list(refs)
        while pending:
            _, pending = ray.wait(pending, num_returns=len(pending), timeout=PROGRESS_SECONDS)
            now = time.perf_counter()
            done = len(refs) - len(pending)
            if pending and now - last >= PROGRESS_SECONDS:
                last, rate = now, done / (now - t0)
                eta = len(pending) / rate if rate else float("nan")
                log.info("%s: %d/%d Ray tasks done, ETA %.0fs", what, done, len(refs), eta)
        results = ray.get(refs)  # raises the first piece's error, with its traceback
        nodes = {node for _, node in results}
        log.info(
            "%s: %d Ray task(s) on %d node(s) in %.1fs",
            what,
            len(refs),
            len(nodes),
            time.perf_counter() - t0,
        )
        return [value for value, _ in results]


def _on_node(fn: Callable[..., Any], *args: Any) -> tuple[Any, str]:
    """fn(*args) and the id of the node that ran it (for the summary line)."""
    import ray

    return fn(*args), ray.get_runtime_context().get_node_id()


def cluster_fan_out() -> RayFanOut | None:
    """A RayFanOut when this process is connected to a Ray cluster (a stage run by the ray
    task runner, or a caller that ran ray.init), else None: the work stays here."""
    # Never imported here: a process without Ray pays nothing. Under the dask runner another
    # thread may be importing ray just then (a module half made, no is_initialized yet).
    is_initialized = getattr(sys.modules.get("ray"), "is_initialized", None)
    if is_initialized is None or not is_initialized():
        return None
    return RayFanOut()
