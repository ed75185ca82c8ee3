"""The shuffle through disk (tasks/data/files/gather.py) gives what `table.take` gives; slices
of long rows hold fewer rows."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from multilora_pipeline.tasks.data.files import gather, parquet_io
from multilora_pipeline.tasks.data.files.parquet_io import slice_rows, write_parquet
from multilora_pipeline.tasks.data.files.records import ParquetRecords


@pytest.fixture
def records(tmp_path, monkeypatch):
    table = pa.table({"n": np.arange(1_000), "text": [f"row {i}" for i in range(1_000)]})
    write_parquet(table, tmp_path / "records.parquet")
    monkeypatch.setattr(parquet_io, "SLICE_ROWS", 64)  # files are read 64 rows at a time
    return table, tmp_path / "records.parquet"


def test_parts_hold_the_rows_at_the_positions_in_their_order(records, tmp_path):
    table, path = records
    rng = np.random.default_rng(0)
    positions = np.concatenate([rng.permutation(1_000), rng.integers(0, 1_000, 300)])  # repeats
    parts = list(gather.gathered_parts([path], positions, 250, tmp_path / "spill"))
    assert [p.num_rows for p in parts] == [250] * 5 + [50]
    assert pa.concat_tables(parts).equals(table.take(pa.array(positions)))
    assert not (tmp_path / "spill").exists()  # every spill file read back and removed


def test_no_positions_give_one_empty_part_of_the_files_schema(records, tmp_path):
    table, path = records
    [part] = gather.gathered_parts([path], np.zeros(0, np.int64), 10, tmp_path / "spill")
    assert part.num_rows == 0 and part.schema.equals(table.schema)


def test_several_files_read_as_one_and_only_the_named_columns(records, tmp_path):
    table, path = records
    write_parquet(table.slice(0, 300), tmp_path / "first.parquet")
    write_parquet(table.slice(300), tmp_path / "second.parquet")
    positions = np.array([999, 0, 300, 299, 301, 0])
    files = [tmp_path / "first.parquet", tmp_path / "second.parquet"]
    [part] = gather.gathered_parts(files, positions, 10, tmp_path / "spill", columns=["text"])
    assert part.column_names == ["text"]
    assert part.column("text").to_pylist() == [f"row {i}" for i in positions]


def test_long_rows_are_read_fewer_rows_a_slice_and_give_the_same_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(parquet_io, "SLICE_BYTES", 2 << 20)
    texts = [f"{i} " + "long text " * 10 for i in range(50_000)]  # ~107 bytes a row
    table = pa.table({"n": np.arange(50_000), "text": texts})
    write_parquet(table, tmp_path / "long.parquet")
    paths = [tmp_path / "long.parquet"]
    rows = slice_rows(paths, ["text"])
    assert 15_000 < rows < 25_000  # 2 MiB of text a slice, not SLICE_ROWS rows
    assert slice_rows(paths, ["n"]) == parquet_io.SLICE_ROWS  # 8 bytes a row: short
    records = ParquetRecords(paths, spill_dir=tmp_path / "spill")
    parts = list(records.slices(["text"]))
    assert {p.num_rows for p in parts[:-1]} == {rows}
    assert pa.concat_tables(parts).column("text").to_pylist() == texts
    positions = np.random.default_rng(1).permutation(50_000)
    taken = list(records.taken(positions, ["n", "text"]))
    assert {p.num_rows for p in taken[:-1]} == {slice_rows(paths, ["n", "text"])}
    assert pa.concat_tables(taken).equals(table.take(pa.array(positions)))
