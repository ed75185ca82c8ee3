"""What every evaluation call shares: the model called the same way whatever its transformers
version (`CausalLM`), eval mode, padding, positions and token log-probabilities.

Multiple-choice scoring (scoring.py), greedy generation (generate.py) and the held-out
loss (evaluate.py, through `CausalLM.response_logits`) all go through these, so the three see the model identically.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from multilora_pipeline.models.prompt_format import PromptFormat
from multilora_pipeline.models.response_logits import response_logits

# --- the model, called the same way whatever its transformers version ----------------


def _forward_parameters(model) -> set[str]:
    """Keyword names the model's forward accepts (looking through PEFT-style wrappers)."""
    target = model
    while True:
        params = inspect.signature(target.forward).parameters
        only_varargs = all(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in params.values())
        if only_varargs and hasattr(target, "get_base_model"):
            target = target.get_base_model()
            continue
        return set(params)


# Largest full-logits tensor a scorer asks the model for (rows x length x vocab x 4 bytes):
# evaluation memory stays bounded whatever the vocabulary and the batch size.
LOGITS_BUDGET_BYTES = 256 << 20


class CausalLM:
    """A causal LM plus the few facts the scorers need about it and its tokenizer."""

    def __init__(self, model, fmt: PromptFormat, device=None):
        self.model, self.fmt, self.tokenizer = model, fmt, fmt.tokenizer
        tokenizer = fmt.tokenizer
        params = _forward_parameters(model)
        # transformers >= 5.x names the KV cache `cache`; older versions `past_key_values`.
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.keeps_last = "logits_to_keep" in params
        if device is None:
            device = next(model.parameters()).device
        self.device = torch.device(device)
        config = getattr(model, "config", None)
        self.max_length: int | None = getattr(config, "max_position_embeddings", None)
        self.vocab_size: int = getattr(config, "vocab_size", None) or len(fmt.tokenizer)
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        self.stop_ids = fmt.stop_ids(getattr(model, "generation_config", None))
        # An empty context still needs one token to condition on (lm-eval uses eos).
        self.empty_context: list[int] = (
            [bos] if bos is not None else ([eos] if eos is not None else [0])
        )
        pad = tokenizer.pad_token_id
        # The pad id only fills masked positions, so any valid id will do.
        self.pad_id: int = pad if pad is not None else (eos if eos is not None else 0)

    def _inputs(self, ids, mask, positions, use_cache: bool) -> dict:
        return {
            "input_ids": ids.to(self.device),
            "attention_mask": mask.to(self.device),
            "position_ids": positions.to(self.device),
            "use_cache": use_cache,
        }

    def response_logits(self, ids, mask, labels, ignore_index: int):
        """(logits, targets) where a label is predicted (models/response_logits.py): the
        output head runs on those positions only. The held-out loss's call."""
        kwargs = self._inputs(ids, mask, position_ids(mask), use_cache=False)
        return response_logits(
            self.model, kwargs.pop("input_ids"), labels, ignore_index=ignore_index, **kwargs
        )

    def __call__(self, ids, mask, positions, cache=None, use_cache=False, keep: int | None = None):
        """(logits, new cache); `keep`: only the last `keep` positions' logits are needed
        (a model that cannot skip the others returns them all: slice from the end)."""
        kwargs = self._inputs(ids, mask, positions, use_cache)
        if cache is not None:
            kwargs[self.cache_arg] = cache
        if keep and self.keeps_last:
            kwargs["logits_to_keep"] = keep
        out = self.model(**kwargs)
        new_cache = None
        if use_cache:
            new_cache = out.get("cache") if isinstance(out, dict) else None
            if new_cache is None:
                new_cache = out.get("past_key_values") if isinstance(out, dict) else None
        return out.logits, new_cache

    def rows_within_budget(self, length: int) -> int:
        """How many rows of `length` tokens one forward pass may hold while its full fp32
        logits stay within LOGITS_BUDGET_BYTES (at least one)."""
        return max(1, LOGITS_BUDGET_BYTES // (4 * max(1, length) * self.vocab_size))

    def encode(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        # verbose=False: long contexts are left-truncated to the model's window by the
        # scorer, so transformers' "will result in indexing errors" warning would only alarm.
        return self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]


@contextmanager
def eval_mode(model) -> Iterator[None]:
    """model.eval() and inference mode for the block; the previous train/eval mode after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
    return ids, mask


def right_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if seq:
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
    return ids, mask


def position_ids(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding (0 at each row's first real token)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) under `logits` (any leading shape), in fp32."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - logits.logsumexp(-1)
