"""Deterministic Parquet writing for stage outputs: whole tables, or batch by batch so a stage
never holds two copies of a big table; and reading an output back a slice at a time.

Same rows in, same bytes out: fixed row-group size, zstd, no timestamps in the metadata. Every
write goes to a temp file next to the target and is renamed into place.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from multilora_pipeline.models.content import atomic_file

# Fixed row-group size so identical tables always produce identical bytes.
ROW_GROUP_ROWS = 10_000
# Rows per slice when a big table is filtered or taken piece by piece: a multiple of
# ROW_GROUP_ROWS, small enough that one slice's copy is a few hundred MB at most.
SLICE_ROWS = 200_000
# ... and at most this much uncompressed data of the columns read: a slice, its copies and
# what a stage derives from it (a gather's part read back, joined texts, shingles) cost a
# few times its size, so 200k rows of 4 KB documents (800 MB a copy) must be fewer rows.
SLICE_BYTES = 32 << 20
WRITE_OPTIONS = dict(compression="zstd", use_dictionary=True, write_statistics=True)


@contextmanager
def parquet_sink(path: Path, schema: pa.Schema) -> Iterator[pq.ParquetWriter]:
    """A Parquet writer on a temp file that becomes `path` only if the block succeeds."""
    with atomic_file(path) as tmp, pq.ParquetWriter(tmp, schema, **WRITE_OPTIONS) as writer:
        yield writer


def write_batches(tables: Iterable[pa.Table], path: Path, schema: pa.Schema) -> int:
    """Write tables one after another into one Parquet file; returns the row count."""
    rows = 0
    with parquet_sink(path, schema) as writer:
        for table in tables:
            writer.write_table(table, row_group_size=ROW_GROUP_ROWS)
            rows += table.num_rows
    return rows


def write_parquet(table: pa.Table, path: Path) -> None:
    """Write a whole table deterministically (temp file + rename)."""
    write_batches([table], path, table.schema)


def filtered_slices(parts: Iterable[pa.Table], keep: np.ndarray) -> Iterator[pa.Table]:
    """The rows of `parts` (consecutive pieces of one table) where `keep` is true, piece by
    piece (no full copy)."""
    start = 0
    for part in parts:
        yield part.filter(pa.array(keep[start : start + part.num_rows]))
        start += part.num_rows


def taken_slices(table: pa.Table, indices: np.ndarray) -> Iterator[pa.Table]:
    """table.take(indices), one SLICE_ROWS piece at a time (no full copy)."""
    for start in range(0, max(len(indices), 1), SLICE_ROWS):
        yield table.take(pa.array(indices[start : start + SLICE_ROWS], type=pa.int64()))


def slice_rows(paths: Iterable[str | Path], columns: list[str] | None = None) -> int:
    """Rows per slice for reading `columns` of these files: SLICE_ROWS, or fewer where their
    rows are long, so a slice holds about SLICE_BYTES of uncompressed data (from the files'
    metadata; at least ROW_GROUP_ROWS)."""
    data_bytes = rows = 0
    for path in paths:
        meta = pq.ParquetFile(path).metadata
        rows += meta.num_rows
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            for c in range(group.num_columns):
                chunk = group.column(c)
                if columns is None or chunk.path_in_schema.split(".")[0] in columns:
                    data_bytes += chunk.total_uncompressed_size
    if rows == 0 or data_bytes == 0:
        return SLICE_ROWS
    fitting = int(SLICE_BYTES // (data_bytes / rows))
    return min(SLICE_ROWS, max(ROW_GROUP_ROWS, fitting))


def parquet_slices(
    paths: Iterable[str | Path], columns: list[str] | None = None, rows: int = SLICE_ROWS
) -> Iterator[pa.Table]:
    """The files one after another as tables of at most `rows` rows (the named columns):
    how a stage reads an output that it must not hold whole. pre_buffer is off: it would keep
    every row group read so far cached until the file's end."""
    for path in paths:
        with pq.ParquetFile(path, pre_buffer=False) as file:
            for batch in file.iter_batches(batch_size=rows, columns=columns):
                yield pa.Table.from_batches([batch])
