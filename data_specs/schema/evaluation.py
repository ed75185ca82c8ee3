"""What follows training: how the arms and the base model are scored, and the registry
gate that decides on those scores whether a challenger becomes champion."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from multilora_pipeline.data_specs.schema.strict import Strict


class EvaluationSpec(Strict):
    """How adapters (and the base model, as a reference row) are scored."""

    batch_size: int = Field(default=16, gt=0)
    """Items per forward pass."""
    max_new_tokens: int = Field(default=64, gt=0)
    """Greedy decoding budget for generation suites."""
    few_shot: int = Field(default=0, ge=0)
    """Exemplars prepended to each prompt (taken deterministically from the suite's first items)."""
    device: Literal["auto", "cpu", "cuda"] | None = None
    """Where the base model and the arms are scored; None scores where training runs
    (training.device). With training on a GPU work pool and the pipeline on a CPU machine,
    set cpu (or auto)."""
    bootstrap_resamples: int = Field(default=1000, ge=100, le=100_000)
    """Resamples of the paired bootstrap over evaluation items that gives every comparison
    (arm - base, arm - arm, challenger - champion) its 95% interval. Changes no score, so
    changing it scores nothing again."""

    def scoring_settings(self) -> dict:
        """The settings that decide the scores (what the base evaluation's cache key holds)."""
        # The device is in the cache key as resolved (cpu / cuda), not as asked for.
        return self.model_dump(mode="json", exclude={"bootstrap_resamples", "device"})


class RegistrySpec(Strict):
    """MLflow registry and the champion/challenger gate."""

    model_name: str | None = None
    """Registered model name; default ``mlora-<spec name>``."""
    primary_metric: str = "eval_macro_acc"
    """Metric the gate compares (higher is better)."""
    min_improvement: float = Field(default=0.0, ge=0)
    """A challenger must beat the champion (and the base model, see must_beat_base) by at
    least this much; 0 asks for a strict gain, so a tie keeps the champion."""
    regression_tolerance: float = Field(default=0.05, ge=0)
    """No per-category metric may drop by more than this versus the champion."""
    must_beat_base: bool = True
    """Promote only a challenger whose primary metric beats the base model's (scored in the
    same run) by min_improvement: an adapter worse than no adapter never becomes champion,
    even when there is no champion yet. False promotes on the champion comparison alone
    (the gate's reasons still state the base model's score)."""
    must_beat_majority: bool | None = None
    """Promote only a challenger that beats always giving the majority answer on every
    multiple-choice suite its primary metric is made of: the 95% paired interval of its
    accuracy minus the constant predictor's must have its lower end above 0, and the gate
    names the suite that fails. None (the default) turns it on for a pretrained base model
    and off for a tiny random one (which sits at chance by design)."""
