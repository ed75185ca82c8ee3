"""Content-addressed stage outputs: ids, publishing, and looking up what a run can reuse.

Every data stage output is a folder, workspace.stage_dir(stage, id), whose id hashes the
stage, its input ids, its parameters and STAGE_CODE_VERSION (tasks/identity.py, with every
other key of the pipeline). It is written to a temp folder
and renamed into place (`publish`). A stage whose output the catalog knows and whose files
exist is skipped (`reusable` logs "reusing <stage> output <id>").
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from multilora_pipeline.models.content import atomic_folder, file_sha256
from multilora_pipeline.tasks.catalog import Catalog
from multilora_pipeline.tasks.identity import stage_id
from multilora_pipeline.tasks.workspace import Workspace

RECORDS, KEPT, DROPS = "records.parquet", "kept.parquet", "drops.parquet"


@dataclass
class StageOutput:
    """One stage output: small, picklable, what tasks pass to each other."""

    stage: str
    output_id: str
    input_ids: list[str]
    params: dict
    path: str
    rows: int
    content_hash: str
    reused: bool
    extra: dict = field(default_factory=dict)

    def catalog_row(self) -> dict:
        """The output's row in the catalog's stage_outputs table."""
        return {
            "stage": self.stage,
            "output_id": self.output_id,
            "input_ids": self.input_ids,
            "params": self.params,
            "path": self.path,
            "rows": self.rows,
            "content_hash": self.content_hash,
        }


def stage_logger() -> logging.Logger | logging.LoggerAdapter:
    """The Prefect run logger inside a flow or task run (so the line lands in that run's
    logs), else a plain module logger (plain-function use, tests, benchmarks)."""
    try:
        from prefect import get_run_logger  # deferred: plain use needs no Prefect import

        return get_run_logger()
    except Exception:  # called outside a flow or task run
        return logging.getLogger("mlora.stages")


def known_outputs(ws: Workspace) -> dict[str, dict]:
    """What the catalog already holds, read once: "stage/id" -> stage output row, plus
    "snapshot/name/hash" and "source/name/spec_hash" keys (a DuckDB connection costs
    ~25 ms: one per lookup or per insert would dominate a fully reused run)."""
    rows = Catalog(ws.catalog_path).query_many(
        {
            "outputs": ("SELECT stage, output_id, path, rows, content_hash FROM stage_outputs", ()),
            "snapshots": ("SELECT name, content_hash FROM snapshots", ()),
            "sources": ("SELECT name, spec_hash FROM sources", ()),
        }
    )
    known = {f"{r['stage']}/{r['output_id']}": r for r in rows["outputs"]}
    for r in rows["snapshots"]:
        known[f"snapshot/{r['name']}/{r['content_hash']}"] = r
    for r in rows["sources"]:
        known[f"source/{r['name']}/{r['spec_hash']}"] = r
    return known


def reusable(
    ws: Workspace, stage: str, oid: str, files: tuple[str, ...], known: dict[str, dict] | None
) -> dict | None:
    """The catalog row of a finished output whose files are all still there.

    `known` is `known_outputs` read once per run (None: ask the catalog)."""
    folder = ws.stage_dir(stage, oid)
    row = None
    if all((folder / f).exists() for f in files):
        if known is None:
            row = Catalog(ws.catalog_path).find_stage_output(stage, oid)
        else:
            row = known.get(f"{stage}/{oid}")
    if row:
        stage_logger().info("reusing %s output %s", stage, oid)
    return row


def publish(ws: Workspace, stage: str, oid: str, write: Callable[[Path], None]) -> Path:
    """Run `write(tmp_folder)`, then rename the folder into place (atomic_folder: an
    existing folder of the same id holds the same data, whole, and is kept)."""
    final = ws.stage_dir(stage, oid)
    with atomic_folder(final) as tmp:
        write(tmp)
    return final


def produce(
    ws: Workspace,
    stage: str,
    inputs: list[str],
    params: dict,
    files: tuple[str, ...],
    write: Callable[[Path], int],
    known: dict[str, dict] | None,
) -> StageOutput:
    """Every data stage's one skeleton: the output id from the inputs and parameters, the
    earlier output with that id if it is whole, else `write(tmp_folder)` (returns the row
    count) published atomically. `files[0]` is the output's main file (its path and hash
    go in the catalog); all of `files` must exist for the output to be reused."""
    oid = stage_id(stage, inputs, params)
    row = reusable(ws, stage, oid, files, known)
    if row:
        return reused_output(stage, oid, inputs, params, row, ws.stage_dir(stage, oid) / files[0])
    written = {}
    folder = publish(ws, stage, oid, lambda tmp: written.setdefault("rows", write(tmp)))
    main = folder / files[0]
    return StageOutput(
        stage, oid, inputs, params, str(main), written["rows"], file_sha256(main), False
    )


def reused_output(
    stage: str,
    oid: str,
    inputs: list[str],
    params: dict,
    row: dict,
    path: Path,
    extra: dict | None = None,
) -> StageOutput:
    """The StageOutput of an output found by `reusable` (its catalog `row`), at `path` in
    this workspace: never the path the catalog recorded, which names wherever the workspace
    was when the output was made (a moved or copied workspace reads its own files)."""
    return StageOutput(
        stage, oid, inputs, params, str(path), row["rows"], row["content_hash"], True, extra or {}
    )
