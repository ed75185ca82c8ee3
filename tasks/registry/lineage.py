"""Where a run's or a version's numbers come from, as one value.

The parent run, every arm run and every registered version carry the same facts: the
spec and mixture they came from, the code that made them, the base model (and the GGUF
file it was converted from) and the prompt format. `Lineage` holds them once; runs get
them as `mlora.*` tags (`run_tags`), versions without the prefix (`version_tags`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from multilora_pipeline.data_specs.schema import PipelineSpec
from multilora_pipeline.tasks.registry.tracking import code_version
from multilora_pipeline.tasks.training.gguf import gguf_origin

PREFIX = "mlora."


@dataclass(frozen=True)
class Lineage:
    spec_hash: str
    mixture_id: str
    code_version: str
    base: dict[str, str] = field(default_factory=dict)
    """The base model's and prompt format's tags (`mlora.base_model`, `mlora.gguf.*`,
    `mlora.prompt_format`, ...), as the base-model stage and PromptFormat name them."""

    @property
    def prompt_format(self) -> str:
        return self.base[f"{PREFIX}prompt_format"]

    def run_tags(self, **extra: str) -> dict[str, str]:
        """The run tags, with `extra` facts of this run (arm=..., spec_file=...) beside them."""
        own = {"spec_hash": self.spec_hash, "mixture_id": self.mixture_id, **extra}
        return {
            **{f"{PREFIX}{k}": str(v) for k, v in own.items()},
            f"{PREFIX}code_version": self.code_version,
            **self.base,
        }

    def version_tags(self, **extra: str) -> dict[str, str]:
        """The same facts as version tags: the names without the `mlora.` prefix."""
        return {k.removeprefix(PREFIX): v for k, v in self.run_tags(**extra).items()}


def run_lineage(
    spec: PipelineSpec, mixture_id: str, base: str, fmt_tags: dict[str, str]
) -> Lineage:
    """What every run and version of this pipeline run records: spec, mixture and code, the
    spec's base model, the GGUF file it was converted from (if it was), the prompt format."""
    origin = gguf_origin(base) if spec.base_model.gguf_file else None
    return Lineage(
        spec_hash=spec.spec_hash,
        mixture_id=mixture_id,
        code_version=code_version(),
        base={
            "mlora.base_model": spec.base_model.label,
            **(origin.as_tags() if origin else {}),
            **fmt_tags,
        },
    )
