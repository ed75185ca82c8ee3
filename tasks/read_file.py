"""Read a local data file into Arrow, with the 1-based source row of each record.

``__row__`` holds where each record sits in the original file, so every later error can
point at it:

- jsonl: the line number (blank lines count, as in an editor);
- json: the element number in the top-level list;
- csv/tsv: the record number, counting a header line as 1 (it is the line
  number unless a quoted field spans lines);
- parquet: the row number.

Before parsing, `inspect_file` hashes the file in one streaming pass and rejects what cannot
be data (missing, empty, a Git LFS pointer, an HTML page, text that is not UTF-8). Bad input
raises `DataError` naming the file, line, row or field. tasks/fetch.py turns the result into
a snapshot.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from data_specs.errors import DataError

# Reading a file is part of fetching it: its warnings keep the fetch logger's name.
log = logging.getLogger("tasks.fetch")

ROW_COLUMN = "__row__"
CHUNK = 1 << 20  # bytes read per step when hashing / checking a file: bounded memory on big files
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


def read_table(
    path: Path, fmt: str, *, columns: list[str] | None = None, blank_lines: bool = False
) -> pa.Table:
    """Read a local file into Arrow with a ``__row__`` column; malformed input is a DataError."""
    if fmt == "jsonl":
        table, rows = _read_jsonl(path, blank_lines)
    elif fmt == "json":
        table = _read_json(path)
        rows = None
    elif fmt in ("csv", "tsv"):
        table, first = _read_delimited(path, "\t" if fmt == "tsv" else ",", columns)
        rows = pa.array(range(first, first + table.num_rows), pa.int64())
    elif fmt == "parquet":
        try:
            table = pq.read_table(path)
        except Exception as err:  # pyarrow raises several types for corrupt files
            raise DataError(
                f"cannot open as Parquet: {err}",
                where=str(path),
                fix="the file is corrupt or not Parquet; re-export it or set format",
            ) from None
        rows = None
    else:
        raise DataError(f"unknown format {fmt!r}", where=str(path), fix=f"use one of {FORMATS}")
    if rows is None:
        rows = pa.array(range(1, table.num_rows + 1), pa.int64())
    if ROW_COLUMN in table.column_names:
        table = table.drop_columns([ROW_COLUMN])
    return table.append_column(ROW_COLUMN, rows)


def _read_jsonl(path: Path, blank_lines: bool) -> tuple[pa.Table, pa.Array | None]:
    if not blank_lines:
        try:  # fast path: Arrow's multithreaded reader; record k is line k
            table = pa_json.read_json(path)
            # Arrow turns ISO-date-looking strings into timestamps; keep the source's text instead
            if not any("timestamp" in str(f.type) for f in table.schema):
                return table, None
        except pa.ArrowInvalid:
            pass  # fall through to the line-by-line reader, which says which line is bad
    objects, line_numbers = [], []
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
            objects.append(obj)
            line_numbers.append(number)
    return _objects_to_table(objects, path, line_numbers), pa.array(line_numbers, pa.int64())


def _read_json(path: Path) -> pa.Table:
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
    return _objects_to_table(data, path, None)


def _objects_to_table(objects: list[dict], path: Path, line_numbers: list[int] | None) -> pa.Table:
    """Records -> Arrow. A scalar field whose type changes between records (True in one
    line, "true" in the next) is kept as text, with a warning; nested clashes are errors."""
    coerced: set[str] = set()
    while True:
        try:
            return pa.Table.from_pylist(objects)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
            field, row = _first_type_clash(objects)
            if field and field not in coerced and _as_text(objects, field):
                log.warning("%s: field %r mixes value types; kept as text", path, field)
                coerced.add(field)
                continue
            unit = "line" if line_numbers else "row"
            at = line_numbers[row - 1] if line_numbers and row else row
            where = f"{path}, {unit} {at}, field {field!r}" if field else str(path)
            raise DataError(
                f"a field changes type between records ({err})",
                where=where,
                fix="give the field one type in every record",
            ) from None


def _as_text(objects: list[dict], field: str) -> bool:
    """Turn every scalar value of `field` into text (JSON spelling for bools); False if nested."""
    values = [obj.get(field) for obj in objects]
    if any(isinstance(v, (dict, list)) for v in values):
        return False
    for obj in objects:
        value = obj.get(field)
        if value is not None and not isinstance(value, str):
            obj[field] = json.dumps(value)
    return True


def _first_type_clash(objects: list[dict]) -> tuple[str | None, int | None]:
    seen: dict[str, str] = {}
    for index, obj in enumerate(objects, start=1):
        for key, value in obj.items():
            if value is None:
                continue
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            kind = "number" if number else type(value).__name__  # ints and floats mix fine
            if seen.setdefault(key, kind) != kind:
                return key, index
    return None, None


def _read_delimited(path: Path, delimiter: str, columns: list[str] | None) -> tuple[pa.Table, int]:
    """CSV/TSV with every column read as text (no lossy number parsing of e.g. "1.50")."""
    header = columns is None
    names = list(columns) if columns else _header_names(path, delimiter)
    tsv = delimiter == "\t"
    # TSV exports (GLUE and friends) do not quote fields and contain stray quotes.
    parse = dict(delimiter=delimiter, quote_char=False if tsv else '"', newlines_in_values=not tsv)
    clash: list = []

    def on_invalid_row(row) -> str:
        clash.append(row)
        return "error"

    def read(threads: bool) -> pa.Table:
        return pa_csv.read_csv(
            path,
            read_options=pa_csv.ReadOptions(
                column_names=names, skip_rows=1 if header else 0, use_threads=threads
            ),
            parse_options=pa_csv.ParseOptions(**parse, invalid_row_handler=on_invalid_row),
            convert_options=pa_csv.ConvertOptions(
                column_types={n: pa.string() for n in names}, strings_can_be_null=False
            ),
        )

    try:
        return read(threads=True), 2 if header else 1
    except pa.ArrowInvalid as err:
        if not clash or clash[0].number is None:
            clash.clear()
            try:  # single-threaded parsing knows row numbers
                read(threads=False)
            except pa.ArrowInvalid:
                pass
        if clash:
            bad = clash[0]
            number = bad.number if bad.number is not None else "?"
            raise DataError(
                f"expected {bad.expected_columns} columns, got {bad.actual_columns}: "
                f"{bad.text[:80]!r}",
                where=f"{path}, row {number}",
                fix="quote fields that contain the delimiter, or fix the row",
            ) from None
        raise DataError(
            f"cannot parse as {'TSV' if tsv else 'CSV'}: {err}",
            where=str(path),
            fix="check the delimiter and quoting, or set format",
        ) from None


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
