"""The data stages' settings: deduplication, decontamination and the training mixture."""

from __future__ import annotations

import math
from typing import Literal

from pydantic import Field, model_validator

from multilora_pipeline.data_specs.schema.strict import Strict


class NearDedupSpec(Strict):
    """Near-duplicate detection by MinHash LSH over word shingles."""

    enabled: bool = True
    """Turn near-duplicate removal on or off."""
    threshold: float = Field(default=0.8, gt=0, le=1)
    """Jaccard similarity (of word shingles) at or above which two rows are duplicates."""
    num_perm: int = Field(default=128, ge=16, le=1024)
    """MinHash permutations: more is more exact and slower."""
    shingle: int = Field(default=5, ge=1, le=16)
    """Words per shingle; shorter texts fall back to one shingle of all their words."""
    bands: int | None = Field(default=None, ge=1)
    """LSH bands (rows = num_perm / bands); None picks them from the threshold."""


class DedupSpec(Strict):
    """Exact and near deduplication, within and across sources."""

    exact: bool = True
    """Drop rows whose normalised key (case, spacing, punctuation folded) repeats."""
    key: list[Literal["prompt", "response", "choices"]] = Field(
        default=["prompt", "response"], min_length=1
    )
    """Fields of the dedup key (exact and near), across every source. Keys are taken on a
    row's content: a prompt without its template's boilerplate (one question rendered by
    two templates is one question), case, spacing and word-edge punctuation folded."""
    key_by_category: dict[str, list[Literal["prompt", "response", "choices"]]] = {
        "instruction": ["prompt"],
        "math": ["prompt"],
        "nlu": ["prompt", "choices"],
        "knowledge": ["prompt", "choices"],
    }
    """A second exact key applied among the rows of one category. The defaults treat a
    repeated question with another answer as a duplicate, as a training mixture should: an
    instruction or a math problem is keyed on its prompt alone (GSM8K's question again with
    FLAN's rationale is one example), a multiple-choice item on its prompt and choices (the
    same item with a contradicting label is one item; MultiRC's answers to one question,
    which differ in their choices, stay apart). ``{}`` turns it off."""
    near: NearDedupSpec = NearDedupSpec()
    """Near-duplicate settings."""


class DecontaminationSpec(Strict):
    """Removal of training rows that overlap an evaluation suite."""

    enabled: bool = True
    """Turn decontamination on or off."""
    ngram: int = Field(default=13, ge=3, le=50)
    """Word n-gram length for overlap; 13 follows GPT-3 / lm-eval practice."""
    boilerplate_fraction: float = Field(default=0.1, gt=0, le=1)
    """Ignore n-grams found in more than this share of eval items (templates, not content)."""
    boilerplate_group: str | None = "subject"
    """Meta field that groups a suite's items (MMLU's subject): an n-gram in more than
    boilerplate_fraction of one group's items, and in at least 3 of them, is that group's
    template (e.g. "Construct a complete truth table ..."); training rows of the group count
    with the suite's items. None: whole-suite counts only."""
    near_threshold: float = Field(default=0.8, gt=0, le=1)
    """For prompts without an ngram-word piece: word-set Jaccard at or above which a row
    matches an eval prompt."""


class MixtureSpec(Strict):
    """How sources are balanced into one training mixture."""

    strategy: Literal["proportional", "weights", "capped", "temperature"] = "proportional"
    """proportional: by source size; weights: explicit; capped: proportional with a per-source cap
    (T5); temperature: size^(1/T)."""
    weights: dict[str, float] | None = None
    """Per-source weights for strategy=weights (normalised to sum to 1)."""
    cap: int | None = Field(default=None, gt=0)
    """Per-source cap in examples for strategy=capped."""
    temperature: float = Field(default=2.0, gt=0)
    """T for strategy=temperature; 1 is proportional, larger flattens towards uniform."""
    size: int | None = Field(default=None, gt=0)
    """Target mixture size in examples. None: proportional takes every available row once and
    capped every row up to its cap; weights and temperature take the largest mixture in which
    no source repeats rows, so a small source with a large share limits the whole mixture (the
    mixture stage logs a warning naming it; set size with allow_upsampling: true to repeat its
    rows instead)."""
    size_tokens: int | None = Field(default=None, gt=0)
    """Target size in (whitespace) tokens instead of examples."""
    allow_upsampling: bool = False
    """Allow repeating rows of a source that is smaller than its share."""
    validation_fraction: float = Field(default=0.1, ge=0, lt=0.5)
    """Share of each source held out for validation loss (before mixing)."""
    shard_rows: int = Field(default=50_000, gt=0)
    """Rows per Parquet shard."""

    @model_validator(mode="after")
    def _strategy_fields(self):
        if self.strategy == "weights" and not self.weights:
            raise ValueError("strategy 'weights' needs a weights: {source: weight} mapping")
        bad = {k: w for k, w in (self.weights or {}).items() if not (math.isfinite(w) and w >= 0)}
        if bad:
            raise ValueError(
                f"weights must be finite numbers >= 0, got {bad} (0 leaves a source out)"
            )
        if self.weights and not sum(self.weights.values()) > 0:
            raise ValueError("weights sum to 0: give at least one source a positive weight")
        if self.strategy == "capped" and self.cap is None:
            raise ValueError("strategy 'capped' needs cap: <examples per source>")
        if self.size is not None and self.size_tokens is not None:
            raise ValueError("give size or size_tokens, not both")
        return self
