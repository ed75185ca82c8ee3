"""What bf16 costs on this CPU: one SmolLM2-135M-sized matmul in fp32 and in bf16.

    PYTHONPATH=. python benchmarks/bf16_matmul.py

training.mixed_precision: auto trains under bf16 autocast on a CPU only where
tasks/training/loading.py's cpu_computes_bf16 says oneDNN runs bf16 natively (AVX512,
AVX512-BF16, AMX). This prints that answer beside the measured ratio, so a machine where
the two disagree shows at once. The shape is a batch of 320 tokens through the MLP's
576 -> 1536 projection. Prints JSON.
"""

from __future__ import annotations

import json
import time
from datetime import date

import torch

from multilora_pipeline.tasks.training.loading import cpu_computes_bf16

TOKENS, HIDDEN, INTERMEDIATE = 320, 576, 1536
REPEATS = 20


def _cpu_flags() -> list[str]:
    wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    try:
        flags = set(open("/proc/cpuinfo").read().split())
    except OSError:  # not Linux
        return []
    return [f for f in wanted if f in flags]


def _milliseconds(dtype: torch.dtype) -> float:
    x = torch.randn(TOKENS, HIDDEN).to(dtype)
    w = torch.randn(HIDDEN, INTERMEDIATE).to(dtype)
    x @ w  # warm-up: oneDNN picks and caches its kernel
    start = time.perf_counter()
    for _ in range(REPEATS):
        x @ w
    return 1000 * (time.perf_counter() - start) / REPEATS


def main() -> None:
    fp32, bf16 = _milliseconds(torch.float32), _milliseconds(torch.bfloat16)
    print(
        json.dumps(
            {
                "benchmark": "bf16_matmul",
                "date": date.today().isoformat(),
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
                "cpu_flags": _cpu_flags(),
                "cpu_computes_bf16": cpu_computes_bf16(),
                "shape": [TOKENS, HIDDEN, INTERMEDIATE],
                "fp32_ms": round(fp32, 2),
                "bf16_ms": round(bf16, 2),
                "bf16_over_fp32": round(bf16 / fp32, 2),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
