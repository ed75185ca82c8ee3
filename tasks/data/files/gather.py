"""Rows of a big Parquet file in any order, a part at a time: a shuffle through disk.

A seeded mixture takes its rows from everywhere in the cleaned file; `table.take` on the
whole file would need it in memory. `gathered_parts` reads the file once, in order, hands
each picked row to the part of the output it belongs to (an Arrow IPC spill file per part,
with the row's output position), then reads the parts back one at a time and puts each in
its order. Memory: one read batch (parquet_io.slice_rows) and one part, however big the
file.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from multilora_pipeline.tasks.data.files.parquet_io import parquet_slices, slice_rows

POSITION = "__position__"  # a spilled row's place in the output


def gathered_parts(
    paths: list[Path],
    positions: np.ndarray,
    part_rows: int,
    spill_dir: Path,
    columns: list[str] | None = None,
) -> Iterator[pa.Table]:
    """The rows at `positions` (row numbers in the files read one after another; any order,
    repeats allowed) of the named columns, as consecutive parts of `part_rows` rows: part k
    holds positions[k*part_rows:(k+1)*part_rows] in that order. Always at least one part
    (empty when `positions` is). Spill files go to `spill_dir` (created) and are removed as
    their part is read back."""
    positions = np.asarray(positions)
    if positions.dtype.kind not in "iu":
        positions = positions.astype(np.int64)
    parts = max(1, -(-len(positions) // part_rows))
    schema = pq.read_schema(paths[0])
    schema = pa.schema([schema.field(c) for c in columns]) if columns else schema
    # Output indices in file order, int32 where they fit: these arrays live through the pass.
    by_position = np.argsort(positions, kind="stable")
    if len(positions) < 2**31:
        by_position = by_position.astype(np.int32)
    sorted_positions = positions[by_position]
    spill_dir.mkdir(parents=True, exist_ok=True)
    spill_schema = schema.append(pa.field(POSITION, pa.int64()))
    writers: dict[int, pa.ipc.RecordBatchFileWriter] = {}
    try:
        start, done = 0, 0
        read_rows = slice_rows(paths, schema.names)
        for batch in parquet_slices(paths, schema.names, read_rows):
            end = start + batch.num_rows
            upto = int(np.searchsorted(sorted_positions, end))
            if upto > done:
                rows = batch.take(pa.array(sorted_positions[done:upto] - start))
                _spill(rows, by_position[done:upto], part_rows, writers, spill_dir, spill_schema)
            start, done = end, upto
    finally:
        for writer in writers.values():
            writer.close()
    for k in range(parts):
        spill = spill_dir / f"part-{k:05d}.arrow"
        if k not in writers:
            yield schema.empty_table()
            continue
        with pa.OSFile(str(spill)) as source:
            spilled = pa.ipc.open_file(source).read_all()
        in_order = np.argsort(spilled.column(POSITION).to_numpy(), kind="stable")
        yield spilled.drop_columns([POSITION]).take(pa.array(in_order)).combine_chunks()
        del spilled
        spill.unlink()
    spill_dir.rmdir()


def _spill(rows, outputs, part_rows, writers, spill_dir, spill_schema) -> None:
    """Append each row (with its output position) to the spill file of its part."""
    part_of = outputs // part_rows
    order = np.argsort(part_of, kind="stable")
    part_of, outputs = part_of[order], outputs[order]
    rows = rows.take(pa.array(order))
    bounds = np.flatnonzero(np.diff(part_of)) + 1
    for lo, hi in zip(np.r_[0, bounds], np.r_[bounds, len(part_of)], strict=True):
        k = int(part_of[lo])
        if k not in writers:
            writers[k] = pa.ipc.new_file(str(spill_dir / f"part-{k:05d}.arrow"), spill_schema)
        position = pa.array(outputs[lo:hi], pa.int64())
        piece = rows.slice(lo, hi - lo).append_column(POSITION, position)
        writers[k].write_table(piece)
