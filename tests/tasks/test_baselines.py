"""Every multiple-choice score beside chance and the majority answer, and the gate that
refuses an adapter worse than a constant answer (tasks/evaluation/baselines.py,
tasks/registry/promote.py, flows/run_report.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from multilora_pipeline.flows.run_report import format_summary
from multilora_pipeline.tasks.evaluation.baselines import (
    baseline_rows,
    constant_item_scores,
    majority_label,
    suite_baselines,
)
from multilora_pipeline.tasks.evaluation.confidence import paired_bootstrap
from multilora_pipeline.tasks.registry.promote import decide

YES_NO = ["no", "yes"]


def _suite(labels: list[int], predicted: list[int]) -> tuple[list[dict], list[dict]]:
    rows = [{"label": y, "choices": YES_NO} for y in labels]
    records = [{"correct": p == y} for p, y in zip(predicted, labels, strict=True)]
    return rows, records


def test_always_yes_scores_the_majority_rate_and_half_in_balanced_accuracy():
    labels = [1, 1, 1, 0, 1, 0, 1, 1]  # 6 of 8 "yes"
    rows, records = _suite(labels, [1] * 8)
    metrics = suite_baselines("boolq", rows, records)
    assert metrics == {
        "boolq_balanced_acc": 0.5,  # recall 1 on "yes", 0 on "no"
        "boolq_majority": 0.75,
        "boolq_chance": 0.5,
    }
    # The constant predictor is "yes" for every item: right exactly where the gold is "yes".
    assert [r["majority_correct"] for r in records] == [y == 1 for y in labels]
    assert [r["label"] for r in records] == labels


def test_balanced_accuracy_is_the_mean_recall_and_chance_follows_the_choices():
    rows = [
        {"label": 0, "choices": ["A", "B", "C", "D"]},
        {"label": 0, "choices": ["A", "B", "C", "D"]},
        {"label": 2, "choices": ["A", "B"]},
        {"label": 3, "choices": ["A", "B", "C", "D"]},
    ]
    records = [{"correct": c} for c in (True, False, True, False)]
    metrics = suite_baselines("mmlu", rows, records)
    assert metrics["mmlu_balanced_acc"] == pytest.approx((0.5 + 1 + 0) / 3)
    assert metrics["mmlu_chance"] == pytest.approx((0.25 * 3 + 0.5) / 4)
    assert metrics["mmlu_majority"] == 0.5
    assert majority_label([2, 2, 0, 0, 1]) == 0  # a tie goes to the lowest label


def _predictions() -> pd.DataFrame:
    mc = [{"suite": "boolq", "correct": c, "label": y, "majority_correct": y == 1}
          for c, y in zip([1, 1, 0, 1], [1, 0, 1, 1], strict=True)]  # fmt: skip
    gen = [{"suite": "math", "correct": False}]
    return pd.DataFrame(mc + gen)


def test_the_constant_predictor_is_paired_item_by_item_on_multiple_choice_suites_only():
    constant = constant_item_scores(_predictions())
    assert set(constant) == {("boolq", "acc"), ("boolq", "acc_norm")}
    assert constant[("boolq", "acc")].tolist() == [1.0, 0.0, 1.0, 1.0]
    model = {("boolq", "acc"): np.array([1.0, 1.0, 0.0, 1.0])}
    versus = paired_bootstrap(model, constant, [("boolq", "acc")], resamples=200)
    assert versus.estimate == 0.0 and versus.low < 0 < versus.high


def test_reference_rows_carry_the_primary_metric_when_it_is_made_of_multiple_choice():
    metrics = {"boolq_majority": 0.75, "boolq_chance": 0.5}
    rows = baseline_rows(metrics, _predictions(), ("eval_macro_acc", [("boolq", "acc")]))
    assert rows["majority"]["boolq_acc"] == 0.75 and rows["majority"]["eval_macro_acc"] == 0.75
    assert rows["majority"]["boolq_balanced_acc"] == 0.5  # two labels occur
    assert rows["chance"]["boolq_acc_norm"] == 0.5
    with_math = baseline_rows(
        metrics, _predictions(), ("eval_macro_acc", [("boolq", "acc"), ("math", "exact_match")])
    )
    assert "eval_macro_acc" not in with_math["majority"]  # no constant answer for generation


def _interval(estimate, low, high, items=200):
    from multilora_pipeline.tasks.evaluation.confidence import Interval

    return Interval(estimate, low, high, items, 1000)


GATE = {"primary_metric": "boolq_acc", "min_improvement": 0.0, "regression_tolerance": 0.05}
BASE = {"boolq_acc": 0.40}
# Better than the base model, worse than always answering "yes" (0.62).
CHALLENGER = {"boolq_acc": 0.55}


def test_the_gate_refuses_an_adapter_below_the_majority_rate_and_names_the_suite():
    decision = decide(
        "1", CHALLENGER, None, None, **GATE, base_metrics=BASE, must_beat_base=True,
        versus_base=_interval(0.15, 0.08, 0.22),
        versus_majority={"boolq_acc": _interval(-0.07, -0.13, -0.01)},
        must_beat_majority=True,
    )  # fmt: skip
    assert not decision.promote
    assert decision.reasons[0] == (
        "boolq_acc 0.5500 vs always the majority answer 0.6200: gain -0.0700, 95% CI "
        "[-0.1300, -0.0100] over 200 items, needs the interval's lower end above +0.0000 "
        "(registry.must_beat_majority)"
    )
    assert any("vs base model 0.4000" in r for r in decision.reasons)  # still stated


def test_a_tie_with_the_constant_answer_is_not_enough_and_a_clear_win_is():
    common = dict(base_metrics=BASE, must_beat_base=True, versus_base=_interval(0.3, 0.2, 0.4))
    tie = decide(
        "1", {"boolq_acc": 0.63}, None, None, **GATE, **common,
        versus_majority={"boolq_acc": _interval(0.01, -0.04, 0.06)}, must_beat_majority=True,
    )  # fmt: skip
    assert not tie.promote and "registry.must_beat_majority" in tie.reasons[0]
    win = decide(
        "1", {"boolq_acc": 0.72}, None, None, **GATE, **common,
        versus_majority={"boolq_acc": _interval(0.10, 0.05, 0.15)}, must_beat_majority=True,
    )  # fmt: skip
    assert win.promote
    assert "boolq_acc 0.7200 vs always the majority answer 0.6200: gain +0.1000" in " ".join(
        win.reasons
    )


def test_with_the_rule_off_the_majority_comparison_is_stated_but_does_not_block():
    decision = decide(
        "1", CHALLENGER, None, None, **GATE, base_metrics=BASE, must_beat_base=True,
        versus_base=_interval(0.15, 0.08, 0.22),
        versus_majority={"boolq_acc": _interval(-0.07, -0.13, -0.01)},
        must_beat_majority=False,
    )  # fmt: skip
    assert decision.promote
    assert any("no better than a constant answer" in r for r in decision.reasons)


def _summary() -> dict:
    interval = {"estimate": 0.1, "low": 0.05, "high": 0.15}
    return {
        "spec": "real", "spec_hash": "h", "mixture_id": "m", "reused_data_stages": [],
        "prompt_format": "chat template", "primary_metric": "boolq_acc",
        "base_metrics": {"boolq_acc": 0.40, "boolq_balanced_acc": 0.5, "val_loss": 2.0},
        "baselines": {
            "chance": {"boolq_acc": 0.5, "boolq_balanced_acc": 0.5},
            "majority": {"boolq_acc": 0.62, "boolq_balanced_acc": 0.5},
        },
        "arms": [{
            "arm": "lora", "version": "1", "seeds": [0], "learning_rate": 1e-3,
            "metrics": {"boolq_acc": 0.72, "boolq_balanced_acc": 0.7, "val_loss": 1.0},
            "metrics_sd": {}, "probes": [], "versus_base": {"boolq_acc": interval},
        }],
        "between_arms": [],
        "versus_majority": [
            {"model": "base", "metric": "boolq_acc", **interval},
            {"model": "lora", "metric": "boolq_acc", **interval},
        ],
        "bootstrap_resamples": 1000, "registered_model": "mlora-real", "challenger": "1",
        "champion": None, "decision": "not_promoted", "decision_reasons": [],
        "stage_seconds": {}, "parent_run_id": "p", "experiment": "real", "ui_command": "mlora ui",
    }  # fmt: skip


def test_the_summary_reads_every_score_against_chance_and_the_majority_answer():
    text = format_summary(_summary())
    lines = text.splitlines()
    header = next(line for line in lines if line.startswith("model "))
    assert header.split()[4:] == ["boolq_acc", "boolq_balanced_acc", "val_loss"]
    rows: dict[str, list[str]] = {}
    for line in lines:  # the score table comes first; interval rows reuse the model names
        if line.split():
            rows.setdefault(line.split()[0], line.split())
    assert rows["chance"][4:6] == ["0.5000", "0.5000"]
    assert rows["majority"][4:6] == ["0.6200", "0.5000"]
    assert rows["majority"][6] == "-"  # no held-out loss for a constant answer
    assert rows["lora"][4:6] == ["0.7200", "0.7000"]
    assert "lora - majority" in text and "base - majority" in text


def test_must_beat_majority_is_on_for_a_pretrained_base_and_off_for_a_tiny_one(repo_root):
    from multilora_pipeline.data_specs.schema import load_spec

    real, _ = load_spec(repo_root / "data_specs" / "real.yaml")
    tiny, _ = load_spec(repo_root / "data_specs" / "demo_tiny.yaml")
    assert real.registry.must_beat_majority is True and real.must_beat_majority
    assert tiny.registry.must_beat_majority is None and not tiny.must_beat_majority
    unset = real.model_copy(
        update={"registry": real.registry.model_copy(update={"must_beat_majority": None})}
    )
    assert unset.must_beat_majority  # unset: on, the base model is pretrained
