"""Exact repeats among any number of rows, out of core: each row's 128-bit key digest and its
ranked position go to Parquet a slice at a time, and DuckDB groups them by digest (spilling
to disk past MEMORY_LIMIT), returning only the repeats, each with the best-ranked row of
its key.

    (digests, positions) per slice ──Parquet shards in a scratch folder (or Arrow in memory
    for a table)──► DuckDB: GROUP BY digest HAVING count > 1, joined back ──► (repeat, first)

Memory in this process: one slice's digests and the repeats (a few percent of the rows),
instead of every row's digest sorted in numpy (~100 bytes a row: 1 GB at 10M rows).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from contextlib import contextmanager
from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

# DuckDB's memory for the grouping: past it, the hash table spills to the scratch folder.
MEMORY_LIMIT = "512MB"
_SCHEMA = pa.schema([("h1", pa.uint64()), ("h2", pa.uint64()), ("pos", pa.int64())])
_REPEATS = """
    SELECT pos, first FROM digests
    JOIN (SELECT h1, h2, min(pos) AS first FROM digests GROUP BY h1, h2 HAVING count(*) > 1)
    USING (h1, h2)
    WHERE pos <> first
    ORDER BY pos
"""


def first_of_repeats(
    pieces: Iterable[tuple[np.ndarray, np.ndarray]], folder: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(repeats, firsts): every position whose digest a smaller position has too, ascending,
    with the smallest position of that digest. `pieces`: (digests (n, 2) uint64, positions
    (n,)) a slice at a time; `folder`: where the shards and DuckDB's spill go (removed after;
    None: in memory, for what fits)."""
    tables = (
        pa.table([pa.array(d[:, 0]), pa.array(d[:, 1]), pa.array(p, pa.int64())], schema=_SCHEMA)
        for d, p in pieces
    )
    try:
        with _digests_view(tables, folder) as con:
            found = con.execute(_REPEATS).fetchnumpy()
    finally:
        if folder is not None:  # the shards and any spill, also after an error
            shutil.rmtree(folder, ignore_errors=True)
    return np.asarray(found["pos"], np.int64), np.asarray(found["first"], np.int64)


@contextmanager
def _digests_view(tables: Iterable[pa.Table], folder: Path | None):
    """A DuckDB connection with the view `digests` over the tables: in memory, or written
    as Parquet shards under `folder` and read from there."""
    if folder is None:
        con = duckdb.connect()
        con.register("digests", pa.concat_tables([_SCHEMA.empty_table(), *tables]))
    else:
        shards = folder / "shards"
        shards.mkdir(parents=True, exist_ok=True)
        written = 0
        for written, table in enumerate(tables, start=1):
            pq.write_table(table, shards / f"part-{written:05d}.parquet", compression="none")
        if not written:  # read_parquet needs a file: an empty one
            pq.write_table(_SCHEMA.empty_table(), shards / "part-00000.parquet")
        config = {"temp_directory": str(folder / "spill"), "memory_limit": MEMORY_LIMIT}
        con = duckdb.connect(config=config)
        con.read_parquet(str(shards / "*.parquet")).create_view("digests")
    try:
        yield con
    finally:
        con.close()
