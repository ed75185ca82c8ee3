"""What the data stages of one pipeline run hand to training and evaluation: the mixture's
shards, the validation rows, each suite's items, and the per-source and per-suite tables."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel

from multilora_pipeline.data_specs.schema import DataSpec

if TYPE_CHECKING:  # evaluation imports torch; the data stages never need it
    from multilora_pipeline.tasks.evaluation.evaluate import SuiteData


class DataOutputs(BaseModel):
    """What the data stages hand to training and evaluation (JSON-able)."""

    spec_hash: str
    mixture_id: str
    train_dir: str
    """Folder of Parquet shards (RECORD_SCHEMA) in training order, plus manifest.json."""
    validation_path: str
    """Held-out rows of every source (Parquet)."""
    eval_paths: dict[str, str]
    """Suite name -> Parquet of its canonical eval items."""
    eval_dev_paths: dict[str, str] = {}
    """Suite name -> Parquet of its few-shot exemplars, for suites that name a dev split."""
    source_table: list[dict]
    """Per source: rows_in, exact_drops, near_drops, contamination_drops, rows_in_mixture,
    requested_share, achieved_share."""
    reused_stages: list[str]
    """Stages whose every output was reused from an earlier run."""
    suite_table: list[dict] = []
    """Per suite: items, repeated (items that repeat an earlier one), dropped."""

    def suites(self, spec: DataSpec) -> list[SuiteData]:
        """The spec's evaluation suites with their Parquet (and dev split), as scored."""
        from multilora_pipeline.tasks.evaluation.evaluate import SuiteData

        return [
            SuiteData(
                suite,
                Path(self.eval_paths[suite.name]),
                Path(self.eval_dev_paths[suite.name])
                if suite.name in self.eval_dev_paths
                else None,
            )
            for suite in spec.eval_suites
        ]
