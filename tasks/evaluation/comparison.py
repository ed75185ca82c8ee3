"""The comparison a pipeline run reports: every arm against the base model and against
each other arm, per suite and on the primary metric, as seed means with their spread and
paired bootstrap intervals (tasks/evaluation/confidence.py).

What it produces lands in three places, all from the same numbers: the parent run
(metrics, `eval/intervals.json`, `plots/suite_scores.png`, `plots/lr_probes.png`), the
summary `mlora run` prints, and the intervals the promotion gate decides on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from itertools import combinations

from multilora_pipeline.data_specs import metrics as names
from multilora_pipeline.data_specs.schema import PipelineSpec
from multilora_pipeline.tasks.analysis.plots import plot_loss_curves, plot_suite_intervals
from multilora_pipeline.tasks.evaluation.arm_outcome import ArmOutcome
from multilora_pipeline.tasks.evaluation.arm_scores import PREDICTIONS, Scores, suite_sizes
from multilora_pipeline.tasks.evaluation.baselines import baseline_rows, constant_item_scores
from multilora_pipeline.tasks.evaluation.cache import EVAL_ID_TAG
from multilora_pipeline.tasks.evaluation.confidence import (
    Interval,
    ItemScores,
    item_scores,
    mean_over_seeds,
    metric_parts,
    paired_bootstrap,
)
from multilora_pipeline.tasks.registry.versions import version_runs
from multilora_pipeline.tasks.run_context import RunContext

log = logging.getLogger("mlora.pipeline")


def compared_metrics(spec: PipelineSpec) -> list[str]:
    """The metrics every comparison gives an interval for: the primary one, then each
    suite's headline score."""
    suites = [names.suite_metric(s.name, names.headline_kind(s.kind)) for s in spec.eval_suites]
    return list(dict.fromkeys([spec.registry.primary_metric, *suites]))


def majority_metrics(spec: PipelineSpec) -> list[str]:
    """The compared metrics a constant answer has a score on: those made of multiple-choice
    suites only (each such suite's accuracy, and the primary metric if all its parts are)."""
    kinds = {s.name: s.kind for s in spec.eval_suites}
    return [
        m
        for m in compared_metrics(spec)
        if all(kinds[suite] == "multiple_choice" for suite, _ in metric_parts(m, spec.eval_suites))
    ]


def gate_majority_metrics(spec: PipelineSpec) -> list[str]:
    """The suite metrics registry.must_beat_majority checks: each multiple-choice part of the
    primary metric, as that suite's own metric."""
    kinds = {s.name: s.kind for s in spec.eval_suites}
    parts = metric_parts(spec.registry.primary_metric, spec.eval_suites)
    return [names.suite_metric(s, k) for s, k in parts if kinds[s] == "multiple_choice"]


def interval(spec: PipelineSpec, a: ItemScores, b: ItemScores | None, metric: str) -> Interval:
    """`metric` of a minus that of b (or a's own score when b is None), paired over items."""
    return paired_bootstrap(
        a,
        b,
        metric_parts(metric, spec.eval_suites),
        resamples=spec.evaluation.bootstrap_resamples,
        seed=spec.seed,
    )


@dataclass
class Comparison:
    """Intervals of every arm against the base and against every other arm."""

    versus_base: dict[str, dict[str, Interval]]
    """arm -> metric -> interval of arm - base."""
    between_arms: dict[tuple[str, str], dict[str, Interval]]
    """(arm a, arm b) -> metric -> interval of a - b."""
    scores: dict[str, dict[str, Interval]]
    """model (base and arms) -> metric -> interval of its own score."""
    versus_majority: dict[str, dict[str, Interval]]
    """model (base and arms) -> metric -> interval of model - always the majority answer
    (`majority_metrics`: multiple-choice suites only)."""

    def as_rows(self) -> list[dict]:
        """One row per comparison and metric (the parent run's `eval/intervals.json`)."""
        rows = [
            {"comparison": f"{arm} - base", "metric": m, **i.as_dict()}
            for arm, by in self.versus_base.items()
            for m, i in by.items()
        ]
        rows += [
            {"comparison": f"{a} - {b}", "metric": m, **i.as_dict()}
            for (a, b), by in self.between_arms.items()
            for m, i in by.items()
        ]
        rows += [
            {"comparison": f"{model} - majority", "metric": m, **i.as_dict()}
            for model, by in self.versus_majority.items()
            for m, i in by.items()
        ]
        return rows

    def as_metrics(self) -> dict[str, float]:
        """Flat MLflow metrics: `<arm>_vs_base_<metric>_{gain,low,high}`, the same per pair of
        arms, and `<model>_vs_majority_<metric>_*` (the base model's too)."""
        out = {}
        named = {f"{arm}_vs_base": by for arm, by in self.versus_base.items()}
        named |= {f"{a}_vs_{b}": by for (a, b), by in self.between_arms.items()}
        named |= {f"{model}_vs_majority": by for model, by in self.versus_majority.items()}
        for prefix, by in named.items():
            for metric, i in by.items():
                out |= {
                    f"{prefix}_{metric}_gain": i.estimate,
                    f"{prefix}_{metric}_low": i.low,
                    f"{prefix}_{metric}_high": i.high,
                }
        return out


def compare(
    spec: PipelineSpec,
    base_items: ItemScores,
    outcomes: list[ArmOutcome],
    constant_items: ItemScores,
) -> Comparison:
    """Every interval of the run; `constant_items` are the constant predictor's per-item
    scores (tasks/evaluation/baselines.py)."""
    metrics = compared_metrics(spec)
    versus_base = {
        o.arm.name: {m: interval(spec, o.items, base_items, m) for m in metrics} for o in outcomes
    }
    between = {
        (a.arm.name, b.arm.name): {m: interval(spec, a.items, b.items, m) for m in metrics}
        for a, b in combinations(outcomes, 2)
    }
    scores = {"base": {m: interval(spec, base_items, None, m) for m in metrics}}
    scores |= {o.arm.name: {m: interval(spec, o.items, None, m) for m in metrics} for o in outcomes}
    models = {"base": base_items, **{o.arm.name: o.items for o in outcomes}}
    against = majority_metrics(spec) if constant_items else []
    versus_majority = {
        model: {m: interval(spec, items, constant_items, m) for m in against}
        for model, items in models.items()
    }
    return Comparison(versus_base, between, scores, versus_majority)


def compare_with_baselines(
    spec: PipelineSpec, base_scores: Scores, outcomes: list[ArmOutcome]
) -> tuple[Comparison, dict[str, dict[str, float]]]:
    """The run's comparison, and what its scores are read against: "chance" and "majority"
    -> metric -> rate (tasks/evaluation/baselines.py)."""
    constant = constant_item_scores(base_scores.predictions)
    comparison = compare(spec, item_scores(base_scores.predictions), outcomes, constant)
    primary = spec.registry.primary_metric
    baselines = baseline_rows(
        base_scores.metrics,
        base_scores.predictions,
        (primary, metric_parts(primary, spec.eval_suites)),
    )
    return comparison, baselines


def log_comparison(
    ctx: RunContext,
    comparison: Comparison,
    outcomes: list[ArmOutcome],
    references: dict[str, dict[str, float]],
) -> None:
    """The comparison on the parent run: metrics, the interval table, the two plots (the
    scores beside `references`: chance and the majority rate per suite metric)."""
    tracker, parent = ctx.tracker, ctx.parent_id
    tracker.log_metrics(parent, comparison.as_metrics())
    tracker.log_json(parent, comparison.as_rows(), "eval/intervals.json")
    suites = compared_metrics(ctx.spec)[1:] or compared_metrics(ctx.spec)
    as_tuples = {
        model: {m: (i.estimate, i.low, i.high) for m, i in by.items() if m in suites}
        for model, by in comparison.scores.items()
    }
    gains = {
        arm: {m: (i.estimate, i.low, i.high) for m, i in by.items() if m in suites}
        for arm, by in comparison.versus_base.items()
    }
    tracker.log_figure(
        parent, plot_suite_intervals(as_tuples, gains, references), "plots/suite_scores.png"
    )
    probes = {f"{o.arm.name} {p.label}": p.history for o in outcomes for p in o.probes if p.history}
    if probes:
        figure = plot_loss_curves(probes, title="Learning-rate probes (the lowest eval loss wins)")
        tracker.log_figure(parent, figure, "plots/lr_probes.png")
        rows = [
            {
                "arm": o.arm.name,
                "learning_rate": p.learning_rate,
                "scale_learning_rate": p.scale_learning_rate,
                "eval_loss": p.eval_loss,
                "chosen": p.chosen,
                "run_id": p.run_id,
            }
            for o in outcomes
            for p in o.probes
        ]
        tracker.log_json(parent, rows, "selection/learning_rates.json")


def version_items(ctx: RunContext, version, base_scores: Scores) -> ItemScores | None:
    """Per-item scores of a registered version from an earlier pipeline run (its seeds'
    mean), or None when they cannot be paired with this run's: scored under another
    evaluation, on other items, or their predictions are gone."""
    sizes = suite_sizes(base_scores.predictions)
    per_seed = []
    for run_id in version_runs(version):
        if ctx.tracker.run_tags(run_id).get(EVAL_ID_TAG) != base_scores.eval_id:
            return None
        predictions = ctx.tracker.load_table(run_id, PREDICTIONS)
        if predictions is None or suite_sizes(predictions) != sizes:
            return None
        per_seed.append(item_scores(predictions))
    try:
        return mean_over_seeds(per_seed)
    except ValueError:
        return None
