"""The register stage: each arm's adapter becomes a version of the spec's registered model.

A version is an MLflow pyfunc model (tasks/registry/pyfunc_model.py, logged as model code)
that a fresh process loads with `mlflow.pyfunc.load_model("models:/NAME@champion")`.
Its artifacts, all inside the version (under the model's `artifacts/`) so it
stands alone:

    adapter/               the native MultiLoRA/LoRA adapter (models.multilora.save_adapter)
    peft/                  the same update as a plain PEFT LoRA (vLLM, lm-eval, PEFT load it)
    mixture_manifest.json  the training mixture's manifest (sources, counts, hashes)
    evaluation/            metrics.json (every metric of the arm's run) + the prediction tables
    base_model/            the base model itself, only when it is local (the demo's tiny model)

and, beside them, `analysis/` (the spectra and effective-rank plots and tables
of the run, added by attach_run_artifacts once every arm is analysed).

The version's tags (spec hash, mixture id, base model, arm, code version,
headline metrics) and its description carry what a person compares in the
MLflow UI without opening a file. The tag `mlora.run_key` (training
hash, mixture id, arm: tasks/identity.py) makes registration idempotent: a rerun of an unchanged spec
finds the version it registered before instead of adding a duplicate. Tags
are set in the same call that creates the version, so a crash can never
leave an untagged (hence unfindable) version behind.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

# The served model's interface only (types, no store access: that is Tracker's).
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

from multilora_pipeline.data_specs.errors import RegistryError
from multilora_pipeline.models.content import write_text_atomic
from multilora_pipeline.tasks.evaluation.confidence import mean_and_spread
from multilora_pipeline.tasks.registry.tracking import RUN_KEY_TAG, Tracker

if TYPE_CHECKING:
    from mlflow.models.model import ModelInfo

log = logging.getLogger("mlora.registry")

CHALLENGER, CHAMPION = "challenger", "champion"
# The logged model's name in the arm run (the run page's "Logged models" list).
LOGGED_MODEL_NAME = "adapter"
MODELS_PACKAGE = Path(__file__).resolve().parents[2] / "models"
PYFUNC_MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")
SIGNATURE = ModelSignature(
    inputs=Schema([ColSpec("string", "prompt")]),
    outputs=Schema([ColSpec("string", "completion")]),
    # 0 = the budget the version was registered with (model_config["max_new_tokens"]).
    params=ParamSchema([ParamSpec("max_new_tokens", "long", 0)]),
)
INPUT_EXAMPLE = pd.DataFrame({"prompt": ["### Instruction:\nSay hello.\n\n### Response:\n"]})
# What loading a version needs. Listed, not inferred: inference would load the whole
# model once more at registration time just to watch which modules it imports.
SERVING_PACKAGES = ("mlflow", "torch", "transformers", "safetensors", "tokenizers", "pandas")
MODEL_DESCRIPTION = (
    "Adapters trained by the mlora pipeline: one version per arm of each spec/mixture. "
    "Alias `champion` is what serving loads; `challenger` is the best arm of the latest run. "
    "Load one with mlflow.pyfunc.load_model('models:/{name}@champion')."
)


@dataclass(frozen=True)
class RegisteredVersion:
    """A version of a registered model; `reused` when an earlier run registered it."""

    name: str
    version: str
    run_id: str
    reused: bool


def find_version(tracker: Tracker, name: str, run_key: str):
    """The version registered earlier for this run key, if any."""
    found = tracker.find_versions(name, {RUN_KEY_TAG: run_key})
    return min(found, key=lambda v: int(v.version)) if found else None


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
    """Log the pyfunc model in the arm's run and register it as a version of `name`.

    `extra_artifacts` maps an artifact name to a local file or folder (the
    pipeline passes `mixture_manifest`); the arm run's metrics and `eval/`
    tables are bundled as `evaluation/`. Returns the existing version, untouched,
    when one already holds `run_key`.
    """
    existing = find_version(tracker, name, run_key)
    if existing is not None:
        log.info(
            "version %s of %s already holds %s: not registering again",
            existing.version,
            name,
            run_key,
        )
        return RegisteredVersion(name, str(existing.version), existing.run_id, True)
    if (
        not (Path(adapter_dir) / "adapter_config.json").is_file()
        and model_config.get("kind") != "full"
    ):
        raise RegistryError(
            "no adapter_config.json: not an adapter folder",
            where=str(adapter_dir),
            fix="register the folder models.multilora.save_adapter wrote (the arm's adapter/)",
        )
    with tempfile.TemporaryDirectory(prefix="mlora-register-") as tmp:
        sources = {"adapter": adapter_dir, **extra_artifacts}
        sources["evaluation"] = _evaluation_bundle(tracker, run_id, Path(tmp) / "evaluation")
        if peft_dir:
            sources["peft"] = peft_dir
        if base_is_local:
            sources["base_model"] = base_model
        artifacts = _stage_by_name(sources, Path(tmp) / "staged")
        if base_is_local and peft_dir:
            _point_peft_at_bundled_base(Path(artifacts["peft"]))
        info = _log_serving_model(
            tracker,
            run_id,
            artifacts,
            {**model_config, "base_model": None if base_is_local else base_model},
        )
    _ensure_registered_model(tracker, name)
    all_tags = {**{k: str(v) for k, v in tags.items()}, RUN_KEY_TAG: run_key}
    created = tracker.create_version(
        name,
        source=info.model_uri,
        run_id=run_id,
        tags=all_tags,
        description=describe_version(all_tags),
        model_id=info.model_id,
    )
    version = str(created.version)
    tracker.set_tags(run_id, {"mlora.registered_model": name, "mlora.model_version": version})
    log.info("registered %s version %s (%s)", name, version, run_key)
    return RegisteredVersion(name, version, run_id, False)


def _log_serving_model(
    tracker: Tracker, run_id: str, artifacts: dict[str, str], model_config: dict
) -> ModelInfo:
    """Log the served model (tasks/registry/pyfunc_model.py, with `models/` as its code) into the
    arm's run."""
    with tempfile.TemporaryDirectory() as staging:
        return tracker.log_pyfunc(
            run_id,
            LOGGED_MODEL_NAME,
            python_model=str(PYFUNC_MODEL_CODE),
            artifacts=artifacts,
            model_config=model_config,
            signature=SIGNATURE,
            input_example=INPUT_EXAMPLE,
            code_paths=[str(serving_code(Path(staging)))],
            pip_requirements=_pinned(SERVING_PACKAGES),
        )


def serving_code(staging: Path) -> Path:
    """`models/` copied as `multilora_pipeline/models` under `staging`: the version's code.

    MLflow puts a code path's folder on sys.path at load time, so shipping the folder itself
    would give the serving environment a top-level module named `models`; inside the
    project's own namespace it imports as the training code does
    (`multilora_pipeline.models.prompt_format`)."""
    root = staging / "multilora_pipeline"
    shutil.copytree(MODELS_PACKAGE, root / "models", ignore=shutil.ignore_patterns("__pycache__"))
    return root


SEED_RUNS_TAG = "mlora.seed_runs"
"""On a version whose arm has several seeds: the run ids of all of them (its own among them)."""


def version_runs(version) -> list[str]:
    """The runs a version's scores come from: its arm's seed runs, or its own run."""
    runs = (version.tags or {}).get(SEED_RUNS_TAG, "")
    return [r for r in runs.split(",") if r] or [version.run_id]


def version_metrics(tracker: Tracker, version) -> dict[str, float]:
    """A version's metrics: the mean over its arm's seed runs (one run: that run's)."""
    return mean_and_spread([tracker.metrics(run_id) for run_id in version_runs(version)])[0]


def update_version_scores(tracker: Tracker, name: str, version: str, scores: dict[str, str]):
    """New headline score tags (and the description built from them) on an existing version:
    its arm was scored again under new evaluation settings. The arm run holds the full metrics."""
    tracker.set_version_tags(name, version, scores)
    tracker.describe_version(
        name, version, describe_version(get_version(tracker, name, version).tags)
    )
    log.info("version %s of %s: scores updated after re-evaluation", version, name)


def describe_version(tags: dict[str, str]) -> str:
    """One markdown line for the version page: what was trained on what, and how it scored."""
    what = f"**{tags.get('arm', '?')}** ({tags.get('adapter_kind', '?')})"
    lineage = (
        f"on `{tags.get('base_model', '?')}`, spec `{tags.get('spec_hash', '?')}`, "
        f"mixture `{tags.get('mixture_id', '?')}`, code `{tags.get('code_version', '?')}`"
    )
    lineage_keys = {"arm", "adapter_kind", "base_model", "spec_hash", "mixture_id", "code_version"}
    scores = ", ".join(
        f"{k} {v}" for k, v in sorted(tags.items()) if k not in lineage_keys and "." not in k
    )
    seeds = f" Adapter of {tags['mlora.seed_choice']}." if "mlora.seed_choice" in tags else ""
    return f"{what} {lineage}" + (f". {scores}" if scores else "") + seeds


def attach_run_artifacts(
    tracker: Tracker,
    name: str,
    version: str,
    run_id: str,
    paths: tuple[str, ...] = ("plots", "analysis"),
    dest: str = "analysis",
) -> list[str]:
    """Copy a run's artifact folders (e.g. the parent run's analysis plots) into a version.

    The analysis compares all arms, so it exists only after every arm is
    registered; this adds it to the version's model under `dest/` (the run's
    `analysis/` files at its top, `plots/` as `dest/plots/`). A version that
    already holds `dest/` is left alone (reruns). Returns what was copied.
    """
    model_id = _model_id(tracker, name, version)
    if tracker.logged_model_has(model_id, dest):
        return []
    copied = []
    with tempfile.TemporaryDirectory(prefix="mlora-attach-") as tmp:
        bundle = Path(tmp) / dest
        bundle.mkdir()
        for path in paths:
            if tracker.has_artifacts(run_id, path):
                tracker.download_artifacts(run_id, path, bundle)
                copied.append(path)
        inner = bundle / dest
        if inner.is_dir():  # the run's own folder named like `dest`: its files go on top
            for item in inner.iterdir():
                os.replace(item, bundle / item.name)
            inner.rmdir()
        if copied:
            tracker.log_model_artifacts(model_id, bundle, dest)
    return copied


def set_alias(tracker: Tracker, name: str, alias: str, version: str) -> None:
    """Point `alias` of registered model `name` at `version`."""
    tracker.set_alias(name, alias, version)


def version_by_alias(tracker: Tracker, name: str, alias: str):
    """The version an alias points at, or None when the alias (or the model) does not exist."""
    return tracker.version_by_alias(name, alias)


def get_version(tracker: Tracker, name: str, version: str):
    """A model version; a RegistryError that says how to list versions when it does not exist."""
    found = tracker.version(name, version)
    if found is None:
        raise RegistryError(
            f"registered model {name!r} has no version {version}",
            fix="list versions in the MLflow UI (mlora ui) or with MlflowClient.search_model_versions",
        )
    return found


def _ensure_registered_model(tracker: Tracker, name: str) -> None:
    tracker.ensure_registered_model(
        name, tags={"mlora.pipeline": "true"}, description=MODEL_DESCRIPTION.format(name=name)
    )


def _model_id(tracker: Tracker, name: str, version: str) -> str:
    found = get_version(tracker, name, version)
    model_id = getattr(found, "model_id", None)
    if not model_id and str(found.source).startswith("models:/m-"):
        model_id = str(found.source).removeprefix("models:/")
    if not model_id:
        raise RegistryError(
            f"{name} version {version} has no logged model (source {found.source!r})",
            fix="register it with register_adapter, which logs the model in MLflow 3's model store",
        )
    return model_id


def _evaluation_bundle(tracker: Tracker, run_id: str, dest: Path) -> Path:
    """The run's metrics as a table plus its `eval/` prediction tables, in one folder."""
    dest.mkdir(parents=True)
    metrics = sorted(tracker.metrics(run_id).items())
    table = {"columns": ["metric", "value"], "data": [[k, v] for k, v in metrics]}
    (dest / "metrics.json").write_text(json.dumps(table, indent=1))
    if tracker.has_artifacts(run_id, "eval"):
        tracker.download_artifacts(run_id, "eval", dest)
        for file in (dest / "eval").iterdir():  # flatten: evaluation/predictions.json
            os.replace(file, dest / file.name)
        (dest / "eval").rmdir()
    return dest


BUNDLED_BASE = "artifacts/base_model"
"""The version's own base model, relative to the version's root: from a downloaded
version (`mlflow artifacts download -u models:/NAME/V -d D`), `AutoPeftModelForCausalLM`
loads `artifacts/peft` run in D."""


def _point_peft_at_bundled_base(peft: Path) -> None:
    """The version's PEFT export names the base the version bundles, not the workspace
    folder it was trained from (gone on any other machine)."""
    path = peft / "adapter_config.json"
    config = json.loads(path.read_text())
    config["base_model_name_or_path"] = BUNDLED_BASE
    # A new file, not a write in place: the staged copy is a hard link to the arm's export.
    write_text_atomic(path, json.dumps(config, indent=2, sort_keys=True) + "\n")


def _stage_by_name(sources: dict[str, str | Path], staging: Path) -> dict[str, str]:
    """Copies named after the artifact keys, so the version's folders are named by role.

    MLflow names each artifact after its source's basename (`tiny-0631…` for the
    base model, say). Files are hard-linked where the filesystem allows (no
    extra bytes); MLflow refuses symlinks that point outside the folder.
    """
    staging.mkdir(parents=True)
    staged = {}
    for key, source in sources.items():
        source = Path(source)
        if not source.exists():
            raise RegistryError(
                f"artifact {key!r} does not exist", where=str(source), fix="check the arm's outputs"
            )
        target = staging / (key + (source.suffix if source.is_file() else ""))
        if source.is_dir():
            shutil.copytree(source, target, copy_function=_link_or_copy)
        else:
            _link_or_copy(source, target)
        staged[key] = str(target)
    return staged


def _link_or_copy(source, target) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem
        shutil.copy2(source, target)


def _pinned(packages: tuple[str, ...]) -> list[str]:
    pins = []
    for package in packages:
        try:
            # Local builds carry a suffix (torch 2.13.0+cpu) that pip cannot resolve elsewhere.
            pins.append(f"{package}=={package_version(package).split('+')[0]}")
        except PackageNotFoundError:
            pins.append(package)
    return pins
