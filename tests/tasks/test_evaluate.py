"""Evaluation end to end: known answers for acc / acc_norm / exact match / held-out loss,
few-shot contexts, bad input and the arm comparison table, on tiny in-memory models."""

from __future__ import annotations

import json
import math

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from multilora_pipeline.data_specs.errors import DataError, SpecError
from multilora_pipeline.data_specs.metrics import GSM8K as GSM8K_METRICS
from multilora_pipeline.data_specs.metrics import headline_kind
from multilora_pipeline.data_specs.record import make_record, records_to_table
from multilora_pipeline.data_specs.schema import EvalSuiteSpec, EvaluationSpec
from multilora_pipeline.tasks.evaluation.evaluate import (
    SuiteData,
    build_contexts,
    build_headers,
    compare_arms,
    evaluate_model,
    heldout_loss,
)
from multilora_pipeline.tasks.evaluation.scoring import score_choices
from multilora_pipeline.tasks.evaluation.suites import (
    BUILTIN_SUITES,
    extract_answer,
    gold_answer,
    suite_format,
)
from tests.tasks.scoring_models import BigramLM, plain, tiny_llama


def _write(path, rows):
    pq.write_table(records_to_table(rows), path)
    return path


def _mc_row(prompt, choices, label, source="suite", meta=None):
    return make_record(
        source=source,
        task="mc",
        category="knowledge",
        prompt=prompt,
        response=choices[label],
        choices=choices,
        label=label,
        meta=meta,
    )


def test_uniform_model_gives_known_logliks_acc_and_acc_norm(tmp_path, chars):
    """A Llama with a zero lm_head predicts uniformly: ll = -(len(choice) + 1) * log V (the
    +1 is the space), so acc picks the shortest choice and acc_norm the longest."""
    model = tiny_llama(len(chars))
    with torch.no_grad():
        model.lm_head.weight.zero_()
    vocab = model.config.vocab_size
    choices = ["a", "bbbb", "cc"]
    lls = score_choices(model, plain(chars), ["Q: pick one\nAnswer:"], [choices])[0]
    expected = [-(len(c) + 1) * math.log(vocab) for c in choices]
    assert lls == pytest.approx(expected, abs=1e-4)

    path = _write(
        tmp_path / "mc.parquet",
        [
            _mc_row("Q: first?\nAnswer:", choices, 0),  # gold is the shortest: acc 1, acc_norm 0
            _mc_row("Q: second?\nAnswer:", choices, 1),  # gold is the longest: acc 0, acc_norm 1
            _mc_row("Q: third?\nAnswer:", choices, 2),  # neither: 0, 0
            _mc_row("Q: fourth?\nAnswer:", ["xyz", "q"], 1),  # shortest again: 1, 0
        ],
    )
    spec = EvalSuiteSpec(name="toy", path="x", template="arc", kind="multiple_choice")
    result = evaluate_model(
        model, plain(chars), [SuiteData(spec, path)], None, EvaluationSpec(batch_size=3)
    )
    assert result.metrics["toy_acc"] == pytest.approx(0.5)
    assert result.metrics["toy_acc_norm"] == pytest.approx(0.25)
    assert result.metrics["eval_macro_acc"] == pytest.approx(0.5)
    assert result.metrics["category_knowledge_score"] == pytest.approx(0.5)
    preds = result.predictions
    assert list(preds["correct"]) == [True, False, False, True]
    assert list(preds["predicted_norm"]) == ["bbbb", "bbbb", "bbbb", "xyz"]
    assert json.loads(preds["choice_loglik"][0]) == pytest.approx(expected, abs=1e-4)


def test_constructed_preference_for_yes_gives_expected_acc(tmp_path, chars):
    ids = chars.convert_tokens_to_ids
    bias = torch.zeros(len(chars))
    bias[[ids("y"), ids("e"), ids("s")]] = 3.0  # "yes" is more likely than "no" everywhere
    model = BigramLM(len(chars), bias=bias)
    rows = [
        _mc_row(f"Passage {i}.\nQuestion: is it {i}?\nAnswer:", ["no", "yes"], lab)
        for i, lab in enumerate([1, 1, 1, 0])
    ]
    path = _write(tmp_path / "boolq.parquet", rows)
    spec = EvalSuiteSpec(name="boolq", path="x", template="superglue_boolq", category="nlu")
    result = evaluate_model(model, plain(chars), [SuiteData(spec, path)], None, EvaluationSpec())
    assert result.metrics["boolq_acc"] == pytest.approx(0.75)
    assert set(result.predictions["predicted"]) == {"yes"}


# --- few-shot contexts -------------------------------------------------------------------


def test_few_shot_contexts_are_deterministic_and_never_show_the_item():
    fmt = BUILTIN_SUITES["mmlu"]
    rows = [
        _mc_row(f"Q{i}\nAnswer:", ["A", "B"], i % 2, meta={"subject": "high_school_math"})
        for i in range(4)
    ]
    ctx = build_contexts(rows, fmt, k=2)
    header = (
        "The following are multiple choice questions (with answers) about high school math.\n\n"
    )
    # The header is apart: the prompt format puts it first, or in a chat's system turn.
    assert build_headers(rows, fmt) == [header] * 4
    assert ctx[0] == "Q1\nAnswer: B\n\nQ2\nAnswer: A\n\nQ0\nAnswer:"
    assert ctx[1] == "Q0\nAnswer: A\n\nQ2\nAnswer: A\n\nQ1\nAnswer:"
    assert ctx[3] == "Q0\nAnswer: A\n\nQ1\nAnswer: B\n\nQ3\nAnswer:"
    dev = [_mc_row("D0\nAnswer:", ["A", "B"], 1)]
    assert build_contexts(rows[:1], fmt, k=1, dev_rows=dev)[0] == "D0\nAnswer: B\n\nQ0\nAnswer:"
    assert build_contexts(rows[:1], BUILTIN_SUITES["superglue_boolq"], k=0) == ["Q0\nAnswer:"]
    assert build_headers(rows[:1], BUILTIN_SUITES["superglue_boolq"]) == [""]


# --- generation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "strict", "flexible"),
    [
        (
            "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\nNatalia sold 48+24 = <<48+24=72>>72 "
            "clips altogether in April and May.\n#### 72",
            "72",
            "72",
        ),
        ("Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\n#### 10", "10", "10"),
        ("The total is 1,000 + 200 = <<1000+200=1200>>1,200 dollars.\n#### 1,200", "1200", "1200"),
        ("He loses 5 - 8 = -3 points.\n#### -3", "-3", "-3"),
        ("#### 7\n#### 9", "7", "9"),  # strict-match takes the first, flexible the last number
        ("#### 12. Then 5 more", "12", "5"),
        # The review's case: a random model's garbage with a stray digit is no answer.
        (" custom whvevelop~ sy3 itup", "[invalid]", "3"),
        ("So she pays $18.", "[invalid]", "18"),  # no ####: strict finds nothing
        ("It costs $1,234.50 in total", "[invalid]", "1234.50"),
        ("It is -12 degrees", "[invalid]", "-12"),
        ("####72", "[invalid]", "72"),  # lm-eval's strict pattern needs the space after ####
        ("The answer is 3.5 hours.", "[invalid]", "3.5"),
        # lm-eval 0.4.13 exactly: one trailing dot is ignored, not all of them ...
        ("#### 5..", "5.", "5."),
        # ... and flexible-extract keeps the last match even when it holds no digit.
        ("It costs 5 dollars. Hmm...", "[invalid]", ".."),
        ("I don't know...", "[invalid]", ".."),
    ],
)
def test_gsm8k_strict_and_flexible_answer_extraction(text, strict, flexible):
    assert extract_answer(text, "gsm8k") == strict
    assert extract_answer(text, "gsm8k_flexible") == flexible


def test_gsm8k_gold_is_the_text_after_the_hashes_as_lm_eval_reads_it():
    assert gold_answer("Think 2 + 3.\n#### 5", "gsm8k") == "5"
    assert gold_answer("#### 1,200.", "gsm8k") == "1200"
    assert gold_answer("no final line", "gsm8k") == ""
    assert BUILTIN_SUITES["gsm8k"].stop_sequences == ("Question:", "</s>", "<|im_end|>")
    assert "lm-eval 0.4.13" in BUILTIN_SUITES["gsm8k"].lm_eval_task


def _gsm_suite(tmp_path, answers=("42", "41", "4,2")):
    rows = [
        make_record(
            source="gsm",
            task="math",
            category="math",
            prompt=f"Question: item {i}?\nAnswer:",
            response=f"Think.\n#### {ans}",
        )
        for i, ans in enumerate(answers)
    ]
    path = _write(tmp_path / "gsm.parquet", rows)
    spec = EvalSuiteSpec(name="gsm", path="x", template="gsm8k", kind="generation", category="math")
    return SuiteData(spec, path)


def test_generation_suite_counts_a_bare_number_only_as_flexible_extract(tmp_path, chars):
    nl = chars.encode("\n", add_special_tokens=False)[0]
    space = chars.encode(" ", add_special_tokens=False)[0]
    ids = chars.convert_tokens_to_ids
    table = {ids(":"): space, space: ids("4"), ids("4"): ids("2"), ids("2"): nl, nl: nl}
    model = BigramLM(len(chars), table=table)
    result = evaluate_model(
        model, plain(chars), [_gsm_suite(tmp_path)], None, EvaluationSpec(max_new_tokens=12)
    )
    # " 42" has no "#### 42": the headline (strict) gives no credit, flexible-extract does.
    assert result.metrics["gsm_exact_match"] == result.metrics["gsm_strict_match"] == 0.0
    assert result.metrics["gsm_flexible_extract"] == pytest.approx(2 / 3)
    assert result.metrics["category_math_score"] == result.metrics["eval_macro_acc"] == 0.0
    preds = result.predictions
    assert list(preds["gold"]) == ["42", "41", "42"]
    # lm-eval's gsm8k stops at "Question:" or an end token, not at a blank line.
    assert set(preds["output"]) == {" 42" + "\n" * 9}
    assert set(preds["predicted"]) == {"[invalid]"}
    assert list(preds["predicted_flexible"]) == ["42"] * 3
    assert list(preds["correct_flexible"]) == [True, False, True]


class ScriptLM(nn.Module):
    """A causal LM that writes `script` (token ids) after a prompt whose last token sits at
    position `last`, then eos: the same answer for every prompt of that length."""

    def __init__(self, vocab: int, script: list[int], last: int, eos: int):
        super().__init__()
        self.vocab, self.last, self.eos = vocab, last, eos
        self.script = torch.tensor(script)
        self.dummy = nn.Parameter(torch.zeros(1))  # gives the module a device

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        step = position_ids - self.last  # 0 at the prompt's last token
        written = (step >= 0) & (step < len(self.script))
        nxt = torch.full_like(input_ids, self.eos)
        nxt[written] = self.script[step[written]]
        logits = torch.zeros(*input_ids.shape, self.vocab)
        return CausalLMOutputWithPast(logits=logits.scatter(-1, nxt[..., None], 20.0))


def test_generation_suite_reads_the_first_hash_answer_strictly_and_the_last_number_flexibly(
    tmp_path, chars
):
    suite = _gsm_suite(tmp_path)
    prompt_tokens = len(chars.encode("Question: item 0?\nAnswer:", add_special_tokens=False))
    answer = chars.encode(" #### 42 (or 41)", add_special_tokens=False)
    # bos sits at position 0, so the prompt's last token is at position len(prompt).
    model = ScriptLM(len(chars), answer, prompt_tokens, chars.eos_token_id)
    result = evaluate_model(model, plain(chars), [suite], None, EvaluationSpec(max_new_tokens=24))
    assert set(result.predictions["output"]) == {" #### 42 (or 41)"}
    assert result.metrics["gsm_exact_match"] == pytest.approx(2 / 3)  # 42 and 4,2
    assert result.metrics["gsm_strict_match"] == pytest.approx(2 / 3)
    assert result.metrics["gsm_flexible_extract"] == pytest.approx(1 / 3)  # 41
    # The spec accepts exactly these names as registry.primary_metric.
    assert {f"gsm_{m}" for m in GSM8K_METRICS} <= set(result.metrics)


# --- held-out loss ------------------------------------------------------------------------


def test_heldout_loss_equals_hand_computation(tmp_path, bpe):
    model = tiny_llama(len(bpe), seed=5)
    rows = [
        ("alpaca", "Give a colour.", "Blue."),
        ("alpaca", "Name the capital of France in one word please.", "Paris"),
        ("gsm", "Question: Tom has 3 apples and buys 4 more.\nAnswer:", " 3 + 4 = 7\n#### 7"),
    ]
    table = records_to_table(
        [
            make_record(source=s, task="t", category="instruction", prompt=p, response=r)
            for s, p, r in rows
        ]
    )
    per_source: dict[str, list[float]] = {}
    with torch.no_grad():
        for source, prompt, response in rows:
            head = [bpe.bos_token_id] + bpe.encode(prompt, add_special_tokens=False)
            tail = bpe.encode(response, add_special_tokens=False) + [bpe.eos_token_id]
            logp = model(torch.tensor([head + tail])).logits[0].log_softmax(-1)
            for k, token in enumerate(tail):
                per_source.setdefault(source, []).append(-float(logp[len(head) + k - 1, token]))
    everything = [x for v in per_source.values() for x in v]

    totals = heldout_loss(model, plain(bpe), table, batch_size=2)
    assert {s: n for s, (_, n) in totals.items()} == {s: len(v) for s, v in per_source.items()}
    path = tmp_path / "val.parquet"
    pq.write_table(table, path)
    metrics = evaluate_model(model, plain(bpe), [], path, EvaluationSpec(batch_size=2)).metrics
    assert metrics["val_loss"] == pytest.approx(sum(everything) / len(everything), abs=1e-5)
    assert metrics["val_ppl"] == pytest.approx(math.exp(metrics["val_loss"]), rel=1e-6)
    for source, losses in per_source.items():
        assert metrics[f"val_loss_{source}"] == pytest.approx(sum(losses) / len(losses), abs=1e-5)


# --- bad input ----------------------------------------------------------------------------


def test_bad_label_names_file_row_and_field(tmp_path, chars):
    rows = [_mc_row("Q?", ["a", "b"], 0), _mc_row("Q2?", ["a", "b"], 1)]
    table = records_to_table(rows)
    labels = pa.array([0, 5], pa.int64())
    table = table.set_column(table.schema.get_field_index("label"), "label", labels)
    path = tmp_path / "bad.parquet"
    pq.write_table(table, path)
    spec = EvalSuiteSpec(name="bad", path="x", template="arc")
    with pytest.raises(DataError, match=r"bad\.parquet: row 1, field label"):
        evaluate_model(
            tiny_llama(len(chars)), plain(chars), [SuiteData(spec, path)], None, EvaluationSpec()
        )


def test_template_kind_mismatch_is_a_spec_error():
    with pytest.raises(SpecError, match="generation"):
        suite_format(EvalSuiteSpec(name="g", path="x", template="gsm8k", kind="multiple_choice"))
    generic = suite_format(EvalSuiteSpec(name="c", path="x", template="generic", kind="generation"))
    assert headline_kind(generic.kind) == "exact_match"


def test_compare_arms_puts_headline_metrics_first_and_fills_gaps():
    table = compare_arms(
        {
            "base": {"val_loss": 3.0, "mc_acc": 0.25, "eval_macro_acc": 0.25},
            "lora": {"val_loss": 2.0, "mc_acc": 0.5, "eval_macro_acc": 0.5, "gen_exact_match": 0.1},
        }
    )
    assert list(table.columns) == ["arm", "eval_macro_acc", "val_loss", "gen_exact_match", "mc_acc"]
    assert list(table["arm"]) == ["base", "lora"]
    assert math.isnan(table.loc[0, "gen_exact_match"]) and table.loc[1, "mc_acc"] == 0.5
