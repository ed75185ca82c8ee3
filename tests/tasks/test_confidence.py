"""Paired bootstrap intervals over evaluation items, and the gate that decides on them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from multilora_pipeline.data_specs.schema import EvalSuiteSpec
from multilora_pipeline.tasks.evaluation.confidence import (
    item_scores,
    mean_and_spread,
    mean_over_seeds,
    metric_parts,
    paired_bootstrap,
)
from multilora_pipeline.tasks.registry.promote import KEPT, PROMOTED, decide

SUITES = [
    EvalSuiteSpec(
        name="boolq",
        path="b.jsonl",
        template="superglue_boolq",
        kind="multiple_choice",
        category="nlu",
    ),
    EvalSuiteSpec(
        name="mmlu", path="m.csv", template="mmlu", kind="multiple_choice", category="knowledge"
    ),
    EvalSuiteSpec(name="gsm", path="g.jsonl", template="gsm8k", kind="generation", category="math"),
]


def scores(**suites) -> dict:
    return {(name, "acc"): np.asarray(values, dtype=float) for name, values in suites.items()}


def test_a_constant_difference_has_an_interval_of_exactly_that_constant():
    a = scores(boolq=[1.0] * 40, mmlu=[1.0] * 20 + [0.0] * 20)
    b = scores(boolq=[0.75] * 40, mmlu=[0.75] * 20 + [-0.25] * 20)
    interval = paired_bootstrap(a, b, [("boolq", "acc"), ("mmlu", "acc")], resamples=500)
    assert interval.estimate == pytest.approx(0.25)
    assert interval.low == pytest.approx(0.25)
    assert interval.high == pytest.approx(0.25)
    assert interval.items == 80


def test_two_fair_coins_give_an_interval_that_covers_zero():
    rng = np.random.default_rng(7)
    a = scores(boolq=rng.integers(0, 2, 200))
    b = scores(boolq=rng.integers(0, 2, 200))
    interval = paired_bootstrap(a, b, [("boolq", "acc")], resamples=1000, seed=3)
    assert interval.low < 0 < interval.high
    # About ±2 standard errors of a difference of two coins over 200 items (sd 0.07).
    assert 0.1 < interval.high - interval.low < 0.4


def test_the_bootstrap_is_seeded_and_pairs_the_items():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2, 60).astype(float)
    a, b = scores(boolq=base), scores(boolq=base.copy())
    a[("boolq", "acc")][:6] = 1.0 - base[:6]  # six items flip
    first = paired_bootstrap(a, b, [("boolq", "acc")], resamples=300, seed=1)
    assert first == paired_bootstrap(a, b, [("boolq", "acc")], resamples=300, seed=1)
    # Paired: identical models differ by exactly zero in every resample.
    same = paired_bootstrap(b, b, [("boolq", "acc")], resamples=300)
    assert (same.low, same.estimate, same.high) == (0.0, 0.0, 0.0)


def test_metric_parts_follow_how_evaluation_averages():
    assert metric_parts("eval_macro_acc", SUITES) == (
        ("boolq", "acc"),
        ("mmlu", "acc"),
        ("gsm", "exact_match"),
    )
    assert metric_parts("category_nlu_score", SUITES) == (("boolq", "acc"),)
    assert metric_parts("mmlu_acc_norm", SUITES) == (("mmlu", "acc_norm"),)
    assert metric_parts("gsm_flexible_extract", SUITES) == (("gsm", "flexible_extract"),)
    with pytest.raises(KeyError):
        metric_parts("val_loss", SUITES)


def test_macro_estimate_is_the_mean_of_suite_means_and_items_come_from_predictions():
    predictions = pd.DataFrame(
        {
            "suite": ["boolq"] * 4 + ["gsm"] * 2,
            "correct": [True, True, False, False, True, False],
            "correct_norm": [True, False, False, False, True, False],
            "correct_flexible": [True, True, False, False, True, True],
        }
    )
    items = item_scores(predictions)
    assert items[("boolq", "acc")].tolist() == [1, 1, 0, 0]
    assert items[("gsm", "flexible_extract")].tolist() == [1, 1]
    parts = [("boolq", "acc"), ("gsm", "exact_match")]
    interval = paired_bootstrap(items, None, parts, resamples=200)
    assert interval.estimate == pytest.approx((0.5 + 0.5) / 2)


def test_seeds_are_averaged_per_item_and_must_share_the_items():
    one, two = scores(boolq=[1, 0, 1]), scores(boolq=[1, 1, 0])
    assert mean_over_seeds([one, two])[("boolq", "acc")].tolist() == [1.0, 0.5, 0.5]
    with pytest.raises(ValueError, match="different items"):
        mean_over_seeds([one, scores(boolq=[1, 0])])
    mean, sd = mean_and_spread([{"x": 0.2}, {"x": 0.4}, {"x": 0.6}])
    assert mean["x"] == pytest.approx(0.4) and sd["x"] == pytest.approx(0.2)
    assert mean_and_spread([{"x": 0.2}])[1]["x"] == 0.0


GATE = {"primary_metric": "eval_macro_acc", "min_improvement": 0.0, "regression_tolerance": 1.0}


def _gate(challenger: np.ndarray, champion: np.ndarray, **settings):
    """The gate on challenger vs champion item scores (version "2" vs "1")."""
    return decide(
        "2",
        {"eval_macro_acc": challenger.mean()},
        "1",
        {"eval_macro_acc": champion.mean()},
        **{**GATE, **settings},
    )


def _intervals(challenger: np.ndarray, other: np.ndarray):
    parts = [("boolq", "acc")]
    return paired_bootstrap(scores(boolq=challenger), scores(boolq=other), parts, resamples=1000)


def test_the_gate_keeps_the_champion_for_a_one_item_win_on_a_small_suite():
    rng = np.random.default_rng(5)
    champion = rng.integers(0, 2, 40).astype(float)
    challenger = champion.copy()
    wrong = np.flatnonzero(champion == 0)
    challenger[wrong[0]] = 1.0  # one more item right: +2.5 points
    interval = _intervals(challenger, champion)
    decision = _gate(
        challenger,
        champion,
        versus_champion=interval,
    )
    assert decision.verdict == KEPT
    assert "95% CI [+0.0000" in decision.reasons[0]
    assert "needs the interval's lower end above +0.0000" in decision.reasons[0]
    # The point comparison would have crowned it.
    point = _gate(
        challenger,
        champion,
    )
    assert point.verdict == PROMOTED


def test_the_gate_promotes_a_large_consistent_win_and_quotes_the_interval():
    rng = np.random.default_rng(5)
    champion = rng.integers(0, 2, 80).astype(float)
    challenger = champion.copy()
    challenger[np.flatnonzero(champion == 0)[:25]] = 1.0  # 25 more right, none lost
    interval = _intervals(challenger, champion)
    base = np.zeros(80)
    decision = _gate(
        challenger,
        champion,
        base_metrics={"eval_macro_acc": 0.0},
        must_beat_base=True,
        versus_champion=interval,
        versus_base=_intervals(challenger, base),
    )
    assert decision.verdict == PROMOTED
    assert f"beats champion {champion.mean():.4f} by +0.3125, 95% CI [" in decision.reasons[0]
    assert "over 80 items" in decision.reasons[0]
    assert "vs base model 0.0000: gain +" in decision.reasons[1]
    # A margin the interval does not clear blocks it.
    strict = _gate(challenger, champion, min_improvement=0.3, versus_champion=interval)
    assert strict.verdict == KEPT
