"""Put MultiLoRA into any causal LM, and take it out again.

inject (freeze the base, wrap the target linears) · save / load (safetensors +
versioned JSON) · merge / unmerge · ΔW per layer (dense or factored) · optimizer parameter groups.
Module paths are always the *base model's* paths ("model.layers.0.self_attn.q_proj"),
so saved adapters do not depend on how the wrapper names its children.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers.pytorch_utils import Conv1D

from ..content import atomic_file
from .config import (
    FORMAT_VERSION,
    AdapterFormatError,
    MultiLoRAConfig,
    MultiLoRAError,
    TargetNotFoundError,
)
from .layer import LowRankDelta, MultiLoRALinear

ADAPTER_WEIGHTS_NAME = "adapter.safetensors"
ADAPTER_CONFIG_NAME = "adapter_config.json"
_LINEAR_TYPES = (nn.Linear, Conv1D)


@dataclass
class InjectionReport:
    """What ``inject_multilora`` did."""

    wrapped: list[str]
    """Module paths that now carry an adapter, in model order."""
    trainable_params: int
    """Parameters that will be trained (adapter A, B and learnable scales)."""
    base_params: int
    """Parameters of the base model (all frozen)."""

    @property
    def trainable_share(self) -> float:
        """trainable_params / base_params: the adapter's size relative to the base."""
        return self.trainable_params / self.base_params if self.base_params else 0.0

    def summary(self) -> str:
        """One line for logs."""
        return (
            f"MultiLoRA wrapped {len(self.wrapped)} layers; trainable {self.trainable_params:,} "
            f"params = {100 * self.trainable_share:.3f}% of the base's {self.base_params:,}"
        )


def multilora_layers(model: nn.Module) -> Iterator[tuple[str, MultiLoRALinear]]:
    """Yield (module path, layer) for every MultiLoRA layer in the model."""
    for name, module in model.named_modules():
        if isinstance(module, MultiLoRALinear):
            yield name, module


def linear_layer_names(model: nn.Module) -> list[str]:
    """Paths of every nn.Linear / Conv1D in the model: the names target_modules can use."""
    return [name for name, m in model.named_modules() if isinstance(m, _LINEAR_TYPES)]


def matching_module_names(model: nn.Module, target_modules: list[str] | str) -> list[str]:
    """Paths of the modules that ``target_modules`` selects (any module type).

    A list entry matches a path equal to it or ending in "." + entry, as PEFT does;
    a "^" regex must match the whole path.
    """
    names = [name for name, _ in model.named_modules() if name]
    if isinstance(target_modules, str):
        pattern = re.compile(target_modules)
        return [n for n in names if pattern.fullmatch(n)]
    targets = list(target_modules)
    return [n for n in names if any(n == t or n.endswith("." + t) for t in targets)]


def inject_multilora(model: nn.Module, config: MultiLoRAConfig) -> InjectionReport:
    """Freeze every base parameter and wrap each target linear layer in a MultiLoRALinear.

    Raises TargetNotFoundError (listing the model's linear layers) when nothing matches,
    or when a target names a module that is not a linear layer.
    """
    if any(True for _ in multilora_layers(model)):
        raise MultiLoRAError(
            "model already has MultiLoRA layers; start from an un-adapted base model "
            "(or call unload_multilora first)"
        )
    matched = matching_module_names(model, config.target_modules)
    not_linear = [
        f"{n} ({type(model.get_submodule(n)).__name__})"
        for n in matched
        if not isinstance(model.get_submodule(n), _LINEAR_TYPES)
    ]
    if not_linear:
        raise TargetNotFoundError(
            f"target_modules {config.target_modules!r} matched modules that are not linear "
            f"layers: {not_linear[:5]}{' …' if len(not_linear) > 5 else ''}. Target the "
            f"linear layers inside them; this model's linear layers are: "
            f"{_describe_linears(model)}"
        )
    if not matched:
        raise TargetNotFoundError(
            f"target_modules {config.target_modules!r} matched no layer of "
            f"{type(model).__name__}. Use suffixes of these linear layer names (or a '^' regex "
            f"over full paths): {_describe_linears(model)}"
        )
    return _inject_paths(model, config, matched)


def _inject_paths(model: nn.Module, config: MultiLoRAConfig, paths: list[str]) -> InjectionReport:
    base_params = sum(p.numel() for p in model.parameters())
    model.requires_grad_(False)
    for path in paths:
        parent_name, _, child_name = path.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child_name, MultiLoRALinear(getattr(parent, child_name), config))
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return InjectionReport(wrapped=list(paths), trainable_params=trainable, base_params=base_params)


def _describe_linears(model: nn.Module) -> str:
    """Distinct linear leaf names with one example path each, short enough for a message."""
    examples: dict[str, str] = {}
    for name in linear_layer_names(model):
        examples.setdefault(name.rsplit(".", 1)[-1], name)
    return ", ".join(f"{leaf} (e.g. {path})" for leaf, path in examples.items()) or "none"


def _single_config(model: nn.Module) -> MultiLoRAConfig:
    layers = list(multilora_layers(model))
    if not layers:
        raise MultiLoRAError("model has no MultiLoRA layers; call inject_multilora first")
    first = layers[0][1].config
    if any(layer.config != first for _, layer in layers):
        raise MultiLoRAError("model has MultiLoRA layers with different configs; cannot save one")
    return first


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapter tensors, keyed "<module path>.lora_A" / ".lora_B" / ".lora_scale".

    Scales are included only when they are learnable (the ``lora`` init has none).
    """
    state: dict[str, torch.Tensor] = {}
    for path, layer in multilora_layers(model):
        state[f"{path}.lora_A"] = layer.lora_A.detach()
        state[f"{path}.lora_B"] = layer.lora_B.detach()
        if isinstance(layer.lora_scale, nn.Parameter):
            state[f"{path}.lora_scale"] = layer.lora_scale.detach()
    return state


def save_adapter(model: nn.Module, directory: str | os.PathLike) -> Path:
    """Write adapter.safetensors and adapter_config.json (versioned) into ``directory``.

    Each file goes to a temp name first and is renamed into place; the config is
    written last, so a directory with a config always has its weights.
    """
    config = _single_config(model)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.contiguous().cpu() for k, v in adapter_state_dict(model).items()}
    atomic_write(
        directory / ADAPTER_WEIGHTS_NAME,
        lambda p: save_file(tensors, str(p), metadata={"format_version": str(FORMAT_VERSION)}),
    )
    meta = {
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "target_paths": [path for path, _ in multilora_layers(model)],
        "base_model_name_or_path": getattr(getattr(model, "config", None), "name_or_path", None),
    }
    atomic_write(
        directory / ADAPTER_CONFIG_NAME,
        lambda p: p.write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n"),
    )
    return directory


def read_adapter_config(directory: str | os.PathLike) -> tuple[MultiLoRAConfig, dict]:
    """Read and validate adapter_config.json: returns (config, the whole JSON dict)."""
    path = Path(directory) / ADAPTER_CONFIG_NAME
    if not path.is_file():
        raise AdapterFormatError(
            f"{path} not found; point to a directory written by save_adapter "
            f"(for a PEFT export use peft.PeftModel.from_pretrained instead)"
        )
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise AdapterFormatError(f"{path} is not valid JSON ({exc}); re-save the adapter") from exc
    version = meta.get("format_version")
    if version is None or "config" not in meta or "target_paths" not in meta:
        raise AdapterFormatError(
            f"{path} lacks format_version/config/target_paths: not a MultiLoRA adapter "
            f"(a PEFT adapter_config.json loads with peft.PeftModel.from_pretrained)"
        )
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise AdapterFormatError(
            f"{path} has format_version {version!r}, newer than this code's {FORMAT_VERSION}; "
            f"update the code that loads it"
        )
    try:
        config = MultiLoRAConfig.from_dict(meta["config"])
    except MultiLoRAError as exc:
        raise AdapterFormatError(f"{path}: {exc}") from exc
    return config, meta


def load_adapter(model: nn.Module, directory: str | os.PathLike) -> InjectionReport:
    """Inject the saved adapter's layers into an un-adapted base model and load its weights.

    Checks that every saved layer exists in the model and that every tensor's shape
    matches, and says which key and which shapes when not.
    """
    directory = Path(directory)
    config, meta = read_adapter_config(directory)
    weights_path = directory / ADAPTER_WEIGHTS_NAME
    if not weights_path.is_file():
        raise AdapterFormatError(f"{weights_path} not found next to {ADAPTER_CONFIG_NAME}")
    paths = list(meta["target_paths"])
    present = {name for name, _ in model.named_modules()}
    missing = [p for p in paths if p not in present]
    if missing:
        raise AdapterFormatError(
            f"adapter in {directory} targets layers this model lacks: {missing[:5]}"
            f"{' …' if len(missing) > 5 else ''}. Load it into the base model it was trained on "
            f"({meta.get('base_model_name_or_path')!r})"
        )
    if any(True for _ in multilora_layers(model)):
        raise MultiLoRAError(
            "load_adapter expects an un-adapted base model, but this one already has "
            "MultiLoRA layers; load a fresh base (or call unload_multilora first)"
        )
    report = _inject_paths(model, config, paths)
    load_adapter_weights(model, load_file(str(weights_path)), source=str(weights_path))
    return report


@torch.no_grad()
def load_adapter_weights(
    model: nn.Module, state: dict[str, torch.Tensor], source: str = "state dict"
) -> None:
    """Copy adapter tensors (as from ``adapter_state_dict``) into an adapted model, strictly."""
    expected = adapter_state_dict(model)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise AdapterFormatError(
            f"{source} does not fit the model's adapter: missing keys {missing[:5]}, "
            f"unexpected keys {unexpected[:5]}; were the config and weights saved together?"
        )
    for key, target in expected.items():
        if state[key].shape != target.shape:
            raise AdapterFormatError(
                f"{source}: {key} has shape {tuple(state[key].shape)} but the model expects "
                f"{tuple(target.shape)}; the base model's sizes differ from the one it was "
                f"trained on"
            )
        target.copy_(state[key].to(device=target.device, dtype=target.dtype))


def merge_adapters(model: nn.Module) -> None:
    """Merge every adapter's ΔW into its base weight (fp32 arithmetic)."""
    for _, layer in multilora_layers(model):
        layer.merge()


def unmerge_adapters(model: nn.Module) -> None:
    """Undo ``merge_adapters``."""
    for _, layer in multilora_layers(model):
        layer.unmerge()


@torch.no_grad()
def delta_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """Module path -> dense fp32 ΔW (out × in), on the CPU; for SVD analysis."""
    return {path: layer.delta_weight().cpu() for path, layer in multilora_layers(model)}


@torch.no_grad()
def delta_factors(model: nn.Module) -> dict[str, LowRankDelta]:
    """Module path -> ΔW factored as fp32 (b: out × n·r, a: n·r × in), b @ a = ΔW; CPU copies.

    What ``delta_weights`` gives without ever forming out × in: for spectrum analysis of
    large models (``tasks.analysis.spectra.analyse_deltas`` takes these pairs as they are).
    """
    return {
        path: LowRankDelta(*(f.detach().to("cpu", copy=True) for f in layer.delta_factors()))
        for path, layer in multilora_layers(model)
    }


def set_reference_forward(model: nn.Module, enabled: bool) -> None:
    """Switch every layer between the fused forward and the per-module reference loop."""
    for _, layer in multilora_layers(model):
        layer.use_reference = enabled


def scale_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The learnable scale parameters (empty for the ``lora`` init)."""
    return [
        layer.lora_scale
        for _, layer in multilora_layers(model)
        if isinstance(layer.lora_scale, nn.Parameter)
    ]


def adapter_parameter_groups(
    model: nn.Module,
    lr: float,
    weight_decay: float = 0.0,
    scale_lr: float | None = None,
    scale_weight_decay: float = 0.0,
) -> list[dict]:
    """Optimizer parameter groups: A and B in one group, the scales in their own.

    Scales default to no weight decay: decaying them pulls the update back to zero,
    which is a different regulariser from decaying A and B.
    """
    scales = scale_parameters(model)
    scale_ids = {id(p) for p in scales}
    matrices = [
        p
        for _, layer in multilora_layers(model)
        for p in layer.parameters()
        if p.requires_grad and id(p) not in scale_ids
    ]
    groups = [{"name": "lora", "params": matrices, "lr": lr, "weight_decay": weight_decay}]
    if scales:
        groups.append(
            {
                "name": "scales",
                "params": scales,
                "lr": lr if scale_lr is None else scale_lr,
                "weight_decay": scale_weight_decay,
            }
        )
    return groups


def unload_multilora(model: nn.Module, merge: bool = True) -> nn.Module:
    """Replace every MultiLoRA layer by its base layer (merging ΔW first if asked).

    Returns the same model object, now a plain transformers model again.
    """
    for path, layer in list(multilora_layers(model)):
        if merge:
            layer.merge()
        elif layer.merged:
            layer.unmerge()
        parent_name, _, child_name = path.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child_name, layer.base_layer)
    return model


def atomic_write(path: Path, write) -> None:
    """`write(tmp)`, then `tmp` renamed to `path` (models/content.py's atomic_file)."""
    with atomic_file(path) as tmp:
        write(tmp)
