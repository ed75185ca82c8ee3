"""Read a local data file into Arrow a piece at a time, with the 1-based source row of each record.

``__row__`` holds where each record sits in the original file, so every later error can
point at it:

- jsonl: the line number (blank lines count, as in an editor);
- json: the element number in the top-level list;
- csv/tsv: the record number, counting a header line as 1 (it is the line
  number unless a quoted field spans lines);
- parquet: the row number.

Before parsing, `inspect_file` hashes the file in one streaming pass and rejects what cannot
be data (missing, empty, a Git LFS pointer, an HTML page, text that is not UTF-8). Then
`read_batches` settles the schema and yields the records as tables of bounded size, so a
writer can stream them to disk (tasks/fetch.py turns them into a snapshot):

    jsonl    pass 1: Arrow infers each BLOCK_BYTES block, the block types are merged as
                     Arrow merges them within a file  ──► schema
             pass 2: each block parsed again with that schema                ──► tables
             (blank lines, type clashes, dates read as timestamps: the line-by-line reader,
             BATCH_RECORDS records at a time, also in two passes)
    csv/tsv  Arrow's streaming reader, every column text, CSV_BLOCK_BYTES at a time
    parquet  BATCH_ROWS rows at a time
    json     one JSON document: parsed whole (use jsonl for big data)

The tables equal what reading the whole file at once gives (same columns, types, values
and row numbers), so snapshots keep their content. Bad input raises `DataError` naming the
file, line, row or field; errors in later rows surface while the tables are read.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from data_specs.errors import DataError

# Reading a file is part of fetching it: its warnings keep the fetch logger's name.
log = logging.getLogger("mlora.fetch")

ROW_COLUMN = "__row__"
CHUNK = 1 << 20  # bytes read per step when hashing / checking a file: bounded memory on big files
# Bytes of JSON lines parsed at a time: Arrow splits a block into 1 MiB pieces for its threads,
# and a block's bytes and table cost a few times its size (8 MiB: ~130 MB peak in all).
BLOCK_BYTES = 8 << 20
# Bytes per CSV block: Arrow's streaming CSV reader reads a few dozen blocks ahead, so its
# default 1 MiB (~40 MB in flight) rather than BLOCK_BYTES (~200 MB).
CSV_BLOCK_BYTES = 1 << 20
BATCH_RECORDS = 20_000  # records per batch on the line-by-line path: a Python dict costs ~1 KB
BATCH_ROWS = 65_536  # Parquet rows read at a time
SNIFF = 4096  # leading bytes inspected for LFS pointers and HTML pages
FORMATS = ("jsonl", "json", "csv", "tsv", "parquet")
SUFFIX_FORMAT = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
}


def detect_format(path: Path, given: str | None) -> str:
    """The file format: `given`, else from the suffix; unknown formats are a DataError."""
    if given:
        return given
    fmt = SUFFIX_FORMAT.get(path.suffix.lower())
    if fmt is None:
        raise DataError(
            f"unknown file format (suffix {path.suffix!r})",
            where=str(path),
            fix=f"rename the file or set format: one of {', '.join(FORMATS)}",
        )
    return fmt


@dataclass(frozen=True)
class FileFacts:
    """What one streaming pass over a file learned."""

    sha256: str
    size: int
    blank_lines: bool


def inspect_file(path: Path, *, text: bool) -> FileFacts:
    """Hash a file in one streaming pass and reject what cannot be data.

    Rejects a missing or empty file, a Git LFS pointer, an HTML page and (for
    text formats) bytes that are not UTF-8, with the byte offset of the first
    bad byte. Also notes whether there are blank lines (they shift line numbers).
    """
    if not path.is_file():
        raise DataError(
            "file not found",
            where=str(path),
            fix="check the path (relative paths start at the spec's folder)",
        )
    sha = hashlib.sha256()
    decoder = codecs.getincrementaldecoder("utf-8")()
    size, blank, prev = 0, False, b"\n"  # a leading blank line counts as blank
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            if size == 0:
                _reject_non_data(chunk[:SNIFF], path)
            sha.update(chunk)
            if text:
                try:
                    decoder.decode(chunk)
                except UnicodeDecodeError as err:
                    raise DataError(
                        f"not UTF-8 text: undecodable byte 0x{chunk[err.start]:02x} at byte "
                        f"offset {size + err.start}",
                        where=str(path),
                        fix="re-save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
                    ) from None
                blank = blank or re.search(rb"\n[ \t\r]*\n", prev[-1:] + chunk) is not None
                prev = chunk
            size += len(chunk)
    if text:
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise DataError(
                f"not UTF-8 text: the file ends inside a multi-byte character (byte offset {size})",
                where=str(path),
                fix="the file is truncated or not UTF-8; fetch it again",
            ) from None
    if size == 0:
        raise DataError(
            "the file is empty",
            where=str(path),
            fix="the source produced no data; check the export or download",
        )
    return FileFacts(sha.hexdigest(), size, blank)


def _reject_non_data(head: bytes, path: Path) -> None:
    stripped = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if stripped.startswith(b"version https://git-lfs.github.com/spec/"):
        raise DataError(
            "this is a Git LFS pointer file, not the data",
            where=str(path),
            fix="run `git lfs pull` (or download the real file) and try again",
        )
    lower = stripped[:64].lower()
    if lower.startswith((b"<!doctype html", b"<html")):
        raise DataError(
            "this is an HTML page, not data (a login or error page saved in its place?)",
            where=str(path),
            fix="download the raw file (e.g. the 'resolve'/'raw' URL)",
        )
    if not stripped and len(head) < SNIFF:
        raise DataError(
            "the file is empty (whitespace only)",
            where=str(path),
            fix="the source produced no data; check the export or download",
        )


@dataclass(frozen=True)
class FileRows:
    """A file's records: the schema (source columns, then ``__row__``) and the records as
    tables in file order. The tables are read lazily: each is parsed when it is asked for."""

    schema: pa.Schema
    tables: Iterator[pa.Table]


def read_batches(
    path: Path,
    fmt: str,
    *,
    columns: list[str] | None = None,
    blank_lines: bool = False,
    block_bytes: int | None = None,
) -> FileRows:
    """Read a local file piece by piece into Arrow tables with a ``__row__`` column.

    `columns` names the columns of a headerless CSV/TSV; `blank_lines` (from `inspect_file`)
    sends JSON lines to the line-by-line reader, which numbers lines as an editor does.
    `block_bytes` overrides BLOCK_BYTES / CSV_BLOCK_BYTES (tests cross many blocks with it).
    Malformed input is a DataError, raised here or while the tables are read.
    """
    if fmt == "jsonl":
        return _read_jsonl(path, blank_lines, block_bytes or BLOCK_BYTES)
    if fmt == "json":
        return _read_json(path)
    if fmt in ("csv", "tsv"):
        delimiter = "\t" if fmt == "tsv" else ","
        return _read_delimited(path, delimiter, columns, block_bytes or CSV_BLOCK_BYTES)
    if fmt == "parquet":
        return _read_parquet(path)
    raise DataError(f"unknown format {fmt!r}", where=str(path), fix=f"use one of {FORMATS}")


def read_table(
    path: Path, fmt: str, *, columns: list[str] | None = None, blank_lines: bool = False
) -> pa.Table:
    """The whole file as one table (`read_batches` joined): for small files and tests."""
    rows = read_batches(path, fmt, columns=columns, blank_lines=blank_lines)
    return pa.Table.from_batches(
        [batch for table in rows.tables for batch in table.to_batches()], schema=rows.schema
    )


def _with_row_column(schema: pa.Schema) -> pa.Schema:
    """The source columns (a source column named ``__row__`` gives way), then ``__row__``."""
    if ROW_COLUMN in schema.names:
        schema = schema.remove(schema.get_field_index(ROW_COLUMN))
    return schema.append(pa.field(ROW_COLUMN, pa.int64()))


def _numbered(table: pa.Table, rows: Iterable[int] | np.ndarray) -> pa.Table:
    if ROW_COLUMN in table.column_names:
        table = table.drop_columns([ROW_COLUMN])
    return table.append_column(ROW_COLUMN, pa.array(rows, pa.int64()))


def _counted(tables: Iterator[pa.Table], first: int) -> Iterator[pa.Table]:
    """Number the rows of consecutive tables first, first + 1, ..."""
    for table in tables:
        yield _numbered(table, np.arange(first, first + table.num_rows))
        first += table.num_rows


# ---------------------------------------------------------------- JSON lines, Arrow's reader


def _read_jsonl(path: Path, blank_lines: bool, block_bytes: int) -> FileRows:
    if not blank_lines:  # with blank lines record k is not line k: the line reader counts them
        schema = _arrow_jsonl_schema(path, block_bytes)
        if schema is not None:
            tables = _arrow_jsonl_tables(path, schema, block_bytes)
            return FileRows(_with_row_column(schema), _counted(tables, 1))
    return _records_to_tables(path, lambda: _jsonl_records(path), "line")


def _line_blocks(path: Path, block_bytes: int) -> Iterator[pa.Buffer]:
    """The file in pieces of about `block_bytes` that end at a line break (the last may not).

    Each piece is one read, handed to Arrow without a copy; the file position then steps back
    to the start of the cut line. A line longer than a block gets a bigger read.
    """
    size = block_bytes
    with path.open("rb") as fh:
        while data := fh.read(size):
            cut = data.rfind(b"\n") + 1
            if cut == 0 and len(data) == size:  # no line break yet: read the line whole
                fh.seek(-len(data), os.SEEK_CUR)
                size *= 2
                continue
            if cut == 0:  # the last line, without a line break
                if data.strip():  # Arrow rejects an empty buffer; trailing spaces are no record
                    yield pa.py_buffer(data)
                return
            fh.seek(cut - len(data), os.SEEK_CUR)
            size = block_bytes
            yield pa.py_buffer(data).slice(0, cut)


def _arrow_jsonl_schema(path: Path, block_bytes: int) -> pa.Schema | None:
    """The schema Arrow infers for the whole file, found one block at a time. None when Arrow
    cannot read the file or reads dates as timestamps: the line-by-line reader takes over
    (it says which line is bad, and keeps the source's text)."""
    merged: pa.DataType | None = None
    for block in _line_blocks(path, block_bytes):
        try:
            part = pa.struct(list(pa_json.read_json(pa.BufferReader(block)).schema))
        except pa.ArrowInvalid:
            return None
        merged = part if merged is None else _merged_type(merged, part)
        if merged is None:
            return None
    if merged is None or any("timestamp" in str(f.type) for f in merged):
        return None
    return pa.schema(list(merged))


def _arrow_jsonl_tables(path: Path, schema: pa.Schema, block_bytes: int) -> Iterator[pa.Table]:
    options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="error")
    for block in _line_blocks(path, block_bytes):
        try:
            yield pa_json.read_json(pa.BufferReader(block), parse_options=options)
        except pa.ArrowInvalid as err:  # pass 1 read this block: only a file changed meanwhile
            raise DataError(
                f"cannot parse as JSON lines with the schema found before: {err}",
                where=str(path),
                fix="was the file changed while it was read? fetch it again",
            ) from None


def _merged_type(a: pa.DataType, b: pa.DataType) -> pa.DataType | None:
    """The type Arrow's JSON and Python inference give a column whose values read as `a` in
    one part of a file and as `b` in another: null widens to anything, int64 to double, a
    timestamp to text, structs merge their fields and lists their items. None: no common
    type, reading the whole file fails."""
    if a == b or pa.types.is_null(b):
        return a
    if pa.types.is_null(a):
        return b
    if {a, b} == {pa.int64(), pa.float64()}:
        return pa.float64()
    if pa.string() in (a, b) and (pa.types.is_timestamp(a) or pa.types.is_timestamp(b)):
        return pa.string()
    if pa.types.is_struct(a) and pa.types.is_struct(b):
        fields = {f.name: f.type for f in a}  # first appearance decides the order
        for f in b:
            fields[f.name] = _merged_type(fields[f.name], f.type) if f.name in fields else f.type
            if fields[f.name] is None:
                return None
        return pa.struct(list(fields.items()))
    if pa.types.is_list(a) and pa.types.is_list(b):
        item = _merged_type(a.value_type, b.value_type)
        return None if item is None else pa.list_(item)
    return None


# ---------------------------------------------------------------- records parsed by Python

Records = Callable[[], Iterator[tuple[list[dict], list[int]]]]
"""Starts a pass over a file's records: batches of (records, their line or element numbers)."""


def _jsonl_records(path: Path) -> Iterator[tuple[list[dict], list[int]]]:
    """The lines as dicts, BATCH_RECORDS at a time, with their line numbers; blank lines skipped."""
    records, numbers = [], []
    with path.open(encoding="utf-8-sig") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise DataError(
                    f"malformed or truncated JSON line: {err.msg} (column {err.colno})",
                    where=f"{path}, line {number}",
                    fix="fix or delete that line (was the file cut off?)",
                ) from None
            if not isinstance(obj, dict):
                raise DataError(
                    f"each line must be a JSON object, got {type(obj).__name__}",
                    where=f"{path}, line {number}",
                    fix="write one object per line",
                )
            records.append(obj)
            numbers.append(number)
            if len(records) == BATCH_RECORDS:
                yield records, numbers
                records, numbers = [], []
    if records:
        yield records, numbers


def _read_json(path: Path) -> FileRows:
    """One JSON document (a list of objects, or {"data": [...]}): parsed whole."""
    try:
        with path.open(encoding="utf-8-sig") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as err:
        raise DataError(
            f"malformed or truncated JSON: {err.msg} (column {err.colno})",
            where=f"{path}, line {err.lineno}",
            fix="fix the JSON (was the file cut off?)",
        ) from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise DataError(
            f"the top level is a JSON {type(data).__name__}; expected a list of "
            'objects or {"data": [...]}',
            where=str(path),
            fix="wrap the records in a list, or use jsonl with one object per line",
        )
    for index, obj in enumerate(data, start=1):
        if not isinstance(obj, dict):
            raise DataError(
                f"element {index} is a {type(obj).__name__}, expected an object",
                where=f"{path}, row {index}",
                fix="every element must be a JSON object",
            )

    def records() -> Iterator[tuple[list[dict], list[int]]]:
        for start in range(0, len(data), BATCH_RECORDS):
            part = data[start : start + BATCH_RECORDS]
            yield part, list(range(start + 1, start + 1 + len(part)))

    return _records_to_tables(path, records, "row")


def _records_to_tables(path: Path, records: Records, unit: str) -> FileRows:
    """Records -> Arrow as pa.Table.from_pylist(every record) would do it, a batch at a time:
    the columns are the first record's fields. A scalar field whose type changes between
    records (True in one line, "true" in the next) is kept as text, with a warning; nested
    clashes are errors. Passes: infer the column types, find the clashes (only when a column
    has no common type), build the tables."""
    columns = _infer_columns(records, path, unit)
    text = _text_fields(columns, _find_clashes(records), path, unit) if columns.errors else []
    schema = pa.schema(
        [(name, pa.string() if name in text else columns.types[name]) for name in columns.names]
    )
    return FileRows(_with_row_column(schema), _record_tables(records, schema, text))


@dataclass
class _Columns:
    """Each column's type over all records so far (from_pylist's inference, batch by batch)."""

    names: list[str] = field(default_factory=list)
    types: dict[str, pa.DataType] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    """Columns whose values have no common type, and Arrow's reason."""


def _infer_columns(records: Records, path: Path, unit: str) -> _Columns:
    """Pass 1: the first record's fields, each with its type over every record."""
    columns: _Columns | None = None
    for batch, numbers in records():
        if columns is None:
            columns = _Columns(names=list(batch[0]))
            if not columns.names:
                raise DataError(
                    "the first record is empty ({}): the columns are taken from it",
                    where=f"{path}, {unit} {numbers[0]}",
                    fix="delete that record or give it the fields",
                )
        for name in columns.names:
            if name not in columns.errors:
                _add_values(columns, name, [record.get(name) for record in batch])
    return columns or _Columns()


def _add_values(columns: _Columns, name: str, values: list) -> None:
    """Widen a column's type by one batch of its values (or note why they do not fit)."""
    try:
        found = pa.array(values).type
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        columns.errors[name] = str(err)
        return
    known = columns.types.get(name, found)
    merged = _merged_type(known, found)
    if merged is None:
        columns.errors[name] = f"{known} in one part of the file, {found} in another"
    else:
        columns.types[name] = merged


@dataclass
class _Clashes:
    """Where each field's values first change kind, in record order, and which fields hold
    nested values (those cannot become text)."""

    at: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    """field -> (record index, position of the field in that record, line or element)."""
    nested: set[str] = field(default_factory=set)


def _find_clashes(records: Records) -> _Clashes:
    """Pass 2, only when a column has no type: every field's first change of kind."""
    clashes, first_kind, index = _Clashes(), {}, 0
    for batch, numbers in records():
        for record, number in zip(batch, numbers, strict=True):
            index += 1
            for position, (key, value) in enumerate(record.items()):
                if value is None:
                    continue
                if isinstance(value, (dict, list)):
                    clashes.nested.add(key)
                number_like = isinstance(value, (int, float)) and not isinstance(value, bool)
                kind = "number" if number_like else type(value).__name__  # ints and floats mix
                if first_kind.setdefault(key, kind) != kind:
                    clashes.at.setdefault(key, (index, position, number))
    return clashes


def _text_fields(columns: _Columns, clashes: _Clashes, path: Path, unit: str) -> list[str]:
    """The fields to keep as text, taken in the order their first clash appears, until every
    column has a type; a column that still has none is a DataError at its first clash."""
    text: list[str] = []
    while failing := [n for n in columns.names if n in columns.errors and n not in text]:
        pending = {key: at for key, at in clashes.at.items() if key not in text}
        first = min(pending, key=pending.__getitem__) if pending else None
        if first and first not in clashes.nested:
            log.warning("%s: field %r mixes value types; kept as text", path, first)
            text.append(first)
            continue
        where = f"{path}, {unit} {pending[first][2]}, field {first!r}" if first else str(path)
        raise DataError(
            f"a field changes type between records ({columns.errors[failing[0]]})",
            where=where,
            fix="give the field one type in every record",
        )
    return text


def _record_tables(records: Records, schema: pa.Schema, text: list[str]) -> Iterator[pa.Table]:
    """Last pass: each batch as a table of the settled schema."""
    for batch, numbers in records():
        for record in batch:
            for name in text:
                value = record.get(name)
                if value is not None and not isinstance(value, str):
                    record[name] = json.dumps(value)  # JSON spelling: true, not True
        yield _numbered(pa.Table.from_pylist(batch, schema=schema), numbers)


# ---------------------------------------------------------------- CSV / TSV


def _read_delimited(
    path: Path, delimiter: str, columns: list[str] | None, block_bytes: int
) -> FileRows:
    """CSV/TSV with every column read as text (no lossy number parsing of e.g. "1.50")."""
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
    return FileRows(_with_row_column(schema), _counted(tables(), 2 if header else 1))


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
            f"bad header line {names!r}: names must be non-empty and unique",
            where=f"{path}, row 1",
            fix="add a header, or use a template that declares headerless columns",
        )
    return [n.strip() for n in names]


# ---------------------------------------------------------------- Parquet


def _read_parquet(path: Path) -> FileRows:
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

    return FileRows(_with_row_column(schema), _counted(tables(), 1))


def _parquet_error(path: Path, err: Exception) -> DataError:
    return DataError(
        f"cannot open as Parquet: {err}",
        where=str(path),
        fix="the file is corrupt or not Parquet; re-export it or set format",
    )
