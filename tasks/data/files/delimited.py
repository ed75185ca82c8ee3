"""Read CSV and TSV files into Arrow tables with Arrow's streaming reader, CSV_BLOCK_BYTES at
a time. Every column is read as text (no lossy number parsing of e.g. "1.50").

``__row__`` is the record number, counting a header line as 1 (it is the line number unless
a quoted field spans lines). A row with the wrong number of fields is a DataError naming it.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv

from multilora_pipeline.data_specs.errors import DataError
from multilora_pipeline.tasks.data.files.rows import FileRows, counted, with_row_column

# Bytes per CSV block: Arrow's streaming CSV reader reads a few dozen blocks ahead, so its
# default 1 MiB (~40 MB in flight) rather than read_json.BLOCK_BYTES (~200 MB).
CSV_BLOCK_BYTES = 1 << 20


def read_delimited(
    path: Path, delimiter: str, columns: list[str] | None, block_bytes: int | None = None
) -> FileRows:
    """CSV/TSV with every column read as text, `block_bytes` (default CSV_BLOCK_BYTES) at a
    time; `columns` names the columns of a headerless file."""
    block_bytes = block_bytes or CSV_BLOCK_BYTES  # looked up per call, so a patched value applies
    header = columns is None
    names = list(columns) if columns else _header_names(path, delimiter)
    tsv = delimiter == "\t"
    # TSV exports (GLUE and friends) do not quote fields and contain stray quotes.
    parse = dict(delimiter=delimiter, quote_char=False if tsv else '"', newlines_in_values=not tsv)

    def reader(threads: bool, clash: list) -> pa_csv.CSVStreamingReader:
        def on_invalid_row(row) -> str:
            clash.append(row)
            return "error"

        return pa_csv.open_csv(
            path,
            read_options=pa_csv.ReadOptions(
                column_names=names,
                skip_rows=1 if header else 0,
                use_threads=threads,
                block_size=block_bytes,
            ),
            parse_options=pa_csv.ParseOptions(**parse, invalid_row_handler=on_invalid_row),
            convert_options=pa_csv.ConvertOptions(
                column_types={n: pa.string() for n in names}, strings_can_be_null=False
            ),
        )

    def tables() -> Iterator[pa.Table]:
        clash: list = []
        try:
            for batch in reader(threads=True, clash=clash):
                yield pa.Table.from_batches([batch])
        except pa.ArrowInvalid as err:
            if not clash or clash[0].number is None:
                clash.clear()
                try:  # single-threaded parsing knows row numbers
                    for _ in reader(threads=False, clash=clash):
                        pass
                except pa.ArrowInvalid:
                    pass
            raise _delimited_error(path, tsv, err, clash) from None

    schema = pa.schema([(n, pa.string()) for n in names])
    return FileRows(with_row_column(schema), counted(tables(), 2 if header else 1))


def _delimited_error(path: Path, tsv: bool, err: pa.ArrowInvalid, clash: list) -> DataError:
    if clash:
        bad = clash[0]
        number = bad.number if bad.number is not None else "?"
        return DataError(
            f"expected {bad.expected_columns} columns, got {bad.actual_columns}: {bad.text[:80]!r}",
            where=f"{path}, row {number}",
            fix="quote fields that contain the delimiter, or fix the row",
        )
    return DataError(
        f"cannot parse as {'TSV' if tsv else 'CSV'}: {err}",
        where=str(path),
        fix="check the delimiter and quoting, or set format",
    )


def _header_names(path: Path, delimiter: str) -> list[str]:
    with path.open(encoding="utf-8-sig", newline="") as fh:
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        names = next(csv.reader(fh, delimiter=delimiter, quoting=quoting), [])
    if not names or any(not n.strip() for n in names) or len(set(names)) != len(names):
        raise DataError(
            # A short excerpt only: the file may be anything (a path outside the data).
            f"bad header line {str(names)[:80]!r}: names must be non-empty and unique",
            where=f"{path}, row 1",
            fix="add a header, or use a template that declares headerless columns",
        )
    return [n.strip() for n in names]
