"""Forward+backward time of one adapted linear layer: fused MultiLoRA vs a per-module
loop vs PEFT LoRA at the same total rank, all measured in the same run.

    PYTHONPATH=. python benchmarks/multilora_layer.py                       # CPU, fp32
    PYTHONPATH=. python benchmarks/multilora_layer.py --device cuda --dtype bfloat16 --autocast

Prints one JSON object (also written to --out if given). Times are medians in ms.
"base" is the frozen linear alone, so "adapter_ms" = variant - base is the adapter's
own cost. Targets (issue 3): fused <= 1.05 x PEFT LoRA, and fused < per-module loop.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from datetime import date

import torch
from torch import nn

from multilora_pipeline.models.multilora import MultiLoRAConfig, MultiLoRALinear

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="base dtype")
    parser.add_argument("--repeats", type=int, default=5, help="timed iterations per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed iterations per variant")
    parser.add_argument("--tokens", type=int, default=2048, help="rows of x (batch x seq)")
    parser.add_argument("--dims", type=int, nargs="+", default=[1024, 4096], help="d_in = d_out")
    parser.add_argument("--n-modules", type=int, default=4)
    parser.add_argument("--rank", type=int, default=8, help="rank per module")
    parser.add_argument("--scale-shape", default="scalar", choices=["scalar", "vector"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--autocast",
        action="store_true",
        help="run under torch.autocast in --dtype, as bf16 training does (Trainer bf16=True)",
    )
    parser.add_argument("--out", default=None, help="also write the JSON here")
    return parser.parse_args(argv)


def time_fwd_bwd(
    variants: dict[str, nn.Module], x: torch.Tensor, grad: torch.Tensor, args
) -> dict[str, float]:
    """Median ms of layer(x).backward(grad) per variant, with x requiring grad as inside
    a model. Variants run round-robin, so a slow spell on a shared machine hits all alike."""

    def step(layer):
        layer.zero_grad(set_to_none=True)
        x.grad = None
        with torch.autocast(x.device.type, dtype=x.dtype, enabled=args.autocast):
            out = layer(x)
        out.backward(grad)

    def sync():
        if x.device.type == "cuda":
            torch.cuda.synchronize()

    for layer in variants.values():
        for _ in range(args.warmup):
            step(layer)
    sync()
    times: dict[str, list[float]] = {name: [] for name in variants}
    for repeat in range(args.repeats):
        for name, layer in variants.items():
            start = time.perf_counter()
            step(layer)
            sync()
            times[name].append((time.perf_counter() - start) * 1e3)
        print(
            f"d={x.shape[1]} repeat {repeat + 1}/{args.repeats}: "
            + ", ".join(f"{n} {t[-1]:.1f} ms" for n, t in times.items()),
            file=sys.stderr,
        )
    return {name: round(statistics.median(t), 3) for name, t in times.items()}


def peft_lora_layer(base: nn.Linear, total_rank: int) -> nn.Module:
    """PEFT's own LoRA Linear around ``base`` (r = lora_alpha = total_rank)."""
    from peft import LoraConfig, get_peft_model

    holder = nn.Module()
    holder.proj = base
    model = get_peft_model(
        holder, LoraConfig(r=total_rank, lora_alpha=total_rank, target_modules=["proj"])
    )
    layer = model.base_model.model.proj
    with torch.no_grad():  # non-zero B so the timed work is the trained-adapter case
        nn.init.normal_(layer.lora_B["default"].weight, std=0.01)
    return layer


def bench_dim(d: int, args, device: torch.device, dtype: torch.dtype) -> dict:
    torch.manual_seed(0)
    config = MultiLoRAConfig(n_modules=args.n_modules, rank=args.rank, scale_shape=args.scale_shape)

    def fresh_base() -> nn.Linear:
        base = nn.Linear(d, d, bias=False, device=device, dtype=dtype)
        base.requires_grad_(False)
        return base

    base = fresh_base()
    fused = MultiLoRALinear(fresh_base(), config)
    with torch.no_grad():  # non-zero scales: the trained case (zero changes no FLOPs anyway)
        fused.lora_scale.fill_(0.5)
    per_module = MultiLoRALinear(fresh_base(), config)
    per_module.use_reference = True
    variants = {
        "base": base,
        "fused": fused,
        "per_module": per_module,
        f"peft_lora_r{config.total_rank}": peft_lora_layer(fresh_base(), config.total_rank),
    }
    x = torch.randn(args.tokens, d, device=device, dtype=dtype, requires_grad=True)
    grad = torch.randn(args.tokens, d, device=device, dtype=dtype)
    ms = time_fwd_bwd(variants, x, grad, args)
    peft_name = f"peft_lora_r{config.total_rank}"
    adapter_ms = {k: round(v - ms["base"], 3) for k, v in ms.items() if k != "base"}
    return {
        "d": d,
        "ms": ms,
        "adapter_ms": adapter_ms,
        "ratios": {
            "fused_vs_peft": round(ms["fused"] / ms[peft_name], 3),
            "fused_vs_per_module": round(ms["fused"] / ms["per_module"], 3),
            "adapter_fused_vs_peft": _safe_ratio(adapter_ms["fused"], adapter_ms[peft_name]),
            "adapter_fused_vs_per_module": _safe_ratio(
                adapter_ms["fused"], adapter_ms["per_module"]
            ),
        },
        "targets_met": {
            "fused_le_1.05x_peft": ms["fused"] <= 1.05 * ms[peft_name],
            "fused_faster_than_per_module": ms["fused"] < ms["per_module"],
        },
    }


def _safe_ratio(a: float, b: float) -> float | None:
    return round(a / b, 3) if b > 0 else None


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "cpu"


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    report = {
        "benchmark": "multilora_layer",
        "date": date.today().isoformat(),
        "device": str(device),
        "device_name": device_name(device),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "dtype": args.dtype,
        "adapter_dtype": "float32",
        "autocast": args.autocast,
        "tokens": args.tokens,
        "n_modules": args.n_modules,
        "rank": args.rank,
        "scale_shape": args.scale_shape,
        "repeats": args.repeats,
        "results": [bench_dim(d, args, device, dtype) for d in args.dims],
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return report


if __name__ == "__main__":
    main()
