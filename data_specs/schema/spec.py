"""A spec file as a whole: `DataSpec` (sources to mixture, what `mlora data` needs) and
`PipelineSpec` (that plus the model, the arms and what follows training).

The checks that span sections (unique names, weights naming real sources, a primary
metric the suites produce) live here, as do `canonical()` and `spec_hash`, the identity
recorded everywhere downstream.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from multilora_pipeline.data_specs import metrics as metric_names
from multilora_pipeline.data_specs.schema.base_model import BaseModelSpec
from multilora_pipeline.data_specs.schema.credentials import redact_url
from multilora_pipeline.data_specs.schema.data_stages import (
    DecontaminationSpec,
    DedupSpec,
    MixtureSpec,
)
from multilora_pipeline.data_specs.schema.evaluation import EvaluationSpec, RegistrySpec
from multilora_pipeline.data_specs.schema.sources import EvalSuiteSpec, SourceSpec
from multilora_pipeline.data_specs.schema.strict import NAME_RE, Strict
from multilora_pipeline.data_specs.schema.training import ArmSpec, TrainingSpec
from multilora_pipeline.models.content import content_key


class DataSpec(Strict):
    """The data half of a spec: sources to mixture (what `mlora data` needs).

    A spec file without `base_model` and `arms` is one of these; a whole pipeline spec
    (PipelineSpec) adds the model, the arms and what follows training."""

    name: str = Field(pattern=NAME_RE)
    """Spec name: the MLflow experiment and (by default) the registered model are named after it."""
    description: str = ""
    """Free text shown in MLflow."""
    sources: list[SourceSpec] = Field(min_length=1)
    """Training sources."""
    eval_suites: list[EvalSuiteSpec] = Field(min_length=1)
    """Evaluation suites (also the decontamination reference)."""
    dedup: DedupSpec = DedupSpec()
    """Deduplication settings."""
    decontamination: DecontaminationSpec = DecontaminationSpec()
    """Decontamination settings."""
    mixture: MixtureSpec = MixtureSpec()
    """Mixture settings."""
    seed: int = 0
    """Seed for every sampling decision in the data stages."""

    @model_validator(mode="after")
    def _data_checks(self):
        for group, items in (("sources", self.sources), ("eval_suites", self.eval_suites)):
            names = [i.name for i in items]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{group}: names must be unique, repeated: {dupes}")
        shared = sorted({s.name for s in self.sources} & {s.name for s in self.eval_suites})
        if shared:
            raise ValueError(
                f"sources and eval_suites share the name(s) {shared}: each becomes a catalog "
                "snapshot under its name, so rename the source or the suite"
            )
        if self.mixture.weights:
            unknown = set(self.mixture.weights) - {s.name for s in self.sources}
            if unknown:
                raise ValueError(f"mixture.weights names unknown sources {sorted(unknown)}")
        if self.mixture.strategy == "weights":
            given, sources = set(self.mixture.weights), [s.name for s in self.sources]
            left_out = [s for s in sources if s not in given]
            if left_out:
                raise ValueError(
                    f"mixture.weights gives no weight to source(s) {left_out}: give each a "
                    "weight (0 leaves it out of the mixture on purpose)"
                )
        return self

    def canonical(self) -> dict:
        """Validated spec with defaults filled, as plain JSON-able data."""
        return self.model_dump(mode="json")

    def params(self) -> dict:
        """`canonical()` as stored where people read it (the parent run's MLflow parameters):
        URLs through `redact_url`."""
        data = self.canonical()
        for section in ("sources", "eval_suites"):
            for item in data[section]:
                for location in (item, item.get("dev") or {}):
                    if location.get("url"):
                        location["url"] = redact_url(location["url"])
        return data

    @property
    def spec_hash(self) -> str:
        """The spec's identity (tasks/identity.py lists every key): its canonical form."""
        return content_key(self.canonical())


class PipelineSpec(DataSpec):
    """A whole pipeline run: sources to promotion."""

    base_model: BaseModelSpec
    """The base model."""
    prompt_format: Literal["auto", "chat", "plain"] = "auto"
    """How prompts are put in front of the model, in every stage (training, held-out loss,
    multiple choice, generation, the served model): chat wraps each prompt in the
    tokenizer's chat template (user turn + generation prompt; instruct models), plain
    feeds it as the template rendered it, auto is chat when the tokenizer has a chat
    template. The base model is scored in the same format, and the format is recorded
    on every run and version (models/prompt_format.py)."""
    arms: list[ArmSpec] = Field(min_length=1)
    """Training arms."""
    training: TrainingSpec = TrainingSpec()
    """Training settings shared by all arms."""
    evaluation: EvaluationSpec = EvaluationSpec()
    """Evaluation settings."""
    registry: RegistrySpec = RegistrySpec()
    """Registry and promotion settings."""

    @model_validator(mode="after")
    def _cross_checks(self):
        names = [a.name for a in self.arms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"arms: names must be unique, repeated: {dupes}")
        if any(a.name == "base" for a in self.arms):
            raise ValueError(
                "arms: 'base' names the base model in every comparison, metric and table "
                "(base_*, <arm>_vs_base_*): give the arm another name"
            )
        metrics = {metric_names.MACRO}
        for suite in self.eval_suites:
            kinds = metric_names.suite_kinds(suite.kind, suite.template)
            metrics |= {metric_names.suite_metric(suite.name, k) for k in kinds}
            metrics.add(metric_names.category_metric(suite.category))
        if self.registry.primary_metric not in metrics:
            raise ValueError(
                f"registry.primary_metric {self.registry.primary_metric!r} is not a metric this "
                f"spec produces; choose one of {sorted(metrics)}"
            )
        probed = [a.name for a in self.arms if a.probe_grid(self.training)]
        if probed and self.mixture.validation_fraction == 0:
            raise ValueError(
                f"arms {probed} probe a learning-rate grid, which is decided on the mixture's "
                "validation split: set mixture.validation_fraction above 0"
            )
        tiny = self.base_model.tiny
        if tiny is not None and self.training.max_length > tiny.max_position:
            raise ValueError(
                f"training.max_length {self.training.max_length} exceeds base_model.tiny."
                f"max_position {tiny.max_position}: lower max_length or raise max_position"
            )
        return self

    @property
    def registered_model_name(self) -> str:
        return self.registry.model_name or f"mlora-{self.name}"

    @property
    def must_beat_majority(self) -> bool:
        """registry.must_beat_majority as decided: unset, on unless the base model is tiny."""
        chosen = self.registry.must_beat_majority
        return self.base_model.tiny is None if chosen is None else chosen

    @property
    def evaluation_device(self) -> str:
        """Where scoring runs, as asked for: evaluation.device, else training.device."""
        return self.evaluation.device or self.training.device

    @property
    def evaluation_device_field(self) -> str:
        """The spec field `evaluation_device` comes from (for errors)."""
        return "evaluation.device" if self.evaluation.device else "training.device"
