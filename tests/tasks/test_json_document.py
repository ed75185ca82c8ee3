"""A JSON document's records decoded an element at a time (tasks/data/files/json_document.py):
the same records and errors as json.load, whatever the chunk size, in bounded memory."""

from __future__ import annotations

import json
import tracemalloc

import pytest

from multilora_pipeline.data_specs.errors import DataError
from multilora_pipeline.tasks.data.files import json_document
from multilora_pipeline.tasks.data.files.json_document import document_records
from multilora_pipeline.tasks.data.files.read import read_table

RECORDS = [
    {"instruction": "naïve café ☕", "output": "ok", "n": 12345678901234567890},
    {"instruction": "nested", "output": {"a": [1, 2.5e-3, None, True]}, "n": -0.0},
    {"instruction": 'quotes " and \\ and \n', "output": "x" * 300, "n": 7},
    {},
]

DOCUMENTS = {
    "a list on one line": json.dumps(RECORDS),
    "a list, indented": json.dumps(RECORDS, indent=2),
    "data with other members": json.dumps({"version": "1.1", "data": RECORDS, "more": [1, {}]}),
    "data first, spaced": json.dumps(
        {"data": RECORDS, "x": "y"}, indent="\t", separators=(" , ", " : ")
    ),
    "a byte order mark": "\ufeff" + json.dumps(RECORDS),
    "an empty list": "  [ ]  ",
}


@pytest.mark.parametrize("chunk", [1, 7, 1 << 20])
@pytest.mark.parametrize("text", DOCUMENTS.values(), ids=DOCUMENTS.keys())
def test_records_equal_json_load_whatever_the_chunk(tmp_path, monkeypatch, text, chunk):
    monkeypatch.setattr(json_document, "CHUNK_CHARS", chunk)
    path = tmp_path / "a.json"
    path.write_text(text, encoding="utf-8")
    loaded = json.loads(text.lstrip("\ufeff"))
    expected = loaded["data"] if isinstance(loaded, dict) else loaded
    assert list(document_records(path)) == expected


def _json_load_error(text: str) -> tuple[int, int]:
    try:
        json.loads(text)
    except json.JSONDecodeError as err:
        return err.lineno, err.colno
    raise AssertionError("the text is valid JSON")


@pytest.mark.parametrize("chunk", [5, 1 << 20])
def test_a_truncated_or_broken_document_is_named_where_json_load_names_it(
    tmp_path, monkeypatch, chunk
):
    monkeypatch.setattr(json_document, "CHUNK_CHARS", chunk)
    good = json.dumps({"data": RECORDS}, indent=1)
    broken = {
        "cut off": good[: len(good) * 2 // 3],
        "a missing comma": good.replace('"ok",', '"ok"', 1),
        "a missing colon": good.replace('"n":', '"n"', 1),
        "a trailing comma": good.replace("\n  {}", "\n  {},", 1),
        "extra data": good + "\n[]",
    }
    for case, text in broken.items():
        path = tmp_path / "a.json"
        path.write_text(text)
        with pytest.raises(DataError) as err:
            list(document_records(path))
        line, column = _json_load_error(text)
        assert f"line {line}" in err.value.where, case
        assert f"(column {column})" in err.value.args[0], case
        assert "truncated" in err.value.args[0]


@pytest.mark.parametrize(
    "text, message",
    [
        ('"records"', "top level is a JSON str"),
        ('{"rows": []}', "top level is a JSON dict"),
        ("{}", "top level is a JSON dict"),
        ('{"data": 5}', '"data" appears twice, or is not a list'),
        ('{"data": [], "data": []}', '"data" appears twice'),
        ('[{"a": 1}, 2]', "element 2 is a int"),
    ],
)
def test_a_document_without_a_list_of_objects_says_what_to_give(tmp_path, text, message):
    path = tmp_path / "a.json"
    path.write_text(text)
    with pytest.raises(DataError, match=message):
        list(document_records(path))


def test_an_element_longer_than_many_chunks_is_read_whole(tmp_path, monkeypatch):
    monkeypatch.setattr(json_document, "CHUNK_CHARS", 64)
    records = [{"a": "short"}, {"a": "long " * 20_000, "b": list(range(2000))}, {"a": "end"}]
    path = tmp_path / "a.json"
    path.write_text(json.dumps(records))
    assert list(document_records(path)) == records


def test_memory_is_a_chunk_and_an_element_not_the_document(tmp_path, monkeypatch):
    monkeypatch.setattr(json_document, "CHUNK_CHARS", 1 << 16)
    path = tmp_path / "a.json"
    path.write_text(json.dumps([{"i": i, "text": f"record {i} " * 10} for i in range(40_000)]))
    size = path.stat().st_size  # ~4.6 MB: json.load holds ~10x that as Python objects
    tracemalloc.start()
    try:
        count = sum(1 for _ in document_records(path))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count == 40_000
    assert peak < size / 10


def test_read_table_of_a_document_in_tiny_chunks_numbers_the_elements(tmp_path, monkeypatch):
    monkeypatch.setattr(json_document, "CHUNK_CHARS", 3)
    path = tmp_path / "a.json"
    path.write_text(json.dumps({"data": [{"q": "a", "n": 1}, {"q": "b", "n": 2.5}]}))
    table = read_table(path, "json")
    assert table.to_pylist() == [
        {"q": "a", "n": 1.0, "__row__": 1},
        {"q": "b", "n": 2.5, "__row__": 2},
    ]
