"""The whole DAG as one Prefect flow.

    data stages (flows/data.py) -> base model -> train arm x N -> evaluate (base + arms)
        -> analyse -> register -> promote

MLflow holds one parent run per pipeline run and one child run per arm. The
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
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from multilora_pipeline.data_specs import metrics as names
from multilora_pipeline.data_specs.errors import TrainingError
from multilora_pipeline.data_specs.schema import ArmSpec, PipelineSpec, load_spec
from multilora_pipeline.flows.data import DataOutputs, run_data_stages
from multilora_pipeline.models.content import content_key
from multilora_pipeline.tasks.analysis.plots import plot_loss_curves
from multilora_pipeline.tasks.analysis.spectra import (
    aggregate_analysis,
    analyse_deltas,
    plot_effective_rank,
    plot_spectra,
    summarise_flatness,
)
from multilora_pipeline.tasks.catalog import Catalog
from multilora_pipeline.tasks.evaluation.cache import (
    EVAL_ID_TAG,
    base_eval_inputs,
    base_eval_key,
    load_base_eval,
    save_base_eval,
)
from multilora_pipeline.tasks.evaluation.evaluate import (
    EvalResult,
    SuiteData,
    compare_arms,
    evaluate_model,
)
from multilora_pipeline.tasks.registry.lineage import Lineage
from multilora_pipeline.tasks.registry.promote import run_gate
from multilora_pipeline.tasks.registry.tracking import Tracker, code_version
from multilora_pipeline.tasks.registry.versions import (
    CHALLENGER,
    CHAMPION,
    attach_run_artifacts,
    register_adapter,
    set_alias,
    update_version_scores,
    version_by_alias,
)
from multilora_pipeline.tasks.training.arm_models import arm_deltas, load_for_inference
from multilora_pipeline.tasks.training.base_model import (
    check_base_model,
    load_revision,
    prepare_base_model,
    prompt_format,
)
from multilora_pipeline.tasks.training.gguf import gguf_origin
from multilora_pipeline.tasks.training.launch import launch_arm
from multilora_pipeline.tasks.training.loading import resolve_device, resolve_prompt_format
from multilora_pipeline.tasks.training.train import ArmResult, load_result
from multilora_pipeline.tasks.workspace import Workspace

log = logging.getLogger("mlora.pipeline")


@dataclass
class TrainedArm:
    """What the train stage hands on: the arm's result, its MLflow run, and whether both
    were there before (a finished arm is looked up, not trained)."""

    result: ArmResult
    run_id: str
    reused: bool


@dataclass
class Scores:
    """An evaluation's metrics and whether they were reused (cache or earlier run)."""

    metrics: dict[str, float]
    reused: bool
    eval_id: str | None = None
    """The base evaluation's key (tasks/evaluation/cache.py): arms are scored under it."""


@dataclass
class ArmSummary:
    arm: str
    kind: str
    run_id: str
    version: str
    metrics: dict[str, float]
    reused: bool


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


@contextmanager
def timed(stage_seconds: dict[str, float], stage: str):
    """Add the block's wall time to stage_seconds[stage] (the summary's stage times)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        stage_seconds[stage] = stage_seconds.get(stage, 0.0) + time.perf_counter() - start


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


def training_hash(spec: PipelineSpec, arm: ArmSpec) -> str:
    """Hash of what decides an arm's weights: base model, the arm, training settings and
    the prompt format.

    Editing a spec's description, evaluation or promotion settings changes its spec
    hash but not this: the trained arms, their runs and versions are reused.
    """
    return content_key(
        [
            spec.base_model.model_dump(mode="json"),
            arm.model_dump(mode="json"),
            spec.training.model_dump(mode="json"),
            spec.seed,
            spec.prompt_format,  # the tokens the arm is trained on
        ]
    )


def run_key(spec: PipelineSpec, mixture_id: str, arm: ArmSpec) -> str:
    """Identity of an arm's training: same training, same mixture -> same run and version."""
    return f"{training_hash(spec, arm)}:{mixture_id}:{arm.name}"


def arm_dir(ws: Workspace, spec: PipelineSpec, mixture_id: str, arm: ArmSpec) -> Path:
    return ws.runs_dir / spec.name / f"{training_hash(spec, arm)}-{mixture_id}" / arm.name


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


@task(name="train-arm", cache_policy=NO_CACHE)
def train_arm_task(
    ws: Workspace,
    tracker: Tracker,
    spec: PipelineSpec,
    data: DataOutputs,
    base: str,
    arm: ArmSpec,
    parent_id: str,
    lineage: Lineage,
) -> TrainedArm:
    run_id, finished = tracker.child_run(
        parent_id,
        run_key(spec, data.mixture_id, arm),
        arm.name,
        tags=lineage.run_tags(arm=arm.name, adapter_kind=arm.kind),
    )
    done_dir = arm_dir(ws, spec, data.mixture_id, arm)
    if finished and load_result(done_dir) is None:
        raise TrainingError(
            f"arm {arm.name!r}: its MLflow run {run_id} is FINISHED but the trained adapter "
            f"is missing from {done_dir}",
            fix=f"restore that folder, or delete run {run_id} in the MLflow UI to retrain",
        )
    try:
        tracker.log_params(
            run_id,
            {"arm": arm.model_dump(mode="json"), "training": spec.training.model_dump(mode="json")},
        )
        # A finished arm is only looked up: no system metrics to sample then.
        with tracker.system_metrics(run_id) if not finished else nullcontext():
            result = launch_arm(
                arm=arm,
                training=spec.training,
                model_path=base,
                train_path=data.train_dir,
                validation_path=data.validation_path,
                output_dir=arm_dir(ws, spec, data.mixture_id, arm),
                revision=load_revision(spec),
                dtype=spec.base_model.dtype,
                trust_remote_code=spec.base_model.trust_remote_code,
                attn_implementation=spec.base_model.attn_implementation,
                # What PEFT users load the export on: the hub id, or the folder (a converted
                # GGUF file, the tiny model) the arm was trained on.
                base_model_name=base,
                prompt_format=lineage.prompt_format,
                tracking={"workspace": str(ws.root), "experiment": spec.name, "run_id": run_id},
                callbacks=[tracker.training_callback(run_id)],
            )
        if not finished:
            tracker.log_metrics(
                run_id,
                {
                    "final_train_loss": result.train_loss,
                    "final_eval_loss": result.eval_loss,
                    "tokens_per_second": result.tokens_per_second,
                    "peak_memory_mb": result.peak_memory_mb,
                    "trainable_parameters": result.trainable_parameters,
                    "trainable_share": result.trainable_share,
                },
                step=result.steps,
            )
            tracker.log_artifact(run_id, result.adapter_dir, "adapter")
            if result.peft_dir:
                tracker.log_artifact(run_id, result.peft_dir, "peft_adapter")
    except BaseException:
        tracker.finish(run_id, "FAILED")
        raise
    return TrainedArm(result, run_id, finished)


def _score(
    spec: PipelineSpec, data: DataOutputs, base: str, result: ArmResult | None
) -> EvalResult:
    """The base model (result None) or an arm on every suite and the held-out rows, in the
    run's prompt format (the same for both: like is compared with like)."""
    model, tokenizer, device = load_for_inference(spec, base, result)
    fmt = resolve_prompt_format(tokenizer, spec.prompt_format, base)
    suites = [
        SuiteData(
            suite,
            Path(data.eval_paths[suite.name]),
            Path(data.eval_dev_paths[suite.name]) if suite.name in data.eval_dev_paths else None,
        )
        for suite in spec.eval_suites
    ]
    return evaluate_model(
        model,
        fmt,
        suites,
        Path(data.validation_path),
        spec.evaluation,
        device,
        max_length=spec.training.max_length,
    )


def _log_evaluation(tracker: Tracker, run_id: str, evaluation: EvalResult, prefix: str) -> None:
    tracker.log_metrics(run_id, {f"{prefix}{k}": v for k, v in evaluation.metrics.items()})
    tracker.log_table(run_id, evaluation.predictions, f"eval/{prefix}predictions.json")


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(
    tracker: Tracker,
    spec: PipelineSpec,
    data: DataOutputs,
    base: str,
    trained: TrainedArm,
    eval_id: str,
) -> Scores:
    """An arm's scores on every suite, logged to its run `run_id`, and whether they were
    reused. A reused arm keeps its logged scores only if they were made under `eval_id`
    (the base evaluation's key: same suites, settings and scoring code); otherwise it is
    scored again, so the arms and the base row always compare like with like."""
    run_id = trained.run_id
    if tracker.run_tags(run_id).get(EVAL_ID_TAG) == eval_id:
        return Scores(tracker.metrics(run_id), True, eval_id)
    evaluation = _score(spec, data, base, trained.result)
    _log_evaluation(tracker, run_id, evaluation, prefix="")
    tracker.set_tags(run_id, {EVAL_ID_TAG: eval_id})
    return Scores(evaluation.metrics, False, eval_id)


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
        resolve_device(spec.training.device),
        data.mixture_id,
        data.eval_paths,
        data.eval_dev_paths,
    )
    key = base_eval_key(inputs)
    evaluation = load_base_eval(ws, key)
    reused = evaluation is not None
    if evaluation is None:
        evaluation = _score(spec, data, base, None)
        save_base_eval(ws, key, inputs, evaluation)
    _log_evaluation(tracker, parent_id, evaluation, prefix="base_")
    tracker.set_tags(parent_id, {"mlora.base_eval_id": key})
    return Scores(evaluation.metrics, reused, key)


@task(name="analyse", cache_policy=NO_CACHE)
def analyse_task(
    tracker: Tracker, spec: PipelineSpec, base: str, results: dict[str, ArmResult], parent_id: str
) -> str:
    """Singular values of every ΔW per arm: plots, table and a flatness summary on the parent run."""
    import tempfile

    import pandas as pd

    frames = {name: analyse_deltas(arm_deltas(spec, base, r)) for name, r in results.items()}
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
    arm: ArmSpec,
    trained: TrainedArm,
    metrics: dict[str, float],
    lineage: Lineage,
    rescored: bool = False,
):
    """Register the arm's adapter (once per run key); a version registered earlier whose arm
    was just `rescored` under new evaluation settings gets the new headline scores."""
    result, run_id = trained.result, trained.run_id
    manifest = Path(data.train_dir) / "manifest.json"
    extra = {"mixture_manifest": str(manifest)} if manifest.is_file() else {}
    headline = {
        k: f"{v:.4f}"
        for k, v in metrics.items()
        if k == spec.registry.primary_metric or k.startswith(names.CATEGORY_PREFIX)
    }
    version = register_adapter(
        tracker,
        name=spec.registered_model_name,
        run_id=run_id,
        run_key=run_key(spec, data.mixture_id, arm),
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
        tags={**lineage.version_tags(arm=arm.name, adapter_kind=arm.kind), **headline},
    )
    if version.reused and rescored:
        update_version_scores(tracker, version.name, version.version, headline)
    tracker.finish(run_id)
    Catalog(ws.catalog_path).record_run(
        spec_hash=spec.spec_hash,
        mixture_id=data.mixture_id,
        arm=arm.name,
        mlflow_run_id=run_id,
        parent_run_id=tracker.run_tags(run_id).get("mlflow.parentRunId"),
        registered_model=version.name,
        model_version=version.version,
    )
    return version


@flow(name="mlora-pipeline", log_prints=True)
def pipeline_flow(spec_path: str, workspace_root: str | None = None) -> dict:
    """Run the whole DAG on a spec file; returns the summary as a dict."""
    logger = get_run_logger()
    ws = Workspace.resolve(workspace_root).ensure()
    spec, base_dir = load_spec(spec_path)
    logger.info("spec %s (hash %s), workspace %s", spec.name, spec.spec_hash, ws.root)
    resolve_device(spec.training.device)  # a spec that demands a GPU fails before any work
    # So does a base model that cannot be found; a GGUF file is converted here, once.
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

    tracker = Tracker(ws, spec.name)  # the run's one MLflow facade, handed to every stage
    parent_id = tracker.start_parent(
        run_name=f"{spec.name}-{data.mixture_id[:8]}",
        tags=lineage.run_tags(spec_file=str(Path(spec_path).resolve())),
        params=spec.canonical(),
    )
    try:
        with spec_lock(ws, spec):
            run = RunContext(ws, tracker, spec, data, base, parent_id, lineage, stages)
            summary = _train_evaluate_register(run, fmt.describe())
        tracker.log_metrics(
            parent_id, {f"stage_seconds_{k}": v for k, v in summary.stage_seconds.items()}
        )
    except BaseException:
        tracker.finish(parent_id, "FAILED")
        tracker.fail_unfinished_children(parent_id)
        raise
    tracker.finish(parent_id)
    return asdict(summary)


@dataclass
class RunContext:
    """What every stage after the data stages of one pipeline run works with."""

    ws: Workspace
    tracker: Tracker
    spec: PipelineSpec
    data: DataOutputs
    base: str
    parent_id: str
    lineage: Lineage
    stages: dict[str, float]
    """Wall time per stage (the summary's stage_seconds), filled as the stages run."""


def _train_evaluate_register(run: RunContext, format_description: str) -> PipelineSummary:
    spec, data, tracker = run.spec, run.data, run.tracker
    tracker.log_json(run.parent_id, data.source_table, "data/source_table.json")
    manifest = Path(data.train_dir) / "manifest.json"
    if manifest.is_file():
        tracker.log_artifact(run.parent_id, manifest, "data")
    with timed(run.stages, "evaluate_base"):
        base_scores = evaluate_base_task(run.ws, tracker, spec, data, run.base, run.parent_id)
    # Sequential: arms compete for the same cores / GPU.
    trained = {arm.name: _train_score_register(run, arm, base_scores) for arm in spec.arms}
    arms = [summary for _, summary in trained.values()]
    _compare_on_parent(
        run, base_scores.metrics, arms, {n: t.result for n, (t, _) in trained.items()}
    )
    best, decision = _promote(run, arms, base_scores.metrics)
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
    )


def _train_score_register(
    run: RunContext, arm: ArmSpec, base_scores: Scores
) -> tuple[TrainedArm, ArmSummary]:
    """One arm: trained (or found), scored under the base evaluation's key, registered."""
    args = (run.spec, run.data, run.base)
    with timed(run.stages, f"train_{arm.name}"):
        trained = train_arm_task(run.ws, run.tracker, *args, arm, run.parent_id, run.lineage)
    with timed(run.stages, f"evaluate_{arm.name}"):
        scores = evaluate_task(run.tracker, *args, trained, base_scores.eval_id)
    with timed(run.stages, "register"):
        version = register_task(
            run.ws,
            run.tracker,
            *args,
            arm,
            trained,
            scores.metrics,
            run.lineage,
            rescored=not scores.reused,
        )
    headline = _headline(scores.metrics, run.spec)
    summary = ArmSummary(
        arm.name, arm.kind, trained.run_id, version.version, headline, trained.reused
    )
    return trained, summary


def _compare_on_parent(
    run: RunContext,
    base_metrics: dict[str, float],
    arms: list[ArmSummary],
    results: dict[str, ArmResult],
) -> None:
    """The parent run's comparison: per-arm metrics, loss curves, spectra, the table."""
    tracker, parent_id = run.tracker, run.parent_id
    tracker.log_metrics(parent_id, {f"{a.arm}_{k}": v for a in arms for k, v in a.metrics.items()})
    tracker.log_figure(
        parent_id,
        plot_loss_curves({n: r.history for n, r in results.items()}),
        "plots/loss_curves.png",
    )
    with timed(run.stages, "analyse"):
        analysis = analyse_task(tracker, run.spec, run.base, results, parent_id)
    tracker.set_tags(parent_id, {"mlflow.note.content": analysis})
    base_row = _headline(base_metrics, run.spec)
    table = [{"model": "base", **base_row}] + [
        {"model": a.arm, "version": a.version, **a.metrics} for a in arms
    ]
    create_table_artifact(table, key="arm-comparison", description="Evaluation of base and arms")
    comparison = compare_arms({"base": base_row, **{a.arm: a.metrics for a in arms}})
    tracker.log_table(parent_id, comparison, "eval/comparison.json")


def _promote(run: RunContext, arms: list[ArmSummary], base_metrics: dict[str, float]):
    """The best arm becomes the challenger; the gate decides whether it is the champion.
    Returns (the best arm, the gate's decision)."""
    spec, tracker, name = run.spec, run.tracker, run.spec.registered_model_name
    for a in arms:  # the analysis compares the arms, so it joins each version only now
        attach_run_artifacts(tracker, name, a.version, run.parent_id)
    primary = spec.registry.primary_metric
    best = max(arms, key=lambda a: a.metrics.get(primary, float("-inf")))
    set_alias(tracker, name, CHALLENGER, best.version)
    decision = run_gate(
        tracker,
        name,
        best.version,
        primary_metric=primary,
        min_improvement=spec.registry.min_improvement,
        regression_tolerance=spec.registry.regression_tolerance,
        base_metrics=base_metrics,
        must_beat_base=spec.registry.must_beat_base,
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
