"""Nested JSON as flat rows: struct fields by dotted path, lists exploded into records.

    {"passage": {"text": T, "questions": [{"question": Q, "answers": [{"text": A, "label": 1}]}]}}

    flatten                      -> columns passage.text, passage.questions
    explode passage.questions    -> one row per question: passage.questions.question, ...answers
    explode ...questions.answers -> one row per answer: ...answers.text, ...answers.label

Whole-column Arrow operations (`Table.flatten`, `list_parent_indices`, `list_flatten`):
the other columns of a row are repeated for each element, `__row__` included, so an error
still names the file row the element came from. A row whose list is empty or null gives no
rows (the element it would describe does not exist).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from multilora_pipeline.data_specs.errors import DataError


def flatten(table: pa.Table) -> pa.Table:
    """Every struct column as one column per field, named `parent.child`, recursively."""
    while any(pa.types.is_struct(f.type) for f in table.schema):
        table = table.flatten()
    return table


def explode(table: pa.Table, path: str, origin: str) -> pa.Table:
    """One row per element of the list column `path` (structs then flattened)."""
    table = flatten(table)
    if path not in table.column_names:
        lists = [f.name for f in table.schema if pa.types.is_list(f.type)]
        raise DataError(
            f"explode names {path!r}, which is not a field of the data",
            where=origin,
            fix=f"list fields here: {lists or 'none'} (dotted paths reach nested fields)",
        )
    column = table.column(path).combine_chunks()
    if not (pa.types.is_list(column.type) or pa.types.is_large_list(column.type)):
        raise DataError(
            f"explode names {path!r}, a {column.type}, not a list",
            where=origin,
            fix="explode only list fields; reach a nested single value with a dotted path",
        )
    parents = pc.list_parent_indices(column)
    others = table.drop_columns([path]).take(parents)
    return flatten(others.append_column(path, pc.list_flatten(column)))


def unnest(table: pa.Table, paths: list[str] | tuple[str, ...], origin: str) -> pa.Table:
    """`table` flattened, with each of `paths` exploded in order (outer lists first)."""
    table = flatten(table)
    for path in paths:
        table = explode(table, path, origin)
    return table
