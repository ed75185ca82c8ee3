"""The train stage of one arm run: find it trained, or train it (here or elsewhere) inside its
MLflow child run, and log what it reached."""

from __future__ import annotations

from dataclasses import dataclass

from multilora_pipeline.data_specs.errors import TrainingError
from multilora_pipeline.tasks.identity import run_key
from multilora_pipeline.tasks.run_context import RunContext
from multilora_pipeline.tasks.training.arm_runs import ArmRun, arm_dir, train_here
from multilora_pipeline.tasks.training.train import ArmResult, load_result


@dataclass
class TrainedArm:
    """What the train stage hands on: the run's result, its MLflow run, and whether both
    were there before (a finished run is looked up, not trained)."""

    result: ArmResult
    run_id: str
    reused: bool


def train_arm_run(ctx: RunContext, arm_run: ArmRun) -> TrainedArm:
    """Train `arm_run` (or find it trained) in its MLflow child run: in this process, or
    through `ctx.train_elsewhere` (a Prefect work pool, flows/training_pool.py)."""
    spec, tracker, mixture_id = ctx.spec, ctx.tracker, ctx.data.mixture_id
    arm, training = arm_run.arm, arm_run.training
    tags = ctx.lineage.run_tags(arm=arm.name, adapter_kind=arm.kind)
    tags["mlora.seed"] = str(training.seed)
    if arm_run.probe:
        tags["mlora.lr_probe"] = "true"
    run_id, finished = tracker.child_run(
        ctx.parent_id, run_key(spec, mixture_id, arm_run), arm_run.run_name(spec), tags=tags
    )
    done_dir = arm_dir(ctx.ws, spec, mixture_id, arm_run)
    if finished and load_result(done_dir) is None:
        raise TrainingError(
            f"arm {arm.name!r}: its MLflow run {run_id} is FINISHED but the trained adapter "
            f"is missing from {done_dir}",
            fix=f"restore that folder, or delete run {run_id} in the MLflow UI to retrain",
        )
    try:
        tracker.log_params(
            run_id,
            {"arm": arm.model_dump(mode="json"), "training": training.model_dump(mode="json")},
        )
        if finished:  # only looked up
            result = load_result(done_dir)
        elif ctx.train_elsewhere:
            ctx.train_elsewhere(arm_run, run_id)
            result = load_result(done_dir)
            if result is None:
                raise TrainingError(
                    f"arm {arm.name!r}: its training flow run completed but left no result in "
                    f"{done_dir}",
                    fix="check that the worker's $MLORA_WORKSPACE is this workspace (shared "
                    "storage), then rerun",
                )
        else:
            result = train_here(
                ctx.ws,
                tracker,
                spec,
                ctx.data.train_dir,
                ctx.data.validation_path,
                ctx.base,
                arm_run,
                mixture_id,
                ctx.lineage.prompt_format,
                run_id,
            )
        if not finished:
            log_training(ctx, run_id, result)
    except BaseException:
        tracker.finish(run_id, "FAILED")
        raise
    return TrainedArm(result, run_id, finished)


def log_training(ctx: RunContext, run_id: str, result: ArmResult) -> None:
    """A newly trained run's final figures and its adapter (ours and PEFT's) on its MLflow run."""
    ctx.tracker.log_metrics(
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
    ctx.tracker.log_artifact(run_id, result.adapter_dir, "adapter")
    if result.peft_dir:
        ctx.tracker.log_artifact(run_id, result.peft_dir, "peft_adapter")
