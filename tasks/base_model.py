"""The base-model stage: a hub id / local path as given, or the tiny demo model built here.

The tiny model's tokenizer is trained on the mixture's own text, so the
model folder is keyed by the tiny config and the mixture id: a changed
mixture gets a new tokenizer and model, an unchanged one reuses the folder.
Either way the train stage loads the result with `from_pretrained`, the same
path a hub id takes.

A hub id or local path is checked before any work (`check_base_model`): a
model that cannot be found, or not fetched while offline, fails once, before
the data stages, with one error naming the spec field and the fix.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from transformers import AutoConfig

from data_specs.schema import PipelineSpec
from models.tiny import build_tiny_model
from tasks.train import (
    BASE_MODEL_FIELD,
    load_tokenizer,
    model_load_errors,
    read_records,
    require_config,
)
from tasks.workspace import Workspace

log = logging.getLogger("mlora.base_model")


def check_base_model(spec: PipelineSpec, spec_file: str | Path | None = None) -> None:
    """Raise a TrainingError naming base_model.name_or_path (and `spec_file`) unless the
    model's config and tokenizer load.

    Takes seconds: no weights are read, and online only small files the train stage needs
    anyway are fetched. The tiny model is built later from the mixture: nothing to check.
    """
    base = spec.base_model
    if base.tiny is not None:
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
    key = json.dumps([spec.base_model.tiny.model_dump(mode="json"), mixture_id, spec.seed])
    return ws.models_dir / f"tiny-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def base_model_path(spec: PipelineSpec, train_dir: str, mixture_id: str, ws: Workspace) -> str:
    """Path or hub id the train stage loads with from_pretrained."""
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


@task(name="base-model", cache_policy=NO_CACHE)
def prepare_base_model(spec: PipelineSpec, data, ws: Workspace) -> str:
    return base_model_path(spec, data.train_dir, data.mixture_id, ws)
