"""Read JSON lines and JSON documents into Arrow tables, with the line or element number of
each record (tasks/data/files/read.py checks the file first and picks the reader).

    jsonl  pass 1: Arrow infers each BLOCK_BYTES block, the block types are merged as
                   Arrow merges them within a file  ──► schema
           pass 2: each block parsed again with that schema                ──► tables
           (blank lines, type clashes, dates read as timestamps: the line-by-line reader
           below, BATCH_RECORDS records at a time)
    json   one JSON document: its list's elements decoded one at a time (json_document.py),
           handed to the same records-to-Arrow path BATCH_RECORDS records at a time

Records parsed by Python become Arrow as `pa.Table.from_pylist` of every record would make
them, in passes over the file: infer each column's type, find where a field's values change
kind (only when a column has no common type), build the tables. A scalar field whose type
changes between records is kept as text, with a warning on the "mlora.fetch" logger; nested
clashes are a DataError naming the line or element and the field.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.json as pa_json

from multilora_pipeline.data_specs.errors import DataError
from multilora_pipeline.tasks.data.files.json_document import document_records
from multilora_pipeline.tasks.data.files.rows import FileRows, counted, numbered, with_row_column

# Reading a file is part of fetching it: its warnings keep the fetch logger's name.
log = logging.getLogger("mlora.fetch")

# Bytes of JSON lines parsed at a time: Arrow splits a block into 1 MiB pieces for its threads,
# and a block's bytes and table cost a few times its size (8 MiB: ~130 MB peak in all).
BLOCK_BYTES = 8 << 20
BATCH_RECORDS = 20_000  # records per batch on the line-by-line path: a Python dict costs ~1 KB


# ---------------------------------------------------------------- JSON lines, Arrow's reader


def read_jsonl(path: Path, *, blank_lines: bool, block_bytes: int | None = None) -> FileRows:
    """JSON lines with their line numbers, read `block_bytes` (default BLOCK_BYTES) at a time."""
    block_bytes = block_bytes or BLOCK_BYTES  # looked up per call, so a patched value applies
    if not blank_lines:  # with blank lines record k is not line k: the line reader counts them
        schema = _arrow_jsonl_schema(path, block_bytes)
        if schema is not None:
            tables = _arrow_jsonl_tables(path, schema, block_bytes)
            return FileRows(with_row_column(schema), counted(tables, 1))
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


def _batches(numbered: Iterator[tuple[int, dict]]) -> Iterator[tuple[list[dict], list[int]]]:
    """(number, record) pairs as batches of BATCH_RECORDS records and their numbers."""
    records, numbers = [], []
    for number, obj in numbered:
        records.append(obj)
        numbers.append(number)
        if len(records) == BATCH_RECORDS:
            yield records, numbers
            records, numbers = [], []
    if records:
        yield records, numbers


def _jsonl_records(path: Path) -> Iterator[tuple[list[dict], list[int]]]:
    """The lines as dicts, BATCH_RECORDS at a time, with their line numbers; blank lines skipped."""
    return _batches(_jsonl_lines(path))


def _jsonl_lines(path: Path) -> Iterator[tuple[int, dict]]:
    """(line number, record) of each non-blank line."""
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
            yield number, obj


def read_json(path: Path) -> FileRows:
    """One JSON document (a list of objects, or {"data": [...]}), decoded an element at a
    time in each pass (json_document.py), BATCH_RECORDS records per batch."""
    return _records_to_tables(
        path, lambda: _batches(enumerate(document_records(path), start=1)), "row"
    )


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
    return FileRows(with_row_column(schema), _record_tables(records, schema, text))


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
    kinds = {type(v) for v in values if v is not None}
    if bool in kinds and kinds & {int, float}:
        # Arrow reads [0.5, True] as doubles (True -> 1.0) but rejects [True, 0.5]: the
        # type would depend on record order and batch edges. Booleans mixed with numbers
        # are a clash, so the column is kept as text wherever the batches fall.
        columns.errors[name] = "booleans mixed with numbers"
        return
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
        yield numbered(pa.Table.from_pylist(batch, schema=schema), numbers)
