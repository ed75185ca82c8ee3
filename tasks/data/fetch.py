"""fetch: turn a source (local file, http(s) URL or Hugging Face dataset) into a raw snapshot.

A snapshot is a Parquet file under ``<workspace>/data/raw/<content_hash>.parquet``
holding the source's columns as they are, plus ``__row__``: the 1-based row of
each record in the original file (line, element or record number; see
tasks/data/files/read.py, which reads and checks local files), so every later error
can point at it. Hub datasets number their rows from 1.

The content hash identifies the snapshot: the sha256 of the raw bytes combined
with the read options that change the result (format, max_rows, column names).
An unchanged source is not parsed again: when the snapshot for its hash exists
it is reused. Bad input raises `DataError` naming the file, line, row or field.

Local files and downloads stream: the file is hashed in one pass, then read a block at a
time (tasks/data/files/read.py) and written row group by row group to a temp file that is renamed
into place, so memory stays at a few blocks whatever the file's size. Hub datasets are
loaded through `datasets` (memory-mapped); a `streaming` split is written STREAM_ROWS
examples at a time, so it is never held whole either.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from multilora_pipeline.data_specs.errors import DataError
from multilora_pipeline.data_specs.schema import DataLocation, redact_url
from multilora_pipeline.models.content import file_sha256, temporary_name, write_text_atomic
from multilora_pipeline.tasks.data.files.parquet_io import (
    ROW_GROUP_ROWS,
    parquet_sink,
    write_batches,
    write_parquet,
)
from multilora_pipeline.tasks.data.files.read import (
    CHUNK,
    ROW_COLUMN,
    detect_format,
    inspect_file,
    read_batches,
    read_table,
)
from multilora_pipeline.tasks.data.templates import FILE_COLUMN, csv_columns_for
from multilora_pipeline.tasks.identity import snapshot_key
from multilora_pipeline.tasks.workspace import Workspace

__all__ = [
    "ROW_COLUMN",
    "Snapshot",
    "detect_format",
    "fetch",
    "inspect_file",
    "read_batches",
    "read_table",
]

log = logging.getLogger("mlora.fetch")

URL_ATTEMPTS = 4  # one try plus three retries on network errors and 5xx/429 answers
URL_BACKOFF_S = 1.0  # first retry waits this long, then 2x, 4x
URL_TIMEOUT_S = 60
HUB_SHA_RE = re.compile(r"^[0-9a-f]{40}$")  # a pinned hub revision is a full commit sha
STREAM_ROWS = 10_000  # streamed hub examples made into one Arrow batch (bounded Python lists)


@dataclass(frozen=True)
class Snapshot:
    """A raw source snapshot: where its Parquet lies and what it was made from."""

    name: str
    """Source or suite name the snapshot belongs to."""
    path: Path
    """The Parquet snapshot (source columns + ``__row__``)."""
    content_hash: str
    """sha256 hex identifying the content (raw bytes + read options, or hub address + fingerprint)."""
    rows: int
    """Rows in the snapshot."""
    origin: str
    """Where it came from: ``file:/abs/path``, ``url:https://...`` or ``hf:id/config/split@rev``."""
    file_sha256: str | None = None
    """sha256 of the raw file bytes (files and URLs; None for hub datasets)."""
    reused: bool = False
    """True when an existing snapshot was reused instead of parsing the source again."""


def fetch(
    location: DataLocation,
    name: str,
    spec_dir: Path,
    workspace: Workspace,
    *,
    columns: list[str] | None = None,
) -> Snapshot:
    """Snapshot one source into the workspace (or reuse the snapshot of unchanged content).

    `location` is a DataLocation (a SourceSpec or EvalSuiteSpec works too);
    relative paths resolve against `spec_dir` (the spec's folder). `columns`
    names the columns of a headerless CSV/TSV; when omitted and `location`
    has a `template` that declares headerless columns (e.g. mmlu), those are used.
    """
    if columns is None:  # the spec's own names first, then the template's (mmlu)
        columns = location.columns
    if columns is None and getattr(location, "template", None):
        columns = csv_columns_for(location.template)
    raw_dir = workspace.data_dir / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    if location.hf is not None:
        return _fetch_hub(location, name, raw_dir, workspace)
    if location.url is not None:
        path = _download(location, workspace)
        shown = redact_url(location.url)  # the snapshot's origin is logged and in the catalog
        try:
            return _fetch_file(path, f"url:{shown}", name, location, raw_dir, columns)
        except DataError as err:  # name the URL, not only the downloaded copy
            raise DataError(
                err.what, where=f"{shown} (saved as {err.where})", fix=err.fix
            ) from None
    files = local_files(location, spec_dir)
    if len(files) == 1 and not location.file_fields:
        return _fetch_file(files[0], f"file:{files[0]}", name, location, raw_dir, columns)
    return _fetch_files(files, name, location, spec_dir, raw_dir, columns)


GLOB_CHARS = re.compile(r"[*?\[]")


def local_files(location: DataLocation, spec_dir: Path) -> list[Path]:
    """The files a local `path` names, by name: the file; a folder's files of the format
    (the spec's `format`, else the suffix they share); or a glob's matches."""
    given = Path(location.path)
    path = given if given.is_absolute() else Path(spec_dir) / given
    if GLOB_CHARS.search(location.path):
        files = sorted(p.resolve() for p in path.parent.glob(path.name) if p.is_file())
    elif path.is_dir():
        files = sorted(
            p.resolve() for p in path.iterdir() if p.is_file() and not p.name.startswith(".")
        )
        if location.format is None:
            suffixes = {p.suffix.lower() for p in files}
            if len(suffixes) > 1:
                raise DataError(
                    f"the folder holds files of several kinds {sorted(suffixes)}",
                    where=str(path),
                    fix="give format: (its files are read) or a glob such as folder/*.csv",
                )
    else:
        return [path.resolve()]
    if location.format is not None and path.is_dir():  # a folder: its files of that format
        files = [f for f in files if _suffix_format(f) == location.format]

    if not files:
        raise DataError(
            "no files match"
            if GLOB_CHARS.search(location.path)
            else "the folder has no data files",
            where=str(path),
            fix="check the path (relative paths start from the spec file's folder)",
        )
    return files


def _suffix_format(path: Path) -> str | None:
    try:
        return detect_format(path, None)
    except DataError:  # a README or notes file beside the data
        return None


def _fetch_files(
    files: list[Path],
    name: str,
    location: DataLocation,
    spec_dir: Path,
    raw_dir: Path,
    columns: list[str] | None,
) -> Snapshot:
    """Several files as one snapshot, in name order: each row keeps its file's name
    (``__file__``), its row in that file (``__row__``) and the `file_fields` of the name."""
    if location.sha256:
        raise DataError(
            "sha256 checks one file, but this path names several",
            where=location.path,
            fix="remove sha256 (each file's hash is recorded in the snapshot's file list)",
        )
    pattern = re.compile(location.file_fields) if location.file_fields else None
    listing = []
    for path in files:
        fmt = detect_format(path, location.format)
        facts = inspect_file(path, text=fmt != "parquet")
        found = {}
        if pattern is not None:
            match = pattern.fullmatch(path.stem)
            if match is None:
                raise DataError(
                    f"the file name does not match file_fields {location.file_fields!r}",
                    where=str(path),
                    fix="fix the pattern, or narrow the glob to the files it describes",
                )
            found = match.groupdict()
        listing.append(
            {
                "file": path.name,
                "sha256": facts.sha256,
                "format": fmt,
                "fields": found,
                "blank_lines": facts.blank_lines,
            }
        )
    origin = f"file:{Path(location.path) if Path(location.path).is_absolute() else (Path(spec_dir) / location.path).resolve()} ({len(files)} files)"
    options = {
        "files": [(f["file"], f["sha256"]) for f in listing],
        "max_rows": location.max_rows,
        "columns": columns,
        "file_fields": location.file_fields,
    }
    content_hash = snapshot_key("files", options)
    out = raw_dir / f"{content_hash}.parquet"
    manifest = out.with_suffix(".files.json")
    reused = _existing(raw_dir, content_hash, name, origin)
    if reused is not None:
        return reused
    start = time.perf_counter()
    schema = None
    streams = []
    for path, entry in zip(files, listing, strict=True):
        source = read_batches(
            path,
            entry["format"],
            columns=columns if entry["format"] in ("csv", "tsv") else None,
            blank_lines=entry["blank_lines"],
        )
        extra = {FILE_COLUMN: path.name, **entry["fields"]}
        file_schema = source.schema
        for key in extra:
            file_schema = file_schema.append(pa.field(key, pa.string()))
        if schema is None:
            schema = file_schema
        elif not file_schema.equals(schema):
            raise DataError(
                f"this file's columns differ from {files[0].name}'s: "
                f"{file_schema.names} against {schema.names}",
                where=str(path),
                fix="give all files of one source the same columns (or declare columns: for "
                "headerless CSV/TSV)",
            )
        streams.append(_with_constants(source.tables, extra))
    tables = (t for stream in streams for t in stream)
    rows = write_batches(_row_groups(_first_rows(tables, location.max_rows)), out, schema)
    write_text_atomic(manifest, json.dumps(listing, indent=2) + "\n")  # every file, with its hash
    log.info(
        "fetch %s: %d rows from %d files (%s) in %.2fs -> %s",
        name,
        rows,
        len(files),
        origin,
        time.perf_counter() - start,
        out.name,
    )
    return Snapshot(name, out, content_hash, rows, origin, None)


def _with_constants(tables: Iterator[pa.Table], values: dict[str, str]) -> Iterator[pa.Table]:
    for table in tables:
        for key, value in values.items():
            table = table.append_column(
                key, pa.repeat(pa.scalar(value, pa.string()), table.num_rows)
            )
        yield table


# ---------------------------------------------------------------- local files (see read_file.py)


def _fetch_file(
    path: Path,
    origin: str,
    name: str,
    location: DataLocation,
    raw_dir: Path,
    columns: list[str] | None,
) -> Snapshot:
    fmt = detect_format(path, location.format)
    if location.columns and fmt not in ("csv", "tsv"):
        raise DataError(
            f"columns names the columns of a headerless CSV/TSV, but this file is {fmt}",
            where=str(path),
            fix="remove columns (a JSON or Parquet file names its own fields; map them with "
            "fields:), or set format: csv / tsv",
        )
    facts = inspect_file(path, text=fmt != "parquet")
    if location.sha256 and facts.sha256 != location.sha256.lower():
        raise DataError(
            f"sha256 mismatch: expected {location.sha256}, got {facts.sha256}",
            where=str(path),
            fix="the file changed or the download is corrupt; check the source "
            "and update sha256 in the spec if the new content is right",
        )
    options = {
        "format": fmt,
        "max_rows": location.max_rows,
        "columns": columns if fmt in ("csv", "tsv") else None,
    }
    content_hash = snapshot_key(facts.sha256, options)
    out = raw_dir / f"{content_hash}.parquet"
    reused = _existing(raw_dir, content_hash, name, origin, facts.sha256)
    if reused is not None:
        return reused
    start = time.perf_counter()
    source = read_batches(path, fmt, columns=columns, blank_lines=facts.blank_lines)
    # write_batches writes a temp file and renames it: a failure never leaves a half snapshot
    rows = write_batches(
        _row_groups(_first_rows(source.tables, location.max_rows)), out, source.schema
    )
    log.info(
        "fetch %s: %d rows from %s in %.2fs -> %s",
        name,
        rows,
        origin,
        time.perf_counter() - start,
        out.name,
    )
    return Snapshot(name, out, content_hash, rows, origin, facts.sha256)


def _first_rows(tables: Iterator[pa.Table], max_rows: int | None) -> Iterator[pa.Table]:
    """The first `max_rows` rows (all when None). The rest is still read: a bad row anywhere
    in the file fails the fetch, with or without max_rows."""
    left = max_rows
    for table in tables:
        if left is None:
            yield table
        elif left > 0:
            yield table.slice(0, left)
            left -= min(left, table.num_rows)


def _row_groups(tables: Iterator[pa.Table], rows: int = ROW_GROUP_ROWS) -> Iterator[pa.Table]:
    """The same rows in tables of whole row groups (the last may be short): each table the
    writer gets becomes its own row groups, so the reader's small pieces are joined first."""
    pending: list[pa.Table] = []
    count = 0
    for table in tables:
        pending.append(table)
        count += table.num_rows
        if count >= rows:
            joined = pa.concat_tables(pending)  # zero-copy: chunks are kept
            whole = count - count % rows
            yield joined.slice(0, whole)
            pending, count = [joined.slice(whole)], count - whole
    if count:
        yield pa.concat_tables(pending)


# ---------------------------------------------------------------- URLs


def _download(location: DataLocation, workspace: Workspace) -> Path:
    """Download `location.url` into the workspace (temp file, then rename); retries with backoff.

    With a sha256 in the spec an earlier download of the same bytes is reused.
    """
    url = location.url
    folder = workspace.data_dir / "downloads"
    folder.mkdir(parents=True, exist_ok=True)
    suffix = Path(urllib.parse.urlparse(url).path).suffix or ".bin"
    if location.sha256:
        cached = folder / f"{location.sha256.lower()}{suffix}"
        if cached.exists():
            log.info("fetch %s: reusing the earlier download %s", redact_url(url), cached.name)
            return cached
    tmp_path = temporary_name(folder / "download")
    try:
        _download_with_retries(url, tmp_path)
        out = folder / f"{file_sha256(tmp_path)}{suffix}"
        os.replace(tmp_path, out)  # named by its content, known only once it is all here
        return out
    finally:
        tmp_path.unlink(missing_ok=True)


def _download_with_retries(url: str, target: Path) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "mlora-pipeline"})
    shown = redact_url(url)  # what logs and errors say
    for attempt in range(1, URL_ATTEMPTS + 1):
        try:
            with (
                urllib.request.urlopen(request, timeout=URL_TIMEOUT_S) as answer,
                target.open("wb") as fh,
            ):
                while chunk := answer.read(CHUNK):
                    fh.write(chunk)
            return
        except urllib.error.HTTPError as err:
            retry = err.code >= 500 or err.code == 429
            reason = f"HTTP {err.code} {err.reason}"
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            retry, reason = True, str(getattr(err, "reason", err))
        if not retry or attempt == URL_ATTEMPTS:
            raise DataError(
                f"download failed after {attempt} attempt(s): {reason}",
                where=shown,
                fix="check the URL and the network; 4xx errors are not retried",
            )
        wait = URL_BACKOFF_S * 2 ** (attempt - 1)
        log.warning(
            "download %s: %s, retry %d/%d in %.1fs", shown, reason, attempt, URL_ATTEMPTS - 1, wait
        )
        time.sleep(wait)


# ---------------------------------------------------------------- Hugging Face hub


def _fetch_hub(location: DataLocation, name: str, raw_dir: Path, workspace: Workspace) -> Snapshot:
    """Load a hub dataset with `datasets.load_dataset`; HF_TOKEN comes from the environment only.

    A pinned revision (full commit sha) fixes the content, so its snapshot is
    reused without touching the network. Otherwise the dataset is loaded (the
    datasets cache avoids a new download) and its fingerprint joins the hash.
    """
    hub = location.hf
    origin = f"hf:{hub.id}/{hub.config or 'default'}/{hub.split}@{hub.revision or 'unpinned'}"
    key = ["hf", hub.id, hub.config, hub.split, hub.revision, location.max_rows]
    pinned = hub.revision is not None and HUB_SHA_RE.match(hub.revision) is not None
    if pinned:
        found = _existing(raw_dir, snapshot_key(*key), name, origin)
        if found:
            return found
    start = time.perf_counter()
    dataset = _load_hub(hub, origin, workspace)
    if hub.streaming:
        return _stream_snapshot(dataset, location.max_rows, raw_dir, key, pinned, name, origin)
    content_hash = snapshot_key(*key) if pinned else snapshot_key(*key, dataset._fingerprint)
    found = _existing(raw_dir, content_hash, name, origin)
    if found:
        return found
    if location.max_rows is not None:
        dataset = dataset.select(range(min(location.max_rows, len(dataset))))
    table = dataset.with_format("arrow")[:]  # applies any index mapping; no copy otherwise
    if table.num_rows == 0:
        raise DataError("the dataset split is empty", where=origin, fix="check the split name")
    table = table.append_column(ROW_COLUMN, pa.array(range(1, table.num_rows + 1), pa.int64()))
    out = raw_dir / f"{content_hash}.parquet"
    write_parquet(table, out)
    log.info(
        "fetch %s: %d rows from %s in %.2fs",
        name,
        table.num_rows,
        origin,
        time.perf_counter() - start,
    )
    return Snapshot(name, out, content_hash, table.num_rows, origin)


def _existing(
    raw_dir: Path, content_hash: str, name: str, origin: str, file_sha: str | None = None
) -> Snapshot | None:
    """The snapshot of this content hash made earlier, or None (files, URLs, hub alike)."""
    out = raw_dir / f"{content_hash}.parquet"
    if not out.exists():
        return None
    rows = pq.ParquetFile(out).metadata.num_rows
    log.info(
        "fetch %s: unchanged (%s), reused snapshot %s (%d rows)",
        name,
        origin,
        content_hash[:12],
        rows,
    )
    return Snapshot(name, out, content_hash, rows, origin, file_sha, reused=True)


def _load_hub(hub, origin: str, workspace: Workspace):
    import datasets  # deferred: importing datasets costs ~0.5 s and only hub sources need it

    token = os.environ.get("HF_TOKEN") or None  # never logged, never stored
    try:
        return datasets.load_dataset(
            hub.id,
            hub.config,
            split=hub.split,
            revision=hub.revision,
            streaming=hub.streaming,
            token=token,
            cache_dir=str(workspace.hf_home / "datasets"),
        )
    except Exception as err:  # datasets raises many types: offline, not found, gated, bad split
        message = str(err).replace(token, "***") if token else str(err)
        offline = (
            os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1"
        )
        hint = (
            "offline mode is on (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE): fetch it once online "
            "or point the spec at a local copy"
            if offline
            else "check id, config, split and revision, the network, and HF_TOKEN for gated datasets"
        )
        raise DataError(
            f"cannot load the hub dataset: {type(err).__name__}: {message[:300]}",
            where=origin,
            fix=hint,
        ) from None


def _stream_snapshot(
    dataset, max_rows: int | None, raw_dir: Path, key: list, pinned: bool, name: str, origin: str
) -> Snapshot:
    """Write a streamed split to Parquet STREAM_ROWS examples at a time, hashing the batches
    as they go (unpinned: the content joins the snapshot key), so memory holds one batch
    whatever the split's size. The file is renamed to its content hash at the end."""
    start = time.perf_counter()
    digest, rows, schema = hashlib.sha256(), 0, None
    staging = raw_dir / f"{snapshot_key(*key)}.streaming.parquet"
    with contextlib.ExitStack() as stack:
        for examples in _stream_batches(dataset, max_rows):
            if schema is None:
                features = getattr(dataset, "features", None)
                schema = (
                    features.arrow_schema if features else pa.Table.from_pylist(examples).schema
                )
                schema = schema.remove_metadata()
                writer = stack.enter_context(
                    parquet_sink(staging, schema.append(pa.field(ROW_COLUMN, pa.int64())))
                )
            table = _conform(examples, schema, rows, origin)
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, schema) as ipc:
                ipc.write_table(table)
            digest.update(sink.getvalue())
            numbers = pa.array(range(rows + 1, rows + 1 + table.num_rows), pa.int64())
            writer.write_table(table.append_column(ROW_COLUMN, numbers), ROW_GROUP_ROWS)
            rows += table.num_rows
    if schema is None:
        raise DataError("the streamed split is empty", where=origin, fix="check the split name")
    content_hash = snapshot_key(*key) if pinned else snapshot_key(*key, digest.hexdigest())
    out = raw_dir / f"{content_hash}.parquet"
    if out.exists():  # the same content streamed before
        staging.unlink()
        return _existing(raw_dir, content_hash, name, origin)
    os.replace(staging, out)
    log.info(
        "fetch %s: %d rows streamed from %s in %.2fs",
        name,
        rows,
        origin,
        time.perf_counter() - start,
    )
    return Snapshot(name, out, content_hash, rows, origin)


def _stream_batches(dataset, max_rows: int | None) -> Iterator[list[dict]]:
    """The streamed examples in lists of STREAM_ROWS (the last shorter), up to max_rows."""
    batch, rows = [], 0
    for example in dataset:
        batch.append(example)
        rows += 1
        if len(batch) == STREAM_ROWS:
            yield batch
            batch = []
        if max_rows is not None and rows >= max_rows:
            break
    if batch:
        yield batch


def _conform(examples: list[dict], schema: pa.Schema, first: int, origin: str) -> pa.Table:
    """The examples as a table of the split's schema (its features, or the first batch's):
    a field no earlier row had, or a value of another type, is a DataError naming the row."""
    names = set(schema.names)
    for k, example in enumerate(examples):
        extra = sorted(set(example) - names)
        if extra:
            raise DataError(
                f"row {first + k + 1}: field {extra[0]!r} is not among the split's fields "
                f"(its declared features, or those of its first rows: {', '.join(schema.names)})",
                where=origin,
                fix="give every row the same fields, or load the split with streaming: false",
            )
    try:
        return pa.Table.from_pylist(examples, schema=schema)
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise DataError(
            f"rows {first + 1}-{first + len(examples)}: a value does not fit the type of the "
            f"rows before it ({err})",
            where=origin,
            fix="give each field one type in every row, or load the split with streaming: false",
        ) from None
