"""An arm after training and scoring: its seeds' runs and scores, their mean and spread, the
per-item scores the comparison pairs, and which seed's adapter the version holds and why."""

from __future__ import annotations

import math
from dataclasses import dataclass

from multilora_pipeline.data_specs import metrics as names
from multilora_pipeline.data_specs.schema import ArmSpec, TrainingSpec
from multilora_pipeline.tasks.evaluation.arm_scores import Scores
from multilora_pipeline.tasks.evaluation.confidence import (
    ItemScores,
    item_scores,
    mean_and_spread,
    mean_over_seeds,
)
from multilora_pipeline.tasks.training.probes import Probe
from multilora_pipeline.tasks.training.train_arm import TrainedArm


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


def arm_outcome(arm: ArmSpec, runs: list[SeedRun], probes: list[Probe]) -> ArmOutcome:
    """The arm's outcome from its scored seed runs: metric means and spread over seeds, and
    the per-item scores averaged over seeds."""
    mean, spread = mean_and_spread([r.scores.metrics for r in runs])
    items = mean_over_seeds([item_scores(r.scores.predictions) for r in runs])
    return ArmOutcome(arm, runs, probes, mean, spread, items)
