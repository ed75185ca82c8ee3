"""MultiLoRA (arXiv 2311.11501) for Hugging Face causal LMs, in plain torch.

    from multilora_pipeline.models.multilora import MultiLoRAConfig, inject_multilora, save_adapter, export_peft

    report = inject_multilora(model, MultiLoRAConfig(n_modules=4, rank=8))
    ...train...
    save_adapter(model, "out/adapter")                 # our format, reloadable with load_adapter
    export_peft(model, "out/peft", "base-model-id")    # plain LoRA for PEFT / vLLM / lm-eval

config.py holds the settings, layer.py the fused layer, model.py injection,
save/load and merge, export.py the PEFT export.
"""

from .config import (  # noqa: F401 (re-exported: __all__ below is computed)
    FORMAT_VERSION,
    AdapterFormatError,
    MultiLoRAConfig,
    MultiLoRAConfigError,
    MultiLoRAError,
    TargetNotFoundError,
)

# The torch-backed parts load on first use (PEP 562): the spec schema imports the config
# alone, and a spec error should not wait seconds for torch.
_LAZY = {
    "export": ("export_peft", "peft_state_dict", "peft_target_modules"),
    "layer": ("LowRankDelta", "MultiLoRALinear"),
    "model": (
        "InjectionReport",
        "adapter_parameter_groups",
        "adapter_state_dict",
        "delta_factors",
        "delta_weights",
        "inject_multilora",
        "linear_layer_names",
        "load_adapter",
        "load_adapter_weights",
        "merge_adapters",
        "multilora_layers",
        "read_adapter_config",
        "save_adapter",
        "scale_parameters",
        "set_reference_forward",
        "unload_multilora",
        "unmerge_adapters",
    ),
}
_HOME = {name: module for module, names in _LAZY.items() for name in names}


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(__all__)


__all__ = sorted(
    [
        "FORMAT_VERSION",
        "AdapterFormatError",
        "MultiLoRAConfig",
        "MultiLoRAConfigError",
        "MultiLoRAError",
        "TargetNotFoundError",
        *_HOME,
    ]
)
