"""Greedy generation from a causal LM, batched with left padding and a KV cache.

Prompts are encoded in the run's prompt format (models/prompt_format.py), as training
encoded them, and run longest first in batches (less padding); each row stops at an
end-of-turn token (the tokenizer's eos, which training appends to every response, and
the model's generation_config eos ids: `<|im_end|>` for a ChatML model) or at the first
of the suite's stop sequences, and its text is returned cut before that stop sequence. Generation suites (GSM8K-style exact match, tasks/evaluation/evaluate.py)
are scored from these texts.

The model must already be on `device`; it is put in eval mode for the call
and given back in the mode it came in.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from multilora_pipeline.models.prompt_format import PromptFormat
from multilora_pipeline.tasks.evaluation.lm import CausalLM, eval_mode, left_pad, position_ids


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def generate_greedy(
    model,
    fmt: PromptFormat,
    prompts: Sequence[str],
    *,
    systems: Sequence[str] | None = None,
    max_new_tokens: int,
    stop_sequences: Sequence[str] = (),
    batch_size: int = 16,
    device=None,
    progress: bool = False,
    desc: str = "generate",
) -> list[str]:
    """Greedy continuations of `prompts`, batched with left padding and a KV cache.

    `systems` are the prompts' headers (prompt_format.render). Each row stops at an
    end-of-turn token or when its text contains a stop sequence;
    the text is returned cut before the first stop sequence (end tokens are never included).
    """
    lm = CausalLM(model, fmt, device)
    budget = None if lm.max_length is None else max(1, lm.max_length - max_new_tokens)
    encoded = [ids or list(lm.empty_context) for ids in fmt.encode(list(prompts), systems)]
    if budget is not None:
        encoded = [ids[-budget:] for ids in encoded]  # keep the question, drop old shots
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    outputs = [""] * len(encoded)
    bar = tqdm(total=len(encoded), desc=desc, unit="item", disable=not progress, mininterval=2)
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            texts = _generate_batch(lm, [encoded[i] for i in chunk], max_new_tokens, stop_sequences)
            for i, text in zip(chunk, texts, strict=True):
                outputs[i] = text
            bar.update(len(chunk))
    bar.close()
    return outputs


def _generate_batch(
    lm: CausalLM, prompts: list[list[int]], max_new_tokens: int, stops: Sequence[str]
) -> list[str]:
    ids, mask = left_pad(prompts, lm.pad_id)
    positions = position_ids(mask)
    logits, cache = lm(ids, mask, positions, use_cache=True, keep=1)
    generated: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for step in range(max_new_tokens):
        next_ids = logits[:, -1].argmax(-1).cpu()
        for row, token in enumerate(next_ids.tolist()):
            if done[row]:
                continue
            if token in lm.stop_ids:
                done[row] = True
                continue
            generated[row].append(token)
            if stops:
                text = lm.tokenizer.decode(generated[row], skip_special_tokens=True)
                done[row] = _cut_at_stop(text, stops)[1]
        if all(done) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones((len(prompts), 1), dtype=mask.dtype)], dim=1)
        positions = positions[:, -1:] + 1
        logits, cache = lm(next_ids[:, None], mask, positions, cache=cache, use_cache=True)
    texts = [lm.tokenizer.decode(g, skip_special_tokens=True) for g in generated]
    return [_cut_at_stop(t, stops)[0] for t in texts]
