"""The DuckDB catalog: transactional batches, lookups, lineage, and two processes at once."""

from __future__ import annotations

import logging
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pyarrow as pa
import pytest

from multilora_pipeline.data_specs.errors import PipelineError
from multilora_pipeline.tasks.catalog import Catalog, CatalogBatch

REPO = Path(__file__).resolve().parents[2]


def drops(n: int) -> pa.Table:
    return pa.table(
        {
            "id": [f"r{i}" for i in range(n)],
            "source": ["a"] * n,
            "row": list(range(n)),
            "duplicate_of": ["k"] * n,
            "duplicate_source": ["b"] * n,
            "kind": ["exact"] * n,
            "similarity": [1.0] * n,
        }
    )


def batch(output_id: str = "o1") -> CatalogBatch:
    b = CatalogBatch()
    b.add("snapshots", name="a", content_hash="h1", origin="file:/x", rows=10, path="/p")
    b.add(
        "stage_outputs",
        stage="dedup",
        output_id=output_id,
        input_ids=["n1", "n2"],
        params={"threshold": 0.8},
        path="/out",
        rows=8,
        content_hash="c1",
    )
    b.add_drops("dedup_drops", output_id, drops(2))
    return b


def test_nothing_is_created_by_reads(tmp_path):
    catalog = Catalog(tmp_path / "catalog.duckdb")
    assert catalog.find_stage_output("dedup", "x") is None
    assert catalog.counts()["stage_outputs"] == 0
    assert not catalog.path.exists()


def test_commit_is_idempotent_and_lookups_work(tmp_path):
    catalog = Catalog(tmp_path / "catalog.duckdb")
    catalog.commit(batch())
    catalog.commit(batch())  # a rerun adds nothing twice
    counts = catalog.counts()
    assert counts["schema_version"] == 1
    assert counts["snapshots"] == 1 and counts["stage_outputs"] == 1 and counts["dedup_drops"] == 2
    row = catalog.find_stage_output("dedup", "o1")
    assert row["rows"] == 8 and row["input_ids"] == '["n1", "n2"]'
    assert catalog.find_stage_output("dedup", "other") is None


def test_a_failed_transaction_leaves_no_row(tmp_path):
    catalog = Catalog(tmp_path / "catalog.duckdb")
    bad = batch()
    bad.add(
        "stage_outputs",
        stage="mix",
        output_id="m",
        input_ids=[],
        params={},
        path="/m",
        rows="not a number",
        content_hash="c",
    )
    with pytest.raises(Exception):  # noqa: B017 - DuckDB's conversion error
        catalog.commit(bad)
    assert all(n == 0 for t, n in catalog.counts().items() if t != "schema_version")


def test_record_run_keeps_lineage_and_fills_registry_fields(tmp_path):
    catalog = Catalog(tmp_path / "catalog.duckdb")
    catalog.record_run(
        spec_hash="s", mixture_id="m", arm="lora", mlflow_run_id="r1", parent_run_id="p"
    )
    catalog.record_run(
        spec_hash="s",
        mixture_id="m",
        arm="lora",
        mlflow_run_id="r1",
        registered_model="mlora-demo",
        model_version=2,
    )
    (run,) = catalog.query("SELECT * FROM runs")
    assert (run["arm"], run["parent_run_id"], run["registered_model"], run["model_version"]) == (
        "lora",
        "p",
        "mlora-demo",
        "2",
    )


WRITER = textwrap.dedent("""
    import sys
    from multilora_pipeline.tasks.catalog import Catalog, CatalogBatch
    catalog = Catalog({path!r}, timeout_s=60)
    for i in range(15):
        b = CatalogBatch()
        b.add("stage_outputs", stage="w", output_id=f"{{sys.argv[1]}}-{{i}}", input_ids=[],
              params={{}}, path="/p", rows=i, content_hash="c")
        catalog.commit(b)
        catalog.find_stage_output("w", f"{{sys.argv[1]}}-{{i}}")
    print("done")
""")


@pytest.mark.slow  # two processes
def test_two_processes_writing_at_once_both_finish(tmp_path):
    path = tmp_path / "catalog.duckdb"
    script = tmp_path / "writer.py"
    script.write_text(WRITER.format(path=str(path)))
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name in ("p1", "p2")
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    rows = Catalog(path).query("SELECT output_id FROM stage_outputs")
    assert len(rows) == 30


HOLDER = textwrap.dedent("""
    import sys, time, duckdb
    con = duckdb.connect({path!r})
    con.execute("CREATE TABLE IF NOT EXISTS hold (x INTEGER)")
    print("holding", flush=True)
    time.sleep(float(sys.argv[1]))
    con.close()
""")


def _hold(tmp_path, seconds: float) -> subprocess.Popen:
    script = tmp_path / "holder.py"
    script.write_text(HOLDER.format(path=str(tmp_path / "catalog.duckdb")))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "holding"
    return proc


@pytest.mark.slow  # waits for a lock
def test_a_locked_catalog_is_waited_for_with_a_clear_message(tmp_path, caplog):
    holder = _hold(tmp_path, 1.5)
    with caplog.at_level(logging.WARNING, logger="mlora.catalog"):
        Catalog(tmp_path / "catalog.duckdb", timeout_s=30).commit(batch())
    holder.wait(timeout=30)
    assert "catalog locked by another process, retrying in" in caplog.text
    assert Catalog(tmp_path / "catalog.duckdb").counts()["stage_outputs"] == 1


def test_a_catalog_still_being_created_by_another_process_is_waited_for(tmp_path):
    # For a moment after another process creates it, the file exists without DuckDB's header.
    path = tmp_path / "catalog.duckdb"
    path.touch()

    def finish_creating():
        time.sleep(0.5)
        path.unlink()
        Catalog(path).commit(batch())

    creator = threading.Thread(target=finish_creating)
    creator.start()
    try:
        assert Catalog(path, timeout_s=30).counts()["stage_outputs"] == 1
    finally:
        creator.join()


def test_a_damaged_catalog_fails_at_once_and_says_what_to_do(tmp_path, caplog):
    path = tmp_path / "catalog.duckdb"
    path.write_bytes(b"not a database" * 2000)  # header-sized: not one being created
    with caplog.at_level(logging.WARNING, logger="mlora.catalog"):
        with pytest.raises(PipelineError, match="cannot open the catalog.*move it aside"):
            Catalog(path, timeout_s=30).counts()
    assert "retrying" not in caplog.text  # failed at once, no waiting out the timeout


def test_a_half_truncated_catalog_gets_the_same_advice(tmp_path):
    path = tmp_path / "catalog.duckdb"
    catalog = Catalog(path)
    catalog.record_run(spec_hash="s", mixture_id="m", arm="a", mlflow_run_id="r")
    with path.open("r+b") as handle:  # the header survives: it opens, then fails to read
        handle.truncate(path.stat().st_size * 3 // 10)
    with pytest.raises(PipelineError, match="the catalog is damaged.*move it aside"):
        Catalog(path).record_run(spec_hash="s", mixture_id="m", arm="b", mlflow_run_id="q")


def test_a_catalog_locked_too_long_fails_clearly(tmp_path):
    holder = _hold(tmp_path, 5)
    try:
        with pytest.raises(PipelineError, match="catalog locked by another process"):
            Catalog(tmp_path / "catalog.duckdb", timeout_s=0.5).commit(batch())
    finally:
        holder.kill()
        holder.wait()


def test_a_version_1_catalog_is_migrated_and_a_newer_one_refused(tmp_path):
    import duckdb

    path = tmp_path / "catalog.duckdb"
    con = duckdb.connect(str(path))  # the version 1 layout of the two tables involved
    con.execute("CREATE TABLE schema_version (version INTEGER PRIMARY KEY, applied_at TIMESTAMP)")
    con.execute("INSERT INTO schema_version VALUES (1, now())")
    con.execute(
        "CREATE TABLE dedup_drops (output_id VARCHAR, id VARCHAR, source VARCHAR, row BIGINT, "
        "duplicate_of VARCHAR, duplicate_source VARCHAR, kind VARCHAR, similarity DOUBLE)"
    )
    con.close()
    catalog = Catalog(path)
    b = CatalogBatch()
    b.add_drops("dedup_drops", "o1", drops(2).append_column("duplicate_row", pa.array([7, 9])))
    catalog.commit(b)
    rows = catalog.query("SELECT duplicate_row FROM dedup_drops ORDER BY duplicate_row")
    assert [r["duplicate_row"] for r in rows] == [7, 9]
    versions = catalog.query("SELECT version FROM schema_version ORDER BY version")
    assert [r["version"] for r in versions] == [1, 4]  # migrated through 2 and 3 to this code's 4
    columns = {r["column_name"] for r in catalog.query("DESCRIBE decontamination_drops")}
    assert {"eval_row", "evidence", "file", "eval_file"} <= columns
    columns = {r["column_name"] for r in catalog.query("DESCRIBE dedup_drops")}
    assert {"file", "duplicate_file"} <= columns

    con = duckdb.connect(str(path))
    con.execute("INSERT INTO schema_version VALUES (99, now())")
    con.close()
    with pytest.raises(PipelineError, match="schema version 99 is newer"):
        catalog.commit(batch())
