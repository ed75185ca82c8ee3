"""The train stage: one arm (multilora, lora or full) on one mixture, with HF Trainer.

Trainer brings what a hand-written loop would have to re-implement: gradient
accumulation, bf16 autocast, warmup + cosine schedule, gradient clipping, the
optimizer (with its no-decay groups for a full fine-tune), batching, the loss log,
checkpoints with optimizer/scheduler/RNG state and exact resume, and data-parallel
launch under torchrun/accelerate. We subclass it only to (a) give the MultiLoRA scales
their own learning rate and weight decay and (b) checkpoint adapter weights instead of
the whole frozen base.

    train_arm = prepare_arm (model, format, data) -> training_arguments -> Trainer.train
                -> arm_result (from Trainer's state) -> adapter, PEFT export, result.json

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

import torch
from transformers import (
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)

from multilora_pipeline.data_specs.errors import TrainingError
from multilora_pipeline.data_specs.schema import ArmSpec, TrainingSpec
from multilora_pipeline.models.content import write_text_atomic
from multilora_pipeline.models.multilora import (
    adapter_parameter_groups,
    export_peft,
    inject_multilora,
    load_adapter_weights,
    save_adapter,
)
from multilora_pipeline.models.multilora.model import ADAPTER_WEIGHTS_NAME
from multilora_pipeline.models.prompt_format import PromptFormat
from multilora_pipeline.models.response_logits import response_logits
from multilora_pipeline.models.training_speed import compile_blocks, enable_activation_checkpointing
from multilora_pipeline.tasks.training.dataset import build_dataset, read_records
from multilora_pipeline.tasks.training.gguf import SOURCE_FILE as GGUF_SOURCE_FILE
from multilora_pipeline.tasks.training.loading import (
    load_base,
    resolve_device,
    resolve_dtype,
    resolve_mixed_precision,
    resolve_prompt_format,
)
from multilora_pipeline.tasks.training.memory import PeakMemory
from multilora_pipeline.tasks.training.tokenise import IGNORE

log = logging.getLogger("mlora.train")

DONE_FILE = "result.json"
HISTORY_KEYS = ("loss", "learning_rate", "grad_norm", "eval_loss")


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
    """This arm's peak: GPU memory allocated, or the process's resident memory while it trained."""
    trainable_parameters: int
    trainable_share: float
    history: list[dict] = field(default_factory=list)
    resumed_from_step: int = 0
    prompt_format: str = "plain"
    """The prompt format the arm was trained in (models/prompt_format.py): chat or plain."""


def prepare_arm_model(model, arm: ArmSpec) -> tuple[int, float]:
    """Inject the arm's adapter (or unfreeze everything for `full`). Returns trainable count and share."""
    config = arm.adapter_config()
    total = sum(p.numel() for p in model.parameters())
    if config is None:
        for p in model.parameters():
            p.requires_grad_(True)
        return total, 1.0
    report = inject_multilora(model, config)
    log.info(report.summary())
    return report.trainable_params, report.trainable_share


def response_loss(
    trainer: Trainer, model, inputs: dict, num_items_in_batch=None, *, per_example: bool = False
) -> torch.Tensor:
    """The response tokens' cross-entropy, with the output head run only where a label is
    predicted (models/response_logits.py).

    Token-weighted (the model's own loss): the mean over response tokens, normalised as
    Trainer's default rule expects, over the accumulated batch's `num_items_in_batch` when
    the model takes loss kwargs (Trainer then leaves it as it is), else over this batch
    (Trainer divides by the accumulation steps). `per_example`: the mean over examples of
    each example's mean token loss, examples told apart in a packed block by their
    restarting position ids."""
    inputs = dict(inputs)
    labels = inputs.pop("labels")
    logits, targets = response_logits(
        model, inputs.pop("input_ids"), labels, ignore_index=IGNORE, **inputs
    )
    trainer_divides = not (trainer.model_accepts_loss_kwargs and num_items_in_batch is not None)
    if per_example:
        nll = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="none")
        example = _example_of_targets(labels, inputs.get("position_ids")).to(nll.device)
        _, which, tokens = torch.unique(example, return_inverse=True, return_counts=True)
        loss = (nll / tokens[which]).sum() / max(1, tokens.numel())
        return loss if trainer_divides else loss / trainer.args.gradient_accumulation_steps
    nll = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
    if trainer_divides:
        return nll / max(1, targets.numel())
    loss = nll / num_items_in_batch
    if trainer.args.average_tokens_across_devices:  # the count is summed over processes
        loss = loss * trainer.accelerator.num_processes
    return loss


def _example_of_targets(labels: torch.Tensor, position_ids: torch.Tensor | None) -> torch.Tensor:
    """For each predicted label (in response_logits' order), a number naming its example:
    rows are examples, or, packed, each run of position ids from 0 is one."""
    rows, length = labels.shape
    if position_ids is None:
        example = torch.arange(rows, device=labels.device)[:, None].expand(rows, length)
    else:
        starts = (position_ids == 0).long().cumsum(dim=1)
        example = starts + torch.arange(rows, device=labels.device)[:, None] * (length + 1)
    return example[:, 1:][labels[:, 1:] != IGNORE]


class ArmTrainer(Trainer):
    """Trainer with MultiLoRA parameter groups and adapter-only checkpoints."""

    def __init__(self, *args, arm: ArmSpec, training: TrainingSpec, **kwargs):
        super().__init__(*args, **kwargs)
        self.arm, self.training = arm, training
        rows = self.eval_dataset or []
        targets = sum(sum(label != IGNORE for label in row["labels"][1:]) for row in rows)
        self._eval_weight = len(rows) / targets if targets else None

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Trainer's eval_loss is the mean over blocks of each batch's mean token loss, which
        over-weights blocks with few response tokens (one-letter answers): 1.91 where the
        token-weighted held-out loss of the same weights and rows is 1.23 (SmolLM2, the
        compare spec). Each batch's loss is scaled by its share of the target tokens so
        Trainer's average is the token-weighted mean: the evaluation stage's val_loss."""
        loss, logits, labels = super().prediction_step(
            model, inputs, prediction_loss_only, ignore_keys=ignore_keys
        )
        if loss is not None and self._eval_weight is not None:
            batch = inputs["labels"]
            targets = int((batch[:, 1:] != IGNORE).sum())
            loss = loss * (targets / batch.shape[0]) * self._eval_weight
        return loss, logits, labels

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:  # prediction_step wants the model's outputs: its own path
            return super().compute_loss(model, inputs, True, num_items_in_batch)
        return response_loss(
            self,
            model,
            inputs,
            num_items_in_batch,
            per_example=self.training.loss_weighting == "example",
        )

    def create_optimizer(self, model=None):
        if self.arm.kind == "full":  # Trainer's own AdamW, with its no-decay groups
            # transformers 5 passes the model; 4.x's create_optimizer takes none
            return super().create_optimizer(*(() if model is None else (model,)))
        if self.optimizer is None:
            lr = self.arm.learning_rate or self.training.learning_rate
            self.optimizer = torch.optim.AdamW(
                adapter_parameter_groups(
                    model or self.model,
                    lr=lr,
                    weight_decay=self.training.weight_decay,
                    scale_lr=self.arm.scale_learning_rate or lr,
                    scale_weight_decay=self.arm.scale_weight_decay,
                ),
                betas=(self.args.adam_beta1, self.args.adam_beta2),
                eps=self.args.adam_epsilon,
            )
        return self.optimizer

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
    """One log line every `logging_steps`: step, loss, tokens/s, peak memory and ETA (works
    without a TTY); tokens/s and peak memory also go into the logs the other callbacks see."""

    def __init__(self, arm: str, tokens_per_step: int, peak: PeakMemory):
        self.arm, self.tokens_per_step, self.peak = arm, tokens_per_step, peak
        self.start, self.start_step = None, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.start_step = time.perf_counter(), state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs or "loss" not in logs:
            return
        elapsed = time.perf_counter() - self.start
        done = state.global_step - self.start_step
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (state.max_steps - state.global_step) / rate if rate else float("nan")
        logs["tokens_per_second"] = rate * self.tokens_per_step
        logs["peak_memory_mb"] = self.peak.mb
        log.info(
            "[%s] step %d/%d loss %.4f lr %.2e %.0f tok/s ETA %.0fs",
            self.arm,
            state.global_step,
            state.max_steps,
            logs["loss"],
            logs.get("learning_rate", 0),
            logs["tokens_per_second"],
            eta,
        )


def loss_history(log_history: list[dict]) -> list[dict]:
    """The loss and eval-loss points of Trainer's log, one per step and kind.

    A run resumed from a checkpoint restores the log up to it from trainer_state.json, so
    the curve spans the interruption; a step logged twice (before and after a kill) keeps
    its last value."""
    points: dict[tuple[int, str], dict] = {}
    for entry in log_history:
        kind = "loss" if "loss" in entry else "eval_loss" if "eval_loss" in entry else None
        if kind is not None:
            keys = HISTORY_KEYS if kind == "loss" else ("eval_loss",)
            points[entry["step"], kind] = {
                "step": entry["step"],
                **{k: entry[k] for k in keys if k in entry},
            }
    return [points[k] for k in sorted(points, key=lambda k: (k[0], k[1] != "loss"))]


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


def load_result(output_dir: Path) -> ArmResult | None:
    """The finished result of an arm, if it completed before (the stage is then skipped)."""
    done = output_dir / DONE_FILE
    if not done.is_file():
        return None
    stored = json.loads(done.read_text())
    # Folders as seen from here: a worker that trained the arm may have had the (shared)
    # workspace mounted at another path.
    written_in = Path(stored["output_dir"])
    for key in ("adapter_dir", "peft_dir"):
        if stored.get(key) and Path(stored[key]).is_relative_to(written_in):
            stored[key] = str(output_dir / Path(stored[key]).relative_to(written_in))
    stored["output_dir"] = str(output_dir)
    return ArmResult(**stored)


@dataclass
class PreparedArm:
    """An arm ready to train: the adapted model, its prompt format and its data."""

    model: torch.nn.Module
    fmt: PromptFormat
    device: str
    train_set: list[dict]
    eval_set: list[dict] | None
    trainable: int
    share: float


def prepare_arm(
    *,
    arm: ArmSpec,
    training: TrainingSpec,
    model_path: str,
    train_path: str | Path,
    validation_path: str | Path | None,
    revision: str | None,
    dtype: str,
    trust_remote_code: bool,
    attn_implementation: str | None,
    prompt_format: str,
) -> PreparedArm:
    """Load the base model, adapt it for the arm, and tokenise the mixture in the run's format."""
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
    return PreparedArm(model, fmt, device, train_set, eval_set, trainable, share)


def training_arguments(
    arm: ArmSpec,
    training: TrainingSpec,
    output_dir: Path,
    *,
    device: str,
    dtype: str,
    evaluates: bool,
) -> TrainingArguments:
    """Trainer's arguments for the arm: the spec's training settings, Trainer's cosine schedule."""
    return TrainingArguments(
        output_dir=str(output_dir),
        max_steps=-1 if training.epochs else training.max_steps,
        num_train_epochs=training.epochs or 1.0,
        per_device_train_batch_size=training.batch_size,
        per_device_eval_batch_size=training.batch_size,
        gradient_accumulation_steps=training.grad_accum,
        learning_rate=arm.learning_rate or training.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=training.warmup_steps,
        weight_decay=training.weight_decay,
        adam_beta1=0.9,
        adam_beta2=0.999,
        adam_epsilon=1e-8,
        optim="adamw_torch",
        max_grad_norm=1.0,
        logging_steps=training.logging_steps,
        save_strategy="steps",
        save_steps=training.save_steps,
        eval_strategy="steps" if evaluates else "no",
        eval_steps=training.eval_steps,
        seed=training.seed,
        data_seed=training.seed,
        full_determinism=device == "cpu",
        use_cpu=device == "cpu",
        # CPU data parallelism (how the distributed path is tested) needs gloo.
        ddp_backend="gloo" if device == "cpu" and _world_size() > 1 else None,
        bf16=resolve_mixed_precision(training.mixed_precision, device, dtype),
        report_to="none",
        disable_tqdm=True,  # ProgressLog prints one line per logging step instead
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )


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
    prepared = prepare_arm(
        arm=arm,
        training=training,
        model_path=model_path,
        train_path=train_path,
        validation_path=validation_path,
        revision=revision,
        dtype=dtype,
        trust_remote_code=trust_remote_code,
        attn_implementation=attn_implementation,
        prompt_format=prompt_format,
    )
    args = training_arguments(
        arm,
        training,
        output_dir,
        device=prepared.device,
        dtype=dtype,
        evaluates=prepared.eval_set is not None,
    )
    precision = "bf16 autocast" if args.bf16 else str(resolve_dtype(dtype, prepared.device))
    log.info("[%s] matmuls in %s on %s", arm.name, precision, prepared.device)
    tokens_per_step = (
        training.batch_size * training.grad_accum * training.max_length * _world_size()
    )
    with PeakMemory(prepared.device) as peak:
        trainer = ArmTrainer(
            model=prepared.model,
            args=args,
            train_dataset=prepared.train_set,
            eval_dataset=prepared.eval_set,
            data_collator=default_data_collator,
            callbacks=[ProgressLog(arm.name, tokens_per_step, peak), *callbacks],
            arm=arm,
            training=training,
        )
        trainer.remove_callback(PrinterCallback)  # ProgressLog already prints one line per log step
        resume = last_checkpoint(output_dir)
        if resume is not None:
            log.info("[%s] resuming from %s", arm.name, resume.name)
        started = time.perf_counter()
        with compile_errors(training.compile):
            output = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
        seconds = time.perf_counter() - started
        eval_loss = _final_eval_loss(trainer, output.global_step)
    result = arm_result(
        arm,
        output_dir,
        trainer,
        output,
        prepared,
        eval_loss=eval_loss,
        resumed_steps=int(resume.name.split("-")[1]) if resume else 0,
        tokens_per_step=tokens_per_step,
        seconds=seconds,
        peak_memory_mb=peak.mb,
    )
    if trainer.is_world_process_zero():  # under data parallelism only rank 0 writes
        _write_outputs(
            prepared.model, prepared.fmt, arm, result, base_model_name or model_path, revision
        )
    return result


def _final_eval_loss(trainer: Trainer, step: int) -> float | None:
    """The held-out loss of the final weights. A scheduled evaluation at the last step already
    measured them: a second pass over the validation blocks would cost as much again for the
    same number. (Trainer's log is kept on every rank, so all ranks take the same branch.)"""
    if trainer.eval_dataset is None:
        return None
    final = [h for h in trainer.state.log_history if "eval_loss" in h and h.get("step") == step]
    return final[-1]["eval_loss"] if final else trainer.evaluate()["eval_loss"]


def arm_result(
    arm: ArmSpec,
    output_dir: Path,
    trainer: Trainer,
    output,
    prepared: PreparedArm,
    *,
    eval_loss: float | None,
    resumed_steps: int,
    tokens_per_step: int,
    seconds: float,
    peak_memory_mb: float,
) -> ArmResult:
    """The ArmResult of a finished `trainer.train()` (a NaN loss is a TrainingError)."""
    history = loss_history(trainer.state.log_history)
    train_loss = float(output.training_loss)
    if output.global_step == resumed_steps:  # killed after the last checkpoint: nothing left to run
        logged = [h["loss"] for h in history if "loss" in h]
        train_loss = logged[-1] if logged else train_loss
    if math.isnan(train_loss):
        raise TrainingError(
            "training loss is NaN",
            where=f"arm {arm.name}",
            fix="lower the learning rate or check the data",
        )
    ran = output.global_step - resumed_steps
    return ArmResult(
        arm=arm.name,
        kind=arm.kind,
        output_dir=str(output_dir),
        adapter_dir=str(output_dir / "adapter"),
        peft_dir=None if arm.kind == "full" else str(output_dir / "peft"),
        steps=output.global_step,
        train_loss=train_loss,
        eval_loss=eval_loss,
        tokens_per_second=tokens_per_step * ran / seconds if ran > 0 else float("nan"),
        peak_memory_mb=peak_memory_mb,
        trainable_parameters=prepared.trainable,
        trainable_share=prepared.share,
        history=history,
        resumed_from_step=resumed_steps,
        prompt_format=prepared.fmt.kind,
    )


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


def _write_outputs(
    model, fmt: PromptFormat, arm: ArmSpec, result: ArmResult, base_name: str, revision
):
    """The finished adapter (and PEFT export), each with its prompt format, then result.json
    last: its presence means done. The PEFT export names its base by hub id and revision, or
    by folder; a base converted from a GGUF file also gets that file's origin beside it
    (gguf_source.json: file, sha256, package), since no hub repo holds those weights."""
    output_dir = Path(result.output_dir)
    if arm.kind == "full":
        model.save_pretrained(result.adapter_dir)
        fmt.tokenizer.save_pretrained(result.adapter_dir)
    else:
        save_adapter(model, result.adapter_dir)
        export_peft(model, result.peft_dir, base_name, revision=revision)
        fmt.write(result.peft_dir)
        origin = Path(base_name) / GGUF_SOURCE_FILE
        if origin.is_file():
            shutil.copyfile(origin, Path(result.peft_dir) / GGUF_SOURCE_FILE)
    fmt.write(result.adapter_dir)
    write_text_atomic(output_dir / DONE_FILE, json.dumps(asdict(result), indent=2))
    for ckpt in output_dir.glob("checkpoint-*"):
        shutil.rmtree(ckpt)  # only now: the finished adapter and result.json supersede them


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _rank() -> int:
    return int(os.environ.get("RANK", "0"))
