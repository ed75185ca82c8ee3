"""The whole DAG as one Prefect flow: this module is the composition (what runs when, as
which Prefect task, under which lock); every stage is a plain function in tasks/.

    data stages (flows/data.py) -> base model -> evaluate base (tasks/evaluation/arm_scores.py)
        -> per arm (flows/arms.py): learning-rate probes -> train x seeds -> evaluate
        -> register (tasks/registry/register_arm.py)
        -> compare with intervals (tasks/evaluation/comparison.py, tasks/pipeline_summary.py)
        -> analyse (tasks/analysis/arm_analysis.py) -> promote (tasks/registry/challenger.py)

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
import os
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from multilora_pipeline.data_specs.errors import TrainingError
from multilora_pipeline.data_specs.schema import PipelineSpec, load_spec
from multilora_pipeline.data_specs.vllm_limits import vllm_notes
from multilora_pipeline.flows.arms import train_and_score_arms
from multilora_pipeline.flows.data import run_data_stages
from multilora_pipeline.flows.stale_runs import close_stale_runs
from multilora_pipeline.flows.training_pool import pool_trainer, prepare_training_pool
from multilora_pipeline.tasks.analysis.arm_analysis import analyse_arms
from multilora_pipeline.tasks.evaluation.arm_scores import evaluate_base
from multilora_pipeline.tasks.evaluation.comparison import compare_with_baselines
from multilora_pipeline.tasks.pipeline_summary import (
    PipelineSummary,
    arm_summary,
    log_data_on_parent,
    log_on_parent,
    pipeline_summary,
)
from multilora_pipeline.tasks.registry.challenger import promote_best
from multilora_pipeline.tasks.registry.lineage import run_lineage
from multilora_pipeline.tasks.registry.register_arm import register_arm
from multilora_pipeline.tasks.registry.tracking import Tracker
from multilora_pipeline.tasks.run_context import RunContext, timed
from multilora_pipeline.tasks.stores import check_stores
from multilora_pipeline.tasks.training.base_model import (
    check_base_model,
    prepare_base_model,
    prompt_format,
)
from multilora_pipeline.tasks.training.loading import resolve_device
from multilora_pipeline.tasks.workspace import Workspace


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


evaluate_base_task = task(name="evaluate-base", cache_policy=NO_CACHE)(evaluate_base)
register_task = task(name="register", cache_policy=NO_CACHE)(register_arm)
analyse_task = task(name="analyse", cache_policy=NO_CACHE)(analyse_arms)
base_model_task = task(name="base-model", cache_policy=NO_CACHE)(prepare_base_model)


@flow(name="mlora-pipeline", log_prints=True)
def pipeline_flow(
    spec_path: str, workspace_root: str | None = None, training_pool: str | None = None
) -> dict:
    """Run the whole DAG on a spec file; returns the summary as a dict. `training_pool`
    (else the spec's training.work_pool) sends every training run to that Prefect work
    pool (flows/training_pool.py); without one, arms train in this process."""
    logger = get_run_logger()
    ws = Workspace.resolve(workspace_root).ensure()
    spec, spec_dir = load_spec(spec_path)
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
        summary = _locked_run(ws, spec, spec_path, spec_dir, pool)
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
    ws: Workspace, spec: PipelineSpec, spec_path: str, spec_dir: Path, pool: str | None
) -> PipelineSummary:
    logger = get_run_logger()
    # A base model that cannot be found fails before any work; a GGUF file is converted
    # here, once.
    stages: dict[str, float] = {}
    with timed(stages, "base_model"):
        check_base_model(spec, Path(spec_path).resolve(), ws=ws)
    with timed(stages, "data"):
        data = run_data_stages(spec, spec_dir, ws)
    with timed(stages, "base_model"):
        base = base_model_task(spec, data, ws)
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
        ctx = RunContext(ws, tracker, spec, data, base, parent_id, lineage, stages)
        if pool:
            ctx.train_elsewhere = pool_trainer(pool, ctx)
        log_data_on_parent(ctx)
        with timed(stages, "evaluate_base"):
            base_scores = evaluate_base_task(ctx)
        outcomes = train_and_score_arms(ctx, base_scores)
        with timed(stages, "register"):
            versions = {o.arm.name: register_task(ctx, o).version for o in outcomes}
        comparison, baselines = compare_with_baselines(spec, base_scores, outcomes)
        arms = [arm_summary(o, versions[o.arm.name], comparison, spec) for o in outcomes]
        table = log_on_parent(ctx, base_scores.metrics, arms, outcomes, comparison, baselines)
        create_table_artifact(
            table,
            key="arm-comparison",
            description="Evaluation of base and arms, beside chance and always the majority answer",
        )
        with timed(stages, "analyse"):
            tracker.set_tags(parent_id, {"mlflow.note.content": analyse_task(ctx, outcomes)})
        best, decision = promote_best(ctx, arms, outcomes, base_scores, comparison)
        create_markdown_artifact(decision.markdown(), key="promotion-decision")
        summary = pipeline_summary(
            ctx, base_scores, arms, comparison, baselines, best.version, decision, fmt.describe()
        )
        tracker.log_metrics(
            parent_id, {f"stage_seconds_{k}": v for k, v in summary.stage_seconds.items()}
        )
    except BaseException:
        tracker.finish(parent_id, "FAILED")
        tracker.fail_unfinished_children(parent_id)
        raise
    tracker.finish(parent_id)
    return summary
