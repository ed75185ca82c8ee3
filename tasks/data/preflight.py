"""Check the spec's local data files before Prefect starts, so a bad row is said in seconds.

`mlora run` and `mlora data` spend ~20 s starting Prefect's temporary server before the
first stage; a malformed file used to be reported only after that. `check_local_data`
runs the fetch stage itself on every local file (the snapshot it writes is content-keyed:
the flow's fetch then reuses it, so no file is read twice) and the normalise stage's
template over the snapshot without writing anything, so every error is the stage's own,
with its file, row and field. Hub datasets and URLs are left to the flow: they need the
network, and the flow retries downloads.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

from multilora_pipeline.tasks.data.fetch import fetch
from multilora_pipeline.tasks.data.normalise import normalise_batches

if TYPE_CHECKING:
    from multilora_pipeline.data_specs.schema import DataSpec
    from multilora_pipeline.tasks.workspace import Workspace

log = logging.getLogger("mlora.preflight")


def _local_items(spec: DataSpec) -> list:
    """Sources, suites and suites' dev splits that read a local file."""
    items = [*spec.sources]
    for suite in spec.eval_suites:
        items += [suite, *filter(None, [suite.dev_suite()])]
    return [item for item in items if item.path is not None]


def check_local_data(spec: DataSpec, spec_dir: Path, ws: Workspace) -> float:
    """Fetch and render every local file of `spec`; raises the stage's DataError on the
    first bad one. Returns the seconds it took."""
    start = time.perf_counter()
    for item in _local_items(spec):
        snapshot = fetch(item, item.name, Path(spec_dir), ws)
        for _ in normalise_batches(
            snapshot,
            source=item.name,
            template=item.template,
            category=item.category,
            fields=getattr(item, "fields", None),
            explode=item.explode,
            end_marker=item.end_marker,
            skipped=[] if item.bad_rows == "skip" else None,  # the stage counts them later
        ):
            pass  # rendering is the check; the flow's normalise stage writes the records
    seconds = time.perf_counter() - start
    log.info("checked the spec's local data files in %.1fs", seconds)
    return seconds
