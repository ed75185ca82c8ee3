"""Datasets in the layouts their authors publish: a folder of per-subject headerless CSVs,
a headerless TSV with declared columns, suites with `fields:`. Fixtures are written here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from multilora_pipeline.data_specs.errors import DataError
from multilora_pipeline.data_specs.schema import DataLocation, EvalSuiteSpec, SourceSpec
from multilora_pipeline.tasks.data.fetch import fetch
from multilora_pipeline.tasks.data.normalise import normalise
from multilora_pipeline.tasks.workspace import Workspace


def _mmlu_folder(root: Path) -> Path:
    """MMLU's published layout: one headerless CSV per subject, the subject in the name."""
    folder = root / "mmlu" / "dev"
    folder.mkdir(parents=True)
    (folder / "anatomy_dev.csv").write_text(
        "What is the largest organ?,Skin,Liver,Heart,Lung,A\nWhich bone is in the arm?,Femur,"
        "Tibia,Humerus,Patella,C\n"
    )
    (folder / "astronomy_dev.csv").write_text(
        "Which planet is largest?,Mars,Jupiter,Venus,Earth,B\n"
    )
    return folder


def _records(item, root: Path, workspace: Workspace):
    snap = fetch(item, item.name, root, workspace)
    table = normalise(
        snap,
        source=item.name,
        template=item.template,
        category=item.category,
        fields=getattr(item, "fields", None),
    )
    return snap, table


@pytest.mark.parametrize("path", ["mmlu/dev", "mmlu/dev/*_dev.csv"])
def test_a_folder_or_glob_of_subject_files_loads_with_each_files_subject(path, tmp_path, workspace):
    _mmlu_folder(tmp_path)
    suite = EvalSuiteSpec(
        name="mmlu", path=path, template="mmlu", file_fields=r"(?P<subject>.+)_dev"
    )
    snap, table = _records(suite, tmp_path, workspace)
    assert snap.rows == 3 and "(2 files)" in snap.origin
    meta = [json.loads(m) for m in table.column("meta").to_pylist()]
    assert [(m["file"], m["row"], m["subject"]) for m in meta] == [
        ("anatomy_dev.csv", 1, "anatomy"),
        ("anatomy_dev.csv", 2, "anatomy"),
        ("astronomy_dev.csv", 1, "astronomy"),
    ]
    assert table.column("label").to_pylist() == [0, 2, 1]
    # The snapshot lists every file it was made of, with its hash.
    files = json.loads(snap.path.with_suffix(".files.json").read_text())
    assert [f["file"] for f in files] == ["anatomy_dev.csv", "astronomy_dev.csv"]
    assert all(len(f["sha256"]) == 64 for f in files)
    # Unchanged files: the snapshot is reused; a changed file makes a new one.
    assert fetch(suite, suite.name, tmp_path, workspace).reused
    (tmp_path / "mmlu/dev/astronomy_dev.csv").write_text("Which is a star?,Sun,Moon,Mars,Io,A\n")
    assert not fetch(suite, suite.name, tmp_path, workspace).reused


def test_a_bad_row_in_one_of_several_files_names_that_file_and_row(tmp_path, workspace):
    folder = _mmlu_folder(tmp_path)
    (folder / "astronomy_dev.csv").write_text(
        "Which planet is largest?,Mars,Jupiter,Venus,Earth,Z\n"
    )
    suite = EvalSuiteSpec(name="mmlu", path="mmlu/dev", template="mmlu")
    with pytest.raises(DataError) as caught:
        _records(suite, tmp_path, workspace)
    assert "astronomy_dev.csv, row 1, field 'answer'" in str(caught.value)


def test_several_files_refuse_what_cannot_hold(tmp_path, workspace):
    folder = _mmlu_folder(tmp_path)
    with pytest.raises(DataError, match="does not match file_fields"):
        fetch(
            EvalSuiteSpec(name="m", path="mmlu/dev", template="mmlu", file_fields=r"(?P<s>.+)_val"),
            "m",
            tmp_path,
            workspace,
        )
    with pytest.raises(DataError, match="no files match"):
        fetch(DataLocation(path="mmlu/dev/*_test.csv"), "m", tmp_path, workspace)
    with pytest.raises(DataError, match="sha256 checks one file"):
        fetch(DataLocation(path="mmlu/dev", sha256="ab" * 32), "m", tmp_path, workspace)
    (folder / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="files of several kinds"):
        fetch(DataLocation(path="mmlu/dev"), "m", tmp_path, workspace)
    assert (
        fetch(
            DataLocation(path="mmlu/dev", format="csv", columns=list("qabcde")),
            "m",
            tmp_path,
            workspace,
        ).rows
        == 3
    )
    with pytest.raises(ValueError, match="named group"):
        EvalSuiteSpec(name="m", path="x", template="mmlu", file_fields=".+_dev")


def test_a_headerless_tsv_with_declared_columns_builds_gsm8k_answers_from_the_rationale(
    tmp_path, workspace
):
    # FLAN's CoT GSM8K: question, final answer, rationale; no header, no "####" line.
    (tmp_path / "cot.tsv").write_text(
        "Tom has 3 apples and buys 4. How many?\t7\tHe has 3 + 4 = 7 apples.\n"
        "Ann has 10 pens and loses 2. How many?\t8\t10 - 2 = 8.\n"
    )
    source = SourceSpec(
        name="cot",
        path="cot.tsv",
        template="gsm8k",
        category="math",
        columns=["question", "final_answer", "rationale"],
    )
    snap, table = _records(source, tmp_path, workspace)
    assert snap.rows == 2  # the first line is data, not a header
    assert table.column("response").to_pylist() == [
        " He has 3 + 4 = 7 apples.\n#### 7",
        " 10 - 2 = 8.\n#### 8",
    ]
    assert table.column("prompt")[0].as_py() == (
        "Question: Tom has 3 apples and buys 4. How many?\nAnswer:"
    )
    (tmp_path / "cot.jsonl").write_text('{"question": "q", "answer": "a\\n#### 1"}\n')
    with pytest.raises(DataError, match="headerless CSV/TSV, but this file is jsonl"):
        fetch(
            SourceSpec(name="j", path="cot.jsonl", template="gsm8k", columns=["q"]),
            "j",
            tmp_path,
            workspace,
        )
    with pytest.raises(ValueError, match="columns must be distinct"):
        DataLocation(path="cot.tsv", columns=["a", "a"])


def test_an_evaluation_suite_maps_its_fields_and_its_dev_split_inherits_them(tmp_path, workspace):
    rows = [{"passage": "Sky.", "query": "is the sky blue", "answer": True}]
    (tmp_path / "suite.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "dev.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    suite = EvalSuiteSpec(
        name="boolq",
        path="suite.jsonl",
        template="superglue_boolq",
        fields={"question": "query", "label": "answer"},
        dev=DataLocation(path="dev.jsonl"),
    )
    _, table = _records(suite, tmp_path, workspace)
    assert table.column("prompt")[0].as_py() == "Sky.\nQuestion: is the sky blue?\nAnswer:"
    assert table.column("label").to_pylist() == [1]
    dev = suite.dev_suite()
    assert (dev.name, dev.path, dev.fields) == ("boolq-dev", "dev.jsonl", suite.fields)
    assert _records(dev, tmp_path, workspace)[1].column("label").to_pylist() == [1]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _passage(text: str, questions: list[tuple[str, list[tuple[str, int]]]]) -> dict:
    return {
        "idx": 0,
        "passage": {
            "text": text,
            "questions": [
                {"question": q, "answers": [{"text": a, "label": lab} for a, lab in answers]}
                for q, answers in questions
            ],
        },
    }


def test_multirc_in_its_official_nested_layout_loads_with_the_built_in_template(
    tmp_path, workspace
):
    _jsonl(
        tmp_path / "multirc.jsonl",
        [
            _passage("Cats sleep a lot.", [("Do cats sleep?", [("Yes", 1), ("No", 0)])]),
            _passage(
                "Dogs bark.",
                [("What do dogs do?", [("Bark", 1)]), ("Unanswered?", [])],  # no answers: no rows
            ),
        ],
    )
    suite = EvalSuiteSpec(
        name="multirc", path="multirc.jsonl", template="superglue_multirc", category="nlu"
    )
    _, table = _records(suite, tmp_path, workspace)
    assert table.num_rows == 3  # one record per (question, answer)
    assert (
        table.column("prompt")[0].as_py() == "Cats sleep a lot.\nQuestion: Do cats sleep?\nAnswer:"
    )
    assert table.column("choices")[1].as_py() == [
        "No\nIs the answer correct? no",
        "No\nIs the answer correct? yes",
    ]
    assert table.column("label").to_pylist() == [1, 0, 1]
    assert [json.loads(m)["row"] for m in table.column("meta").to_pylist()] == [1, 1, 2]

    bad = _passage("Fish swim.", [("Do fish swim?", [("Yes", 7)])])
    _jsonl(tmp_path / "multirc.jsonl", [_passage("Ok.", [("Q?", [("A", 1)])]), bad])
    with pytest.raises(DataError) as caught:
        _records(suite, tmp_path, workspace)
    assert "row 2, field 'passage.questions.answers.label'" in str(caught.value)
    assert "unknown label value 7" in str(caught.value)


def test_self_instruct_seed_tasks_explode_their_instances(tmp_path, workspace):
    _jsonl(
        tmp_path / "seed.jsonl",
        [
            {
                "id": "seed_task_1",
                "instruction": "Add the numbers.",
                "instances": [{"input": "2 3", "output": "5"}, {"input": "1 1", "output": "2"}],
            },
            {
                "id": "seed_task_2",
                "instruction": "Say hi.",
                "instances": [{"input": "", "output": "Hi"}],
            },
        ],
    )
    source = SourceSpec(
        name="seed",
        path="seed.jsonl",
        template="alpaca",
        explode=["instances"],
        fields={"input": "instances.input", "output": "instances.output"},
    )
    snap = fetch(source, source.name, tmp_path, workspace)
    table = normalise(
        snap,
        source="seed",
        template="alpaca",
        category="instruction",
        fields=source.fields,
        explode=source.explode,
    )
    assert table.column("response").to_pylist() == ["5", "2", "Hi"]
    assert table.column("prompt")[2].as_py() == "### Instruction:\nSay hi.\n\n### Response:\n"
    assert "### Input:\n1 1" in table.column("prompt")[1].as_py()
    with pytest.raises(DataError, match="explode names 'instance', which is not a field"):
        normalise(snap, source="seed", template="alpaca", category="i", explode=["instance"])
    with pytest.raises(DataError, match="a string, not a list|not a list"):
        normalise(snap, source="seed", template="alpaca", category="i", explode=["instruction"])


def test_pretemplated_data_is_taken_as_it_is_with_one_separator_rule_and_no_end_marker(
    tmp_path, workspace
):
    alpaca = "Below is an instruction.\n\n### Instruction:\nName a colour.\n\n### Response:"
    _jsonl(
        tmp_path / "dolly.jsonl",
        [
            {"prompt": alpaca, "answer": "Blue.###eos_token###"},
            {"prompt": alpaca + "\n", "answer": "Red.###eos_token###\n"},
            {"prompt": alpaca, "answer": " Green."},
        ],
    )
    source = SourceSpec(
        name="dolly",
        path="dolly.jsonl",
        template="pretemplated",
        fields={"response": "answer"},
        end_marker="###eos_token###",
    )
    snap = fetch(source, source.name, tmp_path, workspace)
    table = normalise(
        snap,
        source="dolly",
        template="pretemplated",
        category="instruction",
        fields=source.fields,
        end_marker=source.end_marker,
    )
    assert table.column("prompt").to_pylist() == [alpaca, alpaca + "\n", alpaca]  # not rewrapped
    # Glued texts get one space; texts that meet at whitespace are kept as they are.
    assert table.column("response").to_pylist() == [" Blue.", "Red.", " Green."]
