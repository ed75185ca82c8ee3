"""normalise: a raw snapshot -> canonical records (data_specs/record.py) through a named template.

The template (tasks/data/templates.py) renders prompt/response/choices/label as
whole Arrow columns; this module adds the constant columns, the meta JSON
(``{"row": <file row>, ...template extras}``) and the content id. Only the id
needs per-row Python (it must equal `record_id`), done in slices so memory
stays bounded on millions of rows.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from multilora_pipeline.data_specs.errors import DataError
from multilora_pipeline.data_specs.record import RECORD_SCHEMA, record_id
from multilora_pipeline.tasks.data.fetch import Snapshot
from multilora_pipeline.tasks.data.files.parquet_io import parquet_slices
from multilora_pipeline.tasks.data.nested import flatten, unnest
from multilora_pipeline.tasks.data.templates import (
    FILE_COLUMN,
    ROW_COLUMN,
    BadRows,
    Rendered,
    Rows,
    get_template,
)

log = logging.getLogger("mlora.normalise")

ID_SLICE = 100_000  # rows per id batch: bounds the Python objects alive at once
PROGRESS_EVERY = 500_000  # log a progress line this often on big inputs
# Raw rows normalised at a time: a multiple of the output row-group size (tasks/parquet_io),
# so a streamed output has the same row groups as a whole-table write.
BATCH_ROWS = 200_000


def normalise(
    snapshot: Snapshot,
    *,
    source: str,
    template: str,
    category: str,
    fields: dict[str, str] | None = None,
    explode: list[str] | None = None,
    end_marker: str | None = None,
) -> pa.Table:
    """Canonical records (exactly RECORD_SCHEMA) for every row of `snapshot`.

    `task` is the template name. A missing or empty required field, or a label
    that cannot be mapped, raises DataError naming the file, row and field.
    """
    parts = list(
        normalise_batches(
            snapshot,
            source=source,
            template=template,
            category=category,
            fields=fields,
            explode=explode,
            end_marker=end_marker,
        )
    )
    return pa.concat_tables(parts) if parts else RECORD_SCHEMA.empty_table()


def normalise_batches(
    snapshot: Snapshot,
    *,
    source: str,
    template: str,
    category: str,
    fields: dict[str, str] | None = None,
    explode: list[str] | None = None,
    end_marker: str | None = None,
    skipped: list[dict] | None = None,
) -> Iterator[pa.Table]:
    """`normalise`, BATCH_ROWS raw rows at a time: peak memory is one batch, not the source.

    Nested rows are unnested first (tasks/data/nested.py): the `explode` paths, or the
    format's own published layout when the data is in it; dotted `fields` reach struct
    fields. Rows the template cannot read are all found (`_render_readable`): without
    `skipped` they fail the batch in one error that lists them; with it they are left out
    and appended to `skipped` (row, file, field, reason).

    Templates work column by column and every error names the file row (``__row__``), so a
    batch gives the same records and the same messages as the whole table.
    """
    recipe = get_template(template)
    start = time.perf_counter()
    total = pq.ParquetFile(snapshot.path).metadata.num_rows
    if total == 0:
        raise DataError(
            "the source has no rows", where=snapshot.origin, fix="check the file, split or max_rows"
        )
    done = 0
    for batch in parquet_slices([snapshot.path], rows=BATCH_ROWS):
        raw, mapping = _unnested(batch, recipe, explode, fields, snapshot)
        rendered, raw, bad = _render_readable(recipe, raw, snapshot.origin, mapping)
        if bad and skipped is None:
            raise _bad_rows_error(bad, snapshot.origin)
        if skipped is not None:
            skipped.extend(bad)
        done += batch.num_rows
        if rendered is None:  # every row of the batch was bad
            continue
        if end_marker:
            rendered = replace(
                rendered, response=_without_end_marker(rendered.response, end_marker)
            )
        yield build_records(
            rendered,
            row_numbers(raw),
            source=source,
            task=template,
            category=category,
            files=raw.column(FILE_COLUMN).combine_chunks()
            if FILE_COLUMN in raw.column_names
            else None,
        )
        if total > BATCH_ROWS:
            log.info(
                "normalise %s: %d/%d rows (%.0f rows/s)",
                source,
                done,
                total,
                done / max(time.perf_counter() - start, 1e-9),
            )
    seconds = time.perf_counter() - start
    log.info(
        "normalise %s (%s): %d rows in %.2fs (%.0f rows/s)",
        source,
        template,
        done,
        seconds,
        done / max(seconds, 1e-9),
    )


def _unnested(raw: pa.Table, recipe, explode, fields, snapshot) -> tuple[pa.Table, dict]:
    """The batch as the template reads it, and the field mapping to read it with."""
    mapping = dict(fields or {})
    layout = recipe.format.nested
    if (
        not explode
        and layout is not None
        and layout.trigger in flatten(raw.slice(0, 0)).column_names
    ):
        return unnest(raw, layout.explode, snapshot.origin), {**layout.fields, **mapping}
    if explode:
        return unnest(raw, explode, snapshot.origin), mapping
    if any("." in path and path not in raw.column_names for path in mapping.values()):
        return flatten(raw), mapping  # a dotted path into a struct field
    return raw, mapping


MAX_LISTED = 20  # bad rows an error lists; the rest are counted
MAX_PASSES = 1_000  # renders of one batch while bad rows are taken out


def _render_readable(recipe, raw: pa.Table, origin: str, mapping: dict):
    """Render `raw`, taking out the rows a check rejects (a check names every row it
    rejects at once) until the rest renders. Returns (rendered or None when no row is
    left, the rows rendered, one dict per rejected row)."""
    bad: list[dict] = []
    for _ in range(MAX_PASSES):
        rows = Rows(raw, origin, mapping)
        try:
            return recipe.render(rows), raw, bad
        except BadRows as err:
            for k, index in enumerate(err.indices.tolist()):
                bad.append(
                    {
                        "row": rows.row(index),
                        "file": rows.file_of(index),
                        "field": err.field_name,
                        "reason": err.whats[k] if err.whats else err.what,
                    }
                )
            keep = np.ones(raw.num_rows, dtype=bool)
            keep[err.indices] = False
            raw = raw.filter(pa.array(keep))
            if raw.num_rows == 0:
                return None, raw, bad
    raise DataError(
        f"more than {MAX_PASSES} kinds of bad rows in one batch",
        where=origin,
        fix="the file does not look like this template's data: check the template and fields",
    )


def _bad_rows_error(bad: list[dict], origin: str) -> DataError:
    """One error that lists the bad rows (the first MAX_LISTED) and counts the rest; one
    bad row is said in one line, as every other data error."""
    fix = (
        "fix or delete these rows, or set bad_rows: skip on the source to leave them out "
        "(recorded in the catalog)"
    )
    if len(bad) == 1:
        (b,) = bad
        where = (
            f"{origin}{': ' + b['file'] if b['file'] else ''}, row {b['row']}, field {b['field']!r}"
        )
        return DataError(b["reason"], where=where, fix=fix.replace("these rows", "the row"))
    listed = [
        f"  {b['file'] + ', ' if b['file'] else ''}row {b['row']}, field {b['field']!r}: "
        f"{b['reason']}"
        for b in bad[:MAX_LISTED]
    ]
    if len(bad) > MAX_LISTED:
        listed.append(f"  ... and {len(bad) - MAX_LISTED} more")
    return DataError(
        f"{len(bad)} bad row(s):\n" + "\n".join(listed),
        where=origin,
        fix=fix,
    )


def _without_end_marker(response: pa.Array, marker: str) -> pa.Array:
    """The response up to a literal end marker at its end (and the whitespace after it)."""
    return pc.replace_substring_regex(response, re.escape(marker) + r"\s*$", "")


def row_numbers(raw: pa.Table) -> pa.Array:
    """The file row of each raw row (``__row__``; 1..n when a table lacks it)."""
    if ROW_COLUMN in raw.column_names:
        return raw.column(ROW_COLUMN).combine_chunks().cast(pa.int64())
    return pa.array(range(1, raw.num_rows + 1), pa.int64())


def build_records(
    rendered: Rendered,
    rows: pa.Array,
    *,
    source: str,
    task: str,
    category: str,
    files: pa.Array | None = None,
) -> pa.Table:
    """Assemble RECORD_SCHEMA columns from a template's output (`files`: each row's file, for
    a source read from several files; kept in meta beside the row)."""
    files = {} if files is None else {"file": files}
    n = len(rendered.prompt)
    choices = rendered.choices
    choices = (
        pa.nulls(n, pa.list_(pa.string()))
        if choices is None
        else choices.cast(pa.list_(pa.string()))
    )
    label = pa.nulls(n, pa.int64()) if rendered.label is None else rendered.label.cast(pa.int64())
    prompt, response = rendered.prompt.cast(pa.string()), rendered.response.cast(pa.string())
    columns = {
        "id": record_ids(source, prompt, response, choices, label),
        "source": constant(source, n),
        "task": constant(task, n),
        "category": constant(category, n),
        "prompt": prompt,
        "response": response,
        "choices": choices,
        "label": label,
        "meta": meta_json({"row": rows, **files, **rendered.meta}),
    }
    return pa.Table.from_arrays(list(columns.values()), schema=RECORD_SCHEMA)


def constant(value: str, n: int) -> pa.Array:
    """n copies of one string, without a Python list."""
    return pa.repeat(pa.scalar(value, pa.string()), n)


def record_ids(
    source: str, prompt: pa.Array, response: pa.Array, choices: pa.Array, label: pa.Array
) -> pa.Array:
    """`record_id` of every row, computed slice by slice."""
    out: list[str] = []
    n, start = len(prompt), time.perf_counter()
    for lo in range(0, n, ID_SLICE):
        hi = min(lo + ID_SLICE, n)
        parts = zip(
            prompt[lo:hi].to_pylist(),
            response[lo:hi].to_pylist(),
            choices[lo:hi].to_pylist(),
            label[lo:hi].to_pylist(),
            strict=True,
        )
        out.extend(record_id(source, p, r, c, lab) for p, r, c, lab in parts)
        if n > PROGRESS_EVERY and hi % PROGRESS_EVERY < ID_SLICE:
            log.info(
                "normalise %s: ids %d/%d (%.0f rows/s)",
                source,
                hi,
                n,
                hi / max(time.perf_counter() - start, 1e-9),
            )
    return pa.array(out, pa.string())


def meta_json(values: dict[str, pa.Array]) -> pa.Array:
    """One JSON object per row, keys sorted, formatted as ``json.dumps(..., sort_keys=True)``.

    Integer columns are rendered by Arrow; other values go through json.dumps.
    """
    parts: list = []
    for i, key in enumerate(sorted(values)):
        parts.append(("{" if i == 0 else ", ") + json.dumps(key) + ": ")
        parts.append(json_values(values[key]))
    parts.append("}")
    scalars = [pa.scalar(p, pa.string()) if isinstance(p, str) else p for p in parts]
    return pc.binary_join_element_wise(*scalars, "")


def json_values(column: pa.Array) -> pa.Array:
    """Each value of `column` as JSON text (null -> "null")."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if pa.types.is_integer(column.type):
        return column.cast(pa.string()).fill_null("null")
    return pa.array(
        [json.dumps(v, ensure_ascii=False, sort_keys=True) for v in column.to_pylist()], pa.string()
    )
