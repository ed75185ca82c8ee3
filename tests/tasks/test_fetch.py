"""fetch: every local format, row numbers, reuse, URLs (local HTTP server), hub, bad inputs."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq
import pytest

from multilora_pipeline.data_specs.errors import DataError
from multilora_pipeline.data_specs.schema import DataLocation, EvalSuiteSpec, HubDataset, SourceSpec
from multilora_pipeline.tasks.data import fetch as fetch_module
from multilora_pipeline.tasks.data.fetch import ROW_COLUMN, fetch
from multilora_pipeline.tasks.data.files import json_rows as read_json
from multilora_pipeline.tasks.data.files import parquet_rows as read_parquet
from multilora_pipeline.tasks.data.files.read import read_batches, read_table
from multilora_pipeline.tasks.data.normalise import normalise

BAD = Path(__file__).resolve().parents[1] / "data_specs" / "bad_inputs"
CASES = json.loads((BAD / "CASES.json").read_text())["cases"]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def rows_of(snapshot) -> list[dict]:
    return pq.read_table(snapshot.path).to_pylist()


def test_jsonl_keeps_columns_and_counts_lines_with_blank_lines(tmp_path, workspace):
    write(tmp_path / "a.jsonl", '{"q": "one", "n": 1}\n\n{"q": "two", "n": 2}\n')
    snap = fetch(DataLocation(path="a.jsonl"), "a", tmp_path, workspace)
    assert snap.rows == 2 and snap.origin == f"file:{tmp_path / 'a.jsonl'}"
    assert rows_of(snap) == [
        {"q": "one", "n": 1, ROW_COLUMN: 1},
        {"q": "two", "n": 2, ROW_COLUMN: 3},
    ]
    assert snap.path.parent == workspace.data_dir / "raw"
    assert snap.path.name == f"{snap.content_hash}.parquet"
    raw = (tmp_path / "a.jsonl").read_bytes()
    assert snap.file_sha256 == hashlib.sha256(raw).hexdigest()


@pytest.mark.parametrize(
    "payload",
    [
        [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}],
        {"data": [{"instruction": "a", "output": "b"}, {"instruction": "c", "output": "d"}]},
    ],
)
def test_json_list_or_data_key(tmp_path, workspace, payload):
    write(tmp_path / "a.json", json.dumps(payload))
    snap = fetch(DataLocation(path="a.json"), "a", tmp_path, workspace)
    assert [r[ROW_COLUMN] for r in rows_of(snap)] == [1, 2]
    assert rows_of(snap)[1]["instruction"] == "c"


def test_csv_with_header_reads_text_as_is(tmp_path, workspace):
    write(tmp_path / "a.csv", 'text,price\n"hello, world",1.50\nbye,007\n')
    snap = fetch(DataLocation(path="a.csv"), "a", tmp_path, workspace)
    # numbers stay text: "1.50" and "007" are not reformatted; row 1 is the header
    assert rows_of(snap) == [
        {"text": "hello, world", "price": "1.50", ROW_COLUMN: 2},
        {"text": "bye", "price": "007", ROW_COLUMN: 3},
    ]


def test_headerless_mmlu_csv_takes_column_names_from_the_template(tmp_path, workspace):
    write(tmp_path / "k.csv", 'Q1?,a,b,c,d,A\n"Two\nlines?",a,b,c,d,D\n')
    spec = EvalSuiteSpec(name="k", path="k.csv", template="mmlu")
    rows = rows_of(fetch(spec, "k", tmp_path, workspace))
    assert list(rows[0]) == ["question", "A", "B", "C", "D", "answer", ROW_COLUMN]
    assert rows[1]["question"] == "Two\nlines?" and rows[1][ROW_COLUMN] == 2


def test_tsv_and_parquet_and_explicit_format(tmp_path, workspace):
    write(tmp_path / "a.tsv", 'premise\thypothesis\tlabel\nA "quoted" cat.\tA cat.\tentailment\n')
    rows = rows_of(fetch(DataLocation(path="a.tsv"), "a", tmp_path, workspace))
    assert rows == [
        {"premise": 'A "quoted" cat.', "hypothesis": "A cat.", "label": "entailment", ROW_COLUMN: 2}
    ]
    pq.write_table(pa.table({"x": [1, 2, 3]}), tmp_path / "b.data")
    snap = fetch(
        DataLocation(path="b.data", format="parquet", max_rows=2), "b", tmp_path, workspace
    )
    assert rows_of(snap) == [{"x": 1, ROW_COLUMN: 1}, {"x": 2, ROW_COLUMN: 2}]


def test_unchanged_file_is_reused_and_a_change_is_not(tmp_path, workspace, caplog):
    path = write(tmp_path / "a.jsonl", '{"q": "one"}\n')
    first = fetch(DataLocation(path="a.jsonl"), "a", tmp_path, workspace)
    mtime = first.path.stat().st_mtime_ns
    with caplog.at_level("INFO", logger="mlora.fetch"):
        again = fetch(DataLocation(path="a.jsonl"), "a", tmp_path, workspace)
    assert again.reused and not first.reused
    assert again.path == first.path and again.path.stat().st_mtime_ns == mtime
    assert "reused" in caplog.text
    limited = fetch(DataLocation(path="a.jsonl", max_rows=1), "a", tmp_path, workspace)
    assert limited.content_hash != first.content_hash  # read options are part of the identity
    write(path, '{"q": "two"}\n')
    changed = fetch(DataLocation(path="a.jsonl"), "a", tmp_path, workspace)
    assert not changed.reused and changed.content_hash != first.content_hash


def test_date_like_strings_stay_text(tmp_path, workspace):
    write(tmp_path / "a.jsonl", '{"when": "2021-01-01", "q": "x"}\n')
    rows = rows_of(fetch(DataLocation(path="a.jsonl"), "a", tmp_path, workspace))
    assert rows == [{"when": "2021-01-01", "q": "x", ROW_COLUMN: 1}]


def test_mixed_scalar_types_are_kept_as_text(tmp_path, workspace):
    write(tmp_path / "a.jsonl", '{"label": true}\n{"label": "false"}\n')
    assert [
        r["label"] for r in rows_of(fetch(DataLocation(path="a.jsonl"), "a", tmp_path, workspace))
    ] == ["true", "false"]


@pytest.mark.parametrize("batch_records", [1, 20_000])
def test_booleans_mixed_with_numbers_are_text_wherever_batches_fall(
    tmp_path, monkeypatch, batch_records
):
    # Arrow alone reads [0.5, True] as doubles (True -> 1.0) but rejects [True, 0.5].
    monkeypatch.setattr(read_json, "BATCH_RECORDS", batch_records)
    (tmp_path / "a.json").write_text('[{"s": 0.5}, {"s": true}, {"s": 0.25}]')
    table = read_table(tmp_path / "a.json", "json")
    assert table.column("s").to_pylist() == ["0.5", "true", "0.25"]


# ---------------------------------------------------------------- streaming: blocks change nothing

TINY_BLOCK = 64  # bytes: every few lines start a new block (and long lines get a bigger read)


def streamed(path: Path, fmt: str, block_bytes: int, **options) -> pa.Table:
    rows = read_batches(path, fmt, block_bytes=block_bytes, **options)
    parts = list(rows.tables)
    assert all(part.schema.equals(rows.schema) for part in parts)  # the schema came first
    return pa.Table.from_batches([b for part in parts for b in part.to_batches()], rows.schema)


def batch_sizes(path: Path, fmt: str, **options) -> list[int]:
    """Rows in each table the reader yields, with the block and batch sizes read at call time."""
    return [part.num_rows for part in read_batches(path, fmt, **options).tables]


def numbered(table: pa.Table, first: int = 1) -> pa.Table:
    return table.append_column(
        ROW_COLUMN, pa.array(range(first, first + table.num_rows), pa.int64())
    )


# Each file's types are settled by a line after the first tiny block; Arrow reading the
# whole file at once is the reference.
ARROW_TYPE_CASES = {
    "null, then text": [{"a": None, "b": 1}] * 5 + [{"a": "x", "b": 2}],
    "int, then float": [{"a": 1}] * 5 + [{"a": 2.5}],
    "date-like, then text": [{"when": "2021-01-01"}] * 5 + [{"when": "soon"}],
    "struct fields merge": [{"m": {"x": 1}}] * 5 + [{"m": {"y": "s"}}, {"m": None}],
    "empty list, then ints": [{"l": []}] * 5 + [{"l": [1, 2]}],
    "a field appears late": [{"a": 1}] * 5 + [{"a": 2, "late": "x"}],
    "a text field named timestamp": [{"timestamp": "noon"}] * 5 + [{"timestamp": "x", "n": 1}],
    "a line longer than a block": [{"a": "word " * 40}] * 3 + [{"a": "short"}],
}


@pytest.mark.parametrize("records", ARROW_TYPE_CASES.values(), ids=ARROW_TYPE_CASES.keys())
def test_jsonl_in_tiny_blocks_equals_arrow_reading_the_whole_file(tmp_path, records):
    path = write(tmp_path / "a.jsonl", "".join(json.dumps(r) + "\n" for r in records))
    whole = numbered(pa_json.read_json(path))
    assert streamed(path, "jsonl", TINY_BLOCK).equals(whole)
    assert streamed(path, "jsonl", 1 << 20).equals(whole)


def test_jsonl_without_a_final_line_break_or_with_trailing_spaces(tmp_path):
    for tail in ("", "   "):
        path = write(tmp_path / "a.jsonl", '{"a": 1}\n{"a": 2}' + tail)
        assert streamed(path, "jsonl", TINY_BLOCK).to_pylist() == [
            {"a": 1, ROW_COLUMN: 1},
            {"a": 2, ROW_COLUMN: 2},
        ]


LINE_READER_CASES = {  # blank lines: the line reader, BATCH_RECORDS at a time
    "int, then float": [{"a": 1}] * 5 + [{"a": 2.5}],
    "null, then text; struct fields merge": [{"a": None, "m": {"x": 1}}] * 5
    + [{"a": "x", "m": {"y": "s"}}],
    "columns come from the first record": [{"a": 1}] * 5 + [{"a": 2, "late": "x"}],
    "dates stay text": [{"when": "2021-01-01"}] * 6,
}


@pytest.mark.parametrize("records", LINE_READER_CASES.values(), ids=LINE_READER_CASES.keys())
def test_line_reader_in_small_batches_equals_from_pylist_of_all_records(
    tmp_path, monkeypatch, records
):
    lines = [json.dumps(r) for r in records]
    path = write(tmp_path / "a.jsonl", "\n".join(lines[:2] + [""] + lines[2:]) + "\n")
    monkeypatch.setattr(read_json, "BATCH_RECORDS", 2)
    got = streamed(path, "jsonl", TINY_BLOCK, blank_lines=True)
    assert batch_sizes(path, "jsonl", blank_lines=True) == [2, 2, 2]
    line_numbers = [1, 2] + list(range(4, len(records) + 2))
    expected = pa.Table.from_pylist(records)
    assert got.equals(expected.append_column(ROW_COLUMN, pa.array(line_numbers, pa.int64())))


def test_mixed_types_across_batches_become_text_and_a_nested_clash_names_its_line(
    tmp_path, monkeypatch, caplog
):
    monkeypatch.setattr(read_json, "BATCH_RECORDS", 2)
    path = write(
        tmp_path / "a.jsonl",
        '{"label": true, "n": 1}\n{"label": false, "n": 2}\n\n{"label": "maybe", "n": 3}\n',
    )
    with caplog.at_level("WARNING", logger="mlora.fetch"):
        rows = streamed(path, "jsonl", TINY_BLOCK, blank_lines=True).to_pylist()
    assert [r["label"] for r in rows] == ["true", "false", "maybe"]  # JSON spelling
    assert [r["n"] for r in rows] == [1, 2, 3] and [r[ROW_COLUMN] for r in rows] == [1, 2, 4]
    assert batch_sizes(path, "jsonl", blank_lines=True) == [2, 1]  # the clash spans batches
    assert "field 'label' mixes value types; kept as text" in caplog.text
    write(path, '{"tags": ["a"]}\n{"tags": ["b"]}\n{"tags": "c"}\n')
    with pytest.raises(DataError, match="line 3, field 'tags'") as caught:
        streamed(path, "jsonl", TINY_BLOCK)
    assert caught.value.fix


def test_csv_rows_count_on_across_blocks_and_a_late_bad_row_is_named(tmp_path):
    body = "".join(f'"text, {i}",{i}\n' for i in range(200))
    path = write(tmp_path / "a.csv", "text,n\n" + body)
    got = streamed(path, "csv", 256)
    assert got.num_rows == 200 and got.column(ROW_COLUMN).to_pylist() == list(range(2, 202))
    assert got.slice(150, 1).to_pylist() == [{"text": "text, 150", "n": "150", ROW_COLUMN: 152}]
    write(path, "text,n\n" + body + "only one field\n")
    with pytest.raises(DataError, match="row 202") as caught:
        streamed(path, "csv", 256)
    assert "expected 2 columns, got 1" in str(caught.value)


def test_parquet_is_read_in_batches_with_row_numbers(tmp_path, monkeypatch):
    monkeypatch.setattr(read_parquet, "BATCH_ROWS", 7)
    table = pa.table({"x": range(50), ROW_COLUMN: ["source's own"] * 50})
    pq.write_table(table, tmp_path / "a.parquet", row_group_size=9)
    rows = read_batches(tmp_path / "a.parquet", "parquet")
    parts = list(rows.tables)
    assert len(parts) == 8 and max(p.num_rows for p in parts) == 7
    got = pa.Table.from_batches([b for p in parts for b in p.to_batches()], rows.schema)
    assert got.equals(numbered(table.drop_columns([ROW_COLUMN])))


def jsonl_file(path: Path, rows: int) -> Path:
    return write(
        path, "".join(json.dumps({"q": f"question {i} " * 8, "n": i}) + "\n" for i in range(rows))
    )


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_reading_holds_a_few_blocks_not_the_file(tmp_path, monkeypatch, fmt):
    monkeypatch.setattr(read_parquet, "BATCH_ROWS", 1_000)  # Parquet batches, in rows
    path = jsonl_file(tmp_path / "a.jsonl", 40_000)  # ~4 MB of text
    whole = pa_json.read_json(path)
    if fmt == "csv":
        path = tmp_path / "a.csv"
        pa_csv.write_csv(whole, path)
    elif fmt == "parquet":
        path = tmp_path / "a.parquet"
        pq.write_table(whole, path, row_group_size=2_000)
    rows = read_batches(path, fmt, block_bytes=16 << 10)  # CSV reads ~40 blocks ahead
    before, most, count = pa.total_allocated_bytes(), 0, 0
    for part in rows.tables:
        most = max(most, pa.total_allocated_bytes() - before)
        count += part.num_rows
    assert count == whole.num_rows
    assert most < whole.nbytes / 5, (most, whole.nbytes)  # reading it whole: > whole.nbytes


def test_fetch_streams_into_row_groups_and_max_rows_still_checks_every_line(
    tmp_path, workspace, monkeypatch
):
    monkeypatch.setattr(read_json, "BLOCK_BYTES", 64 << 10)  # ~50 blocks
    jsonl_file(tmp_path / "a.jsonl", 25_000)
    assert len(batch_sizes(tmp_path / "a.jsonl", "jsonl")) > 1  # fetch joins small tables
    snap = fetch(DataLocation(path="a.jsonl"), "a", tmp_path, workspace)
    meta = pq.ParquetFile(snap.path).metadata
    assert snap.rows == 25_000 and meta.num_row_groups == 3  # 10k, 10k, 5k
    assert meta.row_group(2).num_rows == 5_000
    assert pq.read_table(snap.path).equals(numbered(pa_json.read_json(tmp_path / "a.jsonl")))
    capped = fetch(DataLocation(path="a.jsonl", max_rows=12_345), "a", tmp_path, workspace)
    assert capped.rows == 12_345
    assert pq.read_table(capped.path).column(ROW_COLUMN)[-1].as_py() == 12_345
    with (tmp_path / "a.jsonl").open("a") as fh:
        fh.write('{"q": "cut off\n')
    with pytest.raises(DataError, match="line 25001"):  # as before streaming: the whole file
        fetch(DataLocation(path="a.jsonl", max_rows=10), "a", tmp_path, workspace)


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("case", CASES, ids=[c["kind"] for c in CASES])
def test_bad_input_corpus_fails_clearly(case, workspace):
    spec = SourceSpec(
        name="bad", path=case["file"], template=case["template"], **case.get("location", {})
    )
    with pytest.raises(DataError) as caught:
        snapshot = fetch(spec, "bad", BAD, workspace)
        assert case["stage"] == "normalise", "fetch accepted a file it should reject"
        normalise(snapshot, source="bad", template=case["template"], category="x")
    message = str(caught.value)
    assert case["file"] in message
    for fragment in case["expect"]:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert caught.value.fix, "every error says what to do"
    if case["stage"] == "fetch":  # nothing half-written
        raw = workspace.data_dir / "raw"
        assert not raw.exists() or not any(raw.iterdir())


def test_bad_input_corpus_covers_at_least_twelve_kinds():
    assert len({c["kind"] for c in CASES}) >= 12


# ---------------------------------------------------------------- URLs


class Server:
    """A loopback HTTP server whose answers a test scripts: path -> list of (status, body)."""

    def __init__(self):
        self.script: dict[str, list[tuple[int, bytes]]] = {}
        self.hits: list[str] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's naming)
                owner.hits.append(self.path)
                answers = owner.script.get(self.path, [(404, b"not found")])
                status, body = answers.pop(0) if len(answers) > 1 else answers[0]
                self.send_response(status)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(fetch_module, "URL_BACKOFF_S", 0.01)  # retries without the real waits
    srv = Server()
    yield srv
    srv.httpd.shutdown()


def test_url_download_with_retry_sha_check_and_reuse(server, tmp_path, workspace):
    body = b'{"q": "one"}\n{"q": "two"}\n'
    sha = hashlib.sha256(body).hexdigest()
    server.script["/d.jsonl"] = [(503, b"busy"), (200, body)]
    location = DataLocation(url=f"{server.url}/d.jsonl", sha256=sha)
    snap = fetch(location, "d", tmp_path, workspace)
    assert snap.rows == 2 and snap.origin == f"url:{server.url}/d.jsonl"
    assert server.hits == ["/d.jsonl", "/d.jsonl"]  # one retry after the 503
    again = fetch(location, "d", tmp_path, workspace)
    assert again.reused and len(server.hits) == 2  # known sha: no second download
    assert not list((workspace.data_dir / "downloads").glob("*.tmp"))


def test_url_errors_name_the_url(server, tmp_path, workspace):
    server.script["/page.json"] = [(200, b"<!DOCTYPE html><html>login</html>")]
    with pytest.raises(DataError, match="HTML page") as caught:
        fetch(DataLocation(url=f"{server.url}/page.json"), "p", tmp_path, workspace)
    assert f"{server.url}/page.json" in str(caught.value)
    with pytest.raises(DataError, match="HTTP 404"):
        fetch(DataLocation(url=f"{server.url}/gone.jsonl"), "g", tmp_path, workspace)
    assert server.hits.count("/gone.jsonl") == 1  # client errors are not retried
    server.script["/d.jsonl"] = [(200, b'{"q": 1}\n')]
    with pytest.raises(DataError, match="sha256 mismatch"):
        fetch(DataLocation(url=f"{server.url}/d.jsonl", sha256="ab" * 32), "d", tmp_path, workspace)


def test_a_long_query_value_no_rule_knows_is_never_logged_stored_or_quoted(
    server, tmp_path, workspace, caplog
):
    secret = "Zq8xv2KpT0mWc7RbN4sLdE"  # under a name no credential rule knows
    server.script[f"/d.jsonl?dl=1&session={secret}"] = [(503, b"busy"), (200, b'{"q": 1}\n')]
    server.script[f"/page.json?st={secret}"] = [(200, b"<!DOCTYPE html><html>login</html>")]
    with caplog.at_level("INFO"):
        snap = fetch(
            DataLocation(url=f"{server.url}/d.jsonl?dl=1&session={secret}"),
            "d",
            tmp_path,
            workspace,
        )
        with pytest.raises(DataError) as caught:
            fetch(DataLocation(url=f"{server.url}/page.json?st={secret}"), "p", tmp_path, workspace)
    assert server.hits[-1] == f"/page.json?st={secret}"  # the real URL was asked for
    assert snap.origin == f"url:{server.url}/d.jsonl?dl=1&session=***"  # short values stay
    assert f"{server.url}/page.json?st=***" in str(caught.value)
    assert secret not in caplog.text + str(caught.value) + snap.origin
    assert "retry 1/" in caplog.text  # the retry line was logged, redacted


# ---------------------------------------------------------------- hub


def test_hub_loading_through_datasets_with_a_local_dataset_folder(tmp_path, workspace):
    folder = tmp_path / "my_dataset"
    folder.mkdir()
    write(
        folder / "train.jsonl",
        '{"question": "q1", "answer": "a\\n#### 1"}\n{"question": "q2", "answer": "b\\n#### 2"}\n',
    )
    location = DataLocation(hf=HubDataset(id=str(folder), split="train"))
    snap = fetch(location, "local_hub", tmp_path, workspace)
    assert snap.origin == f"hf:{folder}/default/train@unpinned"
    assert [r[ROW_COLUMN] for r in rows_of(snap)] == [1, 2]
    assert fetch(location, "local_hub", tmp_path, workspace).reused  # same fingerprint
    capped = fetch(
        DataLocation(hf=HubDataset(id=str(folder), split="train"), max_rows=1),
        "local_hub",
        tmp_path,
        workspace,
    )
    assert capped.rows == 1


def _jsonl_rows(folder: Path, count: int, tag: str = "") -> Path:
    folder.mkdir(exist_ok=True)
    lines = [json.dumps({"question": f"q{i}{tag}", "answer": f"a{i}"}) for i in range(count)]
    return write(folder / "train.jsonl", "\n".join(lines) + "\n")


def test_a_streamed_hub_split_is_written_batch_by_batch_and_reused_by_content(
    tmp_path, workspace, monkeypatch
):
    monkeypatch.setattr(fetch_module, "STREAM_ROWS", 10)
    folder = tmp_path / "streamed"
    _jsonl_rows(folder, 25)
    location = DataLocation(hf=HubDataset(id=str(folder), split="train", streaming=True))
    snap = fetch(location, "streamed", tmp_path, workspace)
    raw = snap.path.parent
    rows = rows_of(snap)
    assert [r[ROW_COLUMN] for r in rows] == list(range(1, 26))
    assert [r["question"] for r in rows] == [f"q{i}" for i in range(25)]
    # one write per 10 examples: the split was never one table in memory
    assert pq.ParquetFile(snap.path).metadata.num_row_groups == 3
    assert sorted(p.name for p in raw.iterdir()) == [snap.path.name]  # no staging file left
    again = fetch(location, "streamed", tmp_path, workspace)
    assert again.reused and again.content_hash == snap.content_hash
    capped = fetch(
        DataLocation(hf=HubDataset(id=str(folder), split="train", streaming=True), max_rows=12),
        "streamed",
        tmp_path,
        workspace,
    )
    assert capped.rows == 12 and capped.content_hash != snap.content_hash
    _jsonl_rows(folder, 25, tag="-edited")  # same shape, other content: another snapshot
    edited = fetch(location, "streamed", tmp_path, workspace)
    assert not edited.reused and edited.content_hash != snap.content_hash
    assert rows_of(edited)[0]["question"] == "q0-edited"


def test_a_streamed_row_with_a_field_the_earlier_rows_lack_is_named(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(fetch_module, "STREAM_ROWS", 4)

    def examples():
        for i in range(7):
            yield {"text": f"t{i}"} if i != 5 else {"text": "t5", "label": 1}

    streamed = datasets.IterableDataset.from_generator(examples)
    streamed._info.features = None  # as a generator without declared features
    with pytest.raises(DataError) as caught:
        fetch_module._stream_snapshot(streamed, None, tmp_path, ["hf", "x"], False, "s", "hf:x")
    assert "row 6: field 'label'" in str(caught.value) and caught.value.fix
    assert list(tmp_path.iterdir()) == []  # nothing half-written left behind


def test_hub_dataset_offline_or_missing_is_a_clear_error(tmp_path, workspace):
    location = DataLocation(
        hf=HubDataset(id="no-such-org/no-such-dataset", config="x", revision="0" * 40)
    )
    with pytest.raises(DataError) as caught:
        fetch(location, "missing", tmp_path, workspace)
    message = str(caught.value)
    assert "hf:no-such-org/no-such-dataset/x/train@" in message
    assert "cannot load the hub dataset" in message and caught.value.fix
