"""An arm's training runs as Prefect tasks: learning-rate probes, one run per seed, their scores.

    learning-rate grid?  -> one probe per candidate (first seed, training.probe_steps)
                            -> the lowest held-out loss on the mixture's validation split wins
    for every seed       -> train (or find) the arm at that learning rate -> score it

This module is the composition only (which task runs when, and in which thread); the stages
are plain functions: tasks/training/train_arm.py, tasks/evaluation/arm_scores.py,
tasks/training/probes.py, tasks/evaluation/arm_outcome.py.

Probes are MLflow child runs like the arms' (tagged `mlora.lr_probe`), reused by the same
run key, and never scored on the evaluation suites: choosing on the suites would bias the
very scores the comparison and the gate read. A probe as long as the real run, at the
first seed, *is* that seed's run (same settings, same run key), so it is trained once.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from contextvars import copy_context

from prefect import task
from prefect.cache_policies import NO_CACHE

from multilora_pipeline.data_specs.schema import ArmSpec
from multilora_pipeline.tasks.evaluation.arm_outcome import ArmOutcome, SeedRun, arm_outcome
from multilora_pipeline.tasks.evaluation.arm_scores import Scores, evaluate_arm
from multilora_pipeline.tasks.run_context import RunContext, timed
from multilora_pipeline.tasks.training.arm_runs import ArmRun
from multilora_pipeline.tasks.training.probes import Probe, best_probe
from multilora_pipeline.tasks.training.train_arm import train_arm_run

log = logging.getLogger("mlora.pipeline")

train_arm_task = task(name="train-arm", cache_policy=NO_CACHE)(train_arm_run)
evaluate_task = task(name="evaluate", cache_policy=NO_CACHE)(evaluate_arm)


def choose_learning_rates(ctx: RunContext, arm: ArmSpec) -> tuple[ArmSpec, list[Probe]]:
    """The arm with its learning rates fixed: its own, or the best of its grid's probes
    (each trained at the first seed and scored on the validation split only)."""
    training = ctx.spec.training
    grid = arm.probe_grid(training)
    if not grid:
        return arm, []
    first_seed = training.run_seeds[0]
    probes = []
    for rate, scale in grid:
        probe = ArmRun(
            arm.with_learning_rates(rate, scale, training),
            training.for_run(first_seed, probe=True),
            probe=True,
        )
        trained = train_arm_task(ctx, probe)
        ctx.tracker.finish(trained.run_id)  # a probe is never scored on the suites or registered
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
    fixed = arm.with_learning_rates(best.learning_rate, best.scale_learning_rate, training)
    return fixed, probes


def train_and_score_arm(ctx: RunContext, arm: ArmSpec, base_scores: Scores) -> ArmOutcome:
    """The arm's learning rate (probed when it has a grid), then one trained and scored
    run per seed, all on the same mixture and under the base evaluation's key."""
    with timed(ctx.stages, f"train_{arm.name}"):
        arm, probes = choose_learning_rates(ctx, arm)
    runs = []
    for seed in ctx.spec.training.run_seeds:
        with timed(ctx.stages, f"train_{arm.name}"):
            trained = train_arm_task(ctx, ArmRun(arm, ctx.spec.training.for_run(seed)))
        with timed(ctx.stages, f"evaluate_{arm.name}"):
            scores = evaluate_task(ctx, trained, base_scores)
        runs.append(SeedRun(seed, trained, scores))
    return arm_outcome(arm, runs, probes)


def train_and_score_arms(ctx: RunContext, base_scores: Scores) -> list[ArmOutcome]:
    """Every arm of the spec, in spec order. In process they run one after the other (they
    compete for the same cores or GPU); trained elsewhere (a work pool) at once, each in a
    thread of its own waiting on its training flow runs, so the pool runs as many as its
    workers and concurrency limit allow."""
    if not ctx.train_elsewhere or len(ctx.spec.arms) == 1:
        return [train_and_score_arm(ctx, arm, base_scores) for arm in ctx.spec.arms]
    # Each thread runs in a copy of this one's context: its tasks belong to the flow run.
    with ThreadPoolExecutor(max_workers=len(ctx.spec.arms)) as pool:
        futures = [
            pool.submit(copy_context().run, train_and_score_arm, ctx, arm, base_scores)
            for arm in ctx.spec.arms
        ]
        try:
            return [f.result() for f in futures]
        except BaseException:
            ctx.stop.set()  # the other arms stop waiting and cancel their training runs
            raise
