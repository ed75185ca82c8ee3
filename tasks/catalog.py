"""The DuckDB catalog: the one module that opens the catalog file.

What it records: sources, snapshots, stage outputs (with input ids, parameters, row counts and
content hashes), every dedup and decontamination drop, mixtures with their per-source members,
and the lineage from spec and mixture to MLflow runs and registered model versions.

How it behaves with several processes: a connection is open only for one read or one write
(so two processes can alternate), each write is one transaction, and a process that finds the
file locked waits and retries with backoff, logging
"catalog locked by another process, retrying in 2s", until `timeout_s` has passed.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import pyarrow as pa

from multilora_pipeline.data_specs.errors import PipelineError

log = logging.getLogger("mlora.catalog")

SCHEMA_VERSION = 4
# Changes since version 1, applied in order to an older catalog (each idempotent).
MIGRATIONS = {
    2: ["ALTER TABLE dedup_drops ADD COLUMN IF NOT EXISTS duplicate_row BIGINT"],
    3: [
        "ALTER TABLE decontamination_drops ADD COLUMN IF NOT EXISTS eval_row BIGINT",
        "ALTER TABLE decontamination_drops ADD COLUMN IF NOT EXISTS evidence VARCHAR",
    ],
    4: [  # the file of each named row, for sources and suites of several files
        *(
            f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} VARCHAR"
            for table, columns in {
                "dedup_drops": ("file", "duplicate_file"),
                "decontamination_drops": ("file", "eval_file"),
                "suite_duplicates": ("file", "duplicate_of_file"),
            }.items()
            for column in columns
        )
    ],
}

TABLES = {
    "schema_version": """
        version INTEGER PRIMARY KEY, applied_at TIMESTAMP DEFAULT now()""",
    "sources": """
        name VARCHAR, spec_hash VARCHAR, template VARCHAR, category VARCHAR,
        priority INTEGER, location VARCHAR, snapshot_hash VARCHAR,
        PRIMARY KEY (name, spec_hash)""",
    "snapshots": """
        name VARCHAR, content_hash VARCHAR, origin VARCHAR, rows BIGINT, path VARCHAR,
        created_at TIMESTAMP DEFAULT now(), PRIMARY KEY (name, content_hash)""",
    "stage_outputs": """
        stage VARCHAR, output_id VARCHAR, input_ids VARCHAR, params VARCHAR, path VARCHAR,
        rows BIGINT, content_hash VARCHAR, created_at TIMESTAMP DEFAULT now(),
        PRIMARY KEY (stage, output_id)""",
    "dedup_drops": """
        output_id VARCHAR, id VARCHAR, source VARCHAR, row BIGINT, duplicate_of VARCHAR,
        duplicate_source VARCHAR, duplicate_row BIGINT, kind VARCHAR, similarity DOUBLE,
        file VARCHAR, duplicate_file VARCHAR""",
    "decontamination_drops": """
        output_id VARCHAR, id VARCHAR, source VARCHAR, row BIGINT, suite VARCHAR,
        eval_id VARCHAR, kind VARCHAR, similarity DOUBLE, eval_row BIGINT, evidence VARCHAR,
        file VARCHAR, eval_file VARCHAR""",
    "suite_duplicates": """
        output_id VARCHAR, suite VARCHAR, row BIGINT, duplicate_of_row BIGINT,
        dropped BOOLEAN, file VARCHAR, duplicate_of_file VARCHAR""",
    "invalid_drops": """
        output_id VARCHAR, source VARCHAR, row BIGINT, file VARCHAR, field VARCHAR,
        reason VARCHAR""",
    "mixtures": """
        mixture_id VARCHAR PRIMARY KEY, spec_hash VARCHAR, seed BIGINT, strategy VARCHAR,
        unit VARCHAR, rows BIGINT, validation_rows BIGINT, path VARCHAR, manifest VARCHAR,
        created_at TIMESTAMP DEFAULT now()""",
    "mixture_members": """
        mixture_id VARCHAR, source VARCHAR, input_hash VARCHAR, requested BIGINT,
        achieved BIGINT, requested_share DOUBLE, achieved_share DOUBLE,
        PRIMARY KEY (mixture_id, source)""",
    "runs": """
        mlflow_run_id VARCHAR PRIMARY KEY, spec_hash VARCHAR, mixture_id VARCHAR, arm VARCHAR,
        parent_run_id VARCHAR, registered_model VARCHAR, model_version VARCHAR,
        created_at TIMESTAMP DEFAULT now()""",
}
# Drop tables have no natural key (identical rows share an id), so a stage output's drops are
# replaced as a whole: writing the same output twice leaves one copy.
DROP_TABLES = ("dedup_drops", "decontamination_drops", "invalid_drops", "suite_duplicates")


@dataclass
class CatalogBatch:
    """Rows gathered during a run and written in ONE transaction once every stage succeeded."""

    rows: dict[str, list[dict]] = field(default_factory=dict)
    drops: dict[str, list[tuple[str, pa.Table]]] = field(default_factory=dict)

    def add(self, table: str, **row) -> None:
        if table not in TABLES or table in DROP_TABLES:
            raise ValueError(f"unknown catalog table {table!r}")
        self.rows.setdefault(table, []).append(row)

    def add_drops(self, table: str, output_id: str, drops: pa.Table) -> None:
        if table not in DROP_TABLES:
            raise ValueError(f"{table!r} is not a drop table")
        self.drops.setdefault(table, []).append((output_id, drops))

    def extend(self, other: CatalogBatch) -> None:
        for table, rows in other.rows.items():
            self.rows.setdefault(table, []).extend(rows)
        for table, items in other.drops.items():
            self.drops.setdefault(table, []).extend(items)

    def __len__(self) -> int:
        return sum(map(len, self.rows.values())) + sum(map(len, self.drops.values()))


# A DuckDB file opens with a 4 KiB file header and two 4 KiB database headers.
DUCKDB_HEADER_BYTES = 3 * 4096
# How long a header-less catalog file counts as being created by another process.
NEW_FILE_GRACE_S = 10.0


class Catalog:
    """The pipeline's DuckDB catalog file (created with its schema on first use)."""

    def __init__(self, path: str | Path, *, timeout_s: float = 120.0):
        self.path = Path(path)
        self.timeout_s = timeout_s

    def _ensure_schema(self, con: duckdb.DuckDBPyConnection) -> None:
        """Create missing tables, migrate an older catalog, refuse a newer one."""
        for name, columns in TABLES.items():
            con.execute(f"CREATE TABLE IF NOT EXISTS {name} ({columns})")
        (found,) = con.execute("SELECT max(version) FROM schema_version").fetchall()[0]
        if found is not None and found > SCHEMA_VERSION:
            raise PipelineError(
                f"catalog schema version {found} is newer than this code's {SCHEMA_VERSION}",
                where=str(self.path),
                fix="update the pipeline code, or point MLORA_WORKSPACE at another workspace",
            )
        for version in range((found or SCHEMA_VERSION) + 1, SCHEMA_VERSION + 1):
            for statement in MIGRATIONS.get(version, []):
                con.execute(statement)
        con.execute(
            "INSERT INTO schema_version (version) VALUES (?) ON CONFLICT DO NOTHING",
            [SCHEMA_VERSION],
        )

    @contextmanager
    def _connect(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for one operation, waiting (with backoff) while another process
        holds the file lock."""
        start, delay = time.monotonic(), 0.1
        while True:
            try:
                # Always read-write: DuckDB refuses mixed read-only / read-write connections
                # to one file inside one process, and connections only live for one operation.
                con = duckdb.connect(str(self.path))
                break
            except duckdb.IOException as err:
                if "lock" not in str(err).lower() and not self._being_created(err):
                    raise PipelineError(
                        f"cannot open the catalog: {err}",
                        where=str(self.path),
                        fix="if the file is damaged, move it aside: the next run starts a new "
                        "catalog (stage outputs are recomputed once, runs stay in MLflow)",
                    ) from err
                waited = time.monotonic() - start
                if waited + delay > self.timeout_s:
                    raise PipelineError(
                        f"catalog locked by another process for {waited:.0f}s",
                        where=str(self.path),
                        fix="wait for the other pipeline run to finish (or stop it) and retry",
                    ) from err
                log.warning("catalog locked by another process, retrying in %.1fs", delay)
                time.sleep(delay)
                delay = min(delay * 2, 2.0)  # backoff, then poll every 2 s
        try:
            yield con
        except (duckdb.IOException, duckdb.InternalException, duckdb.SerializationException) as err:
            # A damaged file (truncated, overwritten) opens, then fails on the first read.
            raise self._damaged(err) from err
        finally:
            con.close()

    def _being_created(self, err: duckdb.IOException) -> bool:
        """Another process has just created the file and not yet written DuckDB's header:
        for a moment the file exists but is "not a valid DuckDB database file". A file that is
        older or already header-sized is really something else, and the error stands."""
        if "not a valid duckdb database file" not in str(err).lower():
            return False
        try:
            facts = self.path.stat()
        except FileNotFoundError:
            return True
        young = time.time() - facts.st_mtime < NEW_FILE_GRACE_S
        return young and facts.st_size < DUCKDB_HEADER_BYTES

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One write transaction: everything inside commits together or not at all.
        The file and its schema are created by the first write, never by a read."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.execute("BEGIN TRANSACTION")
            self._ensure_schema(con)
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def commit(self, batch: CatalogBatch) -> None:
        """Write every gathered row in one transaction (rows already present are kept)."""
        if not len(batch):
            return
        with self.transaction() as con:
            for table, rows in batch.rows.items():
                for row in rows:
                    cols = list(row)
                    values = [
                        json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v
                        for v in row.values()
                    ]
                    con.execute(
                        f"INSERT INTO {table} ({', '.join(cols)}) VALUES "
                        f"({', '.join('?' * len(cols))}) ON CONFLICT DO NOTHING",
                        values,
                    )
            for table, items in batch.drops.items():
                for output_id, drops in items:
                    con.execute(f"DELETE FROM {table} WHERE output_id = ?", [output_id])
                    if drops.num_rows:
                        con.register("incoming_drops", drops)
                        cols = ", ".join(drops.column_names)
                        con.execute(
                            f"INSERT INTO {table} (output_id, {cols}) "
                            f"SELECT ?, {cols} FROM incoming_drops",
                            [output_id],
                        )
                        con.unregister("incoming_drops")

    def query(self, sql: str, params: list | tuple = ()) -> list[dict]:
        """Run a read query; rows as dicts (none while nothing was ever written)."""
        return self.query_many({"q": (sql, params)})["q"]

    def query_many(self, queries: dict[str, tuple[str, list | tuple]]) -> dict[str, list[dict]]:
        """Several read queries on one connection (opening one costs ~25 ms)."""
        out: dict[str, list[dict]] = {key: [] for key in queries}
        if not self.path.exists():
            return out
        with self._connect() as con:
            for key, (sql, params) in queries.items():
                try:
                    cur = con.execute(sql, list(params))
                except duckdb.CatalogException:  # tables not created yet
                    continue
                names = [d[0] for d in cur.description]
                out[key] = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        return out

    def find_stage_output(self, stage: str, output_id: str) -> dict | None:
        """The catalog row of a stage output, or None if it was never recorded."""
        rows = self.query(
            "SELECT * FROM stage_outputs WHERE stage = ? AND output_id = ?", [stage, output_id]
        )
        return rows[0] if rows else None

    def record_run(
        self,
        *,
        spec_hash: str,
        mixture_id: str,
        arm: str,
        mlflow_run_id: str,
        parent_run_id: str | None = None,
        registered_model: str | None = None,
        model_version: str | int | None = None,
    ) -> None:
        """Lineage of one trained arm: spec and mixture -> MLflow run -> registered version.
        Calling it again for the same run fills in the registry fields."""
        with self.transaction() as con:
            con.execute(
                "INSERT INTO runs (mlflow_run_id, spec_hash, mixture_id, arm, parent_run_id, "
                "registered_model, model_version) VALUES (?, ?, ?, ?, ?, ?, ?) "
                "ON CONFLICT (mlflow_run_id) DO UPDATE SET "
                "registered_model = coalesce(excluded.registered_model, runs.registered_model), "
                "model_version = coalesce(excluded.model_version, runs.model_version)",
                [
                    mlflow_run_id,
                    spec_hash,
                    mixture_id,
                    arm,
                    parent_run_id,
                    registered_model,
                    None if model_version is None else str(model_version),
                ],
            )

    def check_file(self) -> None:
        """Refuse a damaged catalog file in a fraction of a second, before any work: DuckDB
        opens a truncated file and fails only on reading a lost block, minutes into a run.
        A file shorter than the blocks its header declares has lost its end."""
        try:
            facts = self.path.stat()
        except FileNotFoundError:
            return  # created on first use
        if time.time() - facts.st_mtime < NEW_FILE_GRACE_S and facts.st_size < DUCKDB_HEADER_BYTES:
            return  # another process is creating it
        try:
            con = duckdb.connect(str(self.path), read_only=True)
        except duckdb.IOException as err:
            if "lock" in str(err).lower():
                return  # a running pipeline holds it, and has read it whole
            raise self._damaged(err) from None
        try:
            _, _, block_size, total_blocks, *_ = con.execute("PRAGMA database_size").fetchone()
        finally:
            con.close()
        needed = DUCKDB_HEADER_BYTES + int(total_blocks) * int(block_size)
        if facts.st_size < needed:
            raise self._damaged(f"{facts.st_size} bytes, its header declares {needed}: truncated")

    def _damaged(self, why) -> PipelineError:
        return PipelineError(
            f"the catalog is damaged: {str(why).splitlines()[0][:200]}",
            where=str(self.path),
            fix="move it aside: the next run starts a new catalog (stage outputs are "
            "recomputed once, runs stay in MLflow)",
        )

    def counts(self) -> dict[str, int]:
        """Rows per table (for summaries and tests); all zero before the first write."""
        rows = self.query_many({t: (f"SELECT count(*) AS n FROM {t}", ()) for t in TABLES})
        return {t: r[0]["n"] if r else 0 for t, r in rows.items()}
