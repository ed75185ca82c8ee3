"""Evaluate a causal LM: multiple-choice log-likelihood, greedy generation, held-out loss.

Multiple choice follows lm-evaluation-harness exactly: each choice is scored by
the summed log-probability of `delimiter + choice` after the prompt (context and
continuation tokenised as lm-eval's `_encode_pair` does), `acc` takes the
argmax of the log-likelihoods and `acc_norm` the argmax of log-likelihood
divided by the choice's length in characters (lm_eval/api/task.py,
`completion_len = len(choice)` of `doc_to_choice`, no delimiter).

Speed: the batched scorer runs each item's shared context once. Contexts of a
batch are left-padded, so the last column holds every row's next-token
distribution: single-token choices (MMLU letters, yes/no, True/False) are
scored from that one forward pass alone. Longer choices reuse the context's KV
cache (its rows picked per choice, choices grouped by length to limit padding),
so only their own tokens are run.
`score_choices_reference` scores one (context, choice) pair per forward pass,
with no padding and no cache; a test holds the two to the same numbers.

Generation is greedy with the same left-padded KV-cache loop, stopping at the
suite's stop sequences or eos. Held-out loss uses the training tokenisation
(tasks/tokenise.py: bos + prompt + response + eos, loss on response + eos), so
it is the same quantity as the training loop's validation loss.

The model must already be on `device`; it is put in eval mode for the call
and given back in the mode it came in.
"""

from __future__ import annotations

import copy
import inspect
import json
import math
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from tqdm.auto import tqdm

from data_specs.errors import DataError
from tasks.eval_suites import SuiteFormat, extract_answer, suite_format
from tasks.tokenise import IGNORE, tokenise_records

if TYPE_CHECKING:  # the scorers need no pydantic at run time (GPU boxes, lm-eval-style use)
    from data_specs.schema import EvalSuiteSpec, EvaluationSpec


class SuiteData(NamedTuple):
    """One suite to score: its spec, its normalised Parquet, and an optional dev split for shots."""

    spec: EvalSuiteSpec
    path: Path
    dev_path: Path | None = None


@dataclass
class EvalResult:
    """Flat metrics (MLflow keys) and one prediction row per scored item."""

    metrics: dict[str, float]
    predictions: pd.DataFrame


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


class _CausalLM:
    """A causal LM plus the few facts the scorers need about it and its tokenizer."""

    def __init__(self, model, tokenizer, device=None, add_bos: bool = True):
        self.model, self.tokenizer = model, tokenizer
        params = _forward_parameters(model)
        # transformers >= 5.x names the KV cache `cache`; older versions `past_key_values`.
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.keeps_last = "logits_to_keep" in params
        if device is None:
            device = next(model.parameters()).device
        self.device = torch.device(device)
        config = getattr(model, "config", None)
        self.max_length: int | None = getattr(config, "max_position_embeddings", None)
        bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
        self.eos_id: int | None = eos
        self.prefix: list[int] = [bos] if add_bos and bos is not None else []
        # An empty context still needs one token to condition on (lm-eval uses eos).
        self.empty_context: list[int] = self.prefix or ([eos] if eos is not None else [0])
        pad = tokenizer.pad_token_id
        # The pad id only fills masked positions, so any valid id will do.
        self.pad_id: int = pad if pad is not None else (eos if eos is not None else 0)

    def __call__(self, ids, mask, positions, cache=None, use_cache=False, last_only=False):
        kwargs = {
            "input_ids": ids.to(self.device),
            "attention_mask": mask.to(self.device),
            "position_ids": positions.to(self.device),
            "use_cache": use_cache,
        }
        if cache is not None:
            kwargs[self.cache_arg] = cache
        if last_only and self.keeps_last:
            kwargs["logits_to_keep"] = 1  # only the last position's logits are needed
        out = self.model(**kwargs)
        new_cache = None
        if use_cache:
            new_cache = out.get("cache") if isinstance(out, dict) else None
            if new_cache is None:
                new_cache = out.get("past_key_values") if isinstance(out, dict) else None
        return out.logits, new_cache

    def encode(self, texts: list[str]) -> list[list[int]]:
        if not texts:
            return []
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]


@contextmanager
def _eval_mode(model) -> Iterator[None]:
    """model.eval() and inference mode for the block; the previous train/eval mode after."""
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


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


def _length_groups(lengths: list[int], overhead: int = SPLIT_OVERHEAD_TOKENS) -> list[list[int]]:
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


def _left_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if seq:
            ids[row, width - len(seq) :] = torch.tensor(seq)
            mask[row, width - len(seq) :] = 1
    return ids, mask


def _right_pad(seqs: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for row, seq in enumerate(seqs):
        if seq:
            ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
    return ids, mask


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding (0 at each row's first real token)."""
    return (mask.cumsum(-1) - 1).clamp(min=0)


# --- multiple choice: encoding ------------------------------------------------------


@dataclass(frozen=True)
class _Request:
    """One item, tokenised: the shared context (with prefix) and each choice's tokens."""

    context: list[int]
    continuations: list[list[int]]


def _encode_requests(
    lm: _CausalLM, contexts: Sequence[str], choices: Sequence[Sequence[str]], delimiter: str
) -> list[_Request]:
    """Tokenise as lm-eval's `_encode_pair`: continuation = tokens(context + cont)[len(context):]."""
    ctx_texts, cont_texts = [], []
    for context, options in zip(contexts, choices, strict=True):
        # lm-eval moves the context's trailing whitespace into the continuation.
        stripped = context.rstrip()
        moved = context[len(stripped) :]
        ctx_texts.append(stripped)
        cont_texts.append([moved + delimiter + c for c in options])
    ctx_ids = lm.encode(ctx_texts)
    flat_whole = lm.encode(
        [c + t for c, conts in zip(ctx_texts, cont_texts, strict=True) for t in conts]
    )
    flat_cont = lm.encode([t for conts in cont_texts for t in conts])
    requests, k = [], 0
    for ctx, conts in zip(ctx_ids, cont_texts, strict=True):
        continuations = []
        for _ in conts:
            whole = flat_whole[k]
            # Fall back to tokenising the continuation alone when a BPE merge crosses the
            # boundary (the whole text then does not start with the context's tokens).
            ok = whole[: len(ctx)] == ctx and len(whole) > len(ctx)
            continuations.append(whole[len(ctx) :] if ok else flat_cont[k])
            k += 1
        full_ctx = lm.prefix + ctx if ctx else list(lm.empty_context)
        longest = max((len(c) for c in continuations), default=0)
        if lm.max_length is not None and len(full_ctx) + longest > lm.max_length:
            # Too long for the model: drop the context's oldest tokens (as lm-eval does).
            full_ctx = full_ctx[-max(1, lm.max_length - longest) :]
        requests.append(_Request(full_ctx, continuations))
    return requests


# --- multiple choice: the two scorers -------------------------------------------------


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target) under `logits` (any leading shape), in fp32."""
    logits = logits.float()
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    return picked - logits.logsumexp(-1)


def _score_batch(
    lm: _CausalLM, batch: list[_Request], overhead: int = SPLIT_OVERHEAD_TOKENS
) -> list[list[float]]:
    """Log-likelihood of every choice of every item in `batch`; each context runs once."""
    ctx_ids, ctx_mask = _left_pad([r.context for r in batch], lm.pad_id)
    needs_rest = any(len(c) > 1 for r in batch for c in r.continuations)
    logits, cache = lm(
        ctx_ids, ctx_mask, _positions(ctx_mask), use_cache=needs_rest, last_only=True
    )
    # Left padding puts every row's last context token in the last column.
    first = logits[:, -1].float().log_softmax(-1).cpu()
    scores = [
        [float(first[b, cont[0]]) if cont else 0.0 for cont in r.continuations]
        for b, r in enumerate(batch)
    ]
    if not needs_rest:
        return scores

    # Choices with more than one token: run tokens 1..n-1 on a copy of their item's cache,
    # in groups of similar length so little work goes into padding.
    rows = [
        (b, j) for b, r in enumerate(batch) for j, c in enumerate(r.continuations) if len(c) > 1
    ]
    lengths = [len(batch[b].continuations[j]) for b, j in rows]
    for group in _length_groups(lengths, overhead):
        part = [rows[g] for g in group]
        index = torch.tensor([b for b, _ in part])
        conts = [batch[b].continuations[j] for b, j in part]
        cont_ids, cont_mask = _right_pad([c[:-1] for c in conts], lm.pad_id)
        targets, _ = _right_pad([c[1:] for c in conts], 0)
        positions = ctx_mask.sum(-1)[index][:, None] + torch.arange(cont_ids.shape[1])[None, :]
        mask = torch.cat([ctx_mask[index], cont_mask], dim=1)
        logits, _ = lm(cont_ids, mask, positions, cache=_cache_rows(cache, index))
        logp = _token_logprobs(logits, targets.to(logits.device)).cpu() * cont_mask
        for (b, j), total in zip(part, logp.sum(-1).tolist(), strict=True):
            scores[b][j] += total
    return scores


def score_choices(
    model,
    tokenizer,
    contexts: Sequence[str],
    choices: Sequence[Sequence[str]],
    *,
    delimiter: str = " ",
    batch_size: int = 16,
    device=None,
    add_bos: bool = True,
    progress: bool = False,
    desc: str = "score",
    split_overhead_tokens: int = SPLIT_OVERHEAD_TOKENS,
) -> list[list[float]]:
    """Summed log p(delimiter + choice | context) for every choice of every context, batched.

    `batch_size` is items (contexts) per forward pass. Items are scored longest
    first (less padding) and returned in input order. Multi-token choices run in
    extra passes grouped by length (`split_overhead_tokens`: see `_length_groups`).
    """
    lm = _CausalLM(model, tokenizer, device, add_bos)
    requests = _encode_requests(lm, contexts, choices, delimiter)
    order = sorted(
        range(len(requests)),
        key=lambda i: (
            -(len(requests[i].context) + max(map(len, requests[i].continuations), default=0))
        ),
    )
    results: list[list[float]] = [[] for _ in requests]
    bar = tqdm(total=len(requests), desc=desc, unit="item", disable=not progress, mininterval=2)
    with _eval_mode(model):
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
    return results


def score_choices_reference(
    model,
    tokenizer,
    contexts: Sequence[str],
    choices: Sequence[Sequence[str]],
    *,
    delimiter: str = " ",
    device=None,
    add_bos: bool = True,
) -> list[list[float]]:
    """The same numbers as `score_choices`, one (context, choice) per forward pass: no padding,
    no cache. Slow; it is the reference the batched scorer is checked against."""
    lm = _CausalLM(model, tokenizer, device, add_bos)
    requests = _encode_requests(lm, contexts, choices, delimiter)
    results = []
    with _eval_mode(model):
        for r in requests:
            lls = []
            for cont in r.continuations:
                if not cont:
                    lls.append(0.0)
                    continue
                ids = torch.tensor([r.context + cont])
                mask = torch.ones_like(ids)
                logits, _ = lm(ids, mask, _positions(mask))
                n = len(r.context)
                targets = torch.tensor(cont, device=logits.device)
                lls.append(float(_token_logprobs(logits[0, n - 1 : -1], targets).sum()))
            results.append(lls)
    return results


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


# --- generation -----------------------------------------------------------------------


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=-1)
    return (text[:cut], True) if cut >= 0 else (text, False)


def generate_greedy(
    model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int,
    stop_sequences: Sequence[str] = (),
    batch_size: int = 16,
    device=None,
    add_bos: bool = True,
    progress: bool = False,
    desc: str = "generate",
) -> list[str]:
    """Greedy continuations of `prompts`, batched with left padding and a KV cache.

    Each row stops at eos or when its text contains a stop sequence; the text is
    returned cut before the first stop sequence (eos is never included).
    """
    lm = _CausalLM(model, tokenizer, device, add_bos)
    budget = None if lm.max_length is None else max(1, lm.max_length - max_new_tokens)
    encoded = [(lm.prefix + ids) or list(lm.empty_context) for ids in lm.encode(list(prompts))]
    if budget is not None:
        encoded = [ids[-budget:] for ids in encoded]  # keep the question, drop old shots
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    outputs = [""] * len(encoded)
    bar = tqdm(total=len(encoded), desc=desc, unit="item", disable=not progress, mininterval=2)
    with _eval_mode(model):
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            texts = _generate_batch(lm, [encoded[i] for i in chunk], max_new_tokens, stop_sequences)
            for i, text in zip(chunk, texts, strict=True):
                outputs[i] = text
            bar.update(len(chunk))
    bar.close()
    return outputs


def _generate_batch(
    lm: _CausalLM, prompts: list[list[int]], max_new_tokens: int, stops: Sequence[str]
) -> list[str]:
    ids, mask = _left_pad(prompts, lm.pad_id)
    positions = _positions(mask)
    logits, cache = lm(ids, mask, positions, use_cache=True, last_only=True)
    generated: list[list[int]] = [[] for _ in prompts]
    done = [False] * len(prompts)
    for step in range(max_new_tokens):
        next_ids = logits[:, -1].argmax(-1).cpu()
        for row, token in enumerate(next_ids.tolist()):
            if done[row]:
                continue
            if token == lm.eos_id:
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


# --- held-out loss ----------------------------------------------------------------------


def heldout_loss(
    model,
    tokenizer,
    table: pa.Table,
    *,
    batch_size: int = 16,
    device=None,
    max_length: int | None = None,
    use_chat_template: bool = False,
) -> dict[str, tuple[float, int]]:
    """Summed response-token NLL and token count per source: {source: (nll_sum, tokens)}.

    Tokenisation is the training one (tasks/tokenise.py), so the mean is the
    same quantity the training loop reports as validation loss.
    """
    lm = _CausalLM(model, tokenizer, device, add_bos=True)
    max_length = max_length or lm.max_length or 2048  # 2048: a safe default for unknown configs
    totals: dict[str, tuple[float, int]] = {}
    sources = table.column("source").to_pylist()
    with _eval_mode(model):
        for source in sorted(set(sources)):
            rows = [i for i, s in enumerate(sources) if s == source]
            examples, _ = tokenise_records(
                table.take(rows),
                tokenizer,
                max_length=max_length,
                loss_on_prompt=False,
                use_chat_template=use_chat_template,
            )
            examples.sort(key=lambda e: -len(e.input_ids))
            nll, count = 0.0, 0
            for start in range(0, len(examples), batch_size):
                chunk = examples[start : start + batch_size]
                ids, mask = _right_pad([e.input_ids for e in chunk], lm.pad_id)
                labels, _ = _right_pad([e.labels for e in chunk], IGNORE)
                logits, _ = lm(ids, mask, _positions(mask))
                targets = labels[:, 1:].to(logits.device)
                keep = targets != IGNORE
                logp = _token_logprobs(logits[:, :-1], targets.clamp(min=0))
                nll -= float(logp[keep].sum())
                count += int(keep.sum())
            totals[source] = (nll, count)
    return totals


# --- suites -----------------------------------------------------------------------------


def _read_rows(path: Path, what: str) -> list[dict]:
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as err:
        raise DataError(
            f"cannot read {what} Parquet: {err}",
            where=str(path),
            fix="re-run the normalise stage that writes it",
        ) from None
    missing = {"prompt", "response", "choices", "label"} - set(table.column_names)
    if missing:
        raise DataError(
            f"{what} is missing columns {sorted(missing)}",
            where=str(path),
            fix="evaluation files must have the canonical record schema (data_specs/record.py)",
        )
    return table.to_pylist()


def _check_row(row: dict, i: int, path: Path, fmt: SuiteFormat) -> None:
    where = f"{path}: row {i}"
    if not isinstance(row.get("prompt"), str):
        raise DataError("prompt is missing", where=f"{where}, field prompt")
    if fmt.kind == "multiple_choice":
        choices = row.get("choices")
        if not choices or len(choices) < 2:
            raise DataError(
                "a multiple-choice item needs at least two choices",
                where=f"{where}, field choices",
                fix="normalise this suite with a template that keeps choices",
            )
        label = row.get("label")
        if label is None or not 0 <= label < len(choices):
            raise DataError(
                f"label {label!r} is not an index into {len(choices)} choices",
                where=f"{where}, field label",
                fix="the gold label must be the 0-based index of the right choice",
            )
    elif not (row.get("response") or "").strip():
        raise DataError(
            "a generation item needs the gold answer in response", where=f"{where}, field response"
        )


def _shot_text(row: dict, fmt: SuiteFormat) -> str:
    target = row["choices"][row["label"]] if fmt.kind == "multiple_choice" else row["response"]
    return row["prompt"] + fmt.target_delimiter + target


def _description(row: dict, fmt: SuiteFormat) -> str:
    if not fmt.description:
        return ""
    try:
        meta = json.loads(row.get("meta") or "{}")
        return fmt.description.format(**{k: str(v).replace("_", " ") for k, v in meta.items()})
    except (KeyError, ValueError, TypeError, IndexError):
        return ""  # the row does not carry the header's fields: no header, as lm-eval without one


def build_contexts(
    rows: list[dict], fmt: SuiteFormat, k: int, dev_rows: list[dict] | None = None
) -> list[str]:
    """Each item's full prompt: header, k exemplars, the item's own prompt.

    Exemplars are deterministic: the first k rows of the dev split when given
    (lm-eval's `first_n` sampler, as MMLU uses), else the suite's first k + 1
    rows without the item itself.
    """
    contexts = []
    for i, row in enumerate(rows):
        if k == 0:
            shots = []
        elif dev_rows:
            shots = dev_rows[:k]
        else:
            shots = [r for j, r in enumerate(rows[: k + 1]) if j != i][:k]
        body = "".join(_shot_text(s, fmt) + fmt.fewshot_delimiter for s in shots)
        contexts.append(_description(row, fmt) + body + row["prompt"])
    return contexts


def _score_suite(
    model, tokenizer, suite: SuiteData, settings: EvaluationSpec, device
) -> tuple[dict[str, float], pd.DataFrame]:
    spec, fmt = suite.spec, suite_format(suite.spec)
    all_rows = _read_rows(Path(suite.path), f"suite {spec.name!r}")
    for i, row in enumerate(all_rows):
        _check_row(row, i, Path(suite.path), fmt)
    dev_rows = None
    if suite.dev_path is not None:
        dev_rows = _read_rows(Path(suite.dev_path), f"dev split of suite {spec.name!r}")
        for i, row in enumerate(dev_rows):
            _check_row(row, i, Path(suite.dev_path), fmt)
    contexts = build_contexts(all_rows, fmt, settings.few_shot, dev_rows)
    rows = all_rows[: spec.max_items] if spec.max_items else all_rows
    contexts = contexts[: len(rows)]
    if not rows:
        raise DataError(f"suite {spec.name!r} has no items", where=str(suite.path))

    records = []
    if fmt.kind == "multiple_choice":
        lls = score_choices(
            model,
            tokenizer,
            contexts,
            [r["choices"] for r in rows],
            delimiter=fmt.target_delimiter,
            batch_size=settings.batch_size,
            device=device,
            progress=True,
            desc=f"score {spec.name}",
        )
        for row, ll in zip(rows, lls, strict=True):
            m = choice_metrics(ll, row["choices"], row["label"])
            records.append(
                _prediction(
                    spec,
                    row,
                    row["choices"][row["label"]],
                    row["choices"][m["pred"]],
                    m["acc"],
                    ll,
                    "",
                    row["choices"][m["pred_norm"]],
                    m["acc_norm"],
                )
            )
        metrics = {
            f"{spec.name}_acc": float(np.mean([r["correct"] for r in records])),
            f"{spec.name}_acc_norm": float(np.mean([r["correct_norm"] for r in records])),
        }
    else:
        outputs = generate_greedy(
            model,
            tokenizer,
            contexts,
            max_new_tokens=settings.max_new_tokens,
            stop_sequences=fmt.stop_sequences,
            batch_size=settings.batch_size,
            device=device,
            progress=True,
            desc=f"generate {spec.name}",
        )
        for i, (row, out) in enumerate(zip(rows, outputs, strict=True)):
            gold = extract_answer(row["response"], fmt.answer_extraction)
            if not gold:
                raise DataError(
                    "no gold answer found in the response",
                    where=f"{suite.path}: row {i}, field response",
                    fix="GSM8K-style answers end with '#### <number>'",
                )
            pred = extract_answer(out, fmt.answer_extraction)
            records.append(_prediction(spec, row, gold, pred, float(pred == gold), None, out))
        metrics = {f"{spec.name}_exact_match": float(np.mean([r["correct"] for r in records]))}
    return metrics, pd.DataFrame.from_records(records)


def _prediction(
    spec, row, gold, predicted, correct, loglik, output, pred_norm=None, correct_norm=None
):
    return {
        "suite": spec.name,
        "category": spec.category,
        "item_id": row.get("id") or "",
        "prompt": row["prompt"],
        "gold": gold,
        "predicted": predicted,
        "correct": bool(correct),
        "predicted_norm": predicted if pred_norm is None else pred_norm,
        "correct_norm": bool(correct if correct_norm is None else correct_norm),
        # JSON text, not a list: MLflow tables and Parquet both take it as is.
        "choice_loglik": json.dumps([round(x, 6) for x in loglik]) if loglik is not None else "",
        "output": output,
    }


def evaluate_model(
    model,
    tokenizer,
    suites: list[SuiteData],
    validation_path: Path | None,
    settings: EvaluationSpec,
    device=None,
    *,
    max_length: int | None = None,
    use_chat_template: bool = False,
) -> EvalResult:
    """Score a model on every suite and on held-out rows; flat metrics plus a prediction table.

    Metrics: `<suite>_acc` and `<suite>_acc_norm` (multiple choice),
    `<suite>_exact_match` (generation), `category_<category>_score` (mean headline
    score of the category's suites), `eval_macro_acc` (mean headline score over
    suites), and from `validation_path`: `val_loss`, `val_ppl` (token-weighted over
    all sources) and `val_loss_<source>`. `max_length` and `use_chat_template`
    should match training so the validation loss is the training one.
    """
    metrics: dict[str, float] = {}
    frames = []
    by_category: dict[str, list[float]] = defaultdict(list)
    headline = []
    for suite in suites:
        suite_metrics, frame = _score_suite(model, tokenizer, suite, settings, device)
        metrics.update(suite_metrics)
        frames.append(frame)
        score = suite_metrics[f"{suite.spec.name}_{suite_format(suite.spec).headline_metric}"]
        by_category[suite.spec.category].append(score)
        headline.append(score)
    for category, scores in sorted(by_category.items()):
        metrics[f"category_{category}_score"] = float(np.mean(scores))
    if headline:
        metrics["eval_macro_acc"] = float(np.mean(headline))

    if validation_path is not None:
        table = pq.read_table(validation_path)
        if "source" not in table.column_names or table.num_rows == 0:
            raise DataError(
                "validation rows need a source column and at least one row",
                where=str(validation_path),
                fix="re-run the mix stage",
            )
        totals = heldout_loss(
            model,
            tokenizer,
            table,
            batch_size=settings.batch_size,
            device=device,
            max_length=max_length,
            use_chat_template=use_chat_template,
        )
        for source, (nll, count) in totals.items():
            if count:
                metrics[f"val_loss_{source}"] = nll / count
        nll = sum(v[0] for v in totals.values())
        count = sum(v[1] for v in totals.values())
        if count:
            metrics["val_loss"] = nll / count
            metrics["val_ppl"] = math.exp(min(nll / count, 50.0))  # 50: keep exp() finite
    predictions = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return EvalResult(metrics=metrics, predictions=predictions)


def compare_arms(metrics_by_arm: dict[str, dict[str, float]]) -> pd.DataFrame:
    """One row per arm (the base model included, if given), one column per metric:
    the parent run's comparison table. Headline columns first, then the rest by name."""
    first = ["eval_macro_acc", "val_loss", "val_ppl"]
    names = sorted({k for m in metrics_by_arm.values() for k in m})
    columns = [c for c in first if c in names] + [c for c in names if c not in first]
    table = pd.DataFrame(
        [[metrics.get(c, float("nan")) for c in columns] for metrics in metrics_by_arm.values()],
        columns=columns,
    )
    table.insert(0, "arm", list(metrics_by_arm))
    return table
