"""Near dedup (MinHash LSH) over texts read a slice at a time, holding in memory only the rows
that share a bucket, never the signatures of all rows.

    text slices (rank order) ──shingles, signatures (minhash.py)──► band keys: one uint64 per
        row and band, one Arrow file per band, a record batch per slice (BandKeys; on disk
        for a stage, in memory for a table)
    ──one band at a time: the rows whose key another row shares──► (row, bucket) pairs
    ──the rows in any shared bucket: read again (rows_at), shingles, signatures──►
        greedy walk in rank order: each row against the kept rows of its buckets
        (at most BUCKET_CAP per bucket), Jaccard >= threshold ──► dropped rows, each with
        the kept row it duplicates

Memory: one slice's shingles and signatures, one band's keys (8 bytes a row), and the
texts, shingles and signatures of the rows that share a bucket (the duplicates and their
kept copies: a few percent of a real corpus). The walk is the same as over all rows at once:
rows that share no bucket are never compared with anything.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa

from multilora_pipeline.tasks.data.minhash import (
    DEFAULT_SEED,
    MinHasher,
    Shingles,
    band_keys,
    exact_jaccard,
    lsh_params,
    word_shingles,
)

log = logging.getLogger("mlora.near_dedup")

# Kept rows a bucket remembers (the best-ranked): a later row is compared with at most this
# many per band, so a bucket of distinct rows that collide in one band costs bounded work.
BUCKET_CAP = 32
# Candidates whose estimated Jaccard is this close to the threshold get the exact Jaccard:
# 0.15 is over 3 standard deviations of the 128-permutation estimate (sqrt(J(1-J)/128) <= 0.044).
VERIFY_MARGIN = 0.15
# Texts shingled and signed at once: their signatures are 1 KB a row while computed (uint64).
SIGNATURE_ROWS = 50_000
# Seconds between progress lines of the signature pass.
PROGRESS_SECONDS = 10.0


@dataclass(frozen=True)
class NearDuplicates:
    """Each dropped row with the kept row it duplicates: pairs (i, j), i < j, and their
    shingle Jaccard (exact where the estimate was within VERIFY_MARGIN of the threshold,
    else the signature estimate)."""

    pairs: np.ndarray
    similarity: np.ndarray
    candidates: int
    """Signature comparisons made (kept row, later row sharing a bucket with it)."""
    bands: int
    rows: int


class BandKeys:
    """The band keys of texts in rank order, added a slice at a time: per band, one Arrow IPC
    file in `folder` (a record batch per slice), or arrays in memory when `folder` is None.
    A key is null where the row has no shingles (nothing to compare it on)."""

    SCHEMA = pa.schema([pa.field("key", pa.uint64())])

    def __init__(self, bands: int, folder: Path | None = None):
        self.bands, self.folder, self.num_rows = bands, folder, 0
        self._memory: list[list[pa.Array]] = [[] for _ in range(bands)]
        self._sinks, self._writers = [], []
        if folder is not None:
            folder.mkdir(parents=True, exist_ok=True)
            self._sinks = [pa.OSFile(str(self._path(b)), "wb") for b in range(bands)]
            self._writers = [pa.ipc.new_file(sink, self.SCHEMA) for sink in self._sinks]

    def _path(self, band: int) -> Path:
        return self.folder / f"band-{band:03d}.arrow"

    def add(self, keys: np.ndarray, active: np.ndarray) -> None:
        """Append the keys (n, bands) of the next n rows; `active` false: the row has none."""
        mask = ~active
        for band in range(self.bands):
            column = pa.array(keys[:, band], type=pa.uint64(), mask=mask)
            if self._writers:
                self._writers[band].write_batch(pa.record_batch([column], schema=self.SCHEMA))
            else:
                self._memory[band].append(column)
        self.num_rows += len(keys)

    def close(self) -> None:
        for writer, sink in zip(self._writers, self._sinks, strict=True):
            writer.close()
            sink.close()
        self._sinks, self._writers = [], []

    def remove(self) -> None:
        """Close and delete the files (the folder too)."""
        self.close()
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)

    def band(self, band: int) -> tuple[np.ndarray, np.ndarray]:
        """All rows' keys in one band and which rows have one (read from disk: a plain read,
        not a memory map, so the pages are not left counted in the process's memory)."""
        if self.folder is None:
            chunks = self._memory[band]
        else:
            with pa.OSFile(str(self._path(band))) as fh:
                chunks = pa.ipc.open_file(fh).read_all().column("key").chunks
        if not chunks:
            return np.zeros(0, np.uint64), np.zeros(0, bool)
        column = pa.concat_arrays(chunks)
        active = column.is_valid().to_numpy(zero_copy_only=False)
        return column.fill_null(0).to_numpy(zero_copy_only=False), active


def write_band_keys(
    text_slices: Iterable[pa.Array],
    keys: BandKeys,
    hasher: MinHasher,
    rows: int,
    shingle: int,
    total: int | None = None,
) -> None:
    """Shingle, sign and band every text of `text_slices` into `keys`, SIGNATURE_ROWS at a
    time, with a progress line (rate, ETA) every PROGRESS_SECONDS."""
    t0 = last = time.perf_counter()
    for texts in text_slices:
        for start in range(0, len(texts), SIGNATURE_ROWS):
            sh = word_shingles(texts.slice(start, SIGNATURE_ROWS), shingle)
            sig = hasher.signatures(sh)
            keys.add(band_keys(sig, keys.bands, rows), sh.counts > 0)
        now = time.perf_counter()
        if now - last >= PROGRESS_SECONDS and total:
            last, rate = now, keys.num_rows / (now - t0)
            log.info(
                "near-dup signatures: %d/%d texts, %.0f texts/s, ETA %.0fs",
                keys.num_rows,
                total,
                rate,
                (total - keys.num_rows) / max(rate, 1e-9),
            )
    keys.close()


def shared_buckets(keys: BandKeys) -> tuple[np.ndarray, np.ndarray]:
    """(rows, buckets): every row that shares a band's key with another active row, with
    that bucket's id (one id space over all bands, growing with the band), sorted by row
    and then bucket. One band's keys are in memory at a time."""
    found_rows, found_buckets, offset = [], [], 0
    for band in range(keys.bands):
        key, active = keys.band(band)
        ids = np.flatnonzero(active)
        unique, inverse, counts = np.unique(key[ids], return_inverse=True, return_counts=True)
        shared = counts[inverse] > 1
        found_rows.append(ids[shared])
        found_buckets.append(inverse[shared].astype(np.int64) + offset)
        offset += len(unique)
        del key, active, ids, unique, inverse, counts
    if not found_rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows, buckets = np.concatenate(found_rows), np.concatenate(found_buckets)
    order = np.lexsort((buckets, rows))
    return rows[order], buckets[order]


# What near dedup reads again for the rows that share a bucket: their texts, and a check
# (i, j) -> bool on indices into those rows of whether a near pair is a copy (None: all are).
RowsAt = Callable[[np.ndarray], tuple[pa.Array, Callable[[int, int], bool] | None]]


def near_duplicates_in_slices(
    text_slices: Iterable[pa.Array],
    rows_at: RowsAt,
    *,
    total: int | None = None,
    threshold: float = 0.8,
    num_perm: int = 128,
    shingle: int = 5,
    bands: int | None = None,
    seed: int = DEFAULT_SEED,
    groups: np.ndarray | None = None,
    folder: Path | None = None,
) -> NearDuplicates:
    """Greedy near dedup of texts given a slice at a time, in the caller's rank order (best
    copy first): a text is dropped when its word-shingle Jaccard with an earlier *kept* text
    reaches `threshold` (and the pair is accepted); the earliest such text is the one it
    duplicates.

    `rows_at(positions)`: the texts at those positions again (the rows that share a bucket,
    ascending) and the pair check on indices into them (RowsAt), read in one go. `groups` (one int per text): texts of one
    group are not compared (a pass across sources whose own pairs were decided within each).
    `folder`: where the band keys go (None: in memory). Candidates come from LSH buckets,
    but a text is compared only with the kept texts of its buckets (at most BUCKET_CAP per
    bucket, the best-ranked), never with every pair: a bucket of 147k near-identical rows
    costs 147k comparisons with its one survivor, not millions of pairs.
    """
    t0 = time.perf_counter()
    if bands is None:
        bands, rows = lsh_params(threshold, num_perm)
    else:
        rows = num_perm // bands
    hasher = MinHasher(num_perm, seed)
    keys = BandKeys(bands, folder)
    try:
        write_band_keys(text_slices, keys, hasher, rows, shingle, total)
        member_rows, member_buckets = shared_buckets(keys)
    finally:
        keys.remove()
    n = keys.num_rows
    involved, starts = np.unique(member_rows, return_index=True)
    ends = np.append(starts[1:], len(member_rows))[: len(starts)]
    # The rows that share a bucket, and only those, are read again and signed in memory.
    texts, accept = rows_at(involved)
    sh = word_shingles(texts, shingle)
    del texts
    sig = hasher.signatures(sh)
    local_groups = groups[involved] if groups is not None else None
    kept_in: dict[int, list[int]] = {}
    pairs, sims, compared = [], [], 0
    bucket_list = member_buckets.tolist()
    for j, (lo, hi) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        own = bucket_list[lo:hi]
        candidates = sorted({i for b in own for i in kept_in.get(b, ())})
        if local_groups is not None:
            candidates = [i for i in candidates if local_groups[i] != local_groups[j]]
        found = _first_duplicate(sh, sig, candidates, j, threshold, accept)
        compared += len(candidates)
        if found is not None:
            pairs.append((int(involved[found[0]]), int(involved[j])))
            sims.append(found[1])
            continue
        for b in own:  # j is kept: later rows of its buckets are compared with it
            members = kept_in.setdefault(b, [])
            if len(members) < BUCKET_CAP:
                members.append(j)
    seconds = time.perf_counter() - t0
    log.info(
        "near-dup: %d texts (%d in shared buckets), %d comparisons, %d near duplicates >= %.2f "
        "in %.1fs (%.0f texts/s)",
        n,
        len(involved),
        compared,
        len(pairs),
        threshold,
        seconds,
        n / max(seconds, 1e-9),
    )
    return NearDuplicates(
        np.array(pairs, dtype=np.int64).reshape(-1, 2),
        np.array(sims, dtype=np.float64),
        compared,
        bands,
        rows,
    )


def near_duplicates(
    texts,
    *,
    threshold: float = 0.8,
    num_perm: int = 128,
    shingle: int = 5,
    bands: int | None = None,
    seed: int = DEFAULT_SEED,
    accept: Callable[[int, int], bool] | None = None,
    groups: np.ndarray | None = None,
) -> NearDuplicates:
    """near_duplicates_in_slices over texts in memory (a list, an Arrow array); `accept(i, j)`
    takes indices into `texts`."""
    arr = pa.array(texts, type=pa.string()) if isinstance(texts, list) else texts
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()

    def rows_at(positions: np.ndarray):
        def check(i: int, j: int) -> bool:
            return accept(int(positions[i]), int(positions[j]))

        return arr.take(pa.array(positions, type=pa.int64())), check if accept else None

    return near_duplicates_in_slices(
        [arr],
        rows_at,
        threshold=threshold,
        num_perm=num_perm,
        shingle=shingle,
        bands=bands,
        seed=seed,
        groups=groups,
    )


def _first_duplicate(
    sh: Shingles,
    sig: np.ndarray,
    candidates: list[int],
    j: int,
    threshold: float,
    accept: Callable[[int, int], bool] | None,
) -> tuple[int, float] | None:
    """The best-ranked candidate that `j` duplicates, with the similarity, or None."""
    if not candidates:
        return None
    estimates = (sig[candidates] == sig[j]).mean(axis=1)
    for i, estimate in zip(candidates, estimates.tolist(), strict=True):
        if estimate < threshold - VERIFY_MARGIN:
            continue
        # The exact Jaccard only where the estimator's noise could flip the decision.
        similarity = (
            float(exact_jaccard(sh, np.array([[i, j]]))[0])
            if abs(estimate - threshold) < VERIFY_MARGIN
            else estimate
        )
        if similarity >= threshold and (accept is None or accept(i, j)):
            return i, similarity
    return None
