"""Speed switches for training a (possibly adapted) transformers causal LM.

Kept apart from the training loop so the GPU benchmark and the train stage turn
them on the same way.
"""

from __future__ import annotations

from torch import nn


def transformer_blocks(model: nn.Module) -> list[nn.Module]:
    """The repeated decoder blocks, found by the class names transformers lists in
    ``_no_split_modules`` (e.g. LlamaDecoderLayer), so any architecture works."""
    names = set(getattr(model, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names]


def compile_blocks(model: nn.Module, backend: str = "inductor") -> int:
    """``torch.compile`` every decoder block in place; returns how many were compiled.

    Regional compilation, as torchtune does: every block runs the same code on the
    same shapes, so dynamo compiles one block's graph once and reuses it for all
    layers. Compile time is that of one block (seconds, not minutes for the whole
    model), and the fusions that matter (norms, rotary, SwiGLU, residual adds, the
    adapter's small ops) all live inside the blocks.
    """
    blocks = transformer_blocks(model)
    if not blocks:
        raise ValueError(
            f"{type(model).__name__} lists no decoder block classes in _no_split_modules; "
            "turn training.compile off for this model"
        )
    for block in blocks:
        block.compile(backend=backend)
    return len(blocks)


def enable_activation_checkpointing(model) -> None:
    """Non-reentrant activation checkpointing under whichever name this transformers uses
    (``activation_checkpointing_enable`` from v5; ``gradient_checkpointing_enable`` before)."""
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
