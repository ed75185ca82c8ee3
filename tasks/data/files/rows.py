"""A file's records as Arrow tables, each row numbered with its 1-based place in the source.

The shared ground of the readers (tasks/data/files/read.py dispatches to read_json.py, read_csv.py
and read_parquet.py): the ``__row__`` column, the `FileRows` they return and the helpers
that number rows. It imports no reader, so none of them imports in a circle. What a row
number counts in each format is listed in tasks/data/files/read.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

ROW_COLUMN = "__row__"


@dataclass(frozen=True)
class FileRows:
    """A file's records: the schema (source columns, then ``__row__``) and the records as
    tables in file order. The tables are read lazily: each is parsed when it is asked for."""

    schema: pa.Schema
    tables: Iterator[pa.Table]


def with_row_column(schema: pa.Schema) -> pa.Schema:
    """The source columns (a source column named ``__row__`` gives way), then ``__row__``."""
    if ROW_COLUMN in schema.names:
        schema = schema.remove(schema.get_field_index(ROW_COLUMN))
    return schema.append(pa.field(ROW_COLUMN, pa.int64()))


def numbered(table: pa.Table, rows: Iterable[int] | np.ndarray) -> pa.Table:
    """The table with ``__row__`` set to `rows` (replacing a source column of that name)."""
    if ROW_COLUMN in table.column_names:
        table = table.drop_columns([ROW_COLUMN])
    return table.append_column(ROW_COLUMN, pa.array(rows, pa.int64()))


def counted(tables: Iterator[pa.Table], first: int) -> Iterator[pa.Table]:
    """Number the rows of consecutive tables first, first + 1, ..."""
    for table in tables:
        yield numbered(table, np.arange(first, first + table.num_rows))
        first += table.num_rows
