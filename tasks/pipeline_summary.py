"""What one pipeline run reports: the summary `mlora run` prints and `--summary-json` writes
(flows/run_report.py formats it), and the parent run's side-by-side comparison of the base
model and every arm, beside chance and always the majority answer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from multilora_pipeline.data_specs import metrics as names
from multilora_pipeline.data_specs.schema import PipelineSpec
from multilora_pipeline.tasks.analysis.plots import plot_loss_curves
from multilora_pipeline.tasks.evaluation.arm_outcome import ArmOutcome
from multilora_pipeline.tasks.evaluation.arm_scores import Scores
from multilora_pipeline.tasks.evaluation.comparison import Comparison, log_comparison
from multilora_pipeline.tasks.evaluation.evaluate import compare_arms
from multilora_pipeline.tasks.registry.promote import GateDecision
from multilora_pipeline.tasks.registry.versions import CHAMPION, version_by_alias
from multilora_pipeline.tasks.run_context import RunContext


@dataclass
class ArmSummary:
    arm: str
    kind: str
    run_id: str
    """The run of the adapter the version holds (with several seeds, the chosen seed's)."""
    version: str
    metrics: dict[str, float]
    """Headline metrics, the mean over seeds."""
    reused: bool
    seeds: list[int]
    metrics_sd: dict[str, float]
    """Standard deviation of the headline metrics over seeds (0 with one seed)."""
    learning_rate: float
    scale_learning_rate: float | None
    version_seed: int
    """The seed whose adapter the version holds, and why: `seed_choice`."""
    seed_choice: str
    probes: list[dict]
    """The learning-rate probes (learning_rate, scale_learning_rate, eval_loss), if any."""
    versus_base: dict[str, dict]
    """metric -> the paired interval of arm - base (estimate, low, high, items, ...)."""


@dataclass
class PipelineSummary:
    spec: str
    spec_hash: str
    mixture_id: str
    parent_run_id: str
    experiment: str
    registered_model: str
    arms: list[ArmSummary]
    base_metrics: dict[str, float]
    primary_metric: str
    challenger: str
    champion: str | None
    decision: str
    decision_reasons: list[str]
    """Why the gate decided as it did (the base model's score among them)."""
    prompt_format: str
    """The one prompt format of the run (base and arms alike), in words."""
    stage_seconds: dict[str, float]
    """Wall time of each stage of this run (data, base_model, evaluate_base, train_<arm>, ...)."""
    reused_data_stages: list[str]
    base_evaluation_reused: bool
    """The base model's scores came from the workspace cache (tasks/evaluation/cache.py)."""
    ui_command: str
    between_arms: list[dict]
    """One row per pair of arms and metric: the paired interval of a - b."""
    bootstrap_resamples: int
    baselines: dict[str, dict[str, float]]
    """What the scores are read against: "chance" and "majority" -> metric -> rate
    (multiple-choice suites, tasks/evaluation/baselines.py)."""
    versus_majority: list[dict]
    """One row per model (base and arms) and metric: the paired interval of the model minus
    always giving the majority answer."""


def headline(metrics: dict[str, float], spec: PipelineSpec) -> dict[str, float]:
    """The few numbers a person compares first: primary metric, per-suite scores, categories,
    held-out loss."""
    keep = {spec.registry.primary_metric, names.HELD_OUT_LOSS}
    keep |= {names.suite_metric(s.name, m) for s in spec.eval_suites for m in names.SUITE_SCORES}
    return {
        k: v for k, v in sorted(metrics.items()) if k in keep or k.startswith(names.CATEGORY_PREFIX)
    }


def arm_summary(
    outcome: ArmOutcome, version: str, comparison: Comparison, spec: PipelineSpec
) -> ArmSummary:
    """One arm's line of the summary: seed means and spread, its version, how it was chosen."""
    chosen = outcome.version_run
    metrics = headline(outcome.metrics, spec)
    return ArmSummary(
        arm=outcome.arm.name,
        kind=outcome.arm.kind,
        run_id=chosen.trained.run_id,
        version=version,
        metrics=metrics,
        reused=all(r.trained.reused for r in outcome.runs),
        seeds=[r.seed for r in outcome.runs],
        metrics_sd={k: outcome.spread.get(k, 0.0) for k in metrics},
        learning_rate=outcome.learning_rate(spec.training),
        scale_learning_rate=outcome.arm.scale_learning_rate,
        version_seed=chosen.seed,
        seed_choice=outcome.seed_choice(),
        probes=[
            {
                "learning_rate": p.learning_rate,
                "scale_learning_rate": p.scale_learning_rate,
                "eval_loss": p.eval_loss,
            }
            for p in outcome.probes
        ],
        versus_base={m: i.as_dict() for m, i in comparison.versus_base[outcome.arm.name].items()},
    )


def log_data_on_parent(ctx: RunContext) -> None:
    """What the run trained on, on the parent run: the per-source table and the manifest."""
    ctx.tracker.log_json(ctx.parent_id, ctx.data.source_table, "data/source_table.json")
    manifest = Path(ctx.data.train_dir) / "manifest.json"
    if manifest.is_file():
        ctx.tracker.log_artifact(ctx.parent_id, manifest, "data")


def log_on_parent(
    ctx: RunContext,
    base_metrics: dict[str, float],
    arms: list[ArmSummary],
    outcomes: list[ArmOutcome],
    comparison: Comparison,
    baselines: dict[str, dict[str, float]],
) -> list[dict]:
    """The parent run's comparison: per-arm metrics (seed means and spread), intervals, loss
    curves, probe curves and the table with the chance and majority rows, which it returns
    (one dict per row: chance, majority, base, then the arms)."""
    tracker, parent_id = ctx.tracker, ctx.parent_id
    tracker.log_metrics(parent_id, {f"{a.arm}_{k}": v for a in arms for k, v in a.metrics.items()})
    if any(len(a.seeds) > 1 for a in arms):
        tracker.log_metrics(
            parent_id, {f"{a.arm}_{k}_sd": v for a in arms for k, v in a.metrics_sd.items()}
        )
    log_comparison(ctx, comparison, outcomes, baselines)
    several = len(ctx.spec.training.run_seeds) > 1
    histories = {
        (f"{o.arm.name} seed {r.seed}" if several else o.arm.name): r.trained.result.history
        for o in outcomes
        for r in o.runs
    }
    tracker.log_figure(parent_id, plot_loss_curves(histories), "plots/loss_curves.png")
    base_row = headline(base_metrics, ctx.spec)
    references = {name: rates for name, rates in baselines.items() if rates}
    comparison_table = compare_arms(
        {**references, "base": base_row, **{a.arm: a.metrics for a in arms}}
    )
    tracker.log_table(parent_id, comparison_table, "eval/comparison.json")
    table = [{"model": name, **rates} for name, rates in references.items()]
    table += [{"model": "base", **base_row}]
    return table + [{"model": a.arm, "version": a.version, **a.metrics} for a in arms]


def pipeline_summary(
    ctx: RunContext,
    base_scores: Scores,
    arms: list[ArmSummary],
    comparison: Comparison,
    baselines: dict[str, dict[str, float]],
    challenger: str,
    decision: GateDecision,
    format_description: str,
) -> PipelineSummary:
    """The run's summary, once the gate has decided on the `challenger` version."""
    spec, data, tracker = ctx.spec, ctx.data, ctx.tracker
    champion = version_by_alias(tracker, spec.registered_model_name, CHAMPION)
    return PipelineSummary(
        spec=spec.name,
        spec_hash=spec.spec_hash,
        mixture_id=data.mixture_id,
        parent_run_id=ctx.parent_id,
        experiment=spec.name,
        registered_model=spec.registered_model_name,
        arms=arms,
        base_metrics=headline(base_scores.metrics, spec),
        primary_metric=spec.registry.primary_metric,
        challenger=challenger,
        champion=str(champion.version) if champion else None,
        decision=decision.as_tags()["promotion.decision"],
        decision_reasons=list(decision.reasons),
        prompt_format=format_description,
        reused_data_stages=list(data.reused_stages),
        base_evaluation_reused=base_scores.reused,
        ui_command=tracker.ui_command(),
        stage_seconds={k: round(v, 1) for k, v in ctx.stages.items()},
        between_arms=[
            {"arms": f"{a} - {b}", "metric": m, **i.as_dict()}
            for (a, b), by in comparison.between_arms.items()
            for m, i in by.items()
        ],
        bootstrap_resamples=spec.evaluation.bootstrap_resamples,
        baselines=baselines,
        versus_majority=[
            {"model": model, "metric": m, **i.as_dict()}
            for model, by in comparison.versus_majority.items()
            for m, i in by.items()
        ],
    )
