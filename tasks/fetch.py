"""fetch: turn a source (local file, http(s) URL or Hugging Face dataset) into a raw snapshot.

A snapshot is a Parquet file under ``<workspace>/data/raw/<content_hash>.parquet``
holding the source's columns as they are, plus ``__row__``: the 1-based row of
each record in the original file, so every later error can point at it:

- jsonl: the line number (blank lines count, as in an editor);
- json: the element number in the top-level list;
- csv/tsv: the record number, counting a header line as 1 (it is the line
  number unless a quoted field spans lines);
- parquet and hub datasets: the row number.

The content hash identifies the snapshot: the sha256 of the raw bytes combined
with the read options that change the result (format, max_rows, column names).
An unchanged source is not parsed again: when the snapshot for its hash exists
it is reused. Bad input raises `DataError` naming the file, line, row or field.
"""

from __future__ import annotations

import codecs
import csv
import hashlib
import io
import json
import logging
import os
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from data_specs.errors import DataError
from data_specs.schema import DataLocation
from tasks.templates import csv_columns_for
from tasks.workspace import Workspace

log = logging.getLogger(__name__)

ROW_COLUMN = "__row__"
SNAPSHOT_VERSION = 1  # bump when the snapshot layout changes: old snapshots are then not reused
CHUNK = 1 << 20  # bytes read per step when hashing / checking a file: bounded memory on big files
SNIFF = 4096  # leading bytes inspected for LFS pointers and HTML pages
URL_ATTEMPTS = 4  # one try plus three retries on network errors and 5xx/429 answers
URL_BACKOFF_S = 1.0  # first retry waits this long, then 2x, 4x
URL_TIMEOUT_S = 60
HUB_SHA_RE = re.compile(r"^[0-9a-f]{40}$")  # a pinned hub revision is a full commit sha
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
    base_dir: Path,
    workspace: Workspace,
    *,
    columns: list[str] | None = None,
) -> Snapshot:
    """Snapshot one source into the workspace (or reuse the snapshot of unchanged content).

    `location` is a DataLocation (a SourceSpec or EvalSuiteSpec works too);
    relative paths resolve against `base_dir` (the spec's folder). `columns`
    names the columns of a headerless CSV/TSV; when omitted and `location`
    has a `template` that declares headerless columns (e.g. mmlu), those are used.
    """
    if columns is None and getattr(location, "template", None):
        columns = csv_columns_for(location.template)
    raw_dir = workspace.data_dir / "raw"
    raw_dir.mkdir(parents=True, exist_ok=True)
    if location.hf is not None:
        return _fetch_hub(location, name, raw_dir, workspace)
    if location.url is not None:
        path = _download(location, workspace)
        try:
            return _fetch_file(path, f"url:{location.url}", name, location, raw_dir, columns)
        except DataError as err:  # name the URL, not only the downloaded copy
            raise DataError(
                err.what, where=f"{location.url} (saved as {err.where})", fix=err.fix
            ) from None
    path = Path(location.path)
    path = (path if path.is_absolute() else Path(base_dir) / path).resolve()
    return _fetch_file(path, f"file:{path}", name, location, raw_dir, columns)


# ---------------------------------------------------------------- local files


def _fetch_file(
    path: Path,
    origin: str,
    name: str,
    location: DataLocation,
    raw_dir: Path,
    columns: list[str] | None,
) -> Snapshot:
    fmt = detect_format(path, location.format)
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
    content_hash = _digest(SNAPSHOT_VERSION, facts.sha256, options)
    out = raw_dir / f"{content_hash}.parquet"
    if out.exists():
        rows = pq.ParquetFile(out).metadata.num_rows
        log.info(
            "fetch %s: unchanged (%s), reused snapshot %s (%d rows)",
            name,
            origin,
            content_hash[:12],
            rows,
        )
        return Snapshot(name, out, content_hash, rows, origin, facts.sha256, reused=True)
    start = time.perf_counter()
    table = read_table(path, fmt, columns=columns, blank_lines=facts.blank_lines)
    if location.max_rows is not None:
        table = table.slice(0, location.max_rows)
    _write_parquet(table, out)
    log.info(
        "fetch %s: %d rows from %s in %.2fs -> %s",
        name,
        table.num_rows,
        origin,
        time.perf_counter() - start,
        out.name,
    )
    return Snapshot(name, out, content_hash, table.num_rows, origin, facts.sha256)


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


def _write_parquet(table: pa.Table, out: Path) -> None:
    """Write next to the target, then rename: a crash never leaves a half snapshot."""
    fd, tmp = tempfile.mkstemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _digest(*parts) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


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
            log.info("fetch %s: reusing the earlier download %s", url, cached.name)
            return cached
    fd, tmp = tempfile.mkstemp(prefix="download.", suffix=".tmp", dir=folder)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        _download_with_retries(url, tmp_path)
        sha = _file_sha256(tmp_path)
        out = folder / f"{sha}{suffix}"
        os.replace(tmp_path, out)
        return out
    finally:
        tmp_path.unlink(missing_ok=True)


def _download_with_retries(url: str, target: Path) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "mlora-pipeline"})
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
                where=url,
                fix="check the URL and the network; 4xx errors are not retried",
            )
        wait = URL_BACKOFF_S * 2 ** (attempt - 1)
        log.warning(
            "download %s: %s, retry %d/%d in %.1fs", url, reason, attempt, URL_ATTEMPTS - 1, wait
        )
        time.sleep(wait)


def _file_sha256(path: Path) -> str:
    sha = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            sha.update(chunk)
    return sha.hexdigest()


# ---------------------------------------------------------------- Hugging Face hub


def _fetch_hub(location: DataLocation, name: str, raw_dir: Path, workspace: Workspace) -> Snapshot:
    """Load a hub dataset with `datasets.load_dataset`; HF_TOKEN comes from the environment only.

    A pinned revision (full commit sha) fixes the content, so its snapshot is
    reused without touching the network. Otherwise the dataset is loaded (the
    datasets cache avoids a new download) and its fingerprint joins the hash.
    """
    hub = location.hf
    origin = f"hf:{hub.id}/{hub.config or 'default'}/{hub.split}@{hub.revision or 'unpinned'}"
    key = [SNAPSHOT_VERSION, "hf", hub.id, hub.config, hub.split, hub.revision, location.max_rows]
    pinned = hub.revision is not None and HUB_SHA_RE.match(hub.revision) is not None
    if pinned:
        found = _existing(raw_dir, _digest(*key), name, origin)
        if found:
            return found
    start = time.perf_counter()
    dataset = _load_hub(hub, origin, workspace)
    if hub.streaming:
        table = _stream_to_table(dataset, location.max_rows, origin)
        content_hash = _digest(*key) if pinned else _digest(*key, _table_digest(table))
    else:
        content_hash = _digest(*key) if pinned else _digest(*key, dataset._fingerprint)
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
    _write_parquet(table, out)
    log.info(
        "fetch %s: %d rows from %s in %.2fs",
        name,
        table.num_rows,
        origin,
        time.perf_counter() - start,
    )
    return Snapshot(name, out, content_hash, table.num_rows, origin)


def _existing(raw_dir: Path, content_hash: str, name: str, origin: str) -> Snapshot | None:
    out = raw_dir / f"{content_hash}.parquet"
    if not out.exists():
        return None
    rows = pq.ParquetFile(out).metadata.num_rows
    log.info("fetch %s: unchanged (%s), reused snapshot %s", name, origin, content_hash[:12])
    return Snapshot(name, out, content_hash, rows, origin, reused=True)


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


def _stream_to_table(dataset, max_rows: int | None, origin: str) -> pa.Table:
    batches, rows, batch = [], 0, []
    for example in dataset:
        batch.append(example)
        rows += 1
        if len(batch) == 10_000:  # bounded Python lists while streaming
            batches.append(pa.Table.from_pylist(batch))
            batch = []
        if max_rows is not None and rows >= max_rows:
            break
    if batch:
        batches.append(pa.Table.from_pylist(batch))
    if not batches:
        raise DataError("the streamed split is empty", where=origin, fix="check the split name")
    return pa.concat_tables(batches, promote_options="permissive")


def _table_digest(table: pa.Table) -> str:
    sink = io.BytesIO()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue()).hexdigest()
