"""Loading a base model and its tokenizer, and the one error a user sees when that fails.

A hub id and a local folder take the same from_pretrained path. Every failure (no such
folder, a folder without config.json, not on the hub, gated, a missing revision, offline
and not cached) becomes one TrainingError naming the spec field it came from and the fix;
transformers raises them all as OSError and chains the huggingface_hub error that tells
them apart.
"""

from __future__ import annotations

import logging
from contextlib import contextmanager
from pathlib import Path

import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import validate_repo_id
from transformers import AutoModelForCausalLM, AutoTokenizer

from multilora_pipeline.data_specs.errors import TrainingError
from multilora_pipeline.models.prompt_format import PromptFormat, PromptFormatError

log = logging.getLogger("mlora.train")


def resolve_prompt_format(tokenizer, requested: str, model_path: str) -> PromptFormat:
    """The run's PromptFormat for `tokenizer`; `chat` without a chat template is a TrainingError."""
    try:
        return PromptFormat.resolve(tokenizer, requested)
    except PromptFormatError as exc:
        raise TrainingError(
            str(exc),
            where=f"spec prompt_format (base model {model_path!r})",
            fix="use prompt_format: auto or plain, or a base model whose tokenizer has a chat "
            "template (instruct models do)",
        ) from None


def resolve_device(requested: str, field: str = "training.device") -> str:
    """'cuda' when asked for (or auto and available); fail clearly when demanded but absent.
    `field` is the spec field that asked (named in the error)."""
    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise TrainingError(
            f"{field} is 'cuda' but no GPU is visible",
            where=f"spec {field}",
            fix=f"run on a GPU machine, or set {field}: auto (uses the CPU)",
        )
    return "cuda" if has_cuda and requested in ("auto", "cuda") else "cpu"


def resolve_dtype(requested: str, device: str) -> torch.dtype:
    if requested == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, requested)


def cpu_computes_bf16() -> bool:
    """Whether oneDNN runs bf16 matmuls on this CPU's own instructions (AVX512, AVX512-BF16,
    AMX). Without them torch falls back to a scalar bf16 GEMM: on an AVX2-only EPYC a
    320x576 by 576x1536 product took 423 ms in bf16 against 4.9 ms in fp32, 87x
    (benchmarks/bf16_matmul.py; 31x with the other core busy)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def resolve_mixed_precision(requested: str, device: str, dtype: str) -> bool:
    """Whether an arm trains under bf16 autocast (training.mixed_precision).

    auto: on a GPU when the weights are bf16 (base_model.dtype auto or bfloat16), never on a
    CPU. bf16: on a GPU, and on a CPU that computes bf16 natively (cpu_computes_bf16); a CPU
    without would emulate it 30-90x slower than fp32, so there the arm trains in fp32 and
    says so: a spec that asks for bf16 for speed runs on any machine."""
    if requested == "auto":
        return device == "cuda" and dtype in ("auto", "bfloat16")
    if requested == "bf16" and device != "cuda" and not cpu_computes_bf16():
        log.warning(
            "training.mixed_precision is bf16, but this CPU has no native bf16 matmul (it "
            "would run 30-90x slower than fp32): training in fp32"
        )
        return False
    return requested == "bf16"


BASE_MODEL_FIELD = "spec base_model.name_or_path"
MISSING_FOLDER_FIX = (
    "the folder must exist and hold config.json (a relative path starts from the directory "
    "mlora runs in), or give a hub id such as Qwen/Qwen2.5-0.5B"
)
INCOMPLETE_FOLDER_FIX = (
    "the folder must hold config.json, the weights and the tokenizer files, "
    "as save_pretrained writes them"
)


def load_base(
    model_path: str,
    *,
    revision: str | None,
    dtype: torch.dtype,
    trust_remote_code: bool,
    attn_implementation: str | None = None,
    where: str = BASE_MODEL_FIELD,
):
    """Load model + tokenizer through from_pretrained: a hub id and a local folder take the same path.

    `where` names what `model_path` came from; a model that cannot be found or
    fetched raises a TrainingError naming it (see `model_load_errors`).
    """
    tokenizer = load_tokenizer(
        model_path, revision=revision, trust_remote_code=trust_remote_code, where=where
    )
    kwargs = {"revision": revision, "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    with model_load_errors(model_path, revision, where):
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=dtype, **kwargs)
    return model, tokenizer


def load_tokenizer(
    model_path: str, *, revision: str | None, trust_remote_code: bool, where: str = BASE_MODEL_FIELD
):
    """The model's tokenizer, with a pad token; failures to find it as in `model_load_errors`."""
    require_config(model_path, where)
    # In a local folder a ValueError means missing or unusable tokenizer files.
    catch = (OSError, ValueError) if Path(model_path).is_dir() else (OSError,)
    with model_load_errors(model_path, revision, where, catch=catch):
        tokenizer = AutoTokenizer.from_pretrained(
            model_path, revision=revision, trust_remote_code=trust_remote_code
        )
    if tokenizer.pad_token_id is None:
        # Padding only fills packed-block tails and is never a target, so eos is safe to reuse.
        tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
    if tokenizer.pad_token_id is None:
        raise TrainingError(
            "the tokenizer has no pad, eos or unk token to pad with",
            where=f"{where} {model_path!r}",
            fix="use a model whose tokenizer defines eos_token (most do)",
        )
    return tokenizer


def require_config(model_path: str, where: str = BASE_MODEL_FIELD) -> None:
    """A local folder without config.json fails here: transformers would say 'Unrecognized model'."""
    folder = Path(model_path).expanduser()
    if folder.is_dir() and not (folder / "config.json").is_file():
        raise TrainingError(
            f"folder {folder.resolve()} has no config.json",
            where=f"{where} {model_path!r}",
            fix=INCOMPLETE_FOLDER_FIX,
        )


@contextmanager
def model_load_errors(
    model_path: str, revision: str | None, where: str = BASE_MODEL_FIELD, *, catch=(OSError,)
):
    """Turn from_pretrained's not-found / offline / gated / bad-revision failures into one
    TrainingError that names `where` and says what to do.

    transformers 5 raises them all as OSError (a path that is not a folder and not a valid
    repo id too) and chains the huggingface_hub error that tells them apart.
    """
    try:
        yield
    except catch as exc:
        raise model_load_error(exc, model_path, revision, where) from exc


def model_load_error(
    exc: BaseException, model_path: str, revision: str | None, where: str = BASE_MODEL_FIELD
) -> TrainingError:
    """The TrainingError for a failed from_pretrained of `model_path` (see model_load_errors)."""
    located = f"{where} {model_path!r}"
    folder = Path(model_path).expanduser()
    if folder.is_dir():
        return TrainingError(
            f"cannot load from folder {folder.resolve()}: {_one_line(exc)}",
            where=located,
            fix=INCOMPLETE_FOLDER_FIX,
        )
    if _looks_like_a_path(model_path):
        return TrainingError(f"no folder {folder.resolve()}", where=located, fix=MISSING_FOLDER_FIX)
    return _hub_error(_hub_cause(exc), exc, model_path, revision, located)


def _hub_error(
    cause: BaseException | None,
    exc: BaseException,
    repo_id: str,
    revision: str | None,
    located: str,
) -> TrainingError:
    """The TrainingError for a hub id, by the huggingface_hub error behind `exc`."""
    page = f"https://huggingface.co/{repo_id}"
    at_revision = f" at revision {revision!r}" if revision else ""
    if isinstance(cause, hf_errors.GatedRepoError):  # before RepositoryNotFoundError, its base
        return TrainingError(
            "the hub repo is gated (or private) and no token with access to it is set",
            where=located,
            fix=f"accept its terms on {page}, then set HF_TOKEN to a token of that account "
            "(or run `hf auth login`)",
        )
    if isinstance(cause, hf_errors.RevisionNotFoundError):
        return TrainingError(
            f"the hub repo has no revision {revision!r}",
            where=f"{located}, revision {revision!r}",
            fix=f"check base_model.revision: a branch, tag or commit of {page}",
        )
    if isinstance(cause, hf_errors.RepositoryNotFoundError):
        return TrainingError(
            "not a local folder, and no such model on the hub (or it is private)",
            where=located,
            fix="check the id (owner/name); for a private repo set HF_TOKEN; "
            "a local folder must exist and hold config.json",
        )
    if isinstance(cause, hf_errors.LocalEntryNotFoundError):
        offline = hf_constants.is_offline_mode()
        reason = "HF_HUB_OFFLINE is set" if offline else "the hub cannot be reached"
        # The workspace points HF_HOME at its own cache, so a plain `hf download` would miss it.
        cache = hf_constants.HF_HUB_CACHE
        download = f"hf download {repo_id}" + (f" --revision {revision}" if revision else "")
        return TrainingError(
            f"not a local folder, and not in the Hugging Face cache{at_revision} ({cache}) "
            f"while {reason}",
            where=located,
            fix=f"download it once online ({download} --cache-dir {cache}) "
            "or point base_model.name_or_path at a local folder that holds config.json",
        )
    return TrainingError(
        f"cannot load the model{at_revision}: {_one_line(exc)}",
        where=located,
        fix="base_model.name_or_path must be a hub id (owner/name) "
        "or a local folder that holds config.json; for a network error, retry",
    )


def _hub_cause(exc: BaseException) -> BaseException | None:
    """The first huggingface_hub error in the chain behind `exc` (transformers wraps it)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if type(exc).__module__.startswith("huggingface_hub"):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


def _one_line(exc: BaseException, limit: int = 300) -> str:
    """transformers' message on one line (it wraps), cut to `limit` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _looks_like_a_path(name: str) -> bool:
    """True for a name that can only be a local path (a hub id is owner/name)."""
    if name.startswith(("/", "./", "../", "~")):
        return True
    try:
        validate_repo_id(name)
    except hf_errors.HFValidationError:
        return True
    return False
