"""The analyse stage: the spectra of every trained arm's weight updates, on the parent run."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pandas as pd

from multilora_pipeline.tasks.analysis.spectra import (
    aggregate_analysis,
    analyse_deltas,
    plot_effective_rank,
    plot_spectra,
    summarise_flatness,
)
from multilora_pipeline.tasks.evaluation.arm_outcome import ArmOutcome
from multilora_pipeline.tasks.run_context import RunContext
from multilora_pipeline.tasks.training.arm_models import arm_deltas


def analyse_arms(ctx: RunContext, outcomes: list[ArmOutcome]) -> str:
    """Singular values of every ΔW of every arm and seed: plots, tables and a flatness
    summary, with the spread over seeds, on the parent run; returns the summary."""
    tracker, parent_id = ctx.tracker, ctx.parent_id

    # One frame per arm, its seeds' rows together (a `seed` column): plots and table
    # average over seeds, and the note says whether the arms differ by more than seeds do.
    frames = {
        o.arm.name: pd.concat(
            [
                analyse_deltas(arm_deltas(ctx.spec, ctx.base, r.trained.result)).assign(seed=r.seed)
                for r in o.runs
            ],
            ignore_index=True,
        )
        for o in outcomes
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
