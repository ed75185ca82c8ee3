"""The register stage: each arm's adapter becomes a version of the spec's registered model.

A version is an MLflow pyfunc model (tasks/serving.py) with the native
adapter, its PEFT export and the base model (when it is local and small) as
artifacts, plus lineage tags. The tag `mlora.run_key` (spec hash, mixture id,
arm) makes registration idempotent: a rerun of an unchanged spec finds the
version it registered before instead of adding a duplicate.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import mlflow
import pandas as pd
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from data_specs.errors import RegistryError
from tasks.serving import AdapterGenerator
from tasks.tracking import RUN_KEY_TAG, Tracker

log = logging.getLogger("mlora.registry")

CHALLENGER, CHAMPION = "challenger", "champion"
SIGNATURE = ModelSignature(inputs=Schema([ColSpec("string", "prompt")]),
                           outputs=Schema([ColSpec("string", "completion")]))


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: str
    run_id: str
    reused: bool


def find_version(tracker: Tracker, name: str, run_key: str):
    """The version registered earlier for this run key, if any."""
    try:
        found = tracker.client.search_model_versions(
            f"name = '{name}' and tags.`{RUN_KEY_TAG}` = '{run_key}'"
        )
    except mlflow.exceptions.MlflowException:
        return None
    return found[0] if found else None


def register_adapter(
    tracker: Tracker,
    *,
    name: str,
    run_id: str,
    run_key: str,
    adapter_dir: str,
    peft_dir: str | None,
    base_model: str,
    base_is_local: bool,
    model_config: dict,
    extra_artifacts: dict[str, str],
    tags: dict[str, str],
) -> RegisteredVersion:
    """Log the pyfunc model in the arm's run and register it as a version of `name`."""
    existing = find_version(tracker, name, run_key)
    if existing is not None:
        log.info("version %s of %s already holds %s: not registering again",
                 existing.version, name, run_key)
        return RegisteredVersion(name, str(existing.version), existing.run_id, True)
    artifacts = {"adapter": adapter_dir, **extra_artifacts}
    if peft_dir:
        artifacts["peft_adapter"] = peft_dir
    if base_is_local:
        artifacts["base_model"] = base_model
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="adapter",
            python_model=AdapterGenerator(),
            artifacts=artifacts,
            model_config={**model_config, "base_model": None if base_is_local else base_model},
            signature=SIGNATURE,
            input_example=pd.DataFrame({"prompt": ["### Instruction:\nSay hello.\n\n### Response:\n"]}),
            code_paths=[str(Path(__file__).resolve().parents[1] / pkg) for pkg in ("models", "tasks")],
            registered_model_name=name,
        )
    version = str(info.registered_model_version)
    for key, value in {**tags, RUN_KEY_TAG: run_key}.items():
        tracker.client.set_model_version_tag(name, version, key, str(value))
    return RegisteredVersion(name, version, run_id, False)


def set_alias(tracker: Tracker, name: str, alias: str, version: str) -> None:
    tracker.client.set_registered_model_alias(name, alias, version)


def version_by_alias(tracker: Tracker, name: str, alias: str):
    """The version an alias points at, or None when the alias (or the model) does not exist."""
    try:
        return tracker.client.get_model_version_by_alias(name, alias)
    except mlflow.exceptions.MlflowException:
        return None


def get_version(tracker: Tracker, name: str, version: str):
    try:
        return tracker.client.get_model_version(name, str(version))
    except mlflow.exceptions.MlflowException:
        raise RegistryError(
            f"registered model {name!r} has no version {version}",
            fix="list versions in the MLflow UI (mlora ui) or with the MLflow client",
        ) from None
