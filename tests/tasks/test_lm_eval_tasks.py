"""`write_lm_eval_tasks`: task YAMLs and data files that hold exactly what the pipeline scores
(lm-eval itself runs on them in tests/flows/test_pipeline.py)."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import yaml

from multilora_pipeline.data_specs.errors import DataError
from multilora_pipeline.data_specs.record import make_record, records_to_table
from multilora_pipeline.data_specs.schema import EvalSuiteSpec, EvaluationSpec
from multilora_pipeline.tasks.evaluation.evaluate import SuiteData, build_contexts
from multilora_pipeline.tasks.evaluation.lm_eval_tasks import write_lm_eval_tasks
from multilora_pipeline.tasks.evaluation.suites import BUILTIN_SUITES
from tests.tasks.scoring_models import plain


def _suite(tmp_path, name, template, kind, rows, **extra):
    path = tmp_path / f"{name}.parquet"
    pq.write_table(records_to_table(rows), path)
    spec = EvalSuiteSpec(name=name, path=str(path), template=template, kind=kind, **extra)
    return SuiteData(spec, path)


def _mc(i):
    choices = ["no", "yes"]
    return make_record(
        source="boolq",
        task="mc",
        category="nlu",
        prompt=f"Passage {i}.\nQuestion: is it {i}?\nAnswer:",
        response=choices[i % 2],
        choices=choices,
        label=i % 2,
    )


def _gen(i):
    return make_record(
        source="math",
        task="gen",
        category="math",
        prompt=f"Question: {i} + 1?\nAnswer:",
        response=f"{i} + 1 = {i + 1}\n#### {i + 1}",
    )


def test_tasks_hold_the_scored_contexts_with_bos_and_lm_evals_settings(tmp_path, bpe):
    boolq = _suite(
        tmp_path,
        "boolq",
        "superglue_boolq",
        "multiple_choice",
        [_mc(i) for i in range(5)],
        max_items=3,
    )
    math = _suite(tmp_path, "math", "gsm8k", "generation", [_gen(i) for i in range(4)])
    settings = EvaluationSpec(few_shot=1, max_new_tokens=32)
    out = tmp_path / "tasks"
    written = write_lm_eval_tasks([boolq, math], settings, plain(bpe), out)

    assert [(t.task, t.items) for t in written] == [("mlora_boolq", 3), ("mlora_math", 4)]
    rows = [json.loads(line) for line in (out / "mlora_boolq.jsonl").read_text().splitlines()]
    contexts = build_contexts(
        pq.read_table(boolq.path).to_pylist(), BUILTIN_SUITES["superglue_boolq"], 1
    )
    # The pipeline's own contexts (one exemplar each), bos as text, only the first max_items.
    assert [r["context"] for r in rows] == ["<s>" + c for c in contexts[:3]]
    assert [r["label"] for r in rows] == [0, 1, 0] and rows[0]["choices"] == ["no", "yes"]

    mc = yaml.safe_load((out / "mlora_boolq.yaml").read_text())
    assert mc["output_type"] == "multiple_choice" and mc["num_fewshot"] == 0
    assert (mc["doc_to_text"], mc["doc_to_choice"], mc["doc_to_target"]) == (
        "context",
        "choices",
        "label",
    )
    assert [m["metric"] for m in mc["metric_list"]] == ["acc", "acc_norm"]
    assert mc["dataset_kwargs"]["data_files"]["test"] == str(out / "mlora_boolq.jsonl")

    gen = yaml.safe_load((out / "mlora_math.yaml").read_text())
    assert gen["output_type"] == "generate_until"
    assert gen["generation_kwargs"]["until"] == ["Question:", "</s>", "<|im_end|>"]
    assert gen["generation_kwargs"]["max_gen_toks"] == 32
    assert [f["name"] for f in gen["filter_list"]] == ["strict-match", "flexible-extract"]
    assert gen["metric_list"][0]["regexes_to_ignore"] == [",", "\\$", "(?s).*#### ", "\\.$"]


def test_a_bad_item_writes_no_task_at_all(tmp_path, bpe):
    good = _suite(tmp_path, "boolq", "superglue_boolq", "multiple_choice", [_mc(0), _mc(1)])
    bad_row = {**_mc(2), "label": 5}
    bad = _suite(tmp_path, "bad", "superglue_boolq", "multiple_choice", [_mc(0), bad_row])
    out = tmp_path / "tasks"
    with pytest.raises(DataError, match="label 5"):
        write_lm_eval_tasks([good, bad], EvaluationSpec(), plain(bpe), out)
    assert not out.exists() or not any(out.iterdir())


def _mmlu(i):
    return make_record(
        source="mmlu",
        task="mc",
        category="knowledge",
        prompt=f"Which is {i}?\nA. {i}\nB. {i + 1}\nC. {i + 2}\nD. {i + 3}\nAnswer:",
        response=" A",
        choices=["A", "B", "C", "D"],
        label=i % 4,
        meta={"subject": "high_school_geography"},
    )


@pytest.mark.slow  # lm-eval's harness on a tiny chat model
def test_lm_eval_with_apply_chat_template_equals_the_pipeline_item_for_item(tmp_path):
    """The chat export holds the user turn and the header; lm-eval renders the chat with its
    standard flag and plain choices, and scores every item as the pipeline does."""
    pytest.importorskip("lm_eval")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from multilora_pipeline.models.prompt_format import PromptFormat
    from multilora_pipeline.tasks.evaluation.evaluate import evaluate_model
    from multilora_pipeline.tasks.evaluation.lm_eval_tasks import run_lm_eval
    from tests.tasks.chat_model import build_chat_model

    folder = build_chat_model(tmp_path / "chat")
    fmt = PromptFormat.resolve(AutoTokenizer.from_pretrained(folder))
    assert fmt.kind == "chat"
    boolq = _suite(
        tmp_path, "boolq", "superglue_boolq", "multiple_choice", [_mc(i) for i in range(6)]
    )
    mmlu = _suite(tmp_path, "mmlu", "mmlu", "multiple_choice", [_mmlu(i) for i in range(6)])
    settings = EvaluationSpec(few_shot=1)
    out = tmp_path / "tasks"
    write_lm_eval_tasks([boolq, mmlu], settings, fmt, out)
    rows = [json.loads(line) for line in (out / "mlora_mmlu.jsonl").read_text().splitlines()]
    assert rows[0]["description"].startswith("The following are multiple choice questions")
    assert yaml.safe_load((out / "mlora_mmlu.yaml").read_text())["description"] == (
        "{{description}}"
    )

    model = AutoModelForCausalLM.from_pretrained(folder)
    ours = evaluate_model(model, fmt, [boolq, mmlu], None, settings).predictions
    results = run_lm_eval(
        str(folder), None, out, ["mlora_boolq", "mlora_mmlu"], chat=True, log_samples=True
    )
    for suite in ("boolq", "mmlu"):
        theirs = sorted(results["samples"][f"mlora_{suite}"], key=lambda s: s["doc"]["item"])
        mine = ours[ours["suite"] == suite].reset_index(drop=True)
        assert len(theirs) == len(mine) == 6
        for sample, (_, row) in zip(theirs, mine.iterrows(), strict=True):
            lls = [float(r[0]) for r in sample["filtered_resps"]]
            assert lls == pytest.approx(json.loads(row["choice_loglik"]), abs=1e-4)
            assert sample["acc"] == float(row["correct"]) and sample["acc_norm"] == float(
                row["correct_norm"]
            )
