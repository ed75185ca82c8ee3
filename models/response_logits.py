"""Logits only where a label is predicted: the output head applied to those positions alone.

A causal LM's head turns every position's hidden state into a vocabulary-sized row of
logits, and the loss then keeps the rows that predict a label. With prompts masked out
of the loss (the default) that is a few rows in a hundred, and with SmolLM2's 49k
vocabulary the head and its log-softmax over every position are a quarter of a training
step: SmolLM2-135M on this 2-core CPU trains 279 tokens/s instead of 202 (x1.38,
benchmarks/real_model.py, RESULTS.md).

The model is still called as a whole (so DDP, accelerate's wrappers and activation
checkpointing see their usual forward); a pre-hook on its output embeddings hands the head
only the hidden states that predict a label. Whatever the model does to the head's output
row by row (Gemma's soft-capping, Cohere's logit scale) still applies.
"""

from __future__ import annotations

import torch
from torch import nn


def output_head(model: nn.Module) -> nn.Module | None:
    """The module that maps hidden states to logits, or None where hooking it would change
    the result: no output embeddings, or a mixture-of-experts model adding its router loss."""
    inner = getattr(model, "module", model)  # DistributedDataParallel and similar wrappers
    get = getattr(inner, "get_output_embeddings", None)
    head = get() if callable(get) else None
    if head is None or getattr(getattr(inner, "config", None), "output_router_logits", False):
        return None
    return head


def response_logits(
    model: nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int,
    **forward_kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, targets): the logits of every position whose next token is a label, one row
    each (N x vocab), and those labels (N). Labels equal to `ignore_index` are not predicted.
    `forward_kwargs` go to the model's forward (attention_mask, position_ids); labels are
    not passed, so the model computes no loss of its own."""
    targets = labels[:, 1:]
    predicts = torch.zeros_like(labels, dtype=torch.bool)
    predicts[:, :-1] = targets != ignore_index
    wanted = targets[predicts[:, :-1]]
    head = output_head(model)
    if head is None:
        logits = model(input_ids=input_ids, **forward_kwargs).logits
        return logits[predicts.to(logits.device)], wanted.to(logits.device)

    def only_predicting(_module, args):
        hidden = args[0]
        return (hidden[predicts.to(hidden.device)], *args[1:])

    handle = head.register_forward_pre_hook(only_predicting)
    try:
        logits = model(input_ids=input_ids, **forward_kwargs).logits
    finally:
        handle.remove()
    if logits.shape[:-1] != wanted.shape:
        raise RuntimeError(
            f"{type(model).__name__} reshaped its output head's result ({tuple(logits.shape)} "
            f"for {wanted.numel()} positions): response_logits cannot be used with it"
        )
    return logits, wanted.to(logits.device)
