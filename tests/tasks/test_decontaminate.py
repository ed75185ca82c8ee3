"""Decontamination: 13-gram overlap, boilerplate ignored, short prompts exact/near, demo leaks."""

from __future__ import annotations

import json
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pytest

from multilora_pipeline.data_specs.record import make_record, records_to_table
from multilora_pipeline.data_specs.schema import DecontaminationSpec, load_spec
from multilora_pipeline.tasks.data import decontaminate as decontaminate_module
from multilora_pipeline.tasks.data.decontaminate import decontaminate, drops_per_source_suite
from multilora_pipeline.tasks.data.files.parquet_io import write_parquet

TEMPLATE = (
    "Read the passage below carefully and then answer the question that follows it with yes or no"
)


def item(prompt: str, response: str = " yes", source: str = "suite", row: int | None = None):
    return make_record(
        source=source,
        task="t",
        category="nlu",
        prompt=prompt,
        response=response,
        choices=["no", "yes"],
        label=1,
        meta=None if row is None else {"row": row},
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
    fragment = "the river number 7 flows through the valley of town 7 past the old"
    leaked = f"Some intro words. {fragment} mill built by carpenter 7"
    rows = [
        train(leaked, row=3),
        train("a completely unrelated prompt about cooking pasta " * 3, row=4),
        # 13 words of the item, but under half of its own words (the rest of its fact): a
        # phrase in common, not the item's question
        train(f"Some intro words. {fragment}", row=5),
    ]
    result = decontaminate(records_to_table(rows), {"boolq_mc": suite}, DecontaminationSpec())
    drops = result.drops.to_pylist()
    assert len(drops) == 1
    assert drops[0]["suite"] == "boolq_mc" and drops[0]["row"] == 3
    assert drops[0]["eval_id"] == suite.column("id")[7].as_py()
    assert drops[0]["kind"] == "ngram"
    assert result.kept.num_rows == 2
    assert drops_per_source_suite(result.drops) == [
        {"source": "src", "suite": "boolq_mc", "kind": "ngram", "rows": 1}
    ]


def test_boilerplate_shared_by_many_eval_items_is_ignored(suite, monkeypatch):
    row = train(f"{TEMPLATE}. The cat sat on the mat and looked at the moon for a while.")
    result = decontaminate(records_to_table([row]), {"s": suite}, DecontaminationSpec())
    assert result.drops.num_rows == 0 and result.kept.num_rows == 1
    # The frequency rule alone does it: with the question-words rule off, the template is
    # still no match, and it is one once nothing counts as boilerplate.
    monkeypatch.setattr(decontaminate_module, "QUESTION_SUPPORT", 0.0)
    assert (
        decontaminate(records_to_table([row]), {"s": suite}, DecontaminationSpec()).drops.num_rows
        == 0
    )
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


DEMO_SPEC = Path(__file__).resolve().parents[2] / "data_specs/demo_tiny.yaml"


def demo_training_and_suites(tmp_path):
    """The demo spec's sources (one table) and eval suites, fetched and normalised."""
    from multilora_pipeline.tasks.data.fetch import fetch
    from multilora_pipeline.tasks.data.normalise import normalise
    from multilora_pipeline.tasks.workspace import Workspace

    spec, spec_dir = load_spec(DEMO_SPEC)
    ws = Workspace.resolve(tmp_path).ensure()

    def load(item):
        snap = fetch(item, item.name, spec_dir, ws)
        return normalise(snap, source=item.name, template=item.template, category=item.category)

    training = pa.concat_tables([load(s) for s in spec.sources])
    return spec, training, {s.name: load(s) for s in spec.eval_suites}


def test_demo_planted_leaks_are_removed(tmp_path):
    spec, training, suites = demo_training_and_suites(tmp_path)
    result = decontaminate(training, suites, spec.decontamination)
    eval_row = {
        i: json.loads(m)["row"]
        for t in suites.values()
        for i, m in zip(t.column("id").to_pylist(), t.column("meta").to_pylist(), strict=True)
    }
    removed = {
        (d["source"], d["row"]): (d["suite"], eval_row[d["eval_id"]])
        for d in result.drops.to_pylist()
    }
    record = json.loads((DEMO_SPEC.parent / "demo/PLANTED.json").read_text())
    leaks = [p for p in record["planted"] if p["kind"].startswith("leak")]
    incidental = record["incidental_leaks"]  # templated rationales sharing an eval answer 13-gram
    assert leaks and incidental
    for p in leaks:
        assert removed.get((p["source"], p["row"])) == (p["suite"], p["of"]["row"]), p
    for p in incidental:
        suite, row = removed.get((p["source"], p["row"]), (None, None))
        assert suite == p["suite"] and row in p["of"]["rows"], p
    assert len(removed) == len(leaks) + len(incidental)  # and nothing else
    assert result.kept.num_rows + result.drops.num_rows == training.num_rows


MORAL = (
    "For which of these two scenarios does the main character who uses I me my do something "
    "clearly morally wrong according to ordinary moral standards in the US as of 2020? Scenario 1 |"
)


def test_template_spans_do_not_count_but_a_copied_scenario_does():
    scenarios = [
        f"I asked my neighbour number {i} to water the plants in garden {i} while I was away"
        for i in range(20)
    ]
    suite = records_to_table([item(f"{MORAL} {s}.") for s in scenarios])
    template_plus_two = train(f"{MORAL} I asked for a raise and got one from my boss today.", row=1)
    copied = train(f"{MORAL} {scenarios[4]} last summer.", row=2)
    result = decontaminate(
        records_to_table([template_plus_two, copied]), {"mmlu": suite}, DecontaminationSpec()
    )
    assert [d["row"] for d in result.drops.to_pylist()] == [2]
    assert result.drops.column("eval_id").to_pylist() == [suite.column("id")[4].as_py()]


def test_group_templates_are_boilerplate_within_their_subject():
    def mc(prompt: str, subject: str) -> dict:
        return make_record(
            source="suite",
            task="t",
            category="knowledge",
            prompt=prompt,
            response=" A",
            choices=["A", "B"],
            label=0,
            meta={"subject": subject},
        )

    stem = "Construct a complete truth table for the following pairs of propositions and decide"
    logic = [mc(f"{stem} whether p{i} and q{i} are equivalent.", "logic") for i in range(4)]
    other = [
        mc(f"Unrelated question number {i} about geography and rivers of the world", "geo")
        for i in range(60)
    ]
    suite = records_to_table(logic + other)  # the stem: 4 of 64 items suite-wide, 4 of 4 in logic
    row = records_to_table([train(f"{stem} whether r and s are equivalent.", row=1)])
    grouped = decontaminate(row, {"mmlu": suite}, DecontaminationSpec())
    suite_wide = decontaminate(row, {"mmlu": suite}, DecontaminationSpec(boilerplate_group=None))
    assert grouped.drops.num_rows == 0 and suite_wide.drops.num_rows == 1


# ---------------------------------------------------------------- training rows stream in batches


def qa_suite(prompts: list[str], responses: list[str]) -> pa.Table:
    """The given items plus 20 unrelated ones (an n-gram in every item would be boilerplate)."""
    prompts = prompts + [f"unrelated question {i} about topic {i}" for i in range(20)]
    responses = responses + [f" unrelated answer {i}" for i in range(20)]
    return records_to_table(
        [item(p, r, row=i + 1) for i, (p, r) in enumerate(zip(prompts, responses, strict=True))]
    )


LONG_ANSWER = (
    "the answer walks through every step of the long derivation one careful line at a time"
)


def test_first_suite_wins_and_a_copied_prompt_is_exact_whatever_the_batch_size(monkeypatch):
    first = qa_suite(["What is the capital of France?"], [" Paris."])
    second = qa_suite(["Name the capital of Peru please"], [f" {LONG_ANSWER}"])
    rows = [
        train("what is the capital of france", row=1),  # exact in the first suite
        train(
            "what is the capital of france", f"{LONG_ANSWER}.", row=2
        ),  # and a 13-gram in the 2nd
        train("something else entirely", row=3),
        train("name the capital of peru please", f"So: {LONG_ANSWER}", row=4),  # its prompt
        train("tell me something", f"So: {LONG_ANSWER}", row=5),  # the answer, not the question
        train("which city is the capital of peru", f"So: {LONG_ANSWER}", row=6),  # reworded
    ]
    table = records_to_table(rows)
    suites = {"first": first, "second": second}
    expected = {
        1: ("first", "exact"),
        2: ("first", "exact"),
        4: ("second", "exact"),  # a verbatim copy is exact, not "ngram"
        6: ("second", "ngram"),
    }
    for batch_rows in (1, 3, 50_000):
        monkeypatch.setattr(decontaminate_module, "BATCH_ROWS", batch_rows)
        result = decontaminate(table, suites, DecontaminationSpec())
        got = {d["row"]: (d["suite"], d["kind"]) for d in result.drops.to_pylist()}
        assert got == expected, batch_rows
        assert [json.loads(m)["row"] for m in result.kept.column("meta").to_pylist()] == [3, 5]
        by_row = {d["row"]: d for d in result.drops.to_pylist()}
        assert by_row[4]["similarity"] == 1.0 and by_row[4]["evidence"] is None
        ngram = by_row[6]
        # The evidence: the matched n-gram, a real similarity, the suite's row of the item.
        assert len(ngram["evidence"].split()) == 13 and ngram["evidence"] in LONG_ANSWER.lower()
        assert 0 < ngram["similarity"] < 1
        assert ngram["eval_row"] == 1  # the suite file's first row


def test_demo_drops_are_the_same_in_small_batches(monkeypatch, tmp_path):
    spec, training, suites = demo_training_and_suites(tmp_path)
    whole = decontaminate(training, suites, spec.decontamination)
    monkeypatch.setattr(decontaminate_module, "BATCH_ROWS", 97)  # cuts sources at odd rows
    batched = decontaminate(training, suites, spec.decontamination)
    assert whole.drops.num_rows > 0
    assert batched.drops.equals(whole.drops) and batched.kept.equals(whole.kept)


def _streamed(path, suites, config):
    parts = list(decontaminate_module.decontaminate_file(path, suites, config))
    return pa.concat_tables([p.kept for p in parts]), pa.concat_tables([p.drops for p in parts])


def test_the_file_streamed_in_batches_gives_the_drops_of_the_whole_table(monkeypatch, tmp_path):
    spec, training, suites = demo_training_and_suites(tmp_path)
    whole = decontaminate(training, suites, spec.decontamination)
    write_parquet(training, tmp_path / "train.parquet")
    monkeypatch.setattr(decontaminate_module, "BATCH_ROWS", 97)
    kept, drops = _streamed(tmp_path / "train.parquet", suites, spec.decontamination)
    assert whole.drops.num_rows > 0 and drops.equals(whole.drops)
    assert kept.combine_chunks().equals(whole.kept.combine_chunks())


def test_a_streamed_file_counts_group_templates_with_rows_of_every_batch(monkeypatch, tmp_path):
    # Streamed one row a batch, the context still holds the group's three training rows.
    suite, rows, copy = formal_logic_case()
    monkeypatch.setattr(decontaminate_module, "QUESTION_SUPPORT", 0.0, raising=False)
    monkeypatch.setattr(decontaminate_module, "BATCH_ROWS", 1)
    write_parquet(records_to_table([*rows, copy]), tmp_path / "train.parquet")
    kept, drops = _streamed(tmp_path / "train.parquet", {"mmlu": suite}, DecontaminationSpec())
    assert drops.column("row").to_pylist() == [9] and kept.num_rows == 3


def test_memory_follows_the_batch_not_the_training_table(monkeypatch):
    suite = qa_suite([f"eval question {i} " * 5 for i in range(20)], [" yes"] * 20)
    words = " ".join(f"w{i % 997}" for i in range(150))
    table = records_to_table([train(f"prompt {i} {words}", words, row=i) for i in range(4_000)])

    def traced_peak(batch_rows: int) -> int:
        monkeypatch.setattr(decontaminate_module, "BATCH_ROWS", batch_rows)
        tracemalloc.start()  # numpy's arrays are traced (the n-gram hashes), Arrow's are not
        try:
            decontaminate(table, {"s": suite}, DecontaminationSpec())
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    whole, batched = traced_peak(len(table)), traced_peak(250)
    assert batched < whole / 4, (batched, whole)


def test_a_short_multiple_choice_stem_matches_only_with_its_choices():
    stem = "Question: Which statement is an opinion?\nAnswer:"
    suite = records_to_table(
        [
            make_record(
                source="arc",
                task="arc",
                category="knowledge",
                prompt=stem,
                response=" Red is the best colour.",
                choices=["Red is the best colour.", "Water boils at 100 C."],
                label=0,
                meta={"row": 1},
            )
        ]
        + [item(f"unrelated question {i} about topic {i}") for i in range(20)]
    )

    def arc_row(choices, row):
        return make_record(
            source="arc_train",
            task="arc",
            category="knowledge",
            prompt=stem,
            response=" " + choices[0],
            choices=choices,
            label=0,
            meta={"row": row},
        )

    rows = [
        arc_row(["Cats are cuter than dogs.", "Ice is frozen water."], 1),  # other options
        arc_row(["Red is the best colour.", "Water boils at 100 C."], 2),  # the item itself
        train("Which statement is an opinion?", row=3),  # free-form: the stem is the question
    ]
    result = decontaminate(records_to_table(rows), {"arc": suite}, DecontaminationSpec())
    got = {d["row"]: (d["kind"], d["eval_row"]) for d in result.drops.to_pylist()}
    assert got == {2: ("exact", 1), 3: ("exact", 1)}


def test_mmlu_without_subjects_falls_back_to_a_stricter_suite_wide_cut_and_says_so(caplog):
    stem = "For which of these two scenarios does the main character do something wrong"

    def mmlu_item(prompt: str) -> dict:
        return make_record(
            source="suite",
            task="mmlu",
            category="knowledge",
            prompt=prompt,
            response=" A",
            choices=["A", "B"],
            label=0,
        )

    # moral_scenarios' template sentence in 6 of 100 items (6%, under the 10% whole-suite
    # cut), and no subject field to find it by.
    scenarios = [mmlu_item(f"{stem}, according to norms {i}? Scenario {i}") for i in range(6)]
    others = [mmlu_item(f"Unrelated item {i} on rivers lakes and seas") for i in range(94)]
    suite = records_to_table(scenarios + others)
    row = records_to_table([train(f"{stem}, according to ordinary moral standards?", row=1)])
    with caplog.at_level("WARNING"):
        result = decontaminate(row, {"mmlu": suite}, DecontaminationSpec())
    assert result.drops.num_rows == 0  # the template is not a leak
    assert "has no 'subject' field" in caplog.text
    # A suite whose format groups nothing (BoolQ, GSM8K) keeps the 10% cut and no warning.
    caplog.clear()
    plain = records_to_table([item(r["prompt"]) for r in scenarios + others])
    with caplog.at_level("WARNING"):
        assert decontaminate(row, {"s": plain}, DecontaminationSpec()).drops.num_rows == 1
    assert "subject" not in caplog.text


# ------------------------------------------- what only looks like a leak (real MMLU and GSM8K)


def mmlu_record(stem: str, options: list[str], subject: str, source: str = "mmlu", row=0):
    """A record as the mmlu template renders it: the options inside the prompt."""
    listed = "".join(f"\n{letter}. {o}" for letter, o in zip("ABCD", options, strict=True))
    return make_record(
        source=source,
        task="mmlu",
        category="knowledge",
        prompt=f"{stem}{listed}\nAnswer:",
        response=" A",
        choices=list("ABCD"),
        label=0,
        meta={"subject": subject, "row": row},
    )


MORAL_OPTIONS = ["Wrong, Wrong", "Wrong, Not wrong", "Not wrong, Wrong", "Not wrong, Not wrong"]


def test_a_stem_ending_and_the_choice_list_are_not_a_leak():
    # moral_scenarios: every item ends with the same four options. A 13-gram across the last
    # words of a scenario and the options ("... to the store wrong wrong wrong not wrong ...")
    # shares two words of content; the options are another part of the template.
    suite = records_to_table(
        [
            mmlu_record(
                f"Scenario {i} | I told grandmother {i} I loved her gift.", MORAL_OPTIONS, "m"
            )
            for i in range(6)
        ]
        + [mmlu_record(f"Geography question {i} about rivers", list("wxyz"), "g") for i in range(6)]
    )
    row = mmlu_record("Scenario 9 | I drove my sister to the store gift.", MORAL_OPTIONS, "m")
    copied = mmlu_record("Scenario 3 | I told grandmother 3 I loved her gift.", MORAL_OPTIONS, "m")
    result = decontaminate(records_to_table([row, copied]), {"mmlu": suite}, DecontaminationSpec())
    assert result.drops.column("row").to_pylist() == [0]  # the copy only (both have row 0)
    assert result.drops.column("kind").to_pylist() == ["exact"]
    assert result.kept.num_rows == 1


def test_a_template_phrase_shorter_than_the_ngram_does_not_make_a_match(monkeypatch):
    # professional_medicine: "... shows no abnormalities. Which of the following is the most
    # appropriate next step in management?" A 13-gram of three words of findings and a
    # 10-word phrase that closes many items is template plus three words, not the case.
    monkeypatch.setattr(decontaminate_module, "QUESTION_SUPPORT", 0.0, raising=False)
    phrase = "Which of the following is the most appropriate next step in management?"
    cases = [
        f"A {20 + i} year old patient {i} has fever and cough since day {i}." for i in range(8)
    ]
    cases[3] = "A 40 year old man has chest pain at rest. An ECG shows no abnormalities."
    med = [
        mmlu_record(f"{c} {phrase}", [f"{w}{i}" for w in "pqrs"], "med")
        for i, c in enumerate(cases)
    ]
    geo = [mmlu_record(f"Geography item {i} on rivers", list("wxyz"), "geo") for i in range(40)]
    suite = records_to_table(med + geo)  # the phrase: 8 of 48 items, under the 10 % suite-wide cut
    row = mmlu_record(
        f"A child has had a rash since yesterday. Examination shows no abnormalities. {phrase}",
        ["antibiotics", "reassure", "biopsy", "steroids"],
        "med",
    )
    result = decontaminate(records_to_table([row]), {"mmlu": suite}, DecontaminationSpec())
    assert result.drops.num_rows == 0
    # The same words with the phrase's share of the items under boilerplate_fraction: a match.
    strict = DecontaminationSpec(boilerplate_fraction=1.0)
    assert decontaminate(records_to_table([row]), {"mmlu": suite}, strict).drops.num_rows == 1


def formal_logic_case():
    """An MMLU suite, three formal_logic training rows sharing the subject's instruction,
    and a fourth row that also copies a suite item's formulas."""
    # formal_logic: the instruction opens two items of a small suite (under the 3 a template
    # needs) and three training rows; with them it is the subject's template. A training row
    # that copies an item's formulas as well is still a leak.
    stem = (
        "Construct a complete truth table for the following pairs of propositions. Then, using "
        "the truth tables, determine whether the statements are logically equivalent or "
        "contradictory. If neither, determine whether they are consistent or inconsistent."
    )
    options = ["Logically equivalent", "Contradictory", "Consistent", "Inconsistent"]
    formulas = ["alpha and beta", "gamma or delta", "epsilon then zeta", "eta iff theta", "iota"]
    suite = records_to_table(
        [mmlu_record(f"{stem} {formulas[i]}", options, "logic", "suite", i) for i in range(2)]
        + [
            mmlu_record(f"History item {i} on kings", list("wxyz"), "hist", "suite")
            for i in range(30)  # the instruction: 2 of 32 items, under the 10 % suite-wide cut
        ]
    )
    rows = [mmlu_record(f"{stem} {f}", options, "logic", row=i) for i, f in enumerate(formulas[2:])]
    copy = mmlu_record(f"{stem} {formulas[1]}", options, "logic", row=9)  # no content n-gram
    return suite, rows, copy


def test_a_group_template_is_counted_with_the_training_rows_of_its_group(monkeypatch):
    suite, rows, copy = formal_logic_case()
    monkeypatch.setattr(decontaminate_module, "QUESTION_SUPPORT", 0.0, raising=False)
    result = decontaminate(records_to_table(rows), {"mmlu": suite}, DecontaminationSpec())
    assert result.drops.num_rows == 0
    with_copy = decontaminate(
        records_to_table([*rows, copy]), {"mmlu": suite}, DecontaminationSpec()
    )
    assert with_copy.drops.column("row").to_pylist() == [9]


def test_a_generation_answer_counts_only_with_its_question():
    # GSM8K: two different problems whose solutions share a worked phrase.
    shared = "There are 7 days in a week so she eats 3 * 7 = 21 eggs in a week and"
    question = (
        "Janet buys a dozen eggs and eats three every morning. How many eggs are left after a week?"
    )
    suite = records_to_table(
        [
            make_record(
                source="gsm8k",
                task="gsm8k",
                category="math",
                prompt=f"Question: {question}\nAnswer:",
                response=f" {shared} 12 * 7 - 21 = 63 are left. #### 63",
                meta={"row": 0},
            )
        ]
        + [item(f"unrelated question {i} about topic {i}") for i in range(20)]
    )
    other = "Maria drinks juice with breakfast and lunch. How many glasses does she need for a fortnight?"
    reworded = (
        "Janet buys twelve eggs and eats three each morning. After a week how many eggs are left?"
    )
    rows = [
        make_record(
            source="train",
            task="gsm8k",
            category="math",
            prompt=f"Question: {q}\nAnswer:",
            response=f" {shared} then doubled. #### 42",
            meta={"row": r},
        )
        for r, q in ((1, other), (2, reworded))
    ]
    result = decontaminate(records_to_table(rows), {"gsm8k": suite}, DecontaminationSpec())
    assert result.drops.column("row").to_pylist() == [2]
