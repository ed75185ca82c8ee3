"""Canonical records as dedup reads them: a column's codes, the rows slice by slice, the rows at
some positions. Either a table in memory (tests, small inputs) or Parquet files a stage must
not hold whole (its inputs, read back a slice at a time and gathered through disk); both
answer the same questions, so dedup has one algorithm for either."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from multilora_pipeline.data_specs.record import RECORD_SCHEMA
from multilora_pipeline.tasks.data.files.gather import gathered_parts
from multilora_pipeline.tasks.data.files.parquet_io import (
    SLICE_ROWS,
    parquet_slices,
    slice_rows,
    taken_slices,
)


class TableRecords:
    """Records held in one Arrow table."""

    def __init__(self, table: pa.Table):
        self.table = table.select(RECORD_SCHEMA.names)
        self.num_rows = self.table.num_rows

    def codes(self, column: str) -> tuple[np.ndarray, list[str]]:
        """An int per row naming its value, and the values in order of first appearance."""
        encoded = pc.dictionary_encode(self.table.column(column)).combine_chunks()
        return encoded.indices.to_numpy(zero_copy_only=False), encoded.dictionary.to_pylist()

    def slices(self, columns: list[str]) -> Iterator[pa.Table]:
        picked = self.table.select(columns)
        for start in range(0, picked.num_rows, SLICE_ROWS):
            yield picked.slice(start, SLICE_ROWS)

    def taken(self, positions: np.ndarray, columns: list[str]) -> Iterator[pa.Table]:
        """The rows at `positions`, in that order, SLICE_ROWS at a time."""
        yield from taken_slices(self.table.select(columns), positions)

    def scratch(self, name: str) -> None:
        """No folder: what a step of dedup would spill (near dedup's band keys) stays in memory."""
        return None


class ParquetRecords:
    """Records in Parquet files read one after another as one table, never whole: the
    rows at given positions are gathered through `spill_dir` (files/gather.py)."""

    def __init__(self, paths: list[Path], spill_dir: Path):
        self.paths, self.spill_dir = [Path(p) for p in paths], spill_dir
        self.num_rows = sum(pq.ParquetFile(p).metadata.num_rows for p in self.paths)

    def codes(self, column: str) -> tuple[np.ndarray, list[str]]:
        labels: dict[str, int] = {}
        parts = []
        for path in self.paths:  # read as dictionaries: a few bytes a row
            for chunk in pq.read_table(path, columns=[column], read_dictionary=[column])[
                column
            ].chunks:
                to_global = np.array(
                    [labels.setdefault(v, len(labels)) for v in chunk.dictionary.to_pylist()],
                    dtype=np.int64,
                )
                parts.append(to_global[chunk.indices.to_numpy(zero_copy_only=False)])
        codes = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return codes, list(labels)

    def slices(self, columns: list[str]) -> Iterator[pa.Table]:
        """The columns, slice_rows(...) rows at a time (fewer rows where they are long)."""
        return parquet_slices(self.paths, columns, slice_rows(self.paths, columns))

    def taken(self, positions: np.ndarray, columns: list[str]) -> Iterator[pa.Table]:
        """The rows at `positions`, in that order, in parts of slice_rows(...) rows."""
        part_rows = slice_rows(self.paths, columns)
        return gathered_parts(self.paths, positions, part_rows, self.spill_dir, columns)

    def scratch(self, name: str) -> Path:
        """A folder beside `spill_dir` (which a gather removes when done) for what a step of
        dedup spills (near dedup's band keys); that step removes it."""
        return self.spill_dir.with_name(f"{self.spill_dir.name}-{name}")


Records = TableRecords | ParquetRecords
