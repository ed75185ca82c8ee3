"""Dedup: exact (normalised key) and near (MinHash LSH) duplicates, within and across sources.

Which copy survives is decided by rank: source priority (higher first), then the source's
position in the spec, then row order. Exact duplicates keep the best-ranked copy; near
duplicates are removed greedily in rank order, so every dropped row duplicates a row that
was kept, with a similarity at or above the threshold. Every drop is reported.

Passage-based tasks (BoolQ, RTE, CB, MultiRC) put many items on one passage; their templates
store the part that tells items apart (question, hypothesis) in meta["query"], and a near pair
of such rows counts only if the queries match too (word-set Jaccard >= the threshold) and
the gold answers agree.
Exact dedup is unaffected: the same passage with another question is another key.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from multilora_pipeline.data_specs.formats import TEMPLATE_FORMATS
from multilora_pipeline.data_specs.record import RECORD_SCHEMA
from multilora_pipeline.data_specs.schema import DedupSpec
from multilora_pipeline.tasks.data.exact_repeats import first_of_repeats
from multilora_pipeline.tasks.data.files.parquet_io import filtered_slices
from multilora_pipeline.tasks.data.files.records import Records, TableRecords
from multilora_pipeline.tasks.data.minhash import normalised_text, normalised_words
from multilora_pipeline.tasks.data.near_dedup import near_duplicates_in_slices
from multilora_pipeline.tasks.data.templates import QUERY

DEDUP_DROP_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("row", pa.int64()),  # row in the source file, when normalise recorded it
        pa.field("file", pa.string()),  # that file, for a source of several files
        pa.field("duplicate_of", pa.string(), nullable=False),
        pa.field("duplicate_source", pa.string(), nullable=False),
        pa.field("duplicate_row", pa.int64()),  # source-file row of the kept copy
        pa.field("duplicate_file", pa.string()),  # and its file
        pa.field("kind", pa.string(), nullable=False),  # exact | near
        pa.field("similarity", pa.float64(), nullable=False),
    ]
)
# Joins key fields; not whitespace, so normalisation never merges two fields into one.
FIELD_SEP = "\x1f"
CHOICE_SEP = " || "  # between the choices of one row in a key (a symbol token: kept)
# Two fixed siphash keys (16 bytes each): two independent 64-bit hashes of every exact key.
HASH_KEYS = ("mlora-exact-key1", "mlora-exact-key2")
# Rows whose keys are built at once: normalising a key makes several copies of its text and a
# Python string per row, a few hundred MB for 200k Alpaca-sized rows; 50k keep it near 100.
KEY_ROWS = 50_000


@dataclass(frozen=True)
class DedupResult:
    """The input records, which of their rows stay, and the rows dropped (DEDUP_DROP_SCHEMA).
    `kept` materialises the survivors; big outputs are better written slice by slice with
    filtered_slices(result.records.slices(RECORD_SCHEMA.names), result.keep)."""

    records: Records
    keep: np.ndarray
    drops: pa.Table

    @property
    def kept(self) -> pa.Table:
        parts = filtered_slices(self.records.slices(RECORD_SCHEMA.names), self.keep)
        return pa.concat_tables(parts) if self.records.num_rows else RECORD_SCHEMA.empty_table()

    @property
    def kept_rows(self) -> int:
        return int(self.keep.sum())


def source_file(meta: str) -> str | None:
    """The file of a source of several files (a glob) that normalise stored in `meta`: rows
    are numbered per file, so "row 4" names a row only with its file."""
    try:
        data = json.loads(meta)
    except (TypeError, ValueError):
        return None
    name = data.get("file") if isinstance(data, dict) else None
    return name if isinstance(name, str) else None


def source_row(meta: str) -> int | None:
    """The source-file row number normalise stored in `meta`, if any."""
    try:
        data = json.loads(meta)
    except (TypeError, ValueError):
        return None
    row = data.get("row", data.get("__row__")) if isinstance(data, dict) else None
    return int(row) if isinstance(row, int) else None


def content(table: pa.Table, field: str, seam: str = " ") -> pa.Array:
    """What a row says in `field`, without what its template added: a prompt loses its
    template's boilerplate (formats.TemplateFormat.boilerplate, by the record's `task`),
    choices are joined into one text, a response is itself. Keys and shingles are taken
    on this, so "Question: X\\nAnswer:" (gsm8k) and "X" (generic) are the same question.
    Each boilerplate piece becomes `seam`: a space for keys, a separator where the template's
    parts must stay apart (decontamination: an MMLU stem and its options)."""
    column = table.column(field).combine_chunks()
    if field == "choices":
        return pc.fill_null(pc.binary_join(column, CHOICE_SEP), "")
    column = pc.fill_null(column, "")
    if field != "prompt" or "task" not in table.column_names:
        return column
    tasks = table.column("task").combine_chunks()
    out = column
    for name in pc.unique(tasks).to_pylist():
        words = TEMPLATE_FORMATS[name].boilerplate if name in TEMPLATE_FORMATS else ()
        if not words:
            continue
        stripped = column
        for piece in sorted(words, key=len, reverse=True):  # "?\nAnswer:" before "\nAnswer:"
            stripped = pc.replace_substring(stripped, piece, seam)
        out = pc.if_else(pc.equal(tasks, name), stripped, out)
    return out


def exact_keys(table: pa.Table, fields: list[str]) -> pa.Array:
    """The exact-dedup key of each row: the content (`content`) of the named fields, each
    case-folded, without word-edge punctuation and with whitespace collapsed."""
    parts = [normalised_text(content(table, f)) for f in fields]
    return pc.binary_join_element_wise(*parts, FIELD_SEP) if len(parts) > 1 else parts[0]


def key_digests(parts: Iterable[pa.Table], fields: list[str]) -> Iterator[np.ndarray]:
    """Per KEY_ROWS rows of `parts` (tables with the fields, and `task` where the content
    depends on it), an (n, 2) uint64 digest of each row's exact key: two independent 64-bit
    hashes (a false match among 10^9 rows has odds below 10^-20), so no Python string per
    row is alive beyond one piece."""
    for part in parts:
        for start in range(0, part.num_rows, KEY_ROWS):
            keys = exact_keys(part.slice(start, KEY_ROWS), fields).to_numpy(zero_copy_only=False)
            digest = np.empty((len(keys), 2), dtype=np.uint64)
            for k, salt in enumerate(HASH_KEYS):
                digest[:, k] = pd.util.hash_array(keys, hash_key=salt, categorize=False)
            yield digest


def exact_repeats(
    parts: Iterable[pa.Table], fields: list[str], positions: np.ndarray, folder: Path | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(repeats, firsts) among the rows of `parts`, the k-th row standing at positions[k]:
    each position whose exact key a smaller position has, with the smallest such position
    (exact_repeats.py: grouped by DuckDB, out of core when `folder` is given)."""

    def pieces():
        start = 0
        for digest in key_digests(parts, fields):
            yield digest, positions[start : start + len(digest)]
            start += len(digest)

    return first_of_repeats(pieces(), folder)


def key_columns(fields: list[str]) -> list[str]:
    """What key_digests reads: the key fields and the task (whose template content() strips)."""
    return list(dict.fromkeys([*fields, "task"]))


def rank_order(
    source_codes: np.ndarray, names: list[str], priorities: dict[str, int], source_order: list[str]
) -> np.ndarray:
    """Row indices best first: higher priority, then earlier source in the spec, then row
    order. `source_codes` names each row's source as an index into `names`."""
    position = {name: i for i, name in enumerate(source_order)}
    prio = np.array([-priorities.get(s, 0) for s in names], dtype=np.int64)
    pos = np.array([position.get(s, len(position)) for s in names], dtype=np.int64)
    idx = source_codes
    return np.lexsort((np.arange(len(idx)), pos[idx], prio[idx]))


def _same_query(read: Callable[[int], tuple], threshold: float) -> Callable[[int, int], bool]:
    """Whether a near pair (indices i, j; `read(k)`: the meta and response of index k) asks
    the same thing. Rows of passage-based tasks carry their question or hypothesis in meta
    (templates.QUERY): two BoolQ questions about one Wikipedia passage share most shingles
    yet are different items, so such a pair counts only when the queries' word sets also
    reach the threshold and the gold answers agree (two near-identical questions with
    opposite answers are a contrastive pair, not a copy). Read lazily, for the pairs asked."""
    seen: dict[int, tuple[set, str] | None] = {}

    def query(k: int) -> tuple[set, str] | None:
        if k not in seen:
            meta, response = read(k)
            text = _query(meta)
            seen[k] = None
            if text is not None:
                words = set(normalised_words([text]).to_pylist()[0])
                seen[k] = (words, (response or "").strip().lower())
        return seen[k]

    def accept(i: int, j: int) -> bool:
        a, b = query(i), query(j)
        if a is None or b is None:
            return True
        return a[1] == b[1] and len(a[0] & b[0]) >= threshold * len(a[0] | b[0])

    return accept


def _query(meta: str) -> str | None:
    try:
        value = json.loads(meta).get(QUERY)
    except (TypeError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def dedup(
    records: pa.Table | Records,
    config: DedupSpec,
    priorities: dict[str, int] | None = None,
    source_order: list[str] | None = None,
    *,
    across: bool = False,
) -> DedupResult:
    """Remove exact and near duplicates from `records` (canonical records, any sources): a
    table, or Parquet files read a slice at a time (files/records.py).

    Works in rank order (best copy first) on integer arrays; the rows are read slice by
    slice and never reordered or copied whole. Exact dedup hashes each slice's keys to
    128-bit digests that DuckDB groups out of core (exact_repeats.py), so this process holds
    a few int32 arrays of the rows (rank, the copy each drop points at). Near dedup reads
    the texts a slice at a time too and keeps their band keys on disk (near_dedup.py),
    holding only the rows that share a bucket. `across`: the rows are sources already
    deduplicated one by one, so near dedup compares only rows of different sources (the
    within pass compared the rest once already)."""
    if isinstance(records, pa.Table):
        records = TableRecords(records)
    n = records.num_rows
    source_codes, source_names = records.codes("source")
    if source_order is None:
        source_order = source_names
    rank = rank_order(source_codes, source_names, priorities or {}, source_order)
    # Ranked positions fit int32 below 2^31 rows: half the memory of the per-row arrays.
    position = np.int32 if n < 2**31 else np.int64
    rank = rank.astype(position, copy=False)
    dup_of = np.full(n, -1, dtype=position)  # in ranked positions
    near_rows, near_sim = np.zeros(0, dtype=position), np.zeros(0)
    if config.exact and n > 1:
        key = list(config.key)
        ranked_at = np.empty(n, dtype=position)  # file row -> its ranked position
        ranked_at[rank] = np.arange(n, dtype=position)
        parts = records.slices(key_columns(key))
        repeats, firsts = exact_repeats(parts, key, ranked_at, records.scratch("exact-keys"))
        dup_of[repeats] = firsts
        del ranked_at
        category_codes, names = records.codes("category")
        cat_ranked = category_codes[rank]
        for name, key in sorted(config.key_by_category.items()):
            if name not in names:
                continue
            rows = np.flatnonzero((cat_ranked == names.index(name)) & (dup_of < 0))
            if len(rows) > 1:
                parts = records.taken(rank[rows], key_columns(list(key)))
                scratch = records.scratch("exact-keys")
                repeats, firsts = exact_repeats(parts, list(key), rows, scratch)
                dup_of[repeats] = firsts
        del category_codes, cat_ranked  # not needed by the near pass: 16 bytes a row less
        # A first-pass copy may itself have gone in a category pass: point at its survivor.
        hop = dup_of >= 0
        hop[hop] = dup_of[dup_of[hop]] >= 0
        dup_of[hop] = dup_of[dup_of[hop]]
    near_cfg = config.near
    if near_cfg.enabled and n > 1:
        live = np.flatnonzero(dup_of < 0).astype(position)
        columns = key_columns(list(config.key))

        def texts(part: pa.Table) -> pa.Array:
            fields = [content(part, f) for f in config.key]
            return pc.binary_join_element_wise(*fields, " ") if len(fields) > 1 else fields[0]

        def rows_at(positions: np.ndarray):  # one gather: the texts and the pair check's fields
            needed = list(dict.fromkeys([*columns, "meta", "response"]))
            parts = list(records.taken(rank[live[positions]], needed))
            picked = pa.concat_tables(parts)
            meta, response = picked.column("meta"), picked.column("response")

            def read(k: int) -> tuple:
                return meta[k].as_py(), response[k].as_py()

            return texts(picked), _same_query(read, near_cfg.threshold)

        found = near_duplicates_in_slices(
            (texts(part) for part in records.taken(rank[live], columns)),
            rows_at,
            total=len(live),
            threshold=near_cfg.threshold,
            num_perm=near_cfg.num_perm,
            shingle=near_cfg.shingle,
            bands=near_cfg.bands,
            groups=source_codes[rank[live]] if across else None,
            folder=records.scratch("band-keys"),
        )
        kept_i, dropped_j = found.pairs[:, 0], found.pairs[:, 1]
        near_rows, near_sim = live[dropped_j], found.similarity
        dup_of[near_rows] = live[kept_i]
    dropped_ranked = np.flatnonzero(dup_of >= 0)
    keep = np.ones(n, dtype=bool)
    keep[rank[dropped_ranked]] = False
    # Drops are exact (similarity 1) unless the near pass made them; only those carry a kind
    # and similarity of their own, so no per-row kind/similarity array is kept for all n.
    kind = np.full(len(dropped_ranked), "exact", dtype=object)
    sim = np.ones(len(dropped_ranked))
    at = np.searchsorted(dropped_ranked, near_rows)
    kind[at], sim[at] = "near", near_sim
    return DedupResult(records, keep, _drop_table(records, rank, dropped_ranked, dup_of, kind, sim))


def _drop_table(records: Records, rank, dropped_ranked, dup_of, kind, sim) -> pa.Table:
    """DEDUP_DROP_SCHEMA rows: each dropped row with the id and source of the copy kept;
    `kind` and `sim` are given per dropped row (in the order of `dropped_ranked`)."""
    columns = ["id", "source", "meta"]
    dropped = pa.concat_tables(records.taken(rank[dropped_ranked], columns))
    kept_copy = pa.concat_tables(records.taken(rank[dup_of[dropped_ranked]], columns))
    return pa.Table.from_pydict(
        {
            "id": dropped.column("id"),
            "source": dropped.column("source"),
            "row": [source_row(m) for m in dropped.column("meta").to_pylist()],
            "file": [source_file(m) for m in dropped.column("meta").to_pylist()],
            "duplicate_of": kept_copy.column("id"),
            "duplicate_source": kept_copy.column("source"),
            "duplicate_row": [source_row(m) for m in kept_copy.column("meta").to_pylist()],
            "duplicate_file": [source_file(m) for m in kept_copy.column("meta").to_pylist()],
            "kind": kind.tolist(),
            "similarity": np.round(sim, 6),
        },
        schema=DEDUP_DROP_SCHEMA,
    )


def drops_per_source_pair(drops: pa.Table) -> list[dict]:
    """Counts of dropped rows per (dropped source, kept source, kind), for reports."""
    if drops.num_rows == 0:
        return []
    grouped = drops.group_by(["source", "duplicate_source", "kind"]).aggregate([("id", "count")])
    rows = sorted(
        grouped.to_pylist(), key=lambda r: (r["source"], r["duplicate_source"], r["kind"])
    )
    return [
        {
            "dropped_from": r["source"],
            "duplicate_of": r["duplicate_source"],
            "kind": r["kind"],
            "rows": r["id_count"],
        }
        for r in rows
    ]
