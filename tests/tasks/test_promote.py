"""The champion/challenger gate: pure decisions, then against a real MLflow registry."""

from __future__ import annotations

import math

import pytest

from multilora_pipeline.data_specs.errors import RegistryError
from multilora_pipeline.tasks.registry.promote import (
    KEPT,
    NOT_PROMOTED,
    PREVIOUS_TAG,
    PROMOTED,
    decide,
    promote,
    record_decision,
    rollback,
    run_gate,
)
from multilora_pipeline.tasks.registry.tracking import Tracker
from multilora_pipeline.tasks.registry.versions import CHAMPION, version_by_alias
from multilora_pipeline.tasks.workspace import Workspace

pytestmark = pytest.mark.slow  # MLflow registry round trips: left out by -m "not slow"

GATE = {"primary_metric": "eval_macro_acc", "min_improvement": 0.0, "regression_tolerance": 0.05}
CHAMP = {"eval_macro_acc": 0.50, "category_nlu_score": 0.60, "category_math_score": 0.40}


@pytest.mark.parametrize(
    ("challenger", "gate", "promoted", "reason"),
    [
        (
            {"eval_macro_acc": 0.55, "category_nlu_score": 0.60, "category_math_score": 0.40},
            {},
            True,
            "beats champion 0.5000 by +0.0500",
        ),
        (
            {"eval_macro_acc": 0.45, "category_nlu_score": 0.60},
            {},
            False,
            "gain -0.0500, needs a gain > 0",
        ),
        (
            {"eval_macro_acc": 0.50, "category_nlu_score": 0.60},
            {},
            False,
            "gain +0.0000, needs a gain > 0",
        ),
        (
            {"eval_macro_acc": 0.52, "category_nlu_score": 0.60},
            {"min_improvement": 0.05},
            False,
            "needs a gain >= 0.0500",
        ),
        (
            {"eval_macro_acc": 0.56, "category_nlu_score": 0.60},
            {"min_improvement": 0.05},
            True,
            "beats champion",
        ),
        (
            {"eval_macro_acc": 0.60, "category_nlu_score": 0.50, "category_math_score": 0.45},
            {},
            False,
            "category_nlu_score regressed 0.6000 -> 0.5000 (drop 0.1000 > tolerance 0.0500)",
        ),
        (
            {"eval_macro_acc": 0.60, "category_nlu_score": 0.56, "category_math_score": 0.45},
            {},
            True,
            "no category dropped more than 0.0500",
        ),
        (
            {"eval_macro_acc": 0.60, "category_nlu_score": 0.50},
            {"regression_tolerance": 0.2},
            True,
            "beats champion",
        ),
        ({"category_nlu_score": 0.9}, {}, False, "not eligible: challenger has no finite"),
        ({"eval_macro_acc": math.nan}, {}, False, "not eligible"),
    ],
)
def test_decide_against_a_champion(challenger, gate, promoted, reason):
    decision = decide("2", challenger, "1", CHAMP, **{**GATE, **gate})
    assert decision.promote is promoted
    assert any(reason in r for r in decision.reasons), decision.reasons
    assert decision.as_tags()["promotion.decision"] == (PROMOTED if promoted else KEPT)
    assert decision.as_tags()["promotion.compared_with"] == "1"


def test_decide_without_a_champion_and_edge_cases():
    first = decide("1", {"eval_macro_acc": 0.1}, None, None, **GATE)
    assert first.promote and "first eligible version becomes champion" in first.reasons[0]
    assert not decide("1", {}, None, None, **GATE).promote  # no metric: not eligible
    same = decide("1", CHAMP, "1", CHAMP, **GATE)
    assert not same.promote and same.reasons == ["challenger is already the champion"]
    unscored = decide("2", {"eval_macro_acc": 0.1}, "1", {}, **GATE)
    assert unscored.promote and "champion has no finite" in unscored.reasons[0]
    both = decide("2", {"eval_macro_acc": 0.4, "category_nlu_score": 0.1}, "1", CHAMP, **GATE)
    assert len(both.reasons) == 2  # every reason is recorded, not only the first
    text = both.markdown()
    assert "version 2 **not promoted**" in text and "champion v1 0.5000" in text


# --- against a registry ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    """One MLflow store for the module (creating one costs seconds); one model name per test."""
    return Tracker(Workspace.resolve(tmp_path_factory.mktemp("gate") / "ws").ensure(), "gate")


@pytest.fixture
def registry(tracker, request):
    """A registered model whose versions carry only run metrics (the gate needs nothing more)."""
    name = f"mlora-{request.node.name.replace('_', '-')}"
    tracker.client.create_registered_model(name)
    parent = tracker.start_parent("pipeline", {}, {})

    def add_version(metrics: dict[str, float]) -> str:
        run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
        tracker.log_metrics(run_id, metrics)
        version = tracker.client.create_model_version(name, f"runs:/{run_id}/adapter", run_id)
        return str(version.version)

    return tracker, name, parent, add_version


def _champion(tracker: Tracker, name: str) -> str:
    return str(version_by_alias(tracker, name, CHAMPION).version)


def test_gate_promotes_better_keeps_worse_and_regressing(registry):
    tracker, name, parent, add_version = registry
    v1 = add_version(CHAMP)
    assert run_gate(tracker, name, v1, **GATE).promote and _champion(tracker, name) == v1

    v2 = add_version(
        {"eval_macro_acc": 0.58, "category_nlu_score": 0.62, "category_math_score": 0.41}
    )
    decision = run_gate(tracker, name, v2, **GATE)
    assert decision.promote and _champion(tracker, name) == v2
    tags = tracker.client.get_model_version(name, v2).tags
    assert tags["promotion.decision"] == PROMOTED and tags["promotion.compared_with"] == v1
    assert "beats champion 0.5000" in tags["promotion.reasons"]
    record_decision(tracker, parent, decision)
    run_tags = tracker.client.get_run(parent).data.tags
    assert run_tags["promotion.decision"] == PROMOTED and run_tags["promotion.challenger"] == v2

    rerun = run_gate(tracker, name, v2, **GATE)  # an unchanged rerun: v2 is still champion
    assert not rerun.promote and rerun.reasons == ["challenger is already the champion"]
    assert tracker.client.get_model_version(name, v2).tags["promotion.decision"] == PROMOTED

    worse = add_version({"eval_macro_acc": 0.40, "category_nlu_score": 0.62})
    assert not run_gate(tracker, name, worse, **GATE).promote and _champion(tracker, name) == v2
    tags = tracker.client.get_model_version(name, worse).tags
    assert tags["promotion.decision"] == KEPT and "gain -0.1800" in tags["promotion.reasons"]

    regressing = add_version({"eval_macro_acc": 0.70, "category_nlu_score": 0.30})
    assert (
        not run_gate(tracker, name, regressing, **GATE).promote and _champion(tracker, name) == v2
    )
    reasons = tracker.client.get_model_version(name, regressing).tags["promotion.reasons"]
    assert "category_nlu_score regressed 0.6200 -> 0.3000" in reasons


def test_manual_promotion_and_rollback(registry):
    tracker, name, _, add_version = registry
    v1, v2, v3 = (add_version({"eval_macro_acc": x}) for x in (0.3, 0.4, 0.5))
    with pytest.raises(RegistryError, match="no previous champion"):
        rollback(tracker, name)
    assert promote(tracker, name, v1) is None
    assert promote(tracker, name, v3) == v1
    assert rollback(tracker, name) == v1 and _champion(tracker, name) == v1
    assert (
        rollback(tracker, name) == v3 and _champion(tracker, name) == v3
    )  # a rollback is undoable
    assert promote(tracker, name, v2) == v3
    assert tracker.client.get_registered_model(name).tags[PREVIOUS_TAG] == v3
    with pytest.raises(RegistryError, match="has no version 42"):
        promote(tracker, name, "42")
    assert _champion(tracker, name) == v2
    with pytest.raises(RegistryError, match="no registered model named 'nope'"):
        rollback(tracker, "nope")


# --- against the base model --------------------------------------------------------------------

# The review's case: v1 scored below the base model and was crowned because there was no champion.
BASE = {"eval_macro_acc": 0.2712}
BELOW_BASE = {"eval_macro_acc": 0.2538}


@pytest.mark.parametrize(
    ("challenger", "champion", "gate", "promoted", "reasons"),
    [
        (
            BELOW_BASE,
            None,
            {"must_beat_base": True},
            False,
            [
                "eval_macro_acc 0.2538 vs base model 0.2712: gain -0.0174, needs a gain > 0 "
                "(registry.must_beat_base)"
            ],
        ),
        (
            BELOW_BASE,
            None,
            {"must_beat_base": False},
            True,
            [
                "no champion yet: the first eligible version becomes champion",
                "eval_macro_acc 0.2538 vs base model 0.2712: gain -0.0174: no better than the "
                "base model (registry.must_beat_base is off)",
            ],
        ),
        (
            {"eval_macro_acc": 0.30},
            None,
            {"must_beat_base": True},
            True,
            [
                "no champion yet: the first eligible version becomes champion",
                "eval_macro_acc 0.3000 vs base model 0.2712: gain +0.0288",
            ],
        ),
        (  # a tie with the base is no gain, as a tie with the champion is none
            {"eval_macro_acc": 0.2712},
            None,
            {"must_beat_base": True},
            False,
            ["eval_macro_acc 0.2712 vs base model 0.2712: gain +0.0000, needs a gain > 0"],
        ),
        (  # the gate's margin applies to the base as to the champion
            {"eval_macro_acc": 0.30},
            {"eval_macro_acc": 0.20},
            {"must_beat_base": True, "min_improvement": 0.05},
            False,
            ["eval_macro_acc 0.3000 vs base model 0.2712: gain +0.0288, needs a gain >= 0.0500"],
        ),
        (  # beats the champion, not the base: both reasons would be wrong to hide
            {"eval_macro_acc": 0.26},
            {"eval_macro_acc": 0.20},
            {"must_beat_base": True},
            False,
            ["eval_macro_acc 0.2600 vs base model 0.2712: gain -0.0112, needs a gain > 0"],
        ),
        (  # beats the base, not the champion: the base comparison is still stated
            {"eval_macro_acc": 0.30},
            {"eval_macro_acc": 0.35},
            {"must_beat_base": True},
            False,
            [
                "eval_macro_acc 0.3000 vs champion 0.3500: gain -0.0500, needs a gain > 0",
                "eval_macro_acc 0.3000 vs base model 0.2712: gain +0.0288",
            ],
        ),
        (
            {"eval_macro_acc": 0.40},
            {"eval_macro_acc": 0.35},
            {"must_beat_base": True},
            True,
            [
                "eval_macro_acc 0.4000 beats champion 0.3500 by +0.0500; no category dropped "
                "more than 0.0500",
                "eval_macro_acc 0.4000 vs base model 0.2712: gain +0.1288",
            ],
        ),
    ],
)
def test_decide_compares_the_challenger_with_the_base_model(
    challenger, champion, gate, promoted, reasons
):
    decision = decide(
        "2",
        challenger,
        "1" if champion else None,
        champion,
        **{**GATE, **gate},
        base_metrics=BASE,
    )
    assert decision.promote is promoted
    assert decision.base_score == BASE["eval_macro_acc"]
    assert len(decision.reasons) == len(reasons), decision.reasons
    for got, want in zip(decision.reasons, reasons, strict=True):
        assert got.startswith(want), decision.reasons
    assert decision.as_tags()["promotion.base_score"] == "0.2712"
    assert "base model 0.2712" in decision.markdown()


def test_decide_without_a_usable_base_score():
    # Asked to beat the base but given no base score: refuse, and say how to fix it.
    blind = decide("1", BELOW_BASE, None, None, **GATE, base_metrics={}, must_beat_base=True)
    assert not blind.promote
    assert "base model has no finite 'eval_macro_acc' (got None)" in blind.reasons[0]
    assert "registry.must_beat_base: false" in blind.reasons[0]
    assert not decide("1", BELOW_BASE, None, None, **GATE, must_beat_base=True).promote
    # Not asked: promoted, and the reasons say the base was not compared.
    unchecked = decide("1", BELOW_BASE, None, None, **GATE, base_metrics={"eval_macro_acc": None})
    assert unchecked.promote and unchecked.reasons[-1].endswith("not compared")
    assert unchecked.base_score is None and unchecked.as_tags()["promotion.base_score"] == "n/a"
    # A rerun whose champion is the challenger still states where it stands against the base.
    rerun = decide("1", BELOW_BASE, "1", BELOW_BASE, **GATE, base_metrics=BASE)
    assert not rerun.promote
    assert rerun.reasons[0] == "challenger is already the champion"
    assert rerun.reasons[1].startswith("eval_macro_acc 0.2538 vs base model 0.2712")


def test_gate_never_crowns_a_version_worse_than_the_base_model(registry):
    tracker, name, _, add_version = registry
    worse = add_version(BELOW_BASE)
    decision = run_gate(tracker, name, worse, **GATE, base_metrics=BASE, must_beat_base=True)
    assert not decision.promote and version_by_alias(tracker, name, CHAMPION) is None
    tags = tracker.client.get_model_version(name, worse).tags
    assert tags["promotion.decision"] == NOT_PROMOTED and tags["promotion.compared_with"] == "none"
    assert "0.2538 vs base model 0.2712" in tags["promotion.reasons"]
    assert tags["promotion.base_score"] == "0.2712"

    better = add_version({"eval_macro_acc": 0.30})
    assert run_gate(tracker, name, better, **GATE, base_metrics=BASE, must_beat_base=True).promote
    assert _champion(tracker, name) == better
    reasons = tracker.client.get_model_version(name, better).tags["promotion.reasons"]
    assert "first eligible version becomes champion" in reasons and "+0.0288" in reasons
