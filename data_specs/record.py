"""The canonical record: the one Arrow schema every stage after `normalise` speaks.

Training rows use prompt/response; evaluation items also carry `choices` and the
gold `label` (an index into choices). `meta` is a JSON string so the schema
never changes when a template wants to keep an extra field (e.g. the source
row number, used by dedup and decontamination reports).
"""

from __future__ import annotations

import hashlib
import json

import pyarrow as pa

CATEGORIES = ("instruction", "nlu", "knowledge", "math")

RECORD_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("task", pa.string(), nullable=False),
        pa.field("category", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("response", pa.string(), nullable=False),
        pa.field("choices", pa.list_(pa.string())),
        pa.field("label", pa.int64()),
        pa.field("meta", pa.string(), nullable=False),
    ]
)


def record_id(
    source: str,
    prompt: str,
    response: str,
    choices: list[str] | None = None,
    label: int | None = None,
) -> str:
    """Stable 16-hex-digit id of a record's content (same content, same id)."""
    payload = json.dumps([source, prompt, response, choices, label], ensure_ascii=False)
    return hashlib.blake2b(payload.encode(), digest_size=8).hexdigest()


def make_record(
    *,
    source: str,
    task: str,
    category: str,
    prompt: str,
    response: str,
    choices: list[str] | None = None,
    label: int | None = None,
    meta: dict | None = None,
) -> dict:
    """One canonical row as a dict, with its id computed from the content."""
    return {
        "id": record_id(source, prompt, response, choices, label),
        "source": source,
        "task": task,
        "category": category,
        "prompt": prompt,
        "response": response,
        "choices": choices,
        "label": label,
        "meta": json.dumps(meta or {}, ensure_ascii=False, sort_keys=True),
    }


def records_to_table(rows: list[dict]) -> pa.Table:
    """Rows from `make_record` as a table with exactly RECORD_SCHEMA."""
    return pa.Table.from_pylist(rows, schema=RECORD_SCHEMA)
