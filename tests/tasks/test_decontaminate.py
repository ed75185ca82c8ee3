"""Decontamination: 13-gram overlap, boilerplate ignored, short prompts exact/near, demo leaks."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

from data_specs.record import make_record, records_to_table
from data_specs.schema import DecontaminationSpec, load_spec
from tasks.decontaminate import decontaminate, drops_per_source_suite

TEMPLATE = (
    "Read the passage below carefully and then answer the question that follows it with yes or no"
)


def item(prompt: str, response: str = " yes", source: str = "suite") -> dict:
    return make_record(
        source=source,
        task="t",
        category="nlu",
        prompt=prompt,
        response=response,
        choices=["no", "yes"],
        label=1,
    )


def train(prompt: str, response: str = "ok", row: int = 0) -> dict:
    return make_record(
        source="src", task="t", category="nlu", prompt=prompt, response=response, meta={"row": row}
    )


@pytest.fixture
def suite() -> pa.Table:
    facts = [
        f"the river number {i} flows through the valley of town {i} past the old mill "
        f"built by carpenter {i} in the year {1800 + i}"
        for i in range(20)
    ]
    return records_to_table([item(f"{TEMPLATE}. {fact}. Question: is it old?") for fact in facts])


def test_thirteen_gram_overlap_is_removed_with_its_eval_item(suite):
    leaked = "Some intro words. the river number 7 flows through the valley of town 7 past the old"
    rows = [train(leaked, row=3), train("a completely unrelated prompt about cooking pasta " * 3)]
    result = decontaminate(records_to_table(rows), {"boolq_mc": suite}, DecontaminationSpec())
    drops = result.drops.to_pylist()
    assert len(drops) == 1
    assert drops[0]["suite"] == "boolq_mc" and drops[0]["row"] == 3
    assert drops[0]["eval_id"] == suite.column("id")[7].as_py()
    assert drops[0]["kind"] == "ngram"
    assert result.kept.num_rows == 1
    assert drops_per_source_suite(result.drops) == [
        {"source": "src", "suite": "boolq_mc", "kind": "ngram", "rows": 1}
    ]


def test_boilerplate_shared_by_many_eval_items_is_ignored(suite):
    row = train(f"{TEMPLATE}. The cat sat on the mat and looked at the moon for a while.")
    result = decontaminate(records_to_table([row]), {"s": suite}, DecontaminationSpec())
    assert result.drops.num_rows == 0 and result.kept.num_rows == 1
    strict = DecontaminationSpec(boilerplate_fraction=1.0)  # nothing counts as boilerplate
    assert decontaminate(records_to_table([row]), {"s": suite}, strict).drops.num_rows == 1


def test_short_prompts_match_exactly_or_nearly():
    evals = records_to_table(
        [item("What is the capital of France?"), item("Which planet is known as the red planet?")]
    )
    rows = [
        train("what is the capital of FRANCE", row=1),  # exact once normalised
        train("Which planet is known as the red planet today?", row=2),  # Jaccard 8/9
        train("Which river is the longest in Europe?", row=3),
    ]  # unrelated
    result = decontaminate(records_to_table(rows), {"qa": evals}, DecontaminationSpec())
    kinds = {d["row"]: d["kind"] for d in result.drops.to_pylist()}
    assert kinds == {1: "exact", 2: "near"}
    assert [json.loads(m)["row"] for m in result.kept.column("meta").to_pylist()] == [3]


def test_disabled_keeps_everything(suite):
    rows = records_to_table([train(suite.column("prompt")[0].as_py())])
    result = decontaminate(rows, {"s": suite}, DecontaminationSpec(enabled=False))
    assert result.kept.num_rows == 1 and result.drops.num_rows == 0


def test_demo_planted_leaks_are_removed(tmp_path):
    from tasks.fetch import fetch
    from tasks.normalise import normalise
    from tasks.workspace import Workspace

    spec, base_dir = load_spec(Path(__file__).resolve().parents[2] / "data_specs/demo.yaml")
    ws = Workspace.resolve(tmp_path).ensure()

    def load(item):
        snap = fetch(item, item.name, base_dir, ws)
        return normalise(snap, source=item.name, template=item.template, category=item.category)

    training = pa.concat_tables([load(s) for s in spec.sources])
    suites = {s.name: load(s) for s in spec.eval_suites}
    result = decontaminate(training, suites, spec.decontamination)
    removed = {(d["source"], d["row"]): d["suite"] for d in result.drops.to_pylist()}
    planted = json.loads((base_dir / "demo/PLANTED.json").read_text())["planted"]
    leaks = [p for p in planted if p["kind"].startswith("leak")]
    assert leaks
    for p in leaks:
        assert removed.get((p["source"], p["row"])) == p["suite"], p
    assert result.kept.num_rows + result.drops.num_rows == training.num_rows
