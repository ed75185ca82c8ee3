"""An arm's training runs: learning-rate probes, one run per seed, and their scores.

    learning-rate grid?  -> one probe per candidate (first seed, training.probe_steps)
                            -> the lowest held-out loss on the mixture's validation split wins
    for every seed       -> train (or find) the arm at that learning rate -> score it

Probes are MLflow child runs like the arms' (tagged `mlora.lr_probe`), reused by the same
run key, and never scored on the evaluation suites: choosing on the suites would bias the
very scores the comparison and the gate read. A probe as long as the real run, at the
first seed, *is* that seed's run (same settings, same run key), so it is trained once.
"""

from __future__ import annotations

import logging
import math
import threading
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE

from multilora_pipeline.data_specs import metrics as names
from multilora_pipeline.data_specs.errors import TrainingError
from multilora_pipeline.data_specs.schema import ArmSpec, PipelineSpec, TrainingSpec
from multilora_pipeline.flows.context import RunContext, timed
from multilora_pipeline.flows.data import DataOutputs
from multilora_pipeline.flows.runs import ArmRun, arm_dir, run_key, train_here
from multilora_pipeline.flows.training import training_parameters
from multilora_pipeline.flows.training_pool import train_on_pool
from multilora_pipeline.tasks.evaluation.cache import EVAL_ID_TAG
from multilora_pipeline.tasks.evaluation.confidence import (
    ItemScores,
    item_scores,
    mean_and_spread,
    mean_over_seeds,
)
from multilora_pipeline.tasks.evaluation.evaluate import EvalResult, evaluate_model
from multilora_pipeline.tasks.registry.lineage import Lineage
from multilora_pipeline.tasks.registry.tracking import Tracker
from multilora_pipeline.tasks.training.arm_models import load_for_inference
from multilora_pipeline.tasks.training.loading import resolve_prompt_format
from multilora_pipeline.tasks.training.train import ArmResult, load_result
from multilora_pipeline.tasks.workspace import Workspace

log = logging.getLogger("mlora.pipeline")
PREDICTIONS = "eval/predictions.json"
SCORING = threading.Lock()
"""Scoring loads a model and uses every core: one at a time in this process."""


@dataclass
class TrainedArm:
    """What the train stage hands on: the run's result, its MLflow run, and whether both
    were there before (a finished run is looked up, not trained)."""

    result: ArmResult
    run_id: str
    reused: bool


@dataclass
class Scores:
    """An evaluation's metrics, its per-item predictions, and whether they were reused."""

    metrics: dict[str, float]
    reused: bool
    eval_id: str | None = None
    """The base evaluation's key (tasks/evaluation/cache.py): arms are scored under it."""
    predictions: pd.DataFrame = field(default_factory=pd.DataFrame)


@task(name="train-arm", cache_policy=NO_CACHE)
def train_arm_task(
    ws: Workspace,
    tracker: Tracker,
    spec: PipelineSpec,
    data: DataOutputs,
    base: str,
    run: ArmRun,
    parent_id: str,
    lineage: Lineage,
    pool: str | None = None,
    stop: threading.Event | None = None,
) -> TrainedArm:
    """Train `run` (or find it trained) in its MLflow child run: here, or as a flow run of
    the mlora-train deployment on work pool `pool` (flows/training_pool.py)."""
    arm, training = run.arm, run.training
    tags = lineage.run_tags(arm=arm.name, adapter_kind=arm.kind)
    tags["mlora.seed"] = str(training.seed)
    if run.probe:
        tags["mlora.lr_probe"] = "true"
    run_id, finished = tracker.child_run(
        parent_id, run_key(spec, data.mixture_id, run), run.run_name(spec), tags=tags
    )
    done_dir = arm_dir(ws, spec, data.mixture_id, run)
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
        elif pool:
            train_on_pool(
                pool,
                training_parameters(
                    ws, spec, data.mixture_id, base, run, run_id, lineage.prompt_format
                ),
                run.run_name(spec),
                stop,
            )
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
                ws,
                tracker,
                spec,
                data.train_dir,
                data.validation_path,
                base,
                run,
                data.mixture_id,
                lineage.prompt_format,
                run_id,
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


@task(name="evaluate", cache_policy=NO_CACHE)
def evaluate_task(
    tracker: Tracker,
    spec: PipelineSpec,
    data: DataOutputs,
    base: str,
    trained: TrainedArm,
    eval_id: str,
    items_per_suite: dict[str, int],
) -> Scores:
    """An arm's scores on every suite, logged to its run, and whether they were reused. A
    reused arm keeps its logged scores only if they were made under `eval_id` (the base
    evaluation's key: same suites, settings and scoring code) and its per-item predictions
    are there, one row per item (`items_per_suite`, the base's); otherwise it is scored
    again, so the arms and the base row always compare like with like, item by item."""
    run_id = trained.run_id
    if tracker.run_tags(run_id).get(EVAL_ID_TAG) == eval_id:
        predictions = tracker.load_table(run_id, PREDICTIONS)
        if predictions is not None and suite_sizes(predictions) == items_per_suite:
            return Scores(tracker.metrics(run_id), True, eval_id, predictions)
    with SCORING:  # arms trained at once on a pool are scored here one at a time
        evaluation = score(spec, data, base, trained.result)
    log_evaluation(tracker, run_id, evaluation, prefix="")
    tracker.set_tags(run_id, {EVAL_ID_TAG: eval_id})
    return Scores(evaluation.metrics, False, eval_id, evaluation.predictions)


def suite_sizes(predictions: pd.DataFrame) -> dict[str, int]:
    """Scored items per suite of a prediction table."""
    return {} if predictions.empty else predictions.groupby("suite").size().to_dict()


# --- learning-rate probes -----------------------------------------------------------------


@dataclass
class Probe:
    """One candidate of an arm's learning-rate grid and the held-out loss its probe reached."""

    learning_rate: float
    scale_learning_rate: float | None
    eval_loss: float | None
    run_id: str
    history: list[dict]
    chosen: bool = False

    @property
    def label(self) -> str:
        scale = "" if self.scale_learning_rate is None else f", scales {self.scale_learning_rate:g}"
        return f"lr {self.learning_rate:g}{scale}"


def best_probe(arm: str, probes: list[Probe]) -> Probe:
    """The probe with the lowest held-out loss (the first on a tie); a probe that diverged
    (no finite loss) never wins, and a grid where every probe diverged is an error."""
    finite = [p for p in probes if p.eval_loss is not None and math.isfinite(p.eval_loss)]
    if not finite:
        raise TrainingError(
            f"arm {arm!r}: every learning-rate probe ended without a finite held-out loss "
            f"({', '.join(p.label for p in probes)})",
            fix="try smaller learning rates in the grid",
        )
    return min(finite, key=lambda p: p.eval_loss)


def choose_learning_rates(run: RunContext, arm: ArmSpec) -> tuple[ArmSpec, list[Probe]]:
    """The arm with its learning rates fixed: its own, or the best of its grid's probes
    (each trained at the first seed and scored on the validation split only)."""
    spec = run.spec
    grid = arm.probe_grid(spec.training)
    if not grid:
        return arm, []
    first_seed = spec.training.run_seeds[0]
    probes = []
    for rate, scale in grid:
        probe = ArmRun(
            arm.with_learning_rates(rate, scale, spec.training),
            spec.training.for_run(first_seed, probe=True),
            probe=True,
        )
        trained = train_arm_task(
            run.ws,
            run.tracker,
            spec,
            run.data,
            run.base,
            probe,
            run.parent_id,
            run.lineage,
            run.training_pool,
            run.stop,
        )
        run.tracker.finish(trained.run_id)  # a probe is never scored on the suites or registered
        result = trained.result
        probes.append(Probe(rate, scale, result.eval_loss, trained.run_id, result.history))
    best = best_probe(arm.name, probes)
    best.chosen = True
    log.info(
        "[%s] learning rate: %s (held-out loss %.4f; probed %s)",
        arm.name,
        best.label,
        best.eval_loss,
        ", ".join(f"{p.label}: {p.eval_loss:.4f}" if p.eval_loss else p.label for p in probes),
    )
    fixed = arm.with_learning_rates(best.learning_rate, best.scale_learning_rate, spec.training)
    return fixed, probes


# --- seeds ----------------------------------------------------------------------------------


@dataclass
class SeedRun:
    """One seed's training run of an arm and its scores."""

    seed: int
    trained: TrainedArm
    scores: Scores


@dataclass
class ArmOutcome:
    """Everything the pipeline knows about an arm after training and scoring it."""

    arm: ArmSpec
    """The arm as trained: its learning rates fixed."""
    runs: list[SeedRun]
    probes: list[Probe]
    metrics: dict[str, float]
    """Mean over seeds of every metric."""
    spread: dict[str, float]
    """Sample standard deviation over seeds (0 with one seed)."""
    items: ItemScores
    """Per-item scores, averaged over seeds."""

    @property
    def version_run(self) -> SeedRun:
        """The seed whose adapter the registered version holds: the one with the lowest
        held-out loss on the validation split (not the suites, which the gate reads)."""
        losses = [r.scores.metrics.get(names.HELD_OUT_LOSS, math.inf) for r in self.runs]
        return self.runs[losses.index(min(losses))]

    def seed_choice(self) -> str:
        """Why the version holds the adapter it holds, in words (a version tag)."""
        chosen = self.version_run
        if len(self.runs) == 1:
            return f"seed {chosen.seed}: the arm's only seed"
        loss = chosen.scores.metrics.get(names.HELD_OUT_LOSS)
        seeds = ", ".join(str(r.seed) for r in self.runs)
        return (
            f"seed {chosen.seed} of seeds {seeds}: the lowest held-out loss "
            f"({names.HELD_OUT_LOSS} {loss:.4f}) on the mixture's validation split, chosen "
            "without the evaluation suites; the version's scores are the arm's mean over "
            "its seeds, and the gate's intervals resample items over the per-item mean"
        )

    def learning_rate(self, training: TrainingSpec) -> float:
        return self.arm.learning_rate or training.learning_rate

    def version_tags(self, training: TrainingSpec) -> dict[str, str]:
        """Which adapter the version holds and why, and the learning rate it was trained at."""
        tags = {
            "mlora.seed": str(self.version_run.seed),
            "mlora.seed_choice": self.seed_choice(),
            "mlora.learning_rate": f"{self.learning_rate(training):g}",
        }
        if self.probes:
            tags["mlora.learning_rate_choice"] = "lowest held-out loss of the probes: " + ", ".join(
                f"{p.label} {p.eval_loss:.4f}" for p in self.probes if p.eval_loss
            )
        # Always written: a version reused by a run with other seeds must not keep the
        # seed list (and so the mean) of the run that registered it.
        tags["mlora.seeds"] = ",".join(str(r.seed) for r in self.runs)
        tags["mlora.seed_runs"] = ",".join(r.trained.run_id for r in self.runs)
        return tags


def train_and_score_arm(run: RunContext, arm: ArmSpec, base_scores: Scores) -> ArmOutcome:
    """The arm's learning rate (probed when it has a grid), then one trained and scored
    run per seed, all on the same mixture and under the base evaluation's key."""
    eval_id, sizes = base_scores.eval_id, suite_sizes(base_scores.predictions)
    spec = run.spec
    with timed(run.stages, f"train_{arm.name}"):
        arm, probes = choose_learning_rates(run, arm)
    runs = []
    for seed in spec.training.run_seeds:
        seed_run = ArmRun(arm, spec.training.for_run(seed))
        with timed(run.stages, f"train_{arm.name}"):
            trained = train_arm_task(
                run.ws,
                run.tracker,
                spec,
                run.data,
                run.base,
                seed_run,
                run.parent_id,
                run.lineage,
                run.training_pool,
                run.stop,
            )
        with timed(run.stages, f"evaluate_{arm.name}"):
            scores = evaluate_task(run.tracker, spec, run.data, run.base, trained, eval_id, sizes)
        runs.append(SeedRun(seed, trained, scores))
    mean, spread = mean_and_spread([r.scores.metrics for r in runs])
    items = mean_over_seeds([item_scores(r.scores.predictions) for r in runs])
    return ArmOutcome(arm, runs, probes, mean, spread, items)


def train_and_score_arms(run: RunContext, base_scores: Scores) -> list[ArmOutcome]:
    """Every arm of the spec, in spec order. In process they run one after the other (they
    compete for the same cores or GPU); on a work pool at once, each in a thread of its
    own waiting on its training flow runs, so the pool runs as many as its workers and
    concurrency limit allow."""
    if not run.training_pool or len(run.spec.arms) == 1:
        return [train_and_score_arm(run, arm, base_scores) for arm in run.spec.arms]
    # Each thread runs in a copy of this one's context: its tasks belong to the flow run.
    with ThreadPoolExecutor(max_workers=len(run.spec.arms)) as pool:
        futures = [
            pool.submit(copy_context().run, train_and_score_arm, run, arm, base_scores)
            for arm in run.spec.arms
        ]
        try:
            return [f.result() for f in futures]
        except BaseException:
            run.stop.set()  # the other arms stop waiting and cancel their training runs
            raise
