#!/usr/bin/env bash
# GPU checks and benchmarks, run on the GPU machine from the repo root:
#
#   bash benchmarks/gpu_check.sh            # ~5-6 minutes on one H100, at most 8
#
# That machine has torch, transformers, peft and accelerate (Python 3.12) but no
# prefect / mlflow / duckdb / pydantic and no network, so every step imports only
# models/ and those. Each step writes one JSON file to ${OUT:-/tmp}/ and prints it.
# Later issues append their own steps (e.g. training throughput) at the end, in the
# same shape: a `step` header, a `timeout`, one JSON file.
#
# A failed step is reported and the next step still runs (device time is scarce:
# one run should bring back every figure it can); the exit status is non-zero if
# any step failed. DEVICE=cpu runs the same steps on a CPU (small sizes) to
# smoke-test the script.
set -uo pipefail

OUT_DIR="${OUT:-/tmp}"
DEVICE="${DEVICE:-cuda}"
PY="${PYTHON:-$(command -v python || command -v python3)}"
# The code imports itself as multilora_pipeline.* (the installed namespace, see the README's
# layout): without an install, a link named multilora_pipeline to this checkout gives it.
NAMESPACE_DIR="$(mktemp -d)"
ln -s "$PWD" "$NAMESPACE_DIR/multilora_pipeline"
export PYTHONPATH="$NAMESPACE_DIR${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
mkdir -p "$OUT_DIR"

FAILED=()
step() { echo "=== step $1: $2 ($(date +%T)) ===" >&2; CURRENT_STEP="$1"; }
failed() { echo "!!! step $CURRENT_STEP FAILED" >&2; FAILED+=("$CURRENT_STEP"); }
show() { [[ -f "$1" ]] && cat "$1" && echo; }

if [[ "$DEVICE" == "cuda" ]]; then
    BENCH_ARGS=(--device cuda --dtype bfloat16 --autocast --repeats 20 --warmup 5)
else
    BENCH_ARGS=(--device cpu --dtype float32 --repeats 2 --warmup 1 --dims 256 --tokens 256)
fi

# ---------------------------------------------------------------------------
step 1 "environment"
"$PY" - "$OUT_DIR/gpu_env.json" "$DEVICE" <<'EOF' || failed
import json, platform, sys
import torch, transformers
try:
    import peft
    peft_version = peft.__version__
except ImportError:
    peft_version = None
device = sys.argv[2]
info = {
    "python": platform.python_version(),
    "torch": torch.__version__,
    "cuda": torch.version.cuda,
    "transformers": transformers.__version__,
    "peft": peft_version,
    "device": device,
    "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor(),
    "bf16_supported": torch.cuda.is_bf16_supported() if device == "cuda" else None,
}
json.dump(info, open(sys.argv[1], "w"), indent=2)
EOF
show "$OUT_DIR/gpu_env.json"

# ---------------------------------------------------------------------------
step 2 "import guard: models/ needs none of prefect, mlflow, duckdb, pydantic, data_specs"
"$PY" - <<'EOF' || failed
import sys
import multilora_pipeline.models.multilora, multilora_pipeline.models.tiny  # noqa: F401
import multilora_pipeline.models.multilora.model  # noqa: F401  (the lazily loaded parts too)
banned = ("prefect", "mlflow", "duckdb", "pydantic", "multilora_pipeline.data_specs")
leaked = [m for m in banned if m in sys.modules]
assert not leaked, f"models/ imported {leaked}; it must stay torch/transformers/safetensors/peft only"
print("import guard ok", file=sys.stderr)
EOF

# ---------------------------------------------------------------------------
step 3 "MultiLoRA layer on the device: bf16 base + fp32 adapter, fused == per-module, merge, compile"
timeout 120 "$PY" - "$OUT_DIR/gpu_layer_check.json" "$DEVICE" <<'EOF' || failed
import json, sys, time
import torch
from torch import nn
from multilora_pipeline.models.multilora import MultiLoRAConfig, MultiLoRALinear

out_path, device = sys.argv[1], torch.device(sys.argv[2])
dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
torch.manual_seed(0)
d, tokens = 512, 256
layer = MultiLoRALinear(
    nn.Linear(d, d, device=device, dtype=dtype), MultiLoRAConfig(n_modules=4, rank=8)
)
with torch.no_grad():
    layer.lora_scale.normal_()
x = torch.randn(tokens, d, device=device, dtype=dtype)
result = {"device": str(device), "base_dtype": str(dtype)}

# Without autocast (bf16 inference) and under bf16 autocast (how Trainer bf16=True trains).
for autocast in (False, True):
    outs, grads = [], []
    for reference in (False, True):
        layer.use_reference = reference
        layer.zero_grad()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            y = layer(x)
        y.float().pow(2).mean().backward()
        outs.append(y.float())
        grads.append(layer.lora_scale.grad.clone())
    key = "autocast_" if autocast else ""
    result[key + "output_dtype"] = str(y.dtype)
    result[key + "fused_vs_reference_max_abs_diff"] = (outs[0] - outs[1]).abs().max().item()
    result[key + "scale_grad_rel_diff"] = ((grads[0] - grads[1]).norm() / grads[1].norm()).item()
result["adapter_dtype"] = str(layer.lora_A.dtype)
result["adapter_grad_dtype"] = str(layer.lora_A.grad.dtype)

layer.use_reference = False
with torch.no_grad():
    before = layer(x).float()
    layer.merge()
    merged = layer(x).float()
    layer.unmerge()
result["merge_max_abs_diff"] = (merged - before).abs().max().item()
result["output_max_abs"] = before.abs().max().item()

explanation = torch._dynamo.explain(layer)(x)
result["graph_breaks"] = explanation.graph_break_count
torch._dynamo.reset()
start = time.perf_counter()
try:
    compiled = torch.compile(layer, fullgraph=True)
    compiled(x).float().sum().backward()
    result["compile_fullgraph"] = "ok"
except Exception as exc:  # recorded, then fails the step below
    result["compile_fullgraph"] = f"{type(exc).__name__}: {str(exc)[:300]}"
result["compile_fullgraph_s"] = round(time.perf_counter() - start, 1)

# bf16 tolerances: the base GEMM itself rounds at ~1e-2 relative.
result["ok"] = (
    result["graph_breaks"] == 0
    and result["compile_fullgraph"] == "ok"
    and result["adapter_grad_dtype"] == "torch.float32"
    and all(
        result[key + "fused_vs_reference_max_abs_diff"] <= 2e-2 * max(1.0, result["output_max_abs"])
        and result[key + "scale_grad_rel_diff"] < limit
        for key, limit in (("", 1e-2), ("autocast_", 2e-2))  # autocast: bf16 GEMMs on both sides
    )
)
json.dump(result, open(out_path, "w"), indent=2)
if not result["ok"]:
    sys.exit(f"layer check failed: {result}")
EOF
show "$OUT_DIR/gpu_layer_check.json"

# ---------------------------------------------------------------------------
step 4 "layer benchmark: fused vs per-module loop vs PEFT LoRA r=32 (tokens 2048, d 1024/4096)"
timeout 120 "$PY" benchmarks/multilora_layer.py "${BENCH_ARGS[@]}" \
    --out "$OUT_DIR/multilora_layer_${DEVICE}.json" >/dev/null || failed
show "$OUT_DIR/multilora_layer_${DEVICE}.json"

# ---------------------------------------------------------------------------
# The training path imports data_specs.schema, which needs pydantic; the GPU image has none.
# Carry its wheels in .whl/ (pip download --no-deps --only-binary=:all: --python-version 3.12
# --platform manylinux2014_x86_64 -d .whl pydantic pydantic-core annotated-types
# typing-inspection) and they are installed here.
if [[ -d .whl ]] && ! "$PY" -c "import pydantic" 2>/dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/mlora-site .whl/*.whl \
        && export PYTHONPATH="/tmp/mlora-site:$PYTHONPATH"
fi
# Three configurations, the most informative first (device time may run out):
#   fast:     flex_attention (packed block-diagonal masks on a fused kernel) + per-block compile
#   compiled: sdpa + per-block compile (separates the two effects)
#   eager:    sdpa, no compile: the 2026-11-27 baseline, with PEFT LoRA for comparison
if [[ "$DEVICE" == "cuda" ]]; then
    TRAIN_ARGS=(--size 1b --device cuda --seq 2048 --batch 8 --warmup 4 --steps 20)
    CONFIGS=("fast:--attn flex_attention --compile --arms multilora,lora"
             "compiled:--attn sdpa --compile --arms multilora,lora"
             "eager:--attn sdpa --arms multilora,lora,peft_lora")
else  # flex_attention has no CPU backward and inductor needs minutes here: eager only
    TRAIN_ARGS=(--size small --device cpu --seq 128 --batch 2 --warmup 1 --steps 3)
    CONFIGS=("eager:--attn sdpa --arms multilora,lora,peft_lora")
fi
for config in "${CONFIGS[@]}"; do
    name="${config%%:*}"
    read -r -a extra <<<"${config#*:}"
    step "5-$name" "training throughput: ~1.1B Llama, bf16, seq 2048, packed (${extra[*]})"
    timeout 130 "$PY" benchmarks/train_throughput.py "${TRAIN_ARGS[@]}" "${extra[@]}" \
        --out "$OUT_DIR/train_throughput_${DEVICE}_${name}.json" >/dev/null || failed
    show "$OUT_DIR/train_throughput_${DEVICE}_${name}.json"
done

if ((${#FAILED[@]})); then
    echo "=== FAILED steps: ${FAILED[*]}; JSON in $OUT_DIR ===" >&2
    exit 1
fi
echo "=== all steps passed; JSON in $OUT_DIR ($(date +%T)) ===" >&2
