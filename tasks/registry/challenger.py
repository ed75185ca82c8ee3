"""The promote stage: the best arm becomes the challenger, and the gate decides, on paired
intervals, whether it becomes the champion."""

from __future__ import annotations

import logging

from multilora_pipeline.tasks.evaluation.arm_outcome import ArmOutcome
from multilora_pipeline.tasks.evaluation.arm_scores import Scores
from multilora_pipeline.tasks.evaluation.comparison import (
    Comparison,
    gate_majority_metrics,
    interval,
    version_items,
)
from multilora_pipeline.tasks.evaluation.confidence import item_scores
from multilora_pipeline.tasks.pipeline_summary import ArmSummary
from multilora_pipeline.tasks.registry.promote import run_gate
from multilora_pipeline.tasks.registry.versions import (
    CHALLENGER,
    CHAMPION,
    attach_run_artifacts,
    set_alias,
    version_by_alias,
)
from multilora_pipeline.tasks.run_context import RunContext

log = logging.getLogger("mlora.pipeline")


def promote_best(
    ctx: RunContext,
    arms: list[ArmSummary],
    outcomes: list[ArmOutcome],
    base_scores: Scores,
    comparison: Comparison,
):
    """The best arm (seed mean of the primary metric) becomes the challenger; the gate decides
    on the intervals of its gain over the base, over always the majority answer and over the
    champion whether it is the champion. Returns (the best arm, the gate's decision)."""
    spec, tracker, name = ctx.spec, ctx.tracker, ctx.spec.registered_model_name
    for a in arms:  # the analysis compares the arms, so it joins each version only now
        attach_run_artifacts(tracker, name, a.version, ctx.parent_id)
    primary = spec.registry.primary_metric
    best = max(arms, key=lambda a: a.metrics.get(primary, float("-inf")))
    set_alias(tracker, name, CHALLENGER, best.version)
    items = {a.version: o.items for a, o in zip(arms, outcomes, strict=True)}
    challenger_items = items[best.version]
    base_items = item_scores(base_scores.predictions)
    champion = version_by_alias(tracker, name, CHAMPION)
    champion_items, notes = None, []
    if champion is not None:
        champion_items = items.get(str(champion.version)) or version_items(
            ctx, champion, base_scores
        )
        if champion_items is None:
            notes.append(
                f"champion v{champion.version} was scored under another evaluation (or its "
                "predictions are gone), so it cannot be paired item by item: compared on "
                "point scores"
            )
    decision = run_gate(
        tracker,
        name,
        best.version,
        primary_metric=primary,
        min_improvement=spec.registry.min_improvement,
        regression_tolerance=spec.registry.regression_tolerance,
        base_metrics=base_scores.metrics,
        must_beat_base=spec.registry.must_beat_base,
        versus_majority={
            m: comparison.versus_majority[best.arm][m]
            for m in gate_majority_metrics(spec)
            if m in comparison.versus_majority.get(best.arm, {})
        },
        must_beat_majority=spec.must_beat_majority,
        versus_base=interval(spec, challenger_items, base_items, primary),
        versus_champion=(
            interval(spec, challenger_items, champion_items, primary) if champion_items else None
        ),
        notes=tuple(notes),
    )
    tracker.set_tags(ctx.parent_id, decision.as_tags())
    log.info(
        "promotion gate: version %s %s (%s)",
        best.version,
        decision.verdict,
        "; ".join(decision.reasons),
    )
    return best, decision
