"""The train stage: one arm (multilora, lora or full) on one mixture, with HF Trainer.

Trainer brings what a hand-written loop would have to re-implement: gradient
accumulation, bf16 autocast, warmup + cosine schedule, gradient clipping,
checkpoints with optimizer/scheduler/RNG state and exact resume, and
data-parallel launch under torchrun/accelerate. We subclass it only to (a)
give the MultiLoRA scales their own learning rate and weight decay and (b)
checkpoint adapter weights instead of the whole frozen base.

This module needs torch, transformers and `models/` only (no Prefect, MLflow or
DuckDB), so the GPU benchmark can import it on a bare machine.
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import torch
from huggingface_hub import constants as hf_constants
from huggingface_hub import errors as hf_errors
from huggingface_hub.utils import validate_repo_id
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    get_cosine_schedule_with_warmup,
)

from multilora_pipeline.data_specs.errors import TrainingError
from multilora_pipeline.data_specs.schema import ArmSpec, TrainingSpec
from multilora_pipeline.models.content import write_text_atomic
from multilora_pipeline.models.multilora import (
    MultiLoRAConfig,
    adapter_parameter_groups,
    export_peft,
    inject_multilora,
    load_adapter_weights,
    save_adapter,
)
from multilora_pipeline.models.multilora.model import ADAPTER_WEIGHTS_NAME
from multilora_pipeline.models.prompt_format import PromptFormat, PromptFormatError
from multilora_pipeline.models.training_speed import compile_blocks, enable_activation_checkpointing
from multilora_pipeline.tasks.training.tokenise import pack_examples, pad_examples, tokenise_records

log = logging.getLogger("mlora.train")

DONE_FILE = "result.json"


@dataclass
class ArmResult:
    """What a finished arm leaves behind (also written as result.json in its folder)."""

    arm: str
    kind: str
    output_dir: str
    adapter_dir: str
    peft_dir: str | None
    steps: int
    train_loss: float
    eval_loss: float | None
    tokens_per_second: float
    peak_memory_mb: float
    trainable_parameters: int
    trainable_share: float
    history: list[dict] = field(default_factory=list)
    resumed_from_step: int = 0
    prompt_format: str = "plain"
    """The prompt format the arm was trained in (models/prompt_format.py): chat or plain."""


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


def resolve_device(requested: str) -> str:
    """'cuda' when asked for (or auto and available); fail clearly when demanded but absent."""
    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        raise TrainingError(
            "training.device is 'cuda' but no GPU is visible",
            where="spec training.device",
            fix="run on a GPU machine, or set training.device: auto (uses the CPU)",
        )
    return "cuda" if has_cuda and requested in ("auto", "cuda") else "cpu"


def resolve_dtype(requested: str, device: str) -> torch.dtype:
    if requested == "auto":
        return torch.bfloat16 if device == "cuda" else torch.float32
    return getattr(torch, requested)


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


def adapter_config_for(arm: ArmSpec) -> MultiLoRAConfig | None:
    """The MultiLoRA layer settings of an arm; None for full fine-tuning."""
    if arm.kind == "full":
        return None
    return MultiLoRAConfig(
        n_modules=arm.n_modules if arm.kind == "multilora" else 1,
        rank=arm.rank,
        alpha=arm.alpha,
        dropout=arm.dropout,
        target_modules=arm.target_modules,
        scale_shape=arm.scale_shape if arm.kind == "multilora" else "scalar",
        init="multilora" if arm.kind == "multilora" else "lora",
    )


def prepare_arm_model(model, arm: ArmSpec) -> tuple[int, float]:
    """Inject the arm's adapter (or unfreeze everything for `full`). Returns trainable count and share."""
    config = adapter_config_for(arm)
    total = sum(p.numel() for p in model.parameters())
    if config is None:
        for p in model.parameters():
            p.requires_grad_(True)
        return total, 1.0
    report = inject_multilora(model, config)
    log.info(report.summary())
    return report.trainable_params, report.trainable_share


class _Blocks(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict[str, list[int]]]):
        self.rows = rows

    def __len__(self):
        return len(self.rows)

    def __getitem__(self, i):
        return {k: torch.tensor(v) for k, v in self.rows[i].items()}


def read_records(path: str | Path):
    """A Parquet file or a folder of shards, in file-name order (the mixture's training order)."""
    path = Path(path)
    files = sorted(path.glob("*.parquet")) if path.is_dir() else [path]
    return pq.ParquetDataset(files).read() if files else None


def build_dataset(path, fmt: PromptFormat, training: TrainingSpec) -> tuple[_Blocks, dict]:
    table = read_records(path)
    if table is None or table.num_rows == 0:
        raise TrainingError(
            "no rows to train on",
            where=str(path),
            fix="check the mixture: every source may have been filtered out",
        )
    examples, stats = tokenise_records(
        table, fmt, max_length=training.max_length, loss_on_prompt=training.loss_on_prompt
    )
    pad_id = fmt.tokenizer.pad_token_id
    rows = (pack_examples if training.pack else pad_examples)(examples, training.max_length, pad_id)
    return _Blocks(rows), {**asdict(stats), "sequences": len(rows)}


class ArmTrainer(Trainer):
    """Trainer with MultiLoRA parameter groups and adapter-only checkpoints."""

    def __init__(self, *args, arm: ArmSpec, training: TrainingSpec, **kwargs):
        super().__init__(*args, **kwargs)
        self.arm, self.training = arm, training

    def create_optimizer(self, model=None):
        if self.optimizer is None:
            model = model or self.model
            lr = self.arm.learning_rate or self.training.learning_rate
            if self.arm.kind == "full":
                groups = [
                    {
                        "params": [p for p in model.parameters() if p.requires_grad],
                        "lr": lr,
                        "weight_decay": self.training.weight_decay,
                    }
                ]
            else:
                groups = adapter_parameter_groups(
                    model,
                    lr=lr,
                    weight_decay=self.training.weight_decay,
                    scale_lr=self.arm.scale_learning_rate or lr,
                    scale_weight_decay=self.arm.scale_weight_decay,
                )
            self.optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)
        return self.optimizer

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        if self.lr_scheduler is None:
            self.lr_scheduler = get_cosine_schedule_with_warmup(
                optimizer or self.optimizer, self.training.warmup_steps, num_training_steps
            )
        return self.lr_scheduler

    def _save(self, output_dir=None, state_dict=None):
        if self.arm.kind == "full":
            return super()._save(output_dir, state_dict)
        output_dir = Path(output_dir or self.args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        save_adapter(self.model, output_dir)

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        if self.arm.kind == "full":
            return super()._load_from_checkpoint(resume_from_checkpoint, model)
        from safetensors.torch import load_file

        weights = load_file(str(Path(resume_from_checkpoint) / ADAPTER_WEIGHTS_NAME))
        load_adapter_weights(model or self.model, weights, source=str(resume_from_checkpoint))


class ProgressLog(TrainerCallback):
    """One log line every `logging_steps`: step, loss, tokens/s and ETA (works without a TTY)."""

    def __init__(self, arm: str, tokens_per_step: int):
        self.arm, self.tokens_per_step = arm, tokens_per_step
        self.start, self.start_step = None, 0
        self.history: list[dict] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.start_step = time.perf_counter(), state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
        if not logs or "loss" not in logs:
            if logs and "eval_loss" in logs:
                self.history.append({"step": state.global_step, "eval_loss": logs["eval_loss"]})
            return
        elapsed = time.perf_counter() - self.start
        done = state.global_step - self.start_step
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (state.max_steps - state.global_step) / rate if rate else float("nan")
        tps = rate * self.tokens_per_step
        logs["tokens_per_second"] = tps
        logs["peak_memory_mb"] = peak_memory_mb()
        self.history.append(
            {
                "step": state.global_step,
                "loss": logs["loss"],
                "learning_rate": logs.get("learning_rate"),
                "grad_norm": logs.get("grad_norm"),
                "tokens_per_second": tps,
            }
        )
        log.info(
            "[%s] step %d/%d loss %.4f lr %.2e %.0f tok/s ETA %.0fs",
            self.arm,
            state.global_step,
            state.max_steps,
            logs["loss"],
            logs.get("learning_rate", 0),
            tps,
            eta,
        )


def last_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint; incomplete ones (killed mid-save) are removed.

    Trainer writes trainer_state.json last, so a checkpoint without it was cut off.
    """
    ckpts = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    complete = []
    for ckpt in ckpts:
        if (ckpt / "trainer_state.json").is_file():
            complete.append(ckpt)
        elif _rank() == 0:  # under torchrun every rank looks; one removes
            log.warning("removing incomplete checkpoint %s (interrupted while saving)", ckpt)
            shutil.rmtree(ckpt, ignore_errors=True)
    return complete[-1] if complete else None


def _logged_history(checkpoint: Path) -> list[dict]:
    """The loss / eval-loss points Trainer logged before `checkpoint` (from its trainer_state.json)."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    keep = ("loss", "learning_rate", "grad_norm", "eval_loss")
    return [
        {"step": entry["step"], **{k: entry[k] for k in keep if k in entry}}
        for entry in state.get("log_history", [])
        if "loss" in entry or "eval_loss" in entry
    ]


def load_result(output_dir: Path) -> ArmResult | None:
    """The finished result of an arm, if it completed before (the stage is then skipped)."""
    done = output_dir / DONE_FILE
    return ArmResult(**json.loads(done.read_text())) if done.is_file() else None


def train_arm(
    *,
    arm: ArmSpec,
    training: TrainingSpec,
    model_path: str,
    train_path: str | Path,
    validation_path: str | Path | None,
    output_dir: str | Path,
    revision: str | None = None,
    dtype: str = "auto",
    trust_remote_code: bool = False,
    attn_implementation: str | None = None,
    base_model_name: str | None = None,
    prompt_format: str = "auto",
    callbacks: list[TrainerCallback] | tuple = (),
) -> ArmResult:
    """Train one arm to completion, resuming from the last checkpoint in `output_dir` if any."""
    output_dir = Path(output_dir)
    done = load_result(output_dir)
    if done is not None:
        log.info("[%s] already trained in %s: reusing", arm.name, output_dir)
        return done
    device = resolve_device(training.device)
    torch.manual_seed(training.seed)  # adapter init is part of the seeded, reproducible state
    model, tokenizer = load_base(
        model_path,
        revision=revision,
        dtype=resolve_dtype(dtype, device),
        trust_remote_code=trust_remote_code,
        attn_implementation=attn_implementation,
    )
    # Without this transformers builds a KV cache in training and then ignores the packed
    # position ids: examples in one block would attend to each other (see tests/tasks/test_tokenise.py).
    model.config.use_cache = False
    fmt = resolve_prompt_format(tokenizer, prompt_format, model_path)
    trainable, share = prepare_arm_model(model, arm)
    if training.gradient_checkpointing:
        enable_activation_checkpointing(model)
    if training.compile:
        try:
            compile_blocks(model)
        except ValueError as exc:
            raise TrainingError(
                str(exc), where=model_path, fix="set training.compile: false"
            ) from exc
    train_set, data_stats = build_dataset(train_path, fmt, training)
    eval_set = None
    if validation_path is not None and read_records(validation_path).num_rows:
        eval_set, _ = build_dataset(validation_path, fmt, training)
    log.info(
        "[%s] %s trainable parameters (%.3f%% of the base), %d sequences, device %s, "
        "prompt format: %s",
        arm.name,
        f"{trainable:,}",
        100 * share,
        data_stats["sequences"],
        device,
        fmt.describe(),
    )

    args = TrainingArguments(
        output_dir=str(output_dir),
        max_steps=-1 if training.epochs else training.max_steps,
        num_train_epochs=training.epochs or 1.0,
        per_device_train_batch_size=training.batch_size,
        per_device_eval_batch_size=training.batch_size,
        gradient_accumulation_steps=training.grad_accum,
        learning_rate=arm.learning_rate or training.learning_rate,
        weight_decay=training.weight_decay,
        max_grad_norm=1.0,
        logging_steps=training.logging_steps,
        save_strategy="steps",
        save_steps=training.save_steps,
        eval_strategy="steps" if eval_set is not None else "no",
        eval_steps=training.eval_steps,
        seed=training.seed,
        data_seed=training.seed,
        full_determinism=device == "cpu",
        use_cpu=device == "cpu",
        # CPU data parallelism (how the distributed path is tested) needs gloo.
        ddp_backend="gloo" if device == "cpu" and _world_size() > 1 else None,
        bf16=device == "cuda" and dtype in ("auto", "bfloat16"),
        report_to="none",
        disable_tqdm=True,  # ProgressLog prints one line per logging step instead
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    tokens_per_step = (
        training.batch_size * training.grad_accum * training.max_length * _world_size()
    )
    progress = ProgressLog(arm.name, tokens_per_step)
    trainer = ArmTrainer(
        model=model,
        args=args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=_stack,
        callbacks=[progress, *callbacks],
        arm=arm,
        training=training,
    )
    trainer.remove_callback(PrinterCallback)  # ProgressLog already prints one line per log step
    resume = last_checkpoint(output_dir)
    if resume is not None:
        log.info("[%s] resuming from %s", arm.name, resume.name)
        progress.history = _logged_history(resume)  # the loss curve spans the interruption
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    started = time.perf_counter()
    with compile_errors(training.compile):
        output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    seconds = time.perf_counter() - started
    resumed_steps = int(resume.name.split("-")[1]) if resume else 0
    train_loss = float(output.training_loss)
    if output.global_step == resumed_steps:  # killed after the last checkpoint: nothing left to run
        logged = [h["loss"] for h in progress.history if "loss" in h]
        train_loss = logged[-1] if logged else float(output.training_loss)
    eval_loss = None
    if eval_set is not None:
        # A scheduled evaluation at the last step already measured the final weights: a
        # second pass over the validation blocks would cost as much again for the same number.
        # (trainer.state's log is kept on every rank, so all ranks take the same branch.)
        final = [
            h
            for h in trainer.state.log_history
            if "eval_loss" in h and h.get("step") == output.global_step
        ]
        eval_loss = final[-1]["eval_loss"] if final else trainer.evaluate()["eval_loss"]

    adapter_dir = output_dir / "adapter"
    peft_dir = None if arm.kind == "full" else output_dir / "peft"
    peak = peak_memory_mb()
    result = ArmResult(
        arm=arm.name,
        kind=arm.kind,
        output_dir=str(output_dir),
        adapter_dir=str(adapter_dir),
        peft_dir=str(peft_dir) if peft_dir else None,
        steps=output.global_step,
        train_loss=train_loss,
        eval_loss=eval_loss,
        tokens_per_second=tokens_per_step * (output.global_step - resumed_steps) / seconds
        if output.global_step > resumed_steps
        else float("nan"),
        peak_memory_mb=peak,
        trainable_parameters=trainable,
        trainable_share=share,
        history=progress.history,
        resumed_from_step=resumed_steps,
        prompt_format=fmt.kind,
    )
    if math.isnan(result.train_loss):
        raise TrainingError(
            "training loss is NaN",
            where=f"arm {arm.name}",
            fix="lower the learning rate or check the data",
        )
    if trainer.is_world_process_zero():  # under data parallelism only rank 0 writes
        _write_outputs(model, fmt, arm, result, base_model_name or model_path)
    return result


@contextmanager
def compile_errors(compiling: bool):
    """torch.compile compiles at the first step: its failure (no C++ compiler on a CPU, a
    Triton problem on a GPU) becomes a TrainingError that points at the spec switch."""
    try:
        yield
    except torch._dynamo.exc.BackendCompilerFailed as exc:  # InductorError is one too
        if not compiling:
            raise
        first_line = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else repr(exc)
        raise TrainingError(
            f"torch.compile failed at the first step: {first_line}",
            where="spec training.compile",
            fix="set training.compile: false (on a CPU, inductor needs a working C++ compiler; "
            "on a GPU, a Triton that matches torch)",
        ) from exc


def _write_outputs(model, fmt: PromptFormat, arm: ArmSpec, result: ArmResult, base_name: str):
    """The finished adapter (and PEFT export), each with its prompt format, then result.json
    last: its presence means done."""
    output_dir = Path(result.output_dir)
    if arm.kind == "full":
        model.save_pretrained(result.adapter_dir)
        fmt.tokenizer.save_pretrained(result.adapter_dir)
    else:
        save_adapter(model, result.adapter_dir)
        export_peft(model, result.peft_dir, base_name)
        fmt.write(result.peft_dir)
    fmt.write(result.adapter_dir)
    write_text_atomic(output_dir / DONE_FILE, json.dumps(asdict(result), indent=2))
    for ckpt in output_dir.glob("checkpoint-*"):
        shutil.rmtree(ckpt)  # only now: the finished adapter and result.json supersede them


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _stack(rows: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    return {k: torch.stack([r[k] for r in rows]) for k in rows[0]}


def peak_memory_mb() -> float:
    """Peak GPU memory allocated on a GPU, else the process's peak resident memory (MiB)."""
    if torch.cuda.is_available():
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
