"""Scoring the base model and each trained arm on every suite, in the run's one prompt format,
and reusing scores that were made under the same evaluation.

The base model's scores are cached in the workspace by everything that decides them
(tasks/evaluation/cache.py); an arm's live on its MLflow run, tagged with that key.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from multilora_pipeline.data_specs.schema import PipelineSpec
from multilora_pipeline.tasks.data.run_outputs import DataOutputs
from multilora_pipeline.tasks.evaluation.cache import (
    EVAL_ID_TAG,
    base_eval_inputs,
    load_base_eval,
    save_base_eval,
)
from multilora_pipeline.tasks.evaluation.evaluate import EvalResult, evaluate_model
from multilora_pipeline.tasks.identity import base_eval_key
from multilora_pipeline.tasks.registry.tracking import Tracker
from multilora_pipeline.tasks.run_context import RunContext
from multilora_pipeline.tasks.training.arm_models import load_for_inference
from multilora_pipeline.tasks.training.loading import resolve_device, resolve_prompt_format
from multilora_pipeline.tasks.training.train import ArmResult
from multilora_pipeline.tasks.training.train_arm import TrainedArm

PREDICTIONS = "eval/predictions.json"
SCORING = threading.Lock()
"""Scoring loads a model and uses every core: one at a time in this process."""


@dataclass
class Scores:
    """An evaluation's metrics, its per-item predictions, and whether they were reused."""

    metrics: dict[str, float]
    reused: bool
    eval_id: str | None = None
    """The base evaluation's key (tasks/evaluation/cache.py): arms are scored under it."""
    predictions: pd.DataFrame = field(default_factory=pd.DataFrame)


def score(spec: PipelineSpec, data: DataOutputs, base: str, result: ArmResult | None) -> EvalResult:
    """The base model (result None) or an arm on every suite and the held-out rows, in the
    run's prompt format (the same for both: like is compared with like)."""
    model, tokenizer, device = load_for_inference(spec, base, result)
    fmt = resolve_prompt_format(tokenizer, spec.prompt_format, base)
    return evaluate_model(
        model,
        fmt,
        data.suites(spec),
        Path(data.validation_path),
        spec.evaluation,
        device,
        max_length=spec.training.max_length,
    )


def log_evaluation(tracker: Tracker, run_id: str, evaluation: EvalResult, prefix: str) -> None:
    tracker.log_metrics(run_id, {f"{prefix}{k}": v for k, v in evaluation.metrics.items()})
    tracker.log_table(run_id, evaluation.predictions, f"eval/{prefix}predictions.json")


def evaluate_base(ctx: RunContext) -> Scores:
    """Score the base model, or reuse its cached scores (tasks/evaluation/cache.py) when nothing
    that decides them changed; log them as `base_*` to the parent run either way."""
    spec, data = ctx.spec, ctx.data
    inputs = base_eval_inputs(
        spec,
        ctx.base,
        resolve_device(spec.evaluation_device, spec.evaluation_device_field),
        data.mixture_id,
        data.eval_paths,
        data.eval_dev_paths,
    )
    key = base_eval_key(inputs)
    evaluation = load_base_eval(ctx.ws, key)
    reused = evaluation is not None
    if evaluation is None:
        evaluation = score(spec, data, ctx.base, None)
        save_base_eval(ctx.ws, key, inputs, evaluation)
    log_evaluation(ctx.tracker, ctx.parent_id, evaluation, prefix="base_")
    ctx.tracker.set_tags(ctx.parent_id, {"mlora.base_eval_id": key})
    return Scores(evaluation.metrics, reused, key, evaluation.predictions)


def evaluate_arm(ctx: RunContext, trained: TrainedArm, base_scores: Scores) -> Scores:
    """An arm's scores on every suite, logged to its run, and whether they were reused. A
    reused arm keeps its logged scores only if they were made under the base evaluation's
    key (same suites, settings and scoring code) and its per-item predictions are there, one
    row per item of the base's; otherwise it is scored again, so the arms and the base row
    always compare like with like, item by item."""
    tracker, run_id, eval_id = ctx.tracker, trained.run_id, base_scores.eval_id
    if tracker.run_tags(run_id).get(EVAL_ID_TAG) == eval_id:
        predictions = tracker.load_table(run_id, PREDICTIONS)
        if predictions is not None and suite_sizes(predictions) == suite_sizes(
            base_scores.predictions
        ):
            return Scores(tracker.metrics(run_id), True, eval_id, predictions)
    with SCORING:  # arms trained at once on a pool are scored here one at a time
        evaluation = score(ctx.spec, ctx.data, ctx.base, trained.result)
    log_evaluation(tracker, run_id, evaluation, prefix="")
    tracker.set_tags(run_id, {EVAL_ID_TAG: eval_id})
    return Scores(evaluation.metrics, False, eval_id, evaluation.predictions)


def suite_sizes(predictions: pd.DataFrame) -> dict[str, int]:
    """Scored items per suite of a prediction table."""
    return {} if predictions.empty else predictions.groupby("suite").size().to_dict()
