"""The workspace's two stores, checked before any work: the DuckDB catalog and MLflow's
SQLite file. A damaged or lost store is one `error:` line in about a second, not a failure
after the Prefect server has started and the data stages have run.

MLflow's store is checked here only when it is the workspace's own file; a tracking server
guards its own.
"""

from __future__ import annotations

from pathlib import Path

from multilora_pipeline.data_specs.errors import RegistryError
from multilora_pipeline.tasks.catalog import Catalog
from multilora_pipeline.tasks.workspace import Workspace

SQLITE_HEADER = b"SQLite format 3\x00"


def check_stores(workspace: Workspace, *, tracking: bool = True) -> None:
    """Refuse a damaged catalog, and (with `tracking`) a damaged MLflow store or a missing
    one while the catalog records runs."""
    catalog = Catalog(workspace.catalog_path)
    catalog.check_file()
    if tracking:
        known_runs = catalog.counts()["runs"] if workspace.catalog_path.exists() else 0
        check_tracking_store(workspace, known_runs)


def check_tracking_store(workspace: Workspace, known_runs: int = 0) -> None:
    """Refuse a damaged workspace store, and a missing one when the catalog knows runs.

    MLflow recreates a missing or zero-byte SQLite file without a word, and the registry
    history (versions, aliases) would be gone while the catalog still points at its runs.
    """
    if workspace.tracking_server:
        return  # the server guards its own store
    db = workspace.mlflow_db
    size = db.stat().st_size if db.exists() else 0
    if size:
        problem = _sqlite_problem(db, size)
        if problem:
            raise RegistryError(
                f"the MLflow store is {problem}",
                where=str(db),
                fix="move it aside and restore it from a backup; without one, start a new "
                "workspace (--workspace)",
            )
        return
    if known_runs:
        state = "empty" if db.exists() else "missing"
        raise RegistryError(
            f"the MLflow store is {state}, but the workspace catalog records {known_runs} "
            "MLflow run(s) and their versions: a new store would lose them silently",
            where=str(db),
            fix="restore mlflow.db from a backup, or start a new workspace (--workspace)",
        )


def _sqlite_problem(db: Path, size: int) -> str | None:
    """What is wrong with an SQLite file, from its 100-byte header alone: not SQLite, or
    shorter than the pages the header declares (truncated)."""
    with db.open("rb") as handle:
        header = handle.read(100)
    if not header.startswith(SQLITE_HEADER):
        return "not an SQLite database (damaged or overwritten)"
    if len(header) < 100:
        return f"truncated ({size} bytes, not even a header)"
    page_size = int.from_bytes(header[16:18], "big")
    page_size = 65536 if page_size == 1 else page_size  # SQLite writes 65536 as 1
    pages = int.from_bytes(header[28:32], "big")
    # The page count is valid when its "version-valid-for" number matches the change counter.
    if header[24:28] == header[92:96] and size < pages * page_size:
        return f"truncated ({size} bytes, its header declares {pages * page_size})"
    return None
