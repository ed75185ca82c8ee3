"""Multiple-choice scoring in a chat format, with and without the shared-prefix path.

    PYTHONPATH=. .venv/bin/python benchmarks/chat_scoring.py --workspace WS --items 64

Under a chat template lm-eval moves the generation prompt's newline into every choice
("\\nyes", "\\nno"), so each choice is two tokens and needs a pass over the context's KV
cache. The scorer moves a prefix every choice shares back into the context and scores
it with the context's own forward pass (tasks/evaluation/scoring.py, `_share_prefix`):
one pass per batch again. This times both on the real demo's BoolQ suite (the workspace
of a finished `mlora run data_specs/real.yaml`) with SmolLM2-135M-Instruct, round-robin,
and checks that both give the same log-likelihoods. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from unittest import mock

import pyarrow.parquet as pq
import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", required=True)
    parser.add_argument("--items", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from multilora_pipeline.models.prompt_format import PromptFormat
    from multilora_pipeline.tasks.evaluation import scoring

    ws = Path(args.workspace)
    base = next((ws / "models").glob("gguf-*"))
    suite = next(
        p
        for p in (ws / "data" / "normalise").glob("*/records.parquet")
        if pq.read_table(p).column("source")[0].as_py() == "boolq_val"
    )
    rows = pq.read_table(suite).slice(0, args.items).to_pylist()
    fmt = PromptFormat.resolve(AutoTokenizer.from_pretrained(base), "chat")
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).eval()
    contexts, choices = [r["prompt"] for r in rows], [r["choices"] for r in rows]

    def run() -> list[list[float]]:
        return scoring.score_choices(model, fmt, contexts, choices, batch_size=16)

    def unshared(context, continuations):  # every choice keeps its own newline
        return scoring._Request(context, continuations)

    run()  # warm-up
    times = {"shared_prefix": [], "kv_cache_pass": []}
    results = {}
    for _ in range(args.repeats):
        for name in times:
            patch = mock.patch.object(scoring, "_share_prefix", unshared)
            started = time.perf_counter()
            if name == "kv_cache_pass":
                with patch:
                    results[name] = run()
            else:
                results[name] = run()
            times[name].append(time.perf_counter() - started)
    best = {k: min(v) for k, v in times.items()}
    diff = max(
        abs(a - b)
        for x, y in zip(results["shared_prefix"], results["kv_cache_pass"], strict=True)
        for a, b in zip(x, y, strict=True)
    )
    print(
        json.dumps(
            {
                "items": len(rows),
                "model": "SmolLM2-135M-Instruct (fp32, 2 threads)",
                "seconds": {k: round(v, 2) for k, v in best.items()},
                "items_per_second": {k: round(len(rows) / v, 2) for k, v in best.items()},
                "speedup": round(best["kv_cache_pass"] / best["shared_prefix"], 3),
                "max_abs_loglik_difference": diff,
            }
        )
    )


if __name__ == "__main__":
    main()
