"""The whole DAG as one Prefect flow.

    data stages (flows/data.py) -> base model -> evaluate base
        -> per arm (flows/arms.py): learning-rate probes -> train x seeds -> evaluate
        -> register -> compare with intervals (flows/comparison.py) -> analyse -> promote

MLflow holds one parent run per pipeline run and one child run per arm training run
(each seed, each learning-rate probe). The
data stages run before any MLflow write, so a spec with bad data leaves no
run and no version behind. Each stage is idempotent: a rerun of an unchanged
spec reuses the data stages (catalog), the base model's evaluation (a JSON file
keyed by everything that decides it, tasks/evaluation/cache.py), the trained arms
(result.json + the arm's finished MLflow run) and the registered versions
(run-key tag).
"""

from __future__ import annotations

import fcntl
import logging
import os
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from multilora_pipeline.data_specs import metrics as names
from multilora_pipeline.data_specs.errors import TrainingError
from multilora_pipeline.data_specs.schema import PipelineSpec, load_spec
from multilora_pipeline.data_specs.serving import vllm_notes
from multilora_pipeline.flows.arms import (
    ArmOutcome,
    Scores,
    log_evaluation,
    score,
    train_and_score_arms,
)
from multilora_pipeline.flows.comparison import (
    Comparison,
    compare,
    gate_majority_metrics,
    interval,
    log_comparison,
    version_items,
)
from multilora_pipeline.flows.context import RunContext, timed
from multilora_pipeline.flows.data import DataOutputs, run_data_stages
from multilora_pipeline.flows.runs import ArmRun, run_key
from multilora_pipeline.flows.stale_runs import close_stale_runs
from multilora_pipeline.flows.training_pool import prepare_training_pool
from multilora_pipeline.tasks.analysis.plots import plot_loss_curves
from multilora_pipeline.tasks.analysis.spectra import (
    aggregate_analysis,
    analyse_deltas,
    plot_effective_rank,
    plot_spectra,
    summarise_flatness,
)
from multilora_pipeline.tasks.catalog import Catalog
from multilora_pipeline.tasks.evaluation.baselines import baseline_rows, constant_item_scores
from multilora_pipeline.tasks.evaluation.cache import (
    base_eval_inputs,
    base_eval_key,
    load_base_eval,
    save_base_eval,
)
from multilora_pipeline.tasks.evaluation.confidence import item_scores, metric_parts
from multilora_pipeline.tasks.evaluation.evaluate import compare_arms
from multilora_pipeline.tasks.registry.lineage import Lineage
from multilora_pipeline.tasks.registry.promote import run_gate
from multilora_pipeline.tasks.registry.tracking import Tracker, code_version
from multilora_pipeline.tasks.registry.versions import (
    CHALLENGER,
    CHAMPION,
    attach_run_artifacts,
    get_version,
    register_adapter,
    set_alias,
    update_version_scores,
    version_by_alias,
)
from multilora_pipeline.tasks.stores import check_stores
from multilora_pipeline.tasks.training.arm_models import arm_deltas
from multilora_pipeline.tasks.training.base_model import (
    check_base_model,
    load_revision,
    prepare_base_model,
    prompt_format,
)
from multilora_pipeline.tasks.training.gguf import gguf_origin
from multilora_pipeline.tasks.training.loading import resolve_device
from multilora_pipeline.tasks.training.train import ArmResult
from multilora_pipeline.tasks.workspace import Workspace

log = logging.getLogger("mlora.pipeline")


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


def run_lineage(
    spec: PipelineSpec, mixture_id: str, base: str, fmt_tags: dict[str, str]
) -> Lineage:
    """What every run and version of this pipeline run records: spec, mixture and code, the
    spec's base model, the GGUF file it was converted from (if it was), the prompt format."""
    origin = gguf_origin(base) if spec.base_model.gguf_file else None
    return Lineage(
        spec_hash=spec.spec_hash,
        mixture_id=mixture_id,
        code_version=code_version(),
        base={
            "mlora.base_model": spec.base_model.label,
            **(origin.as_tags() if origin else {}),
            **fmt_tags,
        },
    )


@contextmanager
def spec_lock(ws: Workspace, spec: PipelineSpec):
    """One pipeline run per spec and workspace at a time.

    A second concurrent run would adopt the first one's live arm runs and register
    duplicate versions. The lock is an flock, so a killed run releases it at once
    and its unfinished arm runs are then resumed by the next run.
    """
    path = ws.runs_dir / spec.name / ".lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            raise TrainingError(
                f"another `mlora run` of spec {spec.name!r} is running in this workspace "
                f"(pid {owner})",
                where=str(ws.root),
                fix="wait for it to finish, or use another workspace (--workspace)",
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@task(name="evaluate-base", cache_policy=NO_CACHE)
def evaluate_base_task(
    ws: Workspace,
    tracker: Tracker,
    spec: PipelineSpec,
    data: DataOutputs,
    base: str,
    parent_id: str,
) -> Scores:
    """Score the base model, or reuse its cached scores (tasks/evaluation/cache.py) when nothing
    that decides them changed; log them as `base_*` to the parent run either way."""
    inputs = base_eval_inputs(
        spec,
        base,
        resolve_device(spec.evaluation_device, spec.evaluation_device_field),
        data.mixture_id,
        data.eval_paths,
        data.eval_dev_paths,
    )
    key = base_eval_key(inputs)
    evaluation = load_base_eval(ws, key)
    reused = evaluation is not None
    if evaluation is None:
        evaluation = score(spec, data, base, None)
        save_base_eval(ws, key, inputs, evaluation)
    log_evaluation(tracker, parent_id, evaluation, prefix="base_")
    tracker.set_tags(parent_id, {"mlora.base_eval_id": key})
    return Scores(evaluation.metrics, reused, key, evaluation.predictions)


@task(name="analyse", cache_policy=NO_CACHE)
def analyse_task(
    tracker: Tracker,
    spec: PipelineSpec,
    base: str,
    results: dict[str, dict[int, ArmResult]],
    parent_id: str,
) -> str:
    """Singular values of every ΔW of every arm and seed (`results[arm][seed]`): plots,
    tables and a flatness summary, with the spread over seeds, on the parent run."""
    import tempfile

    import pandas as pd

    # One frame per arm, its seeds' rows together (a `seed` column): plots and table
    # average over seeds, and the note says whether the arms differ by more than seeds do.
    frames = {
        name: pd.concat(
            [
                analyse_deltas(arm_deltas(spec, base, r)).assign(seed=seed)
                for seed, r in runs.items()
            ],
            ignore_index=True,
        )
        for name, runs in results.items()
    }
    with tempfile.TemporaryDirectory() as tmp:
        plot_spectra(frames, Path(tmp) / "spectra.png")
        plot_effective_rank(frames, Path(tmp) / "effective_rank.png")
        tracker.log_artifact(parent_id, tmp, "plots")
    for by in ("layer_type", "depth"):
        grouped = pd.concat(
            [aggregate_analysis(f, by).assign(arm=name) for name, f in frames.items()],
            ignore_index=True,
        )
        tracker.log_table(parent_id, grouped, f"analysis/by_{by}.json")
    table = pd.concat([f.assign(arm=name) for name, f in frames.items()], ignore_index=True)
    tracker.log_table(
        parent_id,
        table.drop(columns=["singular_values", "spectrum_normalised"], errors="ignore"),
        "analysis/spectra.json",
    )
    summary = summarise_flatness(frames)
    tracker.log_text(parent_id, summary, "analysis/summary.md")
    return summary


@task(name="register", cache_policy=NO_CACHE)
def register_task(
    ws: Workspace,
    tracker: Tracker,
    spec: PipelineSpec,
    data: DataOutputs,
    base: str,
    outcome: ArmOutcome,
    lineage: Lineage,
):
    """Register the arm's adapter (once per run key): with several seeds, the adapter of the
    seed `ArmOutcome.version_run` picks, with the arm's mean scores and tags that say which
    seed it holds and why. A version registered earlier whose arm was just scored again
    under new evaluation settings gets the new headline scores. Finishes every seed run."""
    arm, chosen = outcome.arm, outcome.version_run
    result, run_id = chosen.trained.result, chosen.trained.run_id
    metrics = outcome.metrics
    manifest = Path(data.train_dir) / "manifest.json"
    extra = {"mixture_manifest": str(manifest)} if manifest.is_file() else {}
    # The version's headline: its primary metric, categories, and each multiple-choice
    # suite's accuracy beside what it is read against (majority, chance, balanced accuracy).
    read_against = {
        names.suite_metric(s.name, kind)
        for s in spec.eval_suites
        if s.kind == "multiple_choice"
        for kind in ("acc", names.BALANCED_ACC, *names.BASELINES)
    }
    headline = {
        k: f"{v:.4f}"
        for k, v in metrics.items()
        if k == spec.registry.primary_metric
        or k.startswith(names.CATEGORY_PREFIX)
        or k in read_against
    }
    version = register_adapter(
        tracker,
        name=spec.registered_model_name,
        run_id=run_id,
        run_key=run_key(spec, data.mixture_id, ArmRun(arm, spec.training.for_run(chosen.seed))),
        adapter_dir=result.adapter_dir,
        peft_dir=result.peft_dir,
        base_model=base,
        base_is_local=spec.base_model.tiny is not None,
        model_config={
            "kind": arm.kind,
            "revision": load_revision(spec),
            "trust_remote_code": spec.base_model.trust_remote_code,
            "max_new_tokens": spec.evaluation.max_new_tokens,
            "prompt_format": lineage.prompt_format,
        },
        extra_artifacts=extra,
        tags={
            **lineage.version_tags(arm=arm.name, adapter_kind=arm.kind),
            **outcome.version_tags(spec.training),
            **headline,
        },
    )
    if version.reused:
        tracker.set_version_tags(version.name, version.version, outcome.version_tags(spec.training))
        stored = get_version(tracker, version.name, version.version).tags
        if any(stored.get(k) != v for k, v in headline.items()):  # re-scored, or other seeds
            update_version_scores(tracker, version.name, version.version, headline)
    catalog = Catalog(ws.catalog_path)
    for seed_run in outcome.runs:
        seed_run_id = seed_run.trained.run_id
        tracker.finish(seed_run_id)
        registered = seed_run is chosen
        catalog.record_run(
            spec_hash=spec.spec_hash,
            mixture_id=data.mixture_id,
            arm=arm.name,
            mlflow_run_id=seed_run_id,
            parent_run_id=tracker.run_tags(seed_run_id).get("mlflow.parentRunId"),
            registered_model=version.name if registered else None,
            model_version=version.version if registered else None,
        )
    return version


@flow(name="mlora-pipeline", log_prints=True)
def pipeline_flow(
    spec_path: str, workspace_root: str | None = None, training_pool: str | None = None
) -> dict:
    """Run the whole DAG on a spec file; returns the summary as a dict. `training_pool`
    (else the spec's training.work_pool) sends every training run to that Prefect work
    pool (flows/training_pool.py); without one, arms train in this process."""
    logger = get_run_logger()
    ws = Workspace.resolve(workspace_root).ensure()
    spec, base_dir = load_spec(spec_path)
    pool = training_pool or spec.training.work_pool
    logger.info("spec %s (hash %s), workspace %s", spec.name, spec.spec_hash, ws.root)
    for note in vllm_notes(spec):
        logger.warning("serving: %s", note)
    # A spec that demands a GPU where there is none fails before any work (a training
    # pool's worker checks its own), and so does a pool the server cannot use.
    if pool:
        prepare_training_pool(pool)
    else:
        resolve_device(spec.training.device)
    check_scoring_device(spec, pool)
    # The lock first: a second run of the spec stops here, before any stage or MLflow run.
    with spec_lock(ws, spec):
        close_stale_runs(ws, spec)  # this spec's runs a killed process left "Running"
        summary = _locked_run(ws, spec, spec_path, base_dir, pool)
    return asdict(summary)


def check_scoring_device(spec: PipelineSpec, pool: str | None) -> None:
    """Scoring runs in this process: its device must be here (with training on a pool, the
    training device need not be)."""
    try:
        resolve_device(spec.evaluation_device, spec.evaluation_device_field)
    except TrainingError:
        if not pool or spec.evaluation.device:
            raise
        raise TrainingError(
            f"training goes to work pool {pool!r}, but scoring runs here, on "
            f"training.device {spec.training.device!r} (evaluation.device is unset), and no "
            "GPU is visible here",
            where="spec evaluation.device",
            fix="set evaluation.device: cpu (or auto) to score on this machine",
        ) from None


def _locked_run(
    ws: Workspace, spec: PipelineSpec, spec_path: str, base_dir: Path, pool: str | None
):
    logger = get_run_logger()
    # A base model that cannot be found fails before any work; a GGUF file is converted
    # here, once.
    stages: dict[str, float] = {}
    with timed(stages, "base_model"):
        check_base_model(spec, Path(spec_path).resolve(), ws=ws)
    with timed(stages, "data"):
        data = run_data_stages(spec, base_dir, ws)
    with timed(stages, "base_model"):
        base = prepare_base_model(spec, data, ws)
        fmt = prompt_format(spec, base)
    logger.info("prompt format (training, scoring and serving alike): %s", fmt.describe())
    lineage = run_lineage(spec, data.mixture_id, base, fmt.as_tags())

    check_stores(ws)  # again (the CLI checked before Prefect): a lost store is said, not recreated
    tracker = Tracker(ws, spec.name)  # the run's one MLflow facade, handed to every stage
    parent_id = tracker.start_parent(
        run_name=f"{spec.name}-{data.mixture_id[:8]}",
        tags=lineage.run_tags(spec_file=str(Path(spec_path).resolve())),
        params=spec.params(),  # URLs redacted: parameters are read by everyone
    )
    try:
        run = RunContext(ws, tracker, spec, data, base, parent_id, lineage, stages, pool)
        summary = _train_evaluate_register(run, fmt.describe())
        tracker.log_metrics(
            parent_id, {f"stage_seconds_{k}": v for k, v in summary.stage_seconds.items()}
        )
    except BaseException:
        tracker.finish(parent_id, "FAILED")
        tracker.fail_unfinished_children(parent_id)
        raise
    tracker.finish(parent_id)
    return summary


def _train_evaluate_register(run: RunContext, format_description: str) -> PipelineSummary:
    spec, data, tracker = run.spec, run.data, run.tracker
    tracker.log_json(run.parent_id, data.source_table, "data/source_table.json")
    manifest = Path(data.train_dir) / "manifest.json"
    if manifest.is_file():
        tracker.log_artifact(run.parent_id, manifest, "data")
    with timed(run.stages, "evaluate_base"):
        base_scores = evaluate_base_task(run.ws, tracker, spec, data, run.base, run.parent_id)
    outcomes = train_and_score_arms(run, base_scores)
    with timed(run.stages, "register"):
        versions = {
            o.arm.name: register_task(run.ws, tracker, spec, data, run.base, o, run.lineage).version
            for o in outcomes
        }
    constant = constant_item_scores(base_scores.predictions)
    comparison = compare(spec, item_scores(base_scores.predictions), outcomes, constant)
    primary = spec.registry.primary_metric
    baselines = baseline_rows(
        base_scores.metrics,
        base_scores.predictions,
        (primary, metric_parts(primary, spec.eval_suites)),
    )
    arms = [_arm_summary(o, versions[o.arm.name], comparison, spec) for o in outcomes]
    _compare_on_parent(run, base_scores.metrics, arms, outcomes, comparison, baselines)
    best, decision = _promote(run, arms, outcomes, base_scores, comparison)
    champion = version_by_alias(tracker, spec.registered_model_name, CHAMPION)
    return PipelineSummary(
        spec=spec.name,
        spec_hash=spec.spec_hash,
        mixture_id=data.mixture_id,
        parent_run_id=run.parent_id,
        experiment=spec.name,
        registered_model=spec.registered_model_name,
        arms=arms,
        base_metrics=_headline(base_scores.metrics, spec),
        primary_metric=spec.registry.primary_metric,
        challenger=best.version,
        champion=str(champion.version) if champion else None,
        decision=decision.as_tags()["promotion.decision"],
        decision_reasons=list(decision.reasons),
        prompt_format=format_description,
        reused_data_stages=list(data.reused_stages),
        base_evaluation_reused=base_scores.reused,
        ui_command=tracker.ui_command(),
        stage_seconds={k: round(v, 1) for k, v in run.stages.items()},
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


def _arm_summary(
    outcome: ArmOutcome, version: str, comparison: Comparison, spec: PipelineSpec
) -> ArmSummary:
    chosen = outcome.version_run
    headline = _headline(outcome.metrics, spec)
    return ArmSummary(
        arm=outcome.arm.name,
        kind=outcome.arm.kind,
        run_id=chosen.trained.run_id,
        version=version,
        metrics=headline,
        reused=all(r.trained.reused for r in outcome.runs),
        seeds=[r.seed for r in outcome.runs],
        metrics_sd={k: outcome.spread.get(k, 0.0) for k in headline},
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


def _compare_on_parent(
    run: RunContext,
    base_metrics: dict[str, float],
    arms: list[ArmSummary],
    outcomes: list[ArmOutcome],
    comparison: Comparison,
    baselines: dict[str, dict[str, float]],
) -> None:
    """The parent run's comparison: per-arm metrics (seed means and spread), intervals, loss
    curves, probe curves, spectra, the table (with the chance and majority rows)."""
    tracker, parent_id = run.tracker, run.parent_id
    tracker.log_metrics(parent_id, {f"{a.arm}_{k}": v for a in arms for k, v in a.metrics.items()})
    if any(len(a.seeds) > 1 for a in arms):
        tracker.log_metrics(
            parent_id, {f"{a.arm}_{k}_sd": v for a in arms for k, v in a.metrics_sd.items()}
        )
    log_comparison(run, comparison, outcomes, baselines)
    several = len(run.spec.training.run_seeds) > 1
    histories = {
        (f"{o.arm.name} seed {r.seed}" if several else o.arm.name): r.trained.result.history
        for o in outcomes
        for r in o.runs
    }
    tracker.log_figure(parent_id, plot_loss_curves(histories), "plots/loss_curves.png")
    with timed(run.stages, "analyse"):
        results = {o.arm.name: {r.seed: r.trained.result for r in o.runs} for o in outcomes}
        analysis = analyse_task(tracker, run.spec, run.base, results, parent_id)
    tracker.set_tags(parent_id, {"mlflow.note.content": analysis})
    base_row = _headline(base_metrics, run.spec)
    references = {name: rates for name, rates in baselines.items() if rates}
    table = [{"model": name, **rates} for name, rates in references.items()]
    table += [{"model": "base", **base_row}]
    table += [{"model": a.arm, "version": a.version, **a.metrics} for a in arms]
    create_table_artifact(
        table,
        key="arm-comparison",
        description="Evaluation of base and arms, beside chance and always the majority answer",
    )
    comparison_table = compare_arms(
        {**references, "base": base_row, **{a.arm: a.metrics for a in arms}}
    )
    tracker.log_table(parent_id, comparison_table, "eval/comparison.json")


def _promote(
    run: RunContext,
    arms: list[ArmSummary],
    outcomes: list[ArmOutcome],
    base_scores: Scores,
    comparison: Comparison,
):
    """The best arm (seed mean of the primary metric) becomes the challenger; the gate decides
    on the intervals of its gain over the base, over always the majority answer and over the
    champion whether it is the champion. Returns (the best arm, the gate's decision)."""
    spec, tracker, name = run.spec, run.tracker, run.spec.registered_model_name
    for a in arms:  # the analysis compares the arms, so it joins each version only now
        attach_run_artifacts(tracker, name, a.version, run.parent_id)
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
            run, champion, base_scores
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
    tracker.set_tags(run.parent_id, decision.as_tags())
    create_markdown_artifact(decision.markdown(), key="promotion-decision")
    log.info(
        "promotion gate: version %s %s (%s)",
        best.version,
        decision.verdict,
        "; ".join(decision.reasons),
    )
    return best, decision


def _headline(metrics: dict[str, float], spec: PipelineSpec) -> dict[str, float]:
    """The few numbers a person compares first: primary metric, per-suite scores, categories, loss."""
    keep = {spec.registry.primary_metric, names.HELD_OUT_LOSS}
    keep |= {names.suite_metric(s.name, m) for s in spec.eval_suites for m in names.SUITE_SCORES}
    return {
        k: v for k, v in sorted(metrics.items()) if k in keep or k.startswith(names.CATEGORY_PREFIX)
    }
