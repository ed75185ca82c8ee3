"""Read a Parquet file into Arrow tables, BATCH_ROWS rows at a time; ``__row__`` is the row
number. A file that is corrupt, at its footer or in a later page, is a DataError."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from multilora_pipeline.data_specs.errors import DataError
from multilora_pipeline.tasks.data.files.rows import FileRows, counted, with_row_column

BATCH_ROWS = 65_536  # Parquet rows read at a time


def read_parquet(path: Path) -> FileRows:
    """The file BATCH_ROWS rows at a time, numbered from 1."""
    try:
        # pre_buffer would keep every row group read so far cached until the file's end
        parquet = pq.ParquetFile(path, pre_buffer=False)
        schema = parquet.schema_arrow
    except Exception as err:  # pyarrow raises several types for corrupt files
        raise _parquet_error(path, err) from None

    def tables() -> Iterator[pa.Table]:
        with parquet:
            batches = parquet.iter_batches(batch_size=BATCH_ROWS)
            while True:
                try:
                    batch = next(batches, None)
                except Exception as err:  # a corrupt page or row group further in
                    raise _parquet_error(path, err) from None
                if batch is None:
                    return
                yield pa.Table.from_batches([batch])

    return FileRows(with_row_column(schema), counted(tables(), 1))


def _parquet_error(path: Path, err: Exception) -> DataError:
    return DataError(
        f"cannot open as Parquet: {err}",
        where=str(path),
        fix="the file is corrupt or not Parquet; re-export it or set format",
    )
