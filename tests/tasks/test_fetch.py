"""fetch: every local format, row numbers, reuse, URLs (local HTTP server), hub, bad inputs."""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from data_specs.errors import DataError
from data_specs.schema import DataLocation, EvalSuiteSpec, HubDataset, SourceSpec
from tasks import fetch as fetch_module
from tasks.fetch import ROW_COLUMN, fetch
from tasks.normalise import normalise

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
    with caplog.at_level("INFO", logger="tasks.fetch"):
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


def test_hub_dataset_offline_or_missing_is_a_clear_error(tmp_path, workspace):
    location = DataLocation(
        hf=HubDataset(id="no-such-org/no-such-dataset", config="x", revision="0" * 40)
    )
    with pytest.raises(DataError) as caught:
        fetch(location, "missing", tmp_path, workspace)
    message = str(caught.value)
    assert "hf:no-such-org/no-such-dataset/x/train@" in message
    assert "cannot load the hub dataset" in message and caught.value.fix
