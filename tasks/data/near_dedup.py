"""Near dedup (MinHash LSH) over texts read a slice at a time, holding in memory only the rows
that share a bucket, never the signatures of all rows.

    text slices (rank order) ──shingles, signatures (minhash.py)──► band keys: one uint64 per
        row and band, a folder per band, a record batch per slice (BandKeys; on disk
        for a stage, in memory for a table)
    ──one band at a time: the rows whose key another row shares──► (row, bucket) pairs
    ──the rows in any shared bucket: read again (rows_at), shingles, signatures──►
        greedy walk in rank order: each row against the kept rows of its buckets
        (at most BUCKET_CAP per bucket), Jaccard >= threshold ──► dropped rows, each with
        the kept row it duplicates

On a Ray cluster (fan_out.py) the two passes before the walk are tasks: one per shard of
SHARD_ROWS texts writes its slice of every band's keys, one per band groups that band's
keys from every shard (a shuffle by band). The walk stays in the stage's process: it is
sequential in rank order, and runs over the rows that share a bucket only.

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

from multilora_pipeline.tasks.data.fan_out import RayFanOut, cluster_fan_out
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
# Texts per shard when the signatures are Ray tasks (fan_out.py), and at most this much text:
# ~2 s of hashing on one core for 200k instruction rows (~90 MB), 10M rows in 50 tasks.
SHARD_ROWS = 200_000
SHARD_BYTES = 64 << 20
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
    """The band keys of texts in rank order, added a slice at a time: per band, a folder of
    Arrow IPC files in `folder`, one per shard of rows (a record batch per slice), or arrays
    in memory when `folder` is None. A key is null where the row has no shingles (nothing to
    compare it on).

    A shard's writer (`shard`: its number, shards in row order) writes its rows of every
    band; `shard=None` only reads. Reading a band concatenates its shards in order: the
    shuffle from row shards to bands that lets each band be grouped on its own."""

    SCHEMA = pa.schema([pa.field("key", pa.uint64())])

    def __init__(self, bands: int, folder: Path | None = None, shard: int | None = 0):
        self.bands, self.folder, self.shard, self.num_rows = bands, folder, shard, 0
        self._memory: list[list[pa.Array]] = [[] for _ in range(bands)]
        self._sinks, self._writers = [], []
        if folder is not None and shard is not None:
            for band in range(bands):
                self._path(band).parent.mkdir(parents=True, exist_ok=True)
            self._sinks = [pa.OSFile(str(self._path(b)), "wb") for b in range(bands)]
            self._writers = [pa.ipc.new_file(sink, self.SCHEMA) for sink in self._sinks]

    def _band_folder(self, band: int) -> Path:
        return self.folder / f"band-{band:03d}"

    def _path(self, band: int) -> Path:
        """This shard's file of `band`."""
        return self._band_folder(band) / f"shard-{self.shard:05d}.arrow"

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
        """All rows' keys in one band (every shard's, in order) and which rows have one (read
        from disk: a plain read, not a memory map, so the pages are not left counted in the
        process's memory)."""
        if self.folder is None:
            chunks = self._memory[band]
        else:
            chunks = []
            for path in sorted(self._band_folder(band).glob("shard-*.arrow")):
                with pa.OSFile(str(path)) as fh:
                    chunks += pa.ipc.open_file(fh).read_all().column("key").chunks
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


def band_buckets(key: np.ndarray, active: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """One band: the active rows whose key another active row shares (ascending), their
    bucket ids (the key's rank among the band's distinct keys, as np.unique numbers them)
    and how many distinct keys the band has.

    One stable argsort and the runs of equal keys, rather than np.unique's inverse and
    counts of every row: at 10M rows a band costs ~300 MB at its peak instead of ~700."""
    ids = np.flatnonzero(active)
    if len(ids) < 2**31:
        ids = ids.astype(np.int32)
    if len(ids) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), 0
    order = np.argsort(key[ids], kind="stable")
    ids = ids[order]  # rows in key order, row order within a key
    del order
    ordered = key[ids]
    same = ordered[1:] == ordered[:-1]  # each row against the one before it in key order
    del ordered
    run_id = np.empty(len(ids), np.int64)  # the bucket of each row: its run of equal keys
    run_id[0] = 0
    np.cumsum(~same, out=run_id[1:])
    shared = np.zeros(len(ids), bool)
    shared[1:] |= same
    shared[:-1] |= same
    distinct = int(run_id[-1]) + 1
    rows, buckets = ids[shared].astype(np.int64), run_id[shared]
    by_row = np.argsort(rows, kind="stable")
    return rows[by_row], buckets[by_row], distinct


def shared_buckets(
    keys: BandKeys, fan_out: RayFanOut | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(rows, buckets): every row that shares a band's key with another active row, with
    that bucket's id (one id space over all bands, growing with the band), sorted by row
    and then bucket. Here one band's keys are in memory at a time; with `fan_out` (keys on
    disk) each band is grouped by a task of its own, wherever the cluster puts it."""
    if fan_out is not None and keys.folder is not None:
        per_band = fan_out.map(
            _band_buckets_on_disk,
            [(str(keys.folder), keys.bands, band) for band in range(keys.bands)],
            "near-dup-buckets",
        )
    else:
        per_band = (band_buckets(*keys.band(band)) for band in range(keys.bands))
    found_rows, found_buckets, offset = [], [], 0
    for rows, buckets, distinct in per_band:
        found_rows.append(rows)
        found_buckets.append(buckets + offset)
        offset += distinct
    if not found_rows:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows, buckets = np.concatenate(found_rows), np.concatenate(found_buckets)
    order = np.lexsort((buckets, rows))
    return rows[order], buckets[order]


def _band_buckets_on_disk(folder: str, bands: int, band: int):
    """band_buckets of one band read from every shard's file (a task of the fan-out)."""
    return band_buckets(*BandKeys(bands, Path(folder), shard=None).band(band))


def _sign_shard(
    texts_path: str,
    folder: str,
    shard: int,
    lsh: tuple[int, int],
    perm: tuple[int, int],
    shingle: int,
) -> int:
    """One shard of texts (an Arrow IPC file) signed into its band-key files (a task of the
    fan-out); lsh: (bands, rows), perm: (num_perm, seed). Returns its row count. One hashing
    thread: the task was given one CPU."""
    with pa.OSFile(texts_path) as fh:
        texts = pa.ipc.open_file(fh).read_all().column("text").combine_chunks()
    keys = BandKeys(lsh[0], Path(folder), shard)
    write_band_keys([texts], keys, MinHasher(*perm, threads=1), lsh[1], shingle)
    return keys.num_rows


def _text_shards(text_slices: Iterable[pa.Array], folder: Path, shard_rows: int) -> list[Path]:
    """The texts written as Arrow IPC files in order, each of at most `shard_rows` rows and
    about SHARD_BYTES of text (judged by the mean length in each slice)."""
    folder.mkdir(parents=True, exist_ok=True)
    schema = pa.schema([pa.field("text", pa.string())])
    paths: list[Path] = []
    sink = writer = None
    filled = limit = 0
    try:
        for texts in text_slices:
            mean_bytes = texts.nbytes / max(len(texts), 1)
            limit = max(1, min(shard_rows, int(SHARD_BYTES // max(mean_bytes, 1))))
            start = 0
            while start < len(texts):
                if writer is None or filled >= limit:  # the shard is full: start the next
                    if writer is not None:
                        writer.close()
                        sink.close()
                    paths.append(folder / f"shard-{len(paths):05d}.arrow")
                    sink = pa.OSFile(str(paths[-1]), "wb")
                    writer, filled = pa.ipc.new_file(sink, schema), 0
                piece = texts.slice(start, limit - filled).cast(pa.string())
                writer.write_batch(pa.record_batch([piece], schema=schema))
                start, filled = start + len(piece), filled + len(piece)
    finally:
        if writer is not None:
            writer.close()
            sink.close()
    return paths


def _sign_on_cluster(
    text_slices: Iterable[pa.Array],
    folder: Path,
    fan_out: RayFanOut,
    lsh: tuple[int, int],
    perm: tuple[int, int],
    shingle: int,
    shard_rows: int,
) -> int:
    """write_band_keys over the cluster: the texts cut into shards on disk, each shard
    signed by a task writing its slice of every band's keys; returns the row count."""
    shards = _text_shards(text_slices, folder / "texts", shard_rows)
    counts = fan_out.map(
        _sign_shard,
        [(str(p), str(folder), i, lsh, perm, shingle) for i, p in enumerate(shards)],
        "near-dup-signatures",
    )
    shutil.rmtree(folder / "texts", ignore_errors=True)
    return sum(counts)


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
    shard_rows: int = SHARD_ROWS,
) -> NearDuplicates:
    """Greedy near dedup of texts given a slice at a time, in the caller's rank order (best
    copy first): a text is dropped when its word-shingle Jaccard with an earlier *kept* text
    reaches `threshold` (and the pair is accepted); the earliest such text is the one it
    duplicates.

    `rows_at(positions)`: the texts at those positions again (the rows that share a bucket,
    ascending) and the pair check on indices into them (RowsAt), read in one go. `groups`
    (one int per text): texts of one group are not compared (a pass across sources whose own
    pairs were decided within each). `folder`: where the band keys go (None: in memory).
    With a folder, in a process connected to Ray (fan_out.py), the texts are cut into shards
    of `shard_rows` signed by Ray tasks, and each band grouped by one. Candidates come from
    LSH buckets, but a text is compared only with the kept texts of its buckets (at most
    BUCKET_CAP per bucket, the best-ranked), never with every pair: a bucket of 147k
    near-identical rows costs 147k comparisons with its one survivor, not millions of pairs.
    """
    t0 = time.perf_counter()
    if bands is None:
        bands, rows = lsh_params(threshold, num_perm)
    else:
        rows = num_perm // bands
    hasher = MinHasher(num_perm, seed)
    # On a Ray cluster (the stage is a Ray task) the signatures are tasks over shards of
    # the texts and the buckets a task per band; the keys, so the result, are the same.
    fan_out = cluster_fan_out() if folder is not None else None
    keys = BandKeys(bands, folder, shard=None if fan_out else 0)
    try:
        if fan_out is None:
            write_band_keys(text_slices, keys, hasher, rows, shingle, total)
            n = keys.num_rows
        else:
            lsh, perm = (bands, rows), (num_perm, seed)
            n = _sign_on_cluster(text_slices, folder, fan_out, lsh, perm, shingle, shard_rows)
        member_rows, member_buckets = shared_buckets(keys, fan_out)
    finally:
        keys.remove()
    involved, starts = np.unique(member_rows, return_index=True)
    ends = np.append(starts[1:], len(member_rows))[: len(starts)]
    # The rows that share a bucket, and only those, are read again and signed in memory.
    texts, accept = rows_at(involved)
    sh, sig = _shingles_and_signatures(texts, shingle, hasher)
    del texts
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


def _shingles_and_signatures(
    texts: pa.Array | pa.ChunkedArray, shingle: int, hasher: MinHasher
) -> tuple[Shingles, np.ndarray]:
    """The shingles and signatures of `texts`, computed SIGNATURE_ROWS texts at a time: the
    scratch of shingling (tokens, word hashes, windows) is one piece's, not all rows' (at
    10M rows, ~200k share a bucket: ~900 MB of scratch at once)."""
    pieces = [
        word_shingles(texts.slice(start, SIGNATURE_ROWS), shingle)
        for start in range(0, len(texts), SIGNATURE_ROWS)
    ] or [word_shingles(texts, shingle)]
    signatures = np.concatenate([hasher.signatures(piece) for piece in pieces])
    starts = np.cumsum([0] + [len(piece.hashes) for piece in pieces[:-1]])
    shingles = Shingles(
        np.concatenate([piece.hashes for piece in pieces]),
        np.concatenate([[0]] + [p.offsets[1:] + s for p, s in zip(pieces, starts, strict=True)]),
        np.concatenate([piece.lengths for piece in pieces]),
    )
    return shingles, signatures


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
