"""The base model's evaluation, kept in the workspace: scored once per set of inputs.

Scoring a real base model (1B+) on every suite takes minutes to hours, and a
scheduled pipeline would repeat it on every run with nothing changed. The base
scores are a function of

    the base model      spec.base_model and what is loaded (a hub id or path, and a local
                        folder's file names, sizes and times; for the tiny demo model its
                        folder, named by tiny config, mixture, seed)
    the device          cpu or cuda: other kernels, and dtype 'auto' differs
    the libraries       torch and transformers versions (kernels, generation)
    the suites          spec.evaluation, each suite's scoring fields, and the content
                        hash of each suite's (and dev split's) normalised Parquet
    the held-out rows   the mixture id, and the tokenisation (max_length, chat template)
    the scoring code    EVAL_CODE_VERSION

`base_eval_key` (tasks/identity.py) hashes exactly those, as data stage ids do;
any change gives a new key, so the base model is scored again. The metrics and
the prediction table live in workspace.stage_dir("base_eval", key)/evaluation.json,
written to a temp file and renamed into place, so a reader finds a whole file or none.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pandas as pd

from multilora_pipeline.data_specs.schema import DataLocation, PipelineSpec
from multilora_pipeline.models.content import file_sha256, write_text_atomic
from multilora_pipeline.tasks.data.outputs import stage_logger
from multilora_pipeline.tasks.evaluation.evaluate import EvalResult
from multilora_pipeline.tasks.identity import EVAL_CODE_VERSION
from multilora_pipeline.tasks.workspace import Workspace

STAGE, FILE = "base_eval", "evaluation.json"
# On an arm's run: the key of the evaluation its logged scores come from. A reused arm
# is scored again when the current key differs, so arms and base compare like with like.
EVAL_ID_TAG = "mlora.eval_id"

# Where a suite's rows come from: their content hash is keyed instead, so moving a
# file does not re-score and editing one does.
_LOCATION_FIELDS = set(DataLocation.model_fields) | {"dev"}

log = logging.getLogger("mlora.eval_cache")


def base_eval_inputs(
    spec: PipelineSpec,
    base: str,
    device: str,
    mixture_id: str,
    eval_paths: dict[str, str],
    eval_dev_paths: dict[str, str],
) -> dict:
    """Everything that decides the base model's scores, as JSON-able values."""
    tiny = spec.base_model.tiny is not None
    # Folders the pipeline made are named by what decides them: the tiny model's by its
    # config, the mixture and the seed (its tokenizer is trained on the mixture), a
    # converted GGUF file's by the file's sha256. The workspace around them does not matter.
    made_here = tiny or spec.base_model.gguf_file is not None
    return {
        "base_model": spec.base_model.model_dump(mode="json"),
        "model": Path(base).name if made_here else base,
        "model_files": None if made_here else _folder_fingerprint(base),
        "device": device,
        "libraries": {name: _version(name) for name in ("torch", "transformers")},
        "evaluation": spec.evaluation.scoring_settings(),
        "suites": [
            {
                "spec": suite.model_dump(mode="json", exclude=_LOCATION_FIELDS),
                "data": file_sha256(Path(eval_paths[suite.name])),
                "dev": file_sha256(Path(eval_dev_paths[suite.name]))
                if suite.name in eval_dev_paths
                else None,
            }
            for suite in spec.eval_suites
        ],
        "validation": mixture_id,
        "max_length": spec.training.max_length,
        "prompt_format": spec.prompt_format,
        "code": EVAL_CODE_VERSION,
    }


def _version(package: str) -> str:
    try:
        return version(package)
    except PackageNotFoundError:  # e.g. a source build without installed metadata
        return "unknown"


def _folder_fingerprint(model: str) -> list | None:
    """A local model folder's files by name, size and modification time: a folder retrained or
    replaced in place is scored again (hashing gigabytes of weights per run would cost more
    than it saves). None for a hub id, which base_model.revision pins."""
    folder = Path(model).expanduser()
    if not folder.is_dir():
        return None
    return [
        [str(f.relative_to(folder)), f.stat().st_size, f.stat().st_mtime_ns]
        for f in sorted(folder.rglob("*"))
        if f.is_file()
    ]


def base_eval_path(ws: Workspace, key: str) -> Path:
    return ws.stage_dir(STAGE, key) / FILE


def load_base_eval(ws: Workspace, key: str) -> EvalResult | None:
    """The cached evaluation under `key`, or None when there is none (or it is unreadable:
    it is derived data, so a damaged file is scored again rather than trusted)."""
    path = base_eval_path(ws, key)
    if not path.is_file():
        return None
    try:
        stored = json.loads(path.read_text())
        predictions = pd.DataFrame(
            stored["predictions"]["data"], columns=stored["predictions"]["columns"]
        )
        result = EvalResult(
            metrics={k: float(v) for k, v in stored["metrics"].items()}, predictions=predictions
        )
    except (OSError, ValueError, KeyError, TypeError) as err:
        log.warning(
            "%s: unreadable cached base evaluation (%s); scoring the base model again", path, err
        )
        return None
    stage_logger().info(
        "reusing base evaluation %s (scored %s): %s", key, stored.get("scored_at", "?"), path
    )
    return result


def save_base_eval(ws: Workspace, key: str, inputs: dict, evaluation: EvalResult) -> Path:
    """Write the evaluation under `key` atomically (temp file, then rename)."""
    path = base_eval_path(ws, key)
    stored = {
        "key": key,
        "inputs": inputs,  # what the key hashes, for a person wondering why it re-scored
        "scored_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "metrics": evaluation.metrics,
        "predictions": evaluation.predictions.to_dict(orient="split", index=False),
    }
    return write_text_atomic(path, json.dumps(stored))
