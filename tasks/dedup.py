"""Dedup: exact (normalised key) and near (MinHash LSH) duplicates, within and across sources.

Which copy survives is decided by rank: source priority (higher first), then the source's
position in the spec, then row order. Exact duplicates keep the best-ranked copy; near
duplicates are removed greedily in rank order, so every dropped row duplicates a row that
was kept, with a similarity at or above the threshold. Every drop is reported.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from data_specs.record import RECORD_SCHEMA
from data_specs.schema import DedupSpec
from tasks.minhash import near_duplicates, normalised_text

DEDUP_DROP_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("row", pa.int64()),  # row in the source file, when normalise recorded it
        pa.field("duplicate_of", pa.string(), nullable=False),
        pa.field("duplicate_source", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # exact | near
        pa.field("similarity", pa.float64(), nullable=False),
    ]
)
# Joins key fields; not whitespace, so normalisation never merges two fields into one.
FIELD_SEP = "\x1f"


@dataclass(frozen=True)
class DedupResult:
    """Rows kept (input order, RECORD_SCHEMA) and rows dropped (DEDUP_DROP_SCHEMA)."""

    kept: pa.Table
    drops: pa.Table


def source_row(meta: str) -> int | None:
    """The source-file row number normalise stored in `meta`, if any."""
    try:
        data = json.loads(meta)
    except (TypeError, ValueError):
        return None
    row = data.get("row", data.get("__row__")) if isinstance(data, dict) else None
    return int(row) if isinstance(row, int) else None


def exact_keys(table: pa.Table, fields: list[str]) -> pa.Array:
    """The exact-dedup key of each row: the named fields, each case-folded, without
    punctuation and with whitespace collapsed."""
    parts = [normalised_text(table.column(f)) for f in fields]
    return pc.binary_join_element_wise(*parts, FIELD_SEP) if len(parts) > 1 else parts[0]


def rank_order(table: pa.Table, priorities: dict[str, int], source_order: list[str]) -> np.ndarray:
    """Row indices best first: higher priority, then earlier source in the spec, then row order."""
    sources = table.column("source").to_numpy(zero_copy_only=False)
    position = {name: i for i, name in enumerate(source_order)}
    prio = np.array([-priorities.get(s, 0) for s in sources], dtype=np.int64)
    pos = np.array([position.get(s, len(position)) for s in sources], dtype=np.int64)
    return np.lexsort((np.arange(len(sources)), pos, prio))


def _greedy_near(n: int, pairs: np.ndarray, sims: np.ndarray):
    """Walk pairs (i < j in rank order) by j: drop j when some kept i duplicates it.

    i's fate is settled before j is visited, so every dropped row points at a kept row.
    """
    dup_of = np.full(n, -1, dtype=np.int64)
    sim_of = np.zeros(n)
    order = np.lexsort((pairs[:, 0], pairs[:, 1]))
    for k in order.tolist():
        i, j = int(pairs[k, 0]), int(pairs[k, 1])
        if dup_of[j] < 0 and dup_of[i] < 0:
            dup_of[j], sim_of[j] = i, sims[k]
    return dup_of, sim_of


def dedup(
    table: pa.Table,
    config: DedupSpec,
    priorities: dict[str, int] | None = None,
    source_order: list[str] | None = None,
) -> DedupResult:
    """Remove exact and near duplicates from `table` (canonical records, any sources)."""
    table = table.select(RECORD_SCHEMA.names)
    n = table.num_rows
    source_order = source_order or list(dict.fromkeys(table.column("source").to_pylist()))
    rank = rank_order(table, priorities or {}, source_order)
    ranked = table.take(rank)
    dup_of = np.full(n, -1, dtype=np.int64)  # in ranked positions
    sim = np.zeros(n)
    kind = np.array([""] * n, dtype=object)
    if config.exact and n:
        codes, _ = pd.factorize(exact_keys(ranked, list(config.key)).to_numpy(zero_copy_only=False))
        _, first = np.unique(codes, return_index=True)
        rep = first[codes]  # best-ranked row with the same key
        exact = rep != np.arange(n)
        dup_of[exact], sim[exact], kind[exact] = rep[exact], 1.0, "exact"
    near_cfg = config.near
    if near_cfg.enabled and n > 1:
        alive = dup_of < 0
        live = np.flatnonzero(alive)
        texts = (
            pc.binary_join_element_wise(
                *[pc.fill_null(ranked.column(f), "") for f in config.key], " "
            )
            if len(config.key) > 1
            else ranked.column(config.key[0])
        )
        texts = pc.take(texts, pa.array(live))
        found = near_duplicates(
            texts,
            threshold=near_cfg.threshold,
            num_perm=near_cfg.num_perm,
            shingle=near_cfg.shingle,
            bands=near_cfg.bands,
        )
        if len(found.pairs):
            local_dup, local_sim = _greedy_near(len(live), found.pairs, found.similarity)
            hit = np.flatnonzero(local_dup >= 0)
            rows = live[hit]
            dup_of[rows], sim[rows], kind[rows] = live[local_dup[hit]], local_sim[hit], "near"
    dropped_ranked = np.flatnonzero(dup_of >= 0)
    keep_mask = np.ones(n, dtype=bool)
    keep_mask[rank[dropped_ranked]] = False
    kept = table.filter(pa.array(keep_mask))
    dropped = ranked.take(pa.array(dropped_ranked, type=pa.int64()))
    kept_copy = ranked.take(pa.array(dup_of[dropped_ranked], type=pa.int64()))
    drops = pa.Table.from_pydict(
        {
            "id": dropped.column("id"),
            "source": dropped.column("source"),
            "row": [source_row(m) for m in dropped.column("meta").to_pylist()],
            "duplicate_of": kept_copy.column("id"),
            "duplicate_source": kept_copy.column("source"),
            "kind": kind[dropped_ranked].tolist(),
            "similarity": np.round(sim[dropped_ranked], 6),
        },
        schema=DEDUP_DROP_SCHEMA,
    )
    return DedupResult(kept, drops)


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
