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
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from multilora_pipeline.data_specs.formats import TEMPLATE_FORMATS
from multilora_pipeline.data_specs.record import RECORD_SCHEMA
from multilora_pipeline.data_specs.schema import DedupSpec
from multilora_pipeline.tasks.data.files.parquet_io import SLICE_ROWS
from multilora_pipeline.tasks.data.minhash import near_duplicates, normalised_text, normalised_words
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


@dataclass(frozen=True)
class DedupResult:
    """The input (RECORD_SCHEMA), which of its rows stay, and the rows dropped
    (DEDUP_DROP_SCHEMA). `kept` materialises the survivors; big outputs are better written
    slice by slice with tasks.data.files.parquet_io.filtered_slices(result.table, result.keep)."""

    table: pa.Table
    keep: np.ndarray
    drops: pa.Table

    @property
    def kept(self) -> pa.Table:
        return self.table.filter(pa.array(self.keep))

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


def key_codes(table: pa.Table, fields: list[str], rows: np.ndarray | None = None) -> np.ndarray:
    """One int per row (of `rows`, default all): equal exactly when the exact keys are equal.

    Keys are built SLICE_ROWS rows at a time and reduced to two independent 64-bit hashes
    (a 128-bit digest: a false match among 10^9 rows has odds below 10^-20), so no Python
    string per row is alive at once beyond one slice.
    """
    picked = table.select([*fields, *(["task"] if "task" in table.column_names else [])])
    n = picked.num_rows if rows is None else len(rows)
    digests = np.empty((n, 2), dtype=np.uint64)
    for lo in range(0, n, SLICE_ROWS):
        hi = min(lo + SLICE_ROWS, n)
        part = (
            picked.slice(lo, hi - lo)
            if rows is None
            else picked.take(pa.array(rows[lo:hi], type=pa.int64()))
        )
        keys = exact_keys(part, fields).to_numpy(zero_copy_only=False)
        for k, salt in enumerate(HASH_KEYS):
            digests[lo:hi, k] = pd.util.hash_array(keys, hash_key=salt, categorize=False)
    _, codes = np.unique(digests, axis=0, return_inverse=True)
    return codes.reshape(-1)


def rank_order(table: pa.Table, priorities: dict[str, int], source_order: list[str]) -> np.ndarray:
    """Row indices best first: higher priority, then earlier source in the spec, then row order."""
    encoded = pc.dictionary_encode(table.column("source")).combine_chunks()
    names = encoded.dictionary.to_pylist()
    position = {name: i for i, name in enumerate(source_order)}
    prio = np.array([-priorities.get(s, 0) for s in names], dtype=np.int64)
    pos = np.array([position.get(s, len(position)) for s in names], dtype=np.int64)
    idx = encoded.indices.to_numpy()
    return np.lexsort((np.arange(len(idx)), pos[idx], prio[idx]))


def _exact_pass(codes: np.ndarray, rows: np.ndarray, dup_of: np.ndarray) -> None:
    """Among `rows` (ranked positions, ascending) with these key codes, point every repeat of
    a key at the first (best-ranked) row with that key."""
    if len(rows) < 2:
        return
    _, first, inverse = np.unique(codes, return_index=True, return_inverse=True)
    rep = rows[first[inverse]]
    repeat = rep != rows
    dup_of[rows[repeat]] = rep[repeat]


def _same_query(table: pa.Table, rows: np.ndarray, threshold: float) -> Callable[[int, int], bool]:
    """Whether a near pair (indices i, j; `rows`: the table row of each index) asks the same
    thing. Rows of passage-based tasks carry their question or hypothesis in meta
    (templates.QUERY): two BoolQ questions about one Wikipedia passage share most shingles
    yet are different items, so such a pair counts only when the queries' word sets also
    reach the threshold and the gold answers agree (two near-identical questions with
    opposite answers are a contrastive pair, not a copy). Read lazily, for the pairs asked."""
    meta, response = table.column("meta"), table.column("response")
    seen: dict[int, tuple[set, str] | None] = {}

    def query(k: int) -> tuple[set, str] | None:
        if k not in seen:
            text = _query(meta[int(rows[k])].as_py())
            seen[k] = None
            if text is not None:
                words = set(normalised_words([text]).to_pylist()[0])
                seen[k] = (words, (response[int(rows[k])].as_py() or "").strip().lower())
        return seen[k]

    def accept(i: int, j: int) -> bool:
        a, b = query(i), query(j)
        if a is None or b is None:
            return True
        return a[1] == b[1] and len(a[0] & b[0]) >= threshold * len(a[0] | b[0])

    return accept


def _source_codes(table: pa.Table, rows: np.ndarray) -> np.ndarray:
    """One int per row (of `rows`) naming its source."""
    sources = pc.dictionary_encode(table.column("source")).combine_chunks()
    return sources.indices.to_numpy()[rows]


def _query(meta: str) -> str | None:
    try:
        value = json.loads(meta).get(QUERY)
    except (TypeError, ValueError, AttributeError):
        return None
    return value if isinstance(value, str) else None


def dedup(
    table: pa.Table,
    config: DedupSpec,
    priorities: dict[str, int] | None = None,
    source_order: list[str] | None = None,
    *,
    across: bool = False,
) -> DedupResult:
    """Remove exact and near duplicates from `table` (canonical records, any sources).

    Works in rank order (best copy first) on integer arrays; the table itself is never
    reordered or copied whole, so memory stays near one copy of the input. `across`: the
    rows are sources already deduplicated one by one, so near dedup compares only rows of
    different sources (the within pass compared the rest once already)."""
    table = table.select(RECORD_SCHEMA.names)
    n = table.num_rows
    if source_order is None:
        source_order = pc.unique(table.column("source")).to_pylist()
    rank = rank_order(table, priorities or {}, source_order)
    dup_of = np.full(n, -1, dtype=np.int64)  # in ranked positions
    sim = np.zeros(n)
    kind = np.full(n, "", dtype=object)
    if config.exact and n > 1:
        _exact_pass(key_codes(table, list(config.key))[rank], np.arange(n), dup_of)
        category = pc.dictionary_encode(table.column("category")).combine_chunks()
        cat_ranked = category.indices.to_numpy()[rank]
        names = category.dictionary.to_pylist()
        for name, key in sorted(config.key_by_category.items()):
            if name not in names:
                continue
            rows = np.flatnonzero((cat_ranked == names.index(name)) & (dup_of < 0))
            if len(rows) > 1:
                _exact_pass(key_codes(table, list(key), rank[rows]), rows, dup_of)
        # A first-pass copy may itself have gone in a category pass: point at its survivor.
        hop = dup_of >= 0
        hop[hop] = dup_of[dup_of[hop]] >= 0
        dup_of[hop] = dup_of[dup_of[hop]]
        exact = dup_of >= 0
        sim[exact], kind[exact] = 1.0, "exact"
    near_cfg = config.near
    if near_cfg.enabled and n > 1:
        live = np.flatnonzero(dup_of < 0)
        picked = table.select([*config.key, "task"]).take(pa.array(rank[live], type=pa.int64()))
        parts = [content(picked, f) for f in config.key]
        texts = pc.binary_join_element_wise(*parts, " ") if len(parts) > 1 else parts[0]
        del picked
        found = near_duplicates(
            texts,
            threshold=near_cfg.threshold,
            num_perm=near_cfg.num_perm,
            shingle=near_cfg.shingle,
            bands=near_cfg.bands,
            accept=_same_query(table, rank[live], near_cfg.threshold),
            groups=_source_codes(table, rank[live]) if across else None,
        )
        kept_i, dropped_j = found.pairs[:, 0], found.pairs[:, 1]
        rows = live[dropped_j]
        dup_of[rows], sim[rows], kind[rows] = live[kept_i], found.similarity, "near"
    dropped_ranked = np.flatnonzero(dup_of >= 0)
    keep = np.ones(n, dtype=bool)
    keep[rank[dropped_ranked]] = False
    return DedupResult(table, keep, _drop_table(table, rank, dropped_ranked, dup_of, kind, sim))


def _drop_table(table, rank, dropped_ranked, dup_of, kind, sim) -> pa.Table:
    """DEDUP_DROP_SCHEMA rows: each dropped row with the id and source of the copy kept."""
    info = table.select(["id", "source", "meta"])
    dropped = info.take(pa.array(rank[dropped_ranked], type=pa.int64()))
    kept_copy = info.take(pa.array(rank[dup_of[dropped_ranked]], type=pa.int64()))
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
            "kind": kind[dropped_ranked].tolist(),
            "similarity": np.round(sim[dropped_ranked], 6),
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
