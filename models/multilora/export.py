"""Export a trained MultiLoRA adapter as a plain PEFT LoRA adapter.

n modules of rank r are one LoRA of rank n·r:

    A_cat = [A_1; …; A_n]                       (n·r × in)
    B_cat = [c·diag(s_1)·B_1 | … | c·diag(s_n)·B_n]   (out × n·r),  c = alpha / r

Written with r = lora_alpha = n·r, PEFT's own scaling (lora_alpha / r) is 1, so
B_cat·A_cat is exactly ΔW. PEFT, vLLM and lm-evaluation-harness load the result
with no custom code (vLLM needs --max-lora-rank >= n·r).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from .config import MultiLoRAError
from .model import atomic_write, matching_module_names, multilora_layers

PEFT_WEIGHTS_NAME = "adapter_model.safetensors"
PEFT_CONFIG_NAME = "adapter_config.json"


def peft_state_dict(
    model: nn.Module, dtype: torch.dtype = torch.float32
) -> dict[str, torch.Tensor]:
    """The PEFT-named tensors: base_model.model.<path>.lora_A.weight / .lora_B.weight."""
    state: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for path, layer in multilora_layers(model):
            prefix = f"base_model.model.{path}"
            state[f"{prefix}.lora_A.weight"] = layer.lora_A.detach().to(dtype).contiguous().cpu()
            state[f"{prefix}.lora_B.weight"] = layer.effective_B().to(dtype).contiguous().cpu()
    return state


def peft_target_modules(model: nn.Module) -> list[str]:
    """The target_modules list for PEFT: leaf names when they select exactly the adapted
    layers, otherwise the full paths (so PEFT adapts nothing the adapter does not cover)."""
    wrapped = [path for path, _ in multilora_layers(model)]
    leaves = sorted({path.rsplit(".", 1)[-1] for path in wrapped})
    if set(matching_module_names(model, leaves)) == set(wrapped):
        return leaves
    return sorted(wrapped)


def export_peft(
    model: nn.Module,
    directory: str | os.PathLike,
    base_model_name_or_path: str | None,
    dtype: torch.dtype = torch.float32,
    revision: str | None = None,
) -> Path:
    """Write adapter_model.safetensors + adapter_config.json that PEFT loads as a LoRA.

    Args:
        model: a model adapted with ``inject_multilora`` (merged or not; ΔW is read
            from the adapter parameters either way).
        directory: output folder (created; files are replaced atomically).
        base_model_name_or_path: what ``PeftModel.from_pretrained`` users load first;
            a hub id or a local path.
        dtype: tensor dtype in the file (fp32 keeps the export exact).
        revision: the hub revision of the base the adapter was trained on (PEFT loads the
            base at it).
    """
    layers = list(multilora_layers(model))
    if not layers:
        raise MultiLoRAError("model has no MultiLoRA layers to export; inject or load one first")
    total_ranks = {layer.config.total_rank for _, layer in layers}
    if len(total_ranks) != 1:
        raise MultiLoRAError(f"layers have different total ranks {sorted(total_ranks)}")
    total_rank = total_ranks.pop()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = peft_state_dict(model, dtype)
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": total_rank,
        # lora_alpha == r makes PEFT's scaling exactly 1: alpha/r and the scales live in B.
        "lora_alpha": total_rank,
        "target_modules": peft_target_modules(model),
        "lora_dropout": 0.0,
        # GPT-2's Conv1D stores (in, out); PEFT needs to know to transpose ΔW.
        "fan_in_fan_out": all(layer.fan_in_fan_out for _, layer in layers),
        "bias": "none",
        "use_rslora": False,
        "use_dora": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "rank_pattern": {},
        "alpha_pattern": {},
        "layers_to_transform": None,
        "layers_pattern": None,
        "revision": revision,
        "inference_mode": True,
    }
    atomic_write(directory / PEFT_WEIGHTS_NAME, lambda p: save_file(tensors, str(p)))
    atomic_write(
        directory / PEFT_CONFIG_NAME,
        lambda p: p.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n"),
    )
    return directory
