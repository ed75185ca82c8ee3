"""The base-model stage: a hub id / local path as given, a GGUF file converted once
(tasks/training/gguf.py), or the tiny demo model built here.

The tiny model's tokenizer is trained on the mixture's own text, so the
model folder is keyed by the tiny config and the mixture id: a changed
mixture gets a new tokenizer and model, an unchanged one reuses the folder.
Either way the train stage loads the result with `from_pretrained`, the same
path a hub id takes.

A hub id or local path is checked before any work (`check_base_model`): a
model that cannot be found, or not fetched while offline, fails once, before
the data stages, with one error naming the spec field and the fix. A GGUF base
model is converted (or its earlier conversion found) at that point: the conversion is
its check.

Every stage after this one loads the path `base_model_path` returns, at the revision
`load_revision` gives, and prompts it in the run's prompt format (`prompt_format`).
"""

from __future__ import annotations

import logging
from pathlib import Path

from transformers import AutoConfig

from multilora_pipeline.data_specs.schema import PipelineSpec
from multilora_pipeline.models.prompt_format import PromptFormat
from multilora_pipeline.models.tiny import build_tiny_model
from multilora_pipeline.tasks.identity import tiny_model_key
from multilora_pipeline.tasks.training.dataset import read_records
from multilora_pipeline.tasks.training.gguf import converted_folder, locate_gguf
from multilora_pipeline.tasks.training.loading import (
    BASE_MODEL_FIELD,
    load_tokenizer,
    model_load_errors,
    require_config,
    resolve_prompt_format,
)
from multilora_pipeline.tasks.workspace import Workspace

log = logging.getLogger("mlora.base_model")


def check_base_model(
    spec: PipelineSpec, spec_file: str | Path | None = None, *, ws: Workspace | None = None
) -> None:
    """Raise a TrainingError naming base_model.name_or_path (and `spec_file`) unless the
    model's config and tokenizer load.

    Takes seconds: no weights are read, and online only small files the train stage needs
    anyway are fetched. The tiny model is built later from the mixture: nothing to check.
    A GGUF file is converted into `ws` now (once per file; without `ws` only found).
    """
    base = spec.base_model
    if base.tiny is not None:
        return
    if base.gguf_file is not None:
        if ws is None:
            locate_gguf(base)
        else:
            converted_folder(base, ws)
        return
    where = f"spec {spec_file}, base_model.name_or_path" if spec_file else BASE_MODEL_FIELD
    require_config(base.name_or_path, where)
    with model_load_errors(base.name_or_path, base.revision, where):
        AutoConfig.from_pretrained(
            base.name_or_path, revision=base.revision, trust_remote_code=base.trust_remote_code
        )
    load_tokenizer(
        base.name_or_path,
        revision=base.revision,
        trust_remote_code=base.trust_remote_code,
        where=where,
    )


def tiny_model_dir(spec: PipelineSpec, mixture_id: str, ws: Workspace):
    key = tiny_model_key(spec.base_model.tiny, mixture_id, spec.seed)
    return ws.models_dir / f"tiny-{key}"


def load_revision(spec: PipelineSpec) -> str | None:
    """The revision to load `base_model_path` at: the spec's for a hub model, None for a
    folder the pipeline made (a converted GGUF file, whose repo the revision pins, or tiny)."""
    base = spec.base_model
    return None if base.gguf_file or base.tiny else base.revision


def prompt_format(spec: PipelineSpec, base: str) -> PromptFormat:
    """The run's prompt format: spec.prompt_format resolved against the base tokenizer."""
    tokenizer = load_tokenizer(
        base, revision=load_revision(spec), trust_remote_code=spec.base_model.trust_remote_code
    )
    return resolve_prompt_format(tokenizer, spec.prompt_format, base)


def base_model_path(spec: PipelineSpec, train_dir: str, mixture_id: str, ws: Workspace) -> str:
    """Path or hub id the train stage loads with from_pretrained."""
    if spec.base_model.gguf_file is not None:
        return str(converted_folder(spec.base_model, ws))
    if spec.base_model.tiny is None:
        return spec.base_model.name_or_path
    out = tiny_model_dir(spec, mixture_id, ws)
    if (out / "config.json").is_file():
        log.info("reusing tiny base model %s", out)
        return str(out)
    table = read_records(train_dir)
    texts = [
        p + r
        for p, r in zip(
            table.column("prompt").to_pylist(), table.column("response").to_pylist(), strict=True
        )
    ]
    tiny = spec.base_model.tiny
    build_tiny_model(
        out,
        texts,
        vocab_size=tiny.vocab_size,
        hidden_size=tiny.hidden_size,
        intermediate_size=tiny.intermediate_size,
        num_layers=tiny.num_layers,
        num_heads=tiny.num_heads,
        max_position=tiny.max_position,
        seed=spec.seed,
    )
    log.info("built tiny base model in %s", out)
    return str(out)


def prepare_base_model(spec: PipelineSpec, data, ws: Workspace) -> str:
    return base_model_path(spec, data.train_dir, data.mixture_id, ws)
