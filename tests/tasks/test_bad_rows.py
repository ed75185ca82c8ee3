"""Bad rows: every one is reported at once, or, under `bad_rows: skip`, left out and kept on
record with its reason (the catalog side is in tests/flows/test_data_flow.py)."""

from __future__ import annotations

import json

import pytest

from multilora_pipeline.data_specs.errors import DataError
from multilora_pipeline.data_specs.schema import SourceSpec
from multilora_pipeline.tasks.data.fetch import fetch
from multilora_pipeline.tasks.data.normalise import normalise
from multilora_pipeline.tasks.data.stages import normalise_stage, read_skipped


def _boolq(tmp_path, rows):
    path = tmp_path / "boolq.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _row(i, **changes):
    return {"passage": f"Passage {i}.", "question": f"is it {i}", "label": i % 2 == 0, **changes}


def test_every_bad_row_is_named_in_one_error(tmp_path, workspace):
    rows = [_row(i) for i in range(8)]
    rows[1]["question"] = ""  # two empty fields and an unknown label, in three rows
    rows[4]["passage"] = " "
    rows[6]["label"] = "maybe"
    _boolq(tmp_path, rows)
    source = SourceSpec(name="boolq", path="boolq.jsonl", template="superglue_boolq")
    snap = fetch(source, source.name, tmp_path, workspace)
    with pytest.raises(DataError) as caught:
        normalise(snap, source="boolq", template="superglue_boolq", category="nlu")
    text = str(caught.value)
    assert "3 bad row(s)" in text
    assert "row 2, field 'question': required field is empty" in text
    assert "row 5, field 'passage': required field is empty" in text
    assert "row 7, field 'label': unknown label value 'maybe'" in text
    assert "bad_rows: skip" in text  # the way out is named


def test_many_bad_rows_are_listed_up_to_twenty_and_counted(tmp_path, workspace):
    _boolq(tmp_path, [_row(i, question="" if i % 2 else f"q{i}") for i in range(60)])
    source = SourceSpec(name="boolq", path="boolq.jsonl", template="superglue_boolq")
    snap = fetch(source, source.name, tmp_path, workspace)
    with pytest.raises(DataError) as caught:
        normalise(snap, source="boolq", template="superglue_boolq", category="nlu")
    text = str(caught.value)
    assert "30 bad row(s)" in text and "... and 10 more" in text
    assert text.count("required field is empty") == 20


def test_skipped_rows_are_left_out_and_kept_on_record(tmp_path, workspace):
    rows = [_row(i) for i in range(10)]
    rows[3]["label"] = "maybe"
    rows[8]["question"] = ""
    _boolq(tmp_path, rows)
    source = SourceSpec(
        name="boolq", path="boolq.jsonl", template="superglue_boolq", bad_rows="skip"
    )
    snap = fetch(source, source.name, tmp_path, workspace)
    out = normalise_stage(workspace, snap, source)
    assert out.rows == 8
    skipped = read_skipped(out).to_pylist()
    assert [(s["row"], s["field"]) for s in skipped] == [(9, "question"), (4, "label")]
    assert "unknown label value 'maybe'" in skipped[1]["reason"]
    # The same data under the default policy is another output: it fails.
    strict = SourceSpec(name="boolq", path="boolq.jsonl", template="superglue_boolq")
    with pytest.raises(DataError, match="2 bad row"):
        normalise_stage(workspace, snap, strict)


def test_a_limit_on_the_skipped_share_fails_the_source(tmp_path, workspace):
    _boolq(tmp_path, [_row(i, question="" if i < 3 else f"q{i}") for i in range(10)])
    source = SourceSpec(
        name="boolq",
        path="boolq.jsonl",
        template="superglue_boolq",
        bad_rows="skip",
        max_bad_fraction=0.2,
    )
    snap = fetch(source, source.name, tmp_path, workspace)
    with pytest.raises(DataError, match=r"3 of 10 rows are bad \(30.0%\), more than"):
        normalise_stage(workspace, snap, source)
    assert not list((workspace.data_dir / "normalise").glob("*/records.parquet"))
