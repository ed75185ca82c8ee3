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
`read_batches` hands the file to its format's reader, which settles the schema and yields
the records as tables of bounded size, so a writer can stream them to disk (tasks/data/fetch.py
turns them into a snapshot):

    jsonl    tasks/data/files/json_rows.py     Arrow's reader, BLOCK_BYTES at a time (blank lines, type
                                    clashes, dates: parsed by Python, BATCH_RECORDS at a time)
    json     tasks/data/files/json_rows.py     one JSON document, an element at a time (json_document.py)
    csv/tsv  tasks/data/files/delimited.py      Arrow's streaming reader, every column text,
                                    CSV_BLOCK_BYTES at a time
    parquet  tasks/data/files/parquet_rows.py  BATCH_ROWS rows at a time

The tables equal what reading the whole file at once gives (same columns, types, values
and row numbers), so snapshots keep their content. Bad input raises `DataError` naming the
file, line, row or field; errors in later rows surface while the tables are read.
"""

from __future__ import annotations

import codecs
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from multilora_pipeline.data_specs.errors import DataError
from multilora_pipeline.tasks.data.files.delimited import read_delimited
from multilora_pipeline.tasks.data.files.json_rows import read_json, read_jsonl
from multilora_pipeline.tasks.data.files.parquet_rows import read_parquet
from multilora_pipeline.tasks.data.files.rows import ROW_COLUMN, FileRows

__all__ = [
    "CHUNK",
    "FORMATS",
    "ROW_COLUMN",
    "FileFacts",
    "FileRows",
    "detect_format",
    "inspect_file",
    "read_batches",
    "read_table",
]

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
    # An HTML page may open with comments (<!-- ... -->) and blank lines before its tag.
    lower = re.sub(rb"^(\s*<!--.*?-->)+\s*", b"", stripped.lower(), flags=re.S)[:64]
    if lower.startswith((b"<!doctype html", b"<html", b"<head", b"<body")):
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
    `block_bytes` overrides read_json.BLOCK_BYTES / read_csv.CSV_BLOCK_BYTES (tests cross
    many blocks with it). Malformed input is a DataError, raised here or while the tables
    are read.
    """
    if fmt == "jsonl":
        return read_jsonl(path, blank_lines=blank_lines, block_bytes=block_bytes)
    if fmt == "json":
        return read_json(path)
    if fmt in ("csv", "tsv"):
        return read_delimited(path, "\t" if fmt == "tsv" else ",", columns, block_bytes)
    if fmt == "parquet":
        return read_parquet(path)
    raise DataError(f"unknown format {fmt!r}", where=str(path), fix=f"use one of {FORMATS}")


def read_table(
    path: Path, fmt: str, *, columns: list[str] | None = None, blank_lines: bool = False
) -> pa.Table:
    """The whole file as one table (`read_batches` joined): for small files and tests."""
    rows = read_batches(path, fmt, columns=columns, blank_lines=blank_lines)
    return pa.Table.from_batches(
        [batch for table in rows.tables for batch in table.to_batches()], schema=rows.schema
    )
