"""Canonical records -> token ids and labels, with optional packing.

Loss is on the response only unless asked otherwise: prompt tokens get label
-100. Truncation policy: prompt + response is cut from the right at
`max_length` (so the end of a long response is lost, never the prompt's
question); an example left with no supervised token is dropped and counted.

Packing concatenates whole examples into blocks of `max_length` tokens. Each
example restarts its `position_ids` at 0, and the block is fed with no
attention mask: transformers then builds a block-diagonal causal mask from
the position ids, so no token attends across examples. The first token of
every example is never a target (its "previous token" belongs to another
example).
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

from multilora_pipeline.models.prompt_format import PromptFormat

IGNORE = -100


@dataclass(frozen=True)
class TokenisedExample:
    input_ids: list[int]
    labels: list[int]


@dataclass(frozen=True)
class TokeniseStats:
    examples: int
    dropped_no_target: int
    """Examples whose every target token fell past max_length (their prompt fills it)."""
    truncated: int
    tokens: int
    target_tokens: int
    shortest_prompt: int = 0
    """Tokens of the shortest prompt (with the format's prefix): max_length must exceed it."""


def tokenise_records(
    table: pa.Table,
    fmt: PromptFormat,
    *,
    max_length: int,
    loss_on_prompt: bool = False,
) -> tuple[list[TokenisedExample], TokeniseStats]:
    """Tokenise prompt/response columns of a canonical table into training examples.

    The prompt goes through the run's prompt format (models/prompt_format.py: the chat
    template or plain text, with bos), exactly as scoring and generation encode it, and
    the response as the format gives it (in a chat, without its leading space).
    """
    tokenizer = fmt.tokenizer
    prompt_ids = fmt.encode(table.column("prompt").to_pylist())
    responses = [fmt.response(r) for r in table.column("response").to_pylist()]
    # Batched calls go through the Rust tokenizer in one go: ~50x faster than a Python loop.
    # verbose=False: truncation to max_length happens below, so transformers' "longer than
    # the model's maximum ... will result in indexing errors" warning would only alarm.
    response_ids = tokenizer(responses, add_special_tokens=False, verbose=False)["input_ids"]
    eos = fmt.end_ids()

    examples, dropped, truncated, tokens, targets = [], 0, 0, 0, 0
    shortest = min((len(head) for head in prompt_ids), default=0)
    for head, r_ids in zip(prompt_ids, response_ids, strict=True):
        tail = r_ids + eos
        ids = head + tail
        labels = list(ids) if loss_on_prompt else [IGNORE] * len(head) + tail
        if len(ids) > max_length:
            ids, labels = ids[:max_length], labels[:max_length]
            truncated += 1
        labels[0] = IGNORE  # the first token has nothing before it to predict it from
        n_targets = sum(label != IGNORE for label in labels)
        if n_targets == 0:
            dropped += 1
            continue
        examples.append(TokenisedExample(ids, labels))
        tokens += len(ids)
        targets += n_targets
    stats = TokeniseStats(len(examples), dropped, truncated, tokens, targets, shortest)
    return examples, stats


def pack_examples(
    examples: list[TokenisedExample], max_length: int, pad_id: int
) -> list[dict[str, list[int]]]:
    """Greedy in-order packing of whole examples into fixed-length blocks.

    Returns blocks with input_ids, labels and position_ids (restarting at 0 for
    every example). Padding at a block's end forms its own segment with labels
    -100, so it neither attends to nor is attended by real tokens.
    """
    blocks: list[dict[str, list[int]]] = []
    ids: list[int] = []
    labels: list[int] = []
    positions: list[int] = []

    def flush():
        pad = max_length - len(ids)
        blocks.append(
            {
                "input_ids": ids + [pad_id] * pad,
                "labels": labels + [IGNORE] * pad,
                "position_ids": positions + list(range(pad)),
            }
        )

    for ex in examples:
        if ids and len(ids) + len(ex.input_ids) > max_length:
            flush()
            ids, labels, positions = [], [], []
        ids.extend(ex.input_ids)
        labels.extend(ex.labels)
        positions.extend(range(len(ex.input_ids)))
    if ids:
        flush()
    return blocks


def pad_examples(
    examples: list[TokenisedExample], max_length: int, pad_id: int
) -> list[dict[str, list[int]]]:
    """One example per row, right-padded to max_length, with an attention mask."""
    rows = []
    for ex in examples:
        pad = max_length - len(ex.input_ids)
        rows.append(
            {
                "input_ids": ex.input_ids + [pad_id] * pad,
                "labels": ex.labels + [IGNORE] * pad,
                "attention_mask": [1] * len(ex.input_ids) + [0] * pad,
            }
        )
    return rows
