"""Vectorised MinHash for near-duplicate detection (numpy): text normalisation, shingles,
signatures, LSH band keys and the exact Jaccard. The greedy walk over the buckets, a slice of
texts at a time, is near_dedup.py.

    texts ──normalise──► words ──hash once──► word hashes ──rolling polynomial──► shingle hashes
          ──(a·x + b) mod 2^64, min per doc, >> 32──► signatures (n × num_perm, uint32)
          ──band keys (one 64-bit hash per band)──► buckets (near_dedup.shared_buckets)

Why it is fast: every step is a whole-array numpy or Arrow operation. The permutations are
multiply-add-shift hashes (Dietzfelbinger 1996: for 32-bit keys x and random 64-bit a, b,
``((a·x + b) mod 2^64) >> 32`` is a universal family), computed for all permutations as one
matrix operation per chunk of shingles; the shift is monotone, so it is applied after the
per-document minimum. Chunks run on a small thread pool (numpy releases the GIL).
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

# Punctuation that only wraps or ends a word, trimmed from both ends of each token: "world!"
# and "(world)" are "world". Marks inside a token or that carry meaning are kept, so "C",
# "C++" and "C#", "3 + 4" and "3 - 4", "don't" and "dont" stay apart.
EDGE_PUNCT = ".,;:!?\"'`()[]{}<>«»“”‘’„‚¡¿…–—*_"
# Shingles per chunk: 2^12 shingles x 128 permutations x 8 bytes = 4 MiB of scratch per thread,
# small enough to stay in cache across the multiply, add and min passes (2-3x faster than 2^17).
CHUNK_SHINGLES = 1 << 12
# Odd 64-bit constant (golden ratio) for the rolling shingle polynomial.
ROLL = np.uint64(0x9E3779B97F4A7C15)
# Chance that a pair exactly at the threshold becomes an LSH candidate (0.8, 128 perms: 21 x 6).
LSH_RECALL = 0.99
# Fixed seed for the hash family: same text, same signature, in every process.
DEFAULT_SEED = 1


def normalised_tokens(tokens: pa.Array) -> pa.Array:
    """Each whitespace token lower-cased, with the punctuation at its ends (EDGE_PUNCT)
    trimmed; tokens that were only such punctuation become ""."""
    return pc.utf8_trim(pc.utf8_lower(tokens), characters=EDGE_PUNCT)


def _wordlike(words: pa.Array, keep_symbols: bool) -> pa.Array:
    """Which normalised tokens count: non-empty ones, and without `keep_symbols` only
    those with a letter or digit (a lone "+" or "####" is no word for n-grams)."""
    if keep_symbols:
        return pc.greater(pc.utf8_length(words), 0)
    return pc.match_substring_regex(words, r"[\p{L}\p{N}]")


def normalised_words(
    texts: pa.Array | pa.ChunkedArray | list[str], *, keep_symbols: bool = False
) -> pa.ListArray:
    """Split on whitespace, lower-case, trim word-edge punctuation (normalised_tokens) and
    drop what is left empty, for a whole column at once. Shingles and n-grams count words
    only; `keep_symbols` keeps symbol tokens too ("3 + 4" is not "3 - 4"), for exact keys."""
    arr = pa.array(texts, type=pa.string()) if isinstance(texts, list) else texts
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    # Arrow, unlike str.split(), yields empty strings for leading/trailing whitespace.
    tokens = pc.utf8_split_whitespace(pc.utf8_trim_whitespace(pc.fill_null(arr, "")))
    words = normalised_tokens(tokens.flatten())
    keep = _wordlike(words, keep_symbols)
    parents = pc.list_parent_indices(tokens).to_numpy(zero_copy_only=False)
    kept_parents = parents[keep.to_numpy(zero_copy_only=False)]
    offsets = np.concatenate([[0], np.cumsum(np.bincount(kept_parents, minlength=len(tokens)))])
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), words.filter(keep))


def normalised_text(texts: pa.Array | pa.ChunkedArray | list[str]) -> pa.Array:
    """One normalised string per text (the exact-dedup key): folded case, no word-edge
    punctuation, single spaces; symbols between words kept."""
    return pc.binary_join(normalised_words(texts, keep_symbols=True), " ")


def _mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finaliser: spreads every input bit over the output (in place on a copy)."""
    x = x.copy()
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


@dataclass(frozen=True)
class Shingles:
    """Per-document shingle hashes, flattened: doc i owns hashes[offsets[i]:offsets[i+1]]."""

    hashes: np.ndarray  # uint64 (32 significant bits unless full_hash was asked for)
    offsets: np.ndarray  # int64, n + 1
    lengths: np.ndarray  # int64, n: normalised words per document

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def doc(self, i: int) -> np.ndarray:
        return self.hashes[self.offsets[i] : self.offsets[i + 1]]


def word_shingles(
    texts, shingle: int, *, full_hash: bool = False, keep_symbols: bool = True
) -> Shingles:
    """Hash every word `shingle`-gram of every text; texts shorter than `shingle` words
    give one shingle of all their words, empty texts none. MinHash needs 32-bit keys;
    `full_hash` keeps all 64 bits (for set membership tests with negligible collisions).

    Words are split first and only the distinct tokens are normalised and hashed, as
    normalised_words does (tokens that were only word-edge punctuation are dropped; with
    `keep_symbols` false, symbol-only tokens such as "+" or "####" too).
    """
    arr = pa.array(texts, type=pa.string()) if isinstance(texts, list) else texts
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    arr = pc.fill_null(arr, "")
    # The ASCII splitter is twice as fast; it is exact when the text has no Unicode spaces.
    ascii_only = pc.all(pc.string_is_ascii(arr)).as_py() is not False
    tokens = (pc.ascii_split_whitespace if ascii_only else pc.utf8_split_whitespace)(arr)
    n = len(tokens)
    flat = tokens.flatten()
    if len(flat) == 0:
        return Shingles(np.zeros(0, np.uint64), np.zeros(n + 1, np.int64), np.zeros(n, np.int64))
    encoded = pc.dictionary_encode(flat)
    vocab = normalised_tokens(encoded.dictionary)
    keep_vocab = _wordlike(vocab, keep_symbols).to_numpy(zero_copy_only=False)
    # Hash each distinct word once (siphash with a fixed key: same value in every process).
    vocab_hash = pd.util.hash_array(np.asarray(vocab.to_pylist(), dtype=object), categorize=False)
    idx = encoded.indices.to_numpy()
    offsets = tokens.offsets.to_numpy().astype(np.int64)
    offsets = offsets - offsets[0]
    if keep_vocab.all():
        w = vocab_hash[idx]
    else:  # drop tokens that were all punctuation (or empty: leading/trailing spaces)
        keep = keep_vocab[idx]
        w = vocab_hash[idx][keep]
        offsets = np.concatenate([[0], np.cumsum(keep)])[offsets]
    lengths = np.diff(offsets)
    counts = np.where(lengths >= shingle, lengths - shingle + 1, (lengths > 0).astype(np.int64))
    # Rolling polynomial over every window of the flat word array ...
    total = len(w)
    m = max(total - shingle + 1, 0)
    h = w[:m].copy()
    for j in range(1, shingle):
        h *= ROLL
        h += w[j : j + m]
    # ... keeping windows that end inside their own document,
    valid = np.ones(m, dtype=bool)
    starts, ends = offsets[:-1], offsets[1:]
    for j in range(1, shingle):
        pos = ends - j
        bad = pos[(pos >= starts) & (pos < m)]
        valid[bad] = False
    # ... plus one shingle of all words for documents shorter than `shingle`.
    short = np.flatnonzero((lengths > 0) & (lengths < shingle))
    full_starts = np.flatnonzero(valid)
    if len(short):
        sh = w[offsets[short]].copy()
        for j in range(1, shingle):
            take = lengths[short] > j
            nxt = w[np.minimum(offsets[short] + j, total - 1)]
            sh = np.where(take, sh * ROLL + nxt, sh)
        all_starts = np.concatenate([full_starts, offsets[short]])
        all_h = np.concatenate([h[full_starts], sh])
        order = np.argsort(all_starts, kind="stable")
        hashes = all_h[order]
    else:
        hashes = h[full_starts]
    # No extra mixing needed: a polynomial (odd multiplier) of uniform 64-bit word hashes is
    # itself uniform, so its top 32 bits are good MinHash keys.
    if not full_hash:
        hashes = hashes >> np.uint64(32)
    return Shingles(hashes, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64), lengths)


class MinHasher:
    """`num_perm` multiply-add-shift permutations with a fixed seed."""

    def __init__(self, num_perm: int = 128, seed: int = DEFAULT_SEED, threads: int | None = None):
        rng = np.random.default_rng(seed)
        self.num_perm = num_perm
        self.a = rng.integers(1, 2**63, num_perm, dtype=np.uint64) | np.uint64(1)  # odd
        self.b = rng.integers(0, 2**63, num_perm, dtype=np.uint64)
        self.threads = threads or min(4, os.cpu_count() or 1)

    def _chunk(self, x: np.ndarray, starts: np.ndarray, out: np.ndarray) -> np.ndarray:
        # (num_perm, shingles) layout: the per-document minimum then runs along contiguous
        # rows, several times faster than reducing over axis 0.
        h = out[:, : len(x)]
        np.multiply(self.a[:, None], x[None, :], out=h)
        h += self.b[:, None]
        return np.minimum.reduceat(h, starts, axis=1).T

    def signatures(self, shingles: Shingles) -> np.ndarray:
        """(n, num_perm) uint32 signatures; documents without shingles get all-ones rows."""
        counts = shingles.counts
        n = len(counts)
        sig = np.full((n, self.num_perm), np.iinfo(np.uint64).max, dtype=np.uint64)
        docs = np.flatnonzero(counts > 0)
        if len(docs) == 0:
            return (sig >> np.uint64(32)).astype(np.uint32)
        # Group whole documents into chunks of about CHUNK_SHINGLES shingles.
        doc_starts = shingles.offsets[docs]
        cuts = np.searchsorted(doc_starts, np.arange(0, shingles.offsets[-1], CHUNK_SHINGLES))
        cuts = np.unique(np.concatenate([cuts, [len(docs)]]))
        jobs = [(cuts[i], cuts[i + 1]) for i in range(len(cuts) - 1) if cuts[i] < cuts[i + 1]]

        local = threading.local()

        def run(job):
            lo, hi = job
            s0, s1 = shingles.offsets[docs[lo]], shingles.offsets[docs[hi - 1] + 1]
            # One scratch buffer per thread, reused: fresh 100 MB arrays cost page faults.
            if getattr(local, "buf", None) is None or local.buf.shape[1] < s1 - s0:
                local.buf = np.empty((self.num_perm, max(s1 - s0, CHUNK_SHINGLES)), np.uint64)
            x = shingles.hashes[s0:s1]
            sig[docs[lo:hi]] = self._chunk(x, doc_starts[lo:hi] - s0, local.buf)

        with ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(run, jobs))
        return (sig >> np.uint64(32)).astype(np.uint32)


def lsh_params(threshold: float, num_perm: int, recall: float = LSH_RECALL) -> tuple[int, int]:
    """(bands, rows): the most rows per band (fewest false candidates) such that a pair
    whose Jaccard equals the threshold still becomes a candidate with probability >= recall.

    Every candidate is verified afterwards, so a false candidate costs a little time while a
    missed pair is a duplicate left in the data: recall at the threshold comes first.
    """
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if 1 - (1 - threshold**rows) ** bands >= recall:
            return bands, rows
    return num_perm, 1


def band_keys(sig: np.ndarray, bands: int, rows: int) -> np.ndarray:
    """(n, bands) uint64: a 64-bit hash of each row's `rows` signature values in each band
    (salted by the band). Rows share a bucket of a band when their keys there are equal."""
    if bands * rows > sig.shape[1]:
        raise ValueError(f"bands*rows = {bands * rows} exceeds num_perm = {sig.shape[1]}")
    mult = _mix64(np.arange(1, rows + 1, dtype=np.uint64)) | np.uint64(1)
    out = np.empty((sig.shape[0], bands), dtype=np.uint64)
    for band in range(bands):
        cols = sig[:, band * rows : (band + 1) * rows].astype(np.uint64)
        out[:, band] = _mix64((cols * mult).sum(axis=1, dtype=np.uint64) + np.uint64(band))
    return out


def exact_jaccard(shingles: Shingles, pairs: np.ndarray) -> np.ndarray:
    """Exact Jaccard of the shingle sets of each pair (float64)."""
    out = np.empty(len(pairs))
    for k, (i, j) in enumerate(np.asarray(pairs).reshape(-1, 2).tolist()):
        a, b = np.unique(shingles.doc(i)), np.unique(shingles.doc(j))
        inter = len(np.intersect1d(a, b, assume_unique=True))
        union = len(a) + len(b) - inter
        out[k] = inter / union if union else 1.0
    return out
