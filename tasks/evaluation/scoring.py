"""Multiple-choice log-likelihood scoring of a causal LM, batched and one at a time.

Scoring follows lm-evaluation-harness exactly: each choice is scored by the
summed log-probability of `delimiter + choice` after the prompt (context and
continuation tokenised as lm-eval's `_encode_pair` does), `acc` takes the
argmax of the log-likelihoods and `acc_norm` the argmax of log-likelihood
divided by the choice's length in characters (lm_eval/api/task.py,
`completion_len = len(choice)` of `doc_to_choice`, no delimiter).

Speed: the batched scorer runs each item's shared context once. Contexts of a
batch are left-padded, so the last column holds every row's next-token
distribution: single-token choices (MMLU letters, yes/no, True/False) are
scored from that one forward pass alone, and so are tokens every choice of an
item starts with (a chat context's newline, moved into the choices as lm-eval
moves it): they join the context, and the columns before the last score them. Longer choices reuse the context's KV
cache (its rows picked per choice, choices grouped by length to limit padding),
so only their own tokens are run.

Prompts go through the run's prompt format (models/prompt_format.py), exactly as
training encoded them: with a chat format the context is the user turn plus the
assistant's generation prompt, and the choice follows it with no delimiter, as the
trained response did and as lm-eval scores it under `--apply_chat_template`.
`score_choices_reference` scores one (context, choice) pair per forward pass,
with no padding and no cache; a test holds the two to the same numbers.

The model is called through tasks/evaluation/lm.py, as generation and the held-out
loss call it.

The model must already be on `device`; it is put in eval mode for the call
and given back in the mode it came in.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from multilora_pipeline.models.prompt_format import PromptFormat
from multilora_pipeline.tasks.evaluation.lm import (
    CausalLM,
    eval_mode,
    left_pad,
    position_ids,
    right_pad,
    token_logprobs,
)


def _cache_rows(cache, rows: torch.Tensor):
    """A new KV cache holding the batch rows `rows` (repeats allowed); `cache` is left as it was.

    transformers' `batch_select_indices` replaces each layer's tensors, so it runs on
    a shallow copy whose per-layer objects (or tensor lists, before 4.56) are copies.
    """
    if cache is None:
        return None
    if isinstance(cache, tuple):  # legacy cache: ((key, value), ...) per layer, batch first
        return tuple(tuple(t[rows.to(t.device)] for t in layer) for layer in cache)
    view = copy.copy(cache)
    if hasattr(cache, "layers"):  # transformers >= 4.56: one object per layer
        view.layers = [copy.copy(layer) for layer in cache.layers]
        keys = next(
            (x.keys for x in cache.layers if isinstance(getattr(x, "keys", None), torch.Tensor)),
            None,
        )
    else:  # older DynamicCache: lists of tensors
        view.key_cache, view.value_cache = list(cache.key_cache), list(cache.value_cache)
        keys = cache.key_cache[0] if cache.key_cache else None
    view.batch_select_indices(rows.to(keys.device if keys is not None else rows.device))
    return view


# Fixed cost of one extra forward pass, in tokens: roughly what a 7B model's weight reads
# cost on a GPU, or Python and dispatch overhead on a CPU. Splitting the choices of a
# batch into another pass must save more padded tokens than this.
SPLIT_OVERHEAD_TOKENS = 256


def length_groups(lengths: list[int], overhead: int = SPLIT_OVERHEAD_TOKENS) -> list[list[int]]:
    """Indices grouped longest first; a new group starts where it saves > `overhead` padded tokens.

    Starting a group at a row saves (rows left) x (group's longest - this row) padded
    tokens. On MMLU answer texts this cuts padding from 2.7x to about 1.4x the real tokens.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    for rank, i in enumerate(order):
        if not groups or (len(order) - rank) * (lengths[groups[-1][0]] - lengths[i]) > overhead:
            groups.append([])
        groups[-1].append(i)
    return groups


# --- multiple choice: encoding ------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    """One forward of an item, tokenised: a context (with prefix) and the tokens of the
    item's choices `choices` that share it (every choice, unless the item is too long).

    The context's last `shared` tokens belong to every continuation (a chat context's
    newline, which lm-eval moves into the choices): they are scored with the context, once,
    and their log-probability is added to every choice."""

    context: list[int]
    continuations: list[list[int]]
    item: int = 0
    choices: tuple[int, ...] = (0,)
    shared: int = 0


def _share_prefix(context: list[int], continuations: list[list[int]]) -> _Request:
    """The tokens every continuation starts with, moved to the end of the context (each
    continuation keeps at least one token): single-token choices such as "\nyes" / "\nno"
    are then scored from the context's forward pass alone."""
    shared = 0
    shortest = min(len(c) for c in continuations)
    while shared < shortest - 1 and len({c[shared] for c in continuations}) == 1:
        shared += 1
    return _Request(
        context + continuations[0][:shared], [c[shared:] for c in continuations], shared=shared
    )


def _fit_to_window(
    item: int, context: list[int], continuations: list[list[int]], window: int | None
) -> list[_Request]:
    """The item's requests: one shared context, or, when a (context, choice) pair is longer
    than the model's window, lm-eval's per-pair truncation: each pair keeps its last
    window + 1 tokens (the last is only a target), so the context loses its oldest tokens
    for that choice alone. Choices left with the same context still share it."""
    everything = tuple(range(len(continuations)))
    if window is None or all(len(context) + len(c) <= window + 1 for c in continuations):
        shared = _share_prefix(context, continuations)
        return [_Request(shared.context, shared.continuations, item, everything, shared.shared)]
    by_context: dict[int, list[int]] = {}
    for j, cont in enumerate(continuations):
        keep = min(len(context), max(1, window + 1 - len(cont)))
        by_context.setdefault(keep, []).append(j)
    return [
        _Request(context[-keep:], [continuations[j] for j in js], item, tuple(js))
        for keep, js in by_context.items()
    ]


def encode_requests(
    lm: CausalLM,
    contexts: Sequence[str],
    choices: Sequence[Sequence[str]],
    delimiter: str,
    systems: Sequence[str] | None = None,
) -> list[_Request]:
    """Tokenise as lm-eval's `_encode_pair`: continuation = tokens(context + cont)[len(context):],
    the context rendered in the run's prompt format (its prefix added after), and truncate
    to the model's window per (context, choice) pair as lm-eval does (`_fit_to_window`).

    The context's trailing whitespace moves into the continuation, as lm-eval moves it: a
    chat context ends with its generation prompt's newline, so every choice then carries
    that newline's log-probability too (the same for each choice: acc cannot change, and
    acc_norm is lm-eval's to the item)."""
    ctx_texts, cont_texts = [], []
    joint = lm.fmt.delimiter(delimiter)
    for context, options in zip(lm.fmt.render(contexts, systems), choices, strict=True):
        stripped = context.rstrip()
        moved = context[len(stripped) :]
        ctx_texts.append(stripped)
        cont_texts.append([moved + joint + c for c in options])
    ctx_ids = lm.encode(ctx_texts)
    flat_whole = lm.encode(
        [c + t for c, conts in zip(ctx_texts, cont_texts, strict=True) for t in conts]
    )
    flat_cont = lm.encode([t for conts in cont_texts for t in conts])
    requests, k = [], 0
    for item, (ctx_text, ctx, conts) in enumerate(zip(ctx_texts, ctx_ids, cont_texts, strict=True)):
        continuations = []
        for _ in conts:
            whole = flat_whole[k]
            # Fall back to tokenising the continuation alone when a BPE merge crosses the
            # boundary (the whole text then does not start with the context's tokens).
            ok = whole[: len(ctx)] == ctx and len(whole) > len(ctx)
            continuations.append(whole[len(ctx) :] if ok else flat_cont[k])
            k += 1
        full_ctx = lm.fmt.prefix(ctx_text) + ctx if ctx else list(lm.empty_context)
        requests += _fit_to_window(item, full_ctx, continuations, lm.max_length)
    return requests


def _per_item(requests: list[_Request], scores: list[list[float]], items: int) -> list[list[float]]:
    """Each item's choice scores in choice order, from its requests' scores."""
    out: list[dict[int, float]] = [{} for _ in range(items)]
    for request, lls in zip(requests, scores, strict=True):
        out[request.item].update(zip(request.choices, lls, strict=True))
    return [[found[j] for j in sorted(found)] for found in out]


# --- multiple choice: the two scorers -------------------------------------------------


def _score_batch(
    lm: CausalLM, batch: list[_Request], overhead: int = SPLIT_OVERHEAD_TOKENS
) -> list[list[float]]:
    """Log-likelihood of every choice of every item in `batch`; each context runs once."""
    ctx_ids, ctx_mask = left_pad([r.context for r in batch], lm.pad_id)
    needs_rest = any(len(c) > 1 for r in batch for c in r.continuations)
    shared = max(r.shared for r in batch)
    logits, cache = lm(
        ctx_ids, ctx_mask, position_ids(ctx_mask), use_cache=needs_rest, keep=shared + 1
    )
    # Left padding puts every row's last context token in the last column, and its shared
    # tokens (predicted by the columns before it) just before.
    logp = logits[:, -(shared + 1) :].float().log_softmax(-1).cpu()
    first = logp[:, -1]
    scores = []
    for b, r in enumerate(batch):
        common = sum(
            float(logp[b, shared - r.shared + j, token])
            for j, token in enumerate(r.context[len(r.context) - r.shared :])
        )
        scores.append([common + float(first[b, c[0]]) if c else 0.0 for c in r.continuations])
    if not needs_rest:
        return scores

    # Choices with more than one token: run tokens 1..n-1 on a copy of their item's cache,
    # in groups of similar length so little work goes into padding.
    rows = [
        (b, j) for b, r in enumerate(batch) for j, c in enumerate(r.continuations) if len(c) > 1
    ]
    lengths = [len(batch[b].continuations[j]) for b, j in rows]
    for whole_group in length_groups(lengths, overhead):
        step = lm.rows_within_budget(max(lengths[g] for g in whole_group))
        for at in range(0, len(whole_group), step):  # bounded logits, as in held-out loss
            part = [rows[g] for g in whole_group[at : at + step]]
            index = torch.tensor([b for b, _ in part])
            conts = [batch[b].continuations[j] for b, j in part]
            cont_ids, cont_mask = right_pad([c[:-1] for c in conts], lm.pad_id)
            targets, _ = right_pad([c[1:] for c in conts], 0)
            positions = ctx_mask.sum(-1)[index][:, None] + torch.arange(cont_ids.shape[1])[None, :]
            mask = torch.cat([ctx_mask[index], cont_mask], dim=1)
            logits, _ = lm(cont_ids, mask, positions, cache=_cache_rows(cache, index))
            logp = token_logprobs(logits, targets.to(logits.device)).cpu() * cont_mask
            for (b, j), total in zip(part, logp.sum(-1).tolist(), strict=True):
                scores[b][j] += total
    return scores


def score_choices(
    model,
    fmt: PromptFormat,
    contexts: Sequence[str],
    choices: Sequence[Sequence[str]],
    *,
    delimiter: str = " ",
    systems: Sequence[str] | None = None,
    batch_size: int = 16,
    device=None,
    progress: bool = False,
    desc: str = "score",
    split_overhead_tokens: int = SPLIT_OVERHEAD_TOKENS,
) -> list[list[float]]:
    """Summed log p(delimiter + choice | context) for every choice of every context, batched.

    `delimiter` is the suite's target delimiter (the prompt format decides whether it is
    used), `systems` each context's header (prompt_format.render). `batch_size` is items
    (contexts) per forward pass. Items are scored longest
    first (less padding) and returned in input order. Multi-token choices run in
    extra passes grouped by length (`split_overhead_tokens`: see `length_groups`).
    """
    lm = CausalLM(model, fmt, device)
    requests = encode_requests(lm, contexts, choices, delimiter, systems)
    order = sorted(
        range(len(requests)),
        key=lambda i: (
            -(len(requests[i].context) + max(map(len, requests[i].continuations), default=0))
        ),
    )
    results: list[list[float]] = [[] for _ in requests]
    # One request per item, more for an item too long for the model (_fit_to_window).
    bar = tqdm(total=len(requests), desc=desc, unit="item", disable=not progress, mininterval=2)
    with eval_mode(model):
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            for i, lls in zip(
                chunk,
                _score_batch(lm, [requests[i] for i in chunk], split_overhead_tokens),
                strict=True,
            ):
                results[i] = lls
            bar.update(len(chunk))
    bar.close()
    return _per_item(requests, results, len(contexts))


def score_choices_reference(
    model,
    fmt: PromptFormat,
    contexts: Sequence[str],
    choices: Sequence[Sequence[str]],
    *,
    delimiter: str = " ",
    systems: Sequence[str] | None = None,
    device=None,
) -> list[list[float]]:
    """The same numbers as `score_choices`, one (context, choice) per forward pass: no padding,
    no cache. Slow; it is the reference the batched scorer is checked against."""
    lm = CausalLM(model, fmt, device)
    requests = encode_requests(lm, contexts, choices, delimiter, systems)
    results = []
    with eval_mode(model):
        for r in requests:
            lls = []
            for cont in r.continuations:
                if not cont:
                    lls.append(0.0)
                    continue
                ids = torch.tensor([r.context + cont])
                mask = torch.ones_like(ids)
                logits, _ = lm(ids, mask, position_ids(mask))
                n = len(r.context) - r.shared  # the shared tokens are the choice's too
                targets = torch.tensor(r.context[n:] + cont, device=logits.device)
                lls.append(float(token_logprobs(logits[0, n - 1 : -1], targets).sum()))
            results.append(lls)
    return _per_item(requests, results, len(contexts))


def choice_metrics(loglik: Sequence[float], choices: Sequence[str], label: int) -> dict:
    """lm-eval's acc and acc_norm for one item (ties go to the first choice, as np.argmax)."""
    lls = np.asarray(loglik, dtype=np.float64)
    lengths = np.asarray([float(len(c)) for c in choices])
    pred = int(np.argmax(lls))
    # An empty choice has length 0; lm-eval would divide by zero. Count it as 1 character.
    pred_norm = int(np.argmax(lls / np.maximum(lengths, 1.0)))
    return {
        "pred": pred,
        "pred_norm": pred_norm,
        "acc": float(pred == label),
        "acc_norm": float(pred_norm == label),
    }
