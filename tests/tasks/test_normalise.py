"""normalise + templates: every template on small fixtures, label spellings, the demo data."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from multilora_pipeline.data_specs.errors import DataError, SpecError
from multilora_pipeline.data_specs.formats import TEMPLATE_NAMES
from multilora_pipeline.data_specs.record import RECORD_SCHEMA, make_record
from multilora_pipeline.data_specs.schema import SourceSpec, load_spec
from multilora_pipeline.tasks.data.fetch import fetch
from multilora_pipeline.tasks.data.normalise import normalise
from multilora_pipeline.tasks.data.templates import TEMPLATES, register
from tests.specs import DEMO


def records(tmp_path, workspace, rows: list[dict], template: str, fields=None) -> list[dict]:
    path = tmp_path / f"{template}.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    snapshot = fetch(
        SourceSpec(name="src", path=path.name, template=template), template, tmp_path, workspace
    )
    table = normalise(snapshot, source="src", template=template, category="cat", fields=fields)
    assert table.schema == RECORD_SCHEMA
    return table.to_pylist()


def check_mc(record: dict, prompt: str, choices: list[str], label: int) -> None:
    assert record["prompt"] == prompt
    assert record["choices"] == choices and record["label"] == label
    assert record["response"] == " " + choices[label]  # prompt + response is the natural text


def test_alpaca_with_and_without_input(tmp_path, workspace):
    out = records(
        tmp_path,
        workspace,
        [
            {"instruction": "Add.", "input": "2 and 3", "output": "5"},
            {"instruction": "Say hi.", "input": " ", "output": "hi"},
            {"instruction": "Name one.", "output": "one"},
        ],
        "alpaca",
    )
    assert out[0]["prompt"] == "### Instruction:\nAdd.\n\n### Input:\n2 and 3\n\n### Response:\n"
    assert out[1]["prompt"] == "### Instruction:\nSay hi.\n\n### Response:\n"
    assert [r["response"] for r in out] == ["5", "hi", "one"]
    assert out[0]["choices"] is None and out[0]["label"] is None
    assert json.loads(out[2]["meta"]) == {"row": 3}
    expected = make_record(
        source="src",
        task="alpaca",
        category="cat",
        prompt=out[0]["prompt"],
        response="5",
        meta={"row": 1},
    )
    assert out[0] == expected  # same id and meta as the record helper


def test_dolly_context_and_category(tmp_path, workspace):
    out = records(
        tmp_path,
        workspace,
        [
            {
                "instruction": "Who?",
                "context": "Ada wrote it.",
                "response": "Ada",
                "category": "closed_qa",
            },
            {"instruction": "Why?", "context": "", "response": "Because.", "category": "open_qa"},
        ],
        "dolly",
    )
    assert (
        out[0]["prompt"] == "### Instruction:\nWho?\n\n### Input:\nAda wrote it.\n\n### Response:\n"
    )
    assert out[1]["prompt"] == "### Instruction:\nWhy?\n\n### Response:\n"
    assert json.loads(out[0]["meta"]) == {"category": "closed_qa", "row": 1}


def test_chat_openai_and_sharegpt_messages(tmp_path, workspace):
    out = records(
        tmp_path,
        workspace,
        [
            {
                "messages": [
                    {"role": "system", "content": "Be brief."},
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"},
                    {"role": "user", "content": "2+2?"},
                    {"role": "assistant", "content": "4"},
                ]
            },
        ],
        "chat",
    )
    assert (
        out[0]["prompt"] == "System: Be brief.\nUser: Hi\nAssistant: Hello\nUser: 2+2?\nAssistant:"
    )
    assert out[0]["response"] == " 4"
    shared = records(
        tmp_path,
        workspace,
        [
            {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Yo"}]},
        ],
        "chat",
        fields={"messages": "conversations"},
    )
    assert shared[0]["prompt"] == "User: Hi\nAssistant:" and shared[0]["response"] == " Yo"
    with pytest.raises(DataError, match=r"row 1, field 'messages'.*last message"):
        records(tmp_path, workspace, [{"messages": [{"role": "user", "content": "Hi"}]}], "chat")


def test_superglue_boolq_label_spellings(tmp_path, workspace):
    labels = [True, False, "true", "False", 1, 0, "yes", "no"]
    out = records(
        tmp_path,
        workspace,
        [
            {"passage": "The sky is blue.", "question": "is the sky blue", "label": lab, "idx": i}
            for i, lab in enumerate(labels)
        ],
        "superglue_boolq",
    )
    check_mc(out[0], "The sky is blue.\nQuestion: is the sky blue?\nAnswer:", ["no", "yes"], 1)
    assert [r["label"] for r in out] == [1, 0, 1, 0, 1, 0, 1, 0]
    assert json.loads(out[3]["meta"]) == {"idx": 3, "query": "is the sky blue", "row": 4}


def test_superglue_rte_and_cb(tmp_path, workspace):
    rte = records(
        tmp_path,
        workspace,
        [
            {
                "premise": "A cat sat.",
                "hypothesis": "A cat exists.",
                "label": "entailment",
                "idx": 0,
            },
            {
                "premise": "A cat sat.",
                "hypothesis": "No cats.",
                "label": "not_entailment",
                "idx": 1,
            },
            {"premise": "P.", "hypothesis": "H.", "label": 0, "idx": 2},
        ],
        "superglue_rte",
    )
    check_mc(
        rte[0], "A cat sat.\nQuestion: A cat exists. True or False?\nAnswer:", ["True", "False"], 0
    )
    assert [r["label"] for r in rte] == [0, 1, 0]
    cb = records(
        tmp_path,
        workspace,
        [
            {"premise": "It rained.", "hypothesis": "It was wet", "label": 2},
            {"premise": "It rained.", "hypothesis": "It was dry", "label": "contradiction"},
        ],
        "superglue_cb",
    )
    check_mc(
        cb[0],
        "It rained.\nQuestion: It was wet. True, False, or Neither?\nAnswer:",
        ["True", "False", "Neither"],
        2,
    )
    assert cb[1]["label"] == 1


def test_superglue_wic_word_or_span(tmp_path, workspace):
    row = {
        "sentence1": "He sat on the bank.",
        "sentence2": "The bank lent money.",
        "label": False,
        "start1": 14,
        "end1": 18,
    }
    expected = (
        "Sentence 1: He sat on the bank.\nSentence 2: The bank lent money.\nQuestion: Is the "
        "word 'bank' used in the same way in the two sentences above?\nAnswer:"
    )
    check_mc(records(tmp_path, workspace, [row], "superglue_wic")[0], expected, ["no", "yes"], 0)
    check_mc(
        records(tmp_path, workspace, [{**row, "word": "bank"}], "superglue_wic")[0],
        expected,
        ["no", "yes"],
        0,
    )


def test_superglue_multirc_and_copa(tmp_path, workspace):
    multirc = records(
        tmp_path,
        workspace,
        [
            {
                "paragraph": "Ann has two dogs.",
                "question": "How many dogs?",
                "answer": "Two",
                "label": 1,
            },
        ],
        "superglue_multirc",
    )
    check_mc(
        multirc[0],
        "Ann has two dogs.\nQuestion: How many dogs?\nAnswer:",
        ["Two\nIs the answer correct? no", "Two\nIs the answer correct? yes"],
        1,
    )
    copa = records(
        tmp_path,
        workspace,
        [
            {
                "premise": "The man broke his toe.",
                "choice1": "He dropped a hammer on his foot.",
                "choice2": "He got a hole in his sock.",
                "question": "cause",
                "label": 0,
                "idx": 0,
            },
            {
                "premise": "I tipped the bottle.",
                "choice1": "The liquid fell out.",
                "choice2": "The bottle broke.",
                "question": "effect",
                "label": 0,
                "idx": 1,
            },
        ],
        "superglue_copa",
    )
    check_mc(
        copa[0],
        "The man broke his toe because",
        ["he dropped a hammer on his foot.", "he got a hole in his sock."],
        0,
    )
    assert copa[1]["prompt"] == "I tipped the bottle therefore"


def test_mmlu_csv_and_hub_forms(tmp_path, workspace):
    (tmp_path / "k.csv").write_text(" What is 2+2? ,3,4,5,6,B\nPick D.,a,b,c,d,d\n")
    snap = fetch(SourceSpec(name="src", path="k.csv", template="mmlu"), "k", tmp_path, workspace)
    out = normalise(snap, source="k", template="mmlu", category="knowledge").to_pylist()
    check_mc(out[0], "What is 2+2?\nA. 3\nB. 4\nC. 5\nD. 6\nAnswer:", ["A", "B", "C", "D"], 1)
    assert out[1]["label"] == 3
    hub = records(
        tmp_path,
        workspace,
        [
            {
                "question": "What is 2+2?",
                "subject": "math",
                "choices": ["3", "4", "5", "6"],
                "answer": 1,
            },
        ],
        "mmlu",
    )
    check_mc(hub[0], out[0]["prompt"], ["A", "B", "C", "D"], 1)
    assert json.loads(hub[0]["meta"]) == {"row": 1, "subject": "math"}
    # cais/mmlu auxiliary_train: every row nested in a struct column "train"
    nested = records(
        tmp_path,
        workspace,
        [
            {
                "train": {
                    "question": "What is 2+2?",
                    "subject": "",
                    "choices": ["3", "4", "5", "6"],
                    "answer": 1,
                }
            }
        ],
        "mmlu",
    )
    check_mc(nested[0], out[0]["prompt"], ["A", "B", "C", "D"], 1)


def test_arc_hub_and_ai2_forms(tmp_path, workspace):
    out = records(
        tmp_path,
        workspace,
        [
            {
                "id": "q1",
                "question": "Which is a mammal?",
                "answerKey": "2",
                "choices": {"text": ["shark", "whale", "trout"], "label": ["1", "2", "3"]},
            },
        ],
        "arc",
    )
    check_mc(out[0], "Question: Which is a mammal?\nAnswer:", ["shark", "whale", "trout"], 1)
    ai2 = records(
        tmp_path,
        workspace,
        [
            {
                "question": {
                    "stem": "Which is a mammal?",
                    "choices": [{"text": "shark", "label": "A"}, {"text": "whale", "label": "B"}],
                },
                "answerKey": "B",
            },
        ],
        "arc",
    )
    check_mc(ai2[0], "Question: Which is a mammal?\nAnswer:", ["shark", "whale"], 1)
    with pytest.raises(DataError, match=r"row 1, field 'answerKey'"):
        records(
            tmp_path,
            workspace,
            [{"question": "Q?", "answerKey": "E", "choices": {"text": ["a"], "label": ["A"]}}],
            "arc",
        )


def test_gsm8k_keeps_reasoning_and_final(tmp_path, workspace):
    answer = "She has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"
    out = records(
        tmp_path,
        workspace,
        [{"question": "Ann has 3 apples and gets 4. How many?", "answer": answer}],
        "gsm8k",
    )
    assert out[0]["prompt"] == "Question: Ann has 3 apples and gets 4. How many?\nAnswer:"
    assert out[0]["response"] == " " + answer
    assert out[0]["choices"] is None and out[0]["label"] is None
    assert json.loads(out[0]["meta"]) == {"final": "7", "row": 1}


def test_generic_field_mapping(tmp_path, workspace):
    rows = [
        {"q": "Capital of France?", "opts": ["Paris", "Rome"], "gold": 0},
        {"q": "Capital of Italy?", "opts": ["Paris", "Rome"], "gold": "1"},
    ]
    out = records(
        tmp_path,
        workspace,
        rows,
        "generic",
        fields={"prompt": "q", "choices": "opts", "label": "gold"},
    )
    check_mc(out[1], "Capital of Italy?", ["Paris", "Rome"], 1)
    plain = records(
        tmp_path,
        workspace,
        [{"text": "a", "target": "b"}],
        "generic",
        fields={"prompt": "text", "response": "target"},
    )
    assert (plain[0]["prompt"], plain[0]["response"]) == ("a", "b")
    with pytest.raises(SpecError, match="unknown fields"):
        records(
            tmp_path, workspace, [{"text": "a"}], "generic", fields={"prompt": "text", "x": "y"}
        )
    with pytest.raises(DataError, match=r"row 2, field 'gold'.*unknown label value 2"):
        records(
            tmp_path,
            workspace,
            [rows[0], {**rows[1], "gold": 2}],
            "generic",
            fields={"prompt": "q", "choices": "opts", "label": "gold"},
        )
    with pytest.raises(DataError, match=r"row 2, field 'gold'.*past the last choice"):
        records(
            tmp_path,
            workspace,
            [{**rows[0], "opts": ["a", "b", "c"]}, {**rows[1], "gold": 2}],
            "generic",
            fields={"prompt": "q", "choices": "opts", "label": "gold"},
        )


def test_unknown_template_is_a_spec_error_at_normalise(tmp_path, workspace):
    # Specs are checked when they load; a direct call with a typo still fails clearly.
    (tmp_path / "a.jsonl").write_text('{"x": 1}\n')
    snap = fetch(
        SourceSpec(name="src", path="a.jsonl", template="alpaca"), "a", tmp_path, workspace
    )
    with pytest.raises(SpecError, match="unknown template 'alpacca'"):
        normalise(snap, source="a", template="alpacca", category="c")


def test_the_registry_holds_exactly_the_template_names_a_spec_may_use():
    # The schema checks spec templates against TEMPLATE_NAMES; the registry must agree both
    # ways, or a spec passes its load and then fails at normalise (or cannot name a template).
    assert set(TEMPLATES) == set(TEMPLATE_NAMES)
    with pytest.raises(ValueError, match=r"'rte' is not in data_specs\.formats\.TEMPLATE_FORMATS"):
        register("rte")
    assert "rte" not in TEMPLATES


# ---------------------------------------------------------------- the demo data


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Every demo source and suite fetched and normalised once."""
    from multilora_pipeline.tasks.workspace import Workspace

    workspace = Workspace(tmp_path_factory.mktemp("demo_ws")).ensure()
    spec, base = load_spec(DEMO)
    tables = {}
    for item in [*spec.sources, *spec.eval_suites]:
        snapshot = fetch(item, item.name, base, workspace)
        tables[item.name] = normalise(
            snapshot, source=item.name, template=item.template, category=item.category
        ).to_pylist()
    planted = json.loads((base / "demo" / "PLANTED.json").read_text())
    return spec, tables, planted


def by_file(spec) -> dict[str, str]:
    return {Path(i.path).name: i.name for i in [*spec.sources, *spec.eval_suites]}


def at_row(tables, name: str, row: int) -> dict:
    found = [r for r in tables[name] if json.loads(r["meta"])["row"] == row]
    assert len(found) == 1
    return found[0]


def folded(record: dict) -> str:
    return " ".join(re.findall(r"[a-z0-9]+", (record["prompt"] + record["response"]).lower()))


def shingles(text: str, n: int = 5) -> set:
    w = text.split()
    return {tuple(w[i : i + n]) for i in range(max(1, len(w) - n + 1))}


def test_demo_files_fetch_and_normalise_with_planted_rows_where_recorded(demo):
    spec, tables, planted = demo
    assert {len(tables[s.name]) for s in spec.sources} <= set(range(250, 400))
    assert 60 <= len(tables["knowledge_mc"]) <= 100 and len(tables["math_gen"]) == 40
    names = by_file(spec)
    kinds = {p["kind"] for p in planted["planted"]}
    assert {"exact", "normalised", "near", "near_cross", "leak_exact", "leak_near"} <= kinds
    for plan in planted["planted"]:
        copy = at_row(tables, names[plan["file"]], plan["row"])
        original = at_row(tables, names[plan["of"]["file"]], plan["of"]["row"])
        if plan["kind"] in ("exact", "leak_exact"):
            assert (copy["prompt"], copy["response"]) == (original["prompt"], original["response"])
        elif plan["kind"] == "normalised":
            assert copy["prompt"] != original["prompt"] and folded(copy) == folded(original)
        elif plan["kind"] in ("near", "near_cross"):
            a, b = shingles(folded(copy)), shingles(folded(original))
            assert 0.75 <= len(a & b) / len(a | b) < 1.0, plan
        else:  # leak_near: shares a 13-word run with the evaluation prompt
            words, target = folded(copy).split(), " ".join(folded(original).split())
            runs = {" ".join(words[i : i + 13]) for i in range(len(words) - 12)}
            assert any(run in target for run in runs) and copy["prompt"] != original["prompt"]


def test_demo_eval_suites_keep_choices_and_gold(demo):
    _, tables, _ = demo
    for suite in ("knowledge_mc", "boolq_mc"):
        for record in tables[suite]:
            assert (
                record["choices"] and record["response"] == " " + record["choices"][record["label"]]
            )
    assert all(r["choices"] is None and "####" in r["response"] for r in tables["math_gen"])
