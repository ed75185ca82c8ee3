"""Training throughput: the multilora arm vs equal-rank LoRA (ours) vs PEFT LoRA, same run.

    PYTHONPATH=. python benchmarks/train_throughput.py --size small          # CPU, ~20M params
    PYTHONPATH=. python benchmarks/train_throughput.py --size 1b --device cuda  # H100, bf16

Every arm trains the same randomly initialised Llama-architecture model (built
from a config, no download) on the same packed synthetic batches, through the
pipeline's own training path (tasks/training/train.py: ArmTrainer, packing with
restarting position ids). Steps after the warm-up are timed. Model FLOPs per
token follow the usual accounting: 4 per frozen parameter (forward + input
gradient), 6 per trained one (plus the weight gradient), plus attention
12 * layers * seq * hidden (QK^T and AV, forward and backward, full square
counted as the convention does). MFU is against 989 TFLOP/s dense bf16 (H100 SXM).
Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import date

import torch
import transformers
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    PrinterCallback,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    default_data_collator,
)

from multilora_pipeline.data_specs.schema import ArmSpec, TrainingSpec
from multilora_pipeline.models.tiny import BLOCK_LINEARS
from multilora_pipeline.models.training_speed import compile_blocks, enable_activation_checkpointing
from multilora_pipeline.tasks.training.loading import cpu_computes_bf16
from multilora_pipeline.tasks.training.tokenise import IGNORE, TokenisedExample, pack_examples
from multilora_pipeline.tasks.training.train import ArmTrainer, prepare_arm_model, response_loss

H100_BF16_FLOPS = 989e12
SIZES = {
    # ~20M parameters: the CPU target model of issue 5.
    "small": dict(
        vocab_size=8192,
        hidden_size=384,
        intermediate_size=1024,
        num_hidden_layers=6,
        num_attention_heads=6,
        num_key_value_heads=6,
    ),
    # ~1.1B parameters: TinyLlama's shape (22 layers, GQA with 4 KV heads).
    "1b": dict(
        vocab_size=32000,
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
    ),
}


# Arm-name suffixes that swap the loss path: ArmTrainer runs the output head on response
# positions only (tasks/training/train.py: response_loss), Trainer on every position.
FULL_HEAD, RESPONSE_HEAD = "_full_head", "_response_head"
# And one that trains under bf16 autocast (training.mixed_precision: bf16), on a CPU too.
BF16 = "_bf16"


class FullHeadArmTrainer(ArmTrainer):
    """ArmTrainer with Trainer's own loss (the head at every position): response_loss's baseline."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        return Trainer.compute_loss(self, model, inputs, return_outputs, num_items_in_batch)


class ResponseLossTrainer(Trainer):
    """Trainer (for PEFT) with the pipeline's loss path: the same loss code on both arms."""

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if return_outputs:
            return super().compute_loss(model, inputs, True, num_items_in_batch)
        return response_loss(self, model, inputs, num_items_in_batch)


def packed_blocks(n_blocks: int, seq: int, vocab: int, seed: int = 0) -> list[dict]:
    """Random-token examples of 64..seq/2 tokens, packed like the mixture is."""
    g = torch.Generator().manual_seed(seed)
    examples, total = [], 0
    while total < n_blocks * seq:
        n = int(torch.randint(min(64, seq // 4), seq // 2, (1,), generator=g))
        ids = torch.randint(4, vocab, (n,), generator=g).tolist()
        examples.append(TokenisedExample(ids, [IGNORE] + ids[1:]))
        total += n
    return pack_examples(examples, seq, pad_id=0)[:n_blocks]


class StepTimer(TrainerCallback):
    def __init__(self, warmup: int, device: str):
        self.warmup, self.device, self.start, self.timed = warmup, device, None, 0

    def _sync(self):
        if self.device == "cuda":
            torch.cuda.synchronize()

    def on_train_begin(self, args, state, control, **kwargs):
        self.began = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.warmup:
            self._sync()
            self.start = time.perf_counter()
            self.warmup_seconds = self.start - self.began  # includes any compile
        elif state.global_step > self.warmup:
            self.timed += 1

    def seconds(self):
        self._sync()
        return time.perf_counter() - self.start


def random_model(config, device, dtype):
    """A randomly initialised Llama of `config` (no download)."""
    with torch.device(device):  # initialise on the device: ~10x faster than on CPU for 1B params
        return LlamaForCausalLM(config).to(dtype=dtype)


def run_arm(name, config, data, args, device, dtype, make_model=random_model):
    """Train arm `name` on `data` and time the steps after the warm-up; `make_model(config,
    device, dtype)` builds the base (benchmarks/real_model.py loads a pretrained one)."""
    torch.manual_seed(0)
    model = make_model(config, device, dtype)
    model.config.use_cache = False
    targets = BLOCK_LINEARS["llama"]
    training = TrainingSpec(
        max_steps=args.steps,
        batch_size=args.batch,
        max_length=args.seq,
        warmup_steps=1,
        learning_rate=1e-4,
        logging_steps=10**6,
        save_steps=10**6,
        eval_steps=10**6,
        gradient_checkpointing=args.checkpointing,
    )
    if name.startswith("peft_lora"):
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=args.n * args.r, lora_alpha=args.n * args.r, target_modules=targets)
        )
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        trainer_cls, extra = (ResponseLossTrainer if RESPONSE_HEAD in name else Trainer), {}
    else:
        arm = (
            ArmSpec(
                name="multilora",
                kind="multilora",
                n_modules=args.n,
                rank=args.r,
                target_modules=targets,
            )
            if name.startswith("multilora")
            else ArmSpec(name=name, kind="lora", rank=args.n * args.r, target_modules=targets)
        )
        trainable, _ = prepare_arm_model(model, arm)
        trainer_cls = FullHeadArmTrainer if FULL_HEAD in name else ArmTrainer
        extra = {"arm": arm, "training": training}
    if args.checkpointing:
        enable_activation_checkpointing(model)
    if args.compile:
        compile_blocks(model)
    total = sum(p.numel() for p in model.parameters())
    timer = StepTimer(args.warmup, device)
    targs = TrainingArguments(
        output_dir=f"/tmp/mlora-bench-{name}",
        max_steps=args.steps,
        per_device_train_batch_size=args.batch,
        learning_rate=1e-4,
        lr_scheduler_type="constant",
        logging_steps=10**6,
        save_strategy="no",
        report_to="none",
        disable_tqdm=True,
        use_cpu=device == "cpu",
        bf16=dtype == torch.bfloat16 or BF16 in name,
        dataloader_num_workers=0,
        remove_unused_columns=False,
    )
    trainer = trainer_cls(
        model=model,
        args=targs,
        train_dataset=data,
        data_collator=default_data_collator,
        callbacks=[timer],
        **extra,
    )
    trainer.remove_callback(PrinterCallback)  # stdout is the JSON report only
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    seconds = timer.seconds()
    tokens = timer.timed * args.batch * args.seq
    tps = tokens / seconds
    frozen = total - trainable
    c = config
    attention = 12 * c.num_hidden_layers * args.seq * c.hidden_size
    flops_per_token = 4 * frozen + 6 * trainable + attention
    out = {
        "arm": name,
        "trainable_params": trainable,
        "total_params": total,
        "timed_steps": timer.timed,
        "warmup_seconds": round(timer.warmup_seconds, 1),
        "tokens_per_second": round(tps, 1),
        "flops_per_token": flops_per_token,
        "achieved_tflops": round(tps * flops_per_token / 1e12, 2),
    }
    if device == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        out["mfu"] = round(tps * flops_per_token / H100_BF16_FLOPS, 4)
    del trainer, model
    if device == "cuda":
        torch.cuda.empty_cache()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", choices=SIZES, default="small")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seq", type=int, default=None, help="default 2048 on cuda, 256 on cpu")
    parser.add_argument("--batch", type=int, default=None, help="default 8 on cuda, 4 on cpu")
    parser.add_argument("--steps", type=int, default=None, help="timed steps + warm-up")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--n", type=int, default=4, help="MultiLoRA modules")
    parser.add_argument("--r", type=int, default=8, help="rank per module (LoRA gets n*r)")
    parser.add_argument("--arms", default="multilora,lora,peft_lora")
    parser.add_argument("--checkpointing", action="store_true")
    parser.add_argument(
        "--attn",
        default="sdpa",
        help="attention kernel: sdpa, eager, flex_attention, flash_attention_2",
    )
    parser.add_argument(
        "--compile", action="store_true", help="torch.compile each decoder block (regional)"
    )
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    cuda = args.device == "cuda"
    args.seq = args.seq or (2048 if cuda else 256)
    args.batch = args.batch or (8 if cuda else 4)
    args.steps = args.steps or (args.warmup + (20 if cuda else 8))
    dtype = torch.bfloat16 if cuda else torch.float32
    config = LlamaConfig(
        **SIZES[args.size], max_position_embeddings=max(2048, args.seq), tie_word_embeddings=False
    )
    config._attn_implementation = args.attn
    data = packed_blocks(args.steps * args.batch, args.seq, config.vocab_size)
    arms = []
    for arm in args.arms.split(","):
        arms.append(run_arm(arm, config, data, args, args.device, dtype))
        # Written after every arm: a run cut off by a device-time limit keeps what it measured.
        text = json.dumps(report(args, arms), indent=2)
        if args.out:
            with open(args.out, "w") as f:
                f.write(text)
    print(text)


def report(args, arms: list[dict]) -> dict:
    by = {a["arm"]: a["tokens_per_second"] for a in arms}
    cuda = args.device == "cuda"
    return {
        "benchmark": "train_throughput",
        "date": date.today().isoformat(),
        "size": args.size,
        "device": args.device,
        "device_name": torch.cuda.get_device_name() if cuda else "cpu",
        "torch": torch.__version__,
        # False: this CPU emulates bf16 matmuls, so the _bf16 arm is far slower, not faster
        "cpu_computes_bf16": cpu_computes_bf16(),
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "seq": args.seq,
        "batch": args.batch,
        "packed": True,
        "attn_implementation": args.attn,
        "compile": args.compile,
        "n_modules": args.n,
        "rank_per_module": args.r,
        "arms": arms,
        "ratios": {
            f"multilora/{other}": round(by["multilora"] / by[other], 3)
            for other in ("lora", "peft_lora")
            if "multilora" in by and other in by
        },
    }


if __name__ == "__main__":
    main()
