"""Mix: balance deduplicated, decontaminated sources into one seeded training mixture.

    per source: seeded hold-out of validation_fraction  (before mixing: never trained on)
    shares:     proportional n_i · weights w_i · capped min(n_i, cap) (T5) · temperature n_i^(1/T)
    counts:     share x target size (examples, or whitespace tokens of prompt + response)
    draw:       a seeded permutation of each source; repeats only if allow_upsampling
    output:     one seeded shuffle -> train/train-00000.parquet ... + train/manifest.json
                + validation.parquet (outside train/, so train/*.parquet is exactly the mixture)

Without upsampling a source gives at most all its rows: its achieved share is then below the
requested one, and the manifest says so (nothing is silently redistributed). Without a target
size, proportional and capped take every (capped) row once; weights and temperature take the
largest mixture that needs no source beyond its size. Either way a source that limits the
mixture is named in one warning line (`limit_warning`).
The mixture id hashes input hashes, parameters and seed; the same inputs give the same id and
byte-identical files (fixed row groups, no timestamps in the Parquet metadata).
"""

from __future__ import annotations

import json
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from multilora_pipeline.data_specs.errors import DataError
from multilora_pipeline.data_specs.record import RECORD_SCHEMA
from multilora_pipeline.data_specs.schema import MixtureSpec
from multilora_pipeline.models.content import atomic_folder, write_text_atomic
from multilora_pipeline.tasks.data.files.gather import gathered_parts
from multilora_pipeline.tasks.data.files.parquet_io import (
    SLICE_ROWS,
    parquet_slices,
    write_batches,
    write_parquet,
)
from multilora_pipeline.tasks.identity import mixture_id

__all__ = ["build_mixture", "load_mixture", "write_parquet"]

MANIFEST = "manifest.json"
VALIDATION = "validation.parquet"
# Under "mlora" so a Prefect run's log page shows it too (PREFECT_LOGGING_EXTRA_LOGGERS).
log = logging.getLogger("mlora.mixture")


def write_json(data: dict, path: Path) -> None:
    """Write sorted, indented JSON via a temp file + rename."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _rng(seed: int, *salt: str) -> np.random.Generator:
    """Independent seeded stream per purpose and source (stable across processes)."""
    return np.random.default_rng([seed, *(zlib.crc32(s.encode()) for s in salt)])


def token_counts(table: pa.Table) -> np.ndarray:
    """Whitespace tokens of prompt + response per row: a tokenizer-free, stable size measure.
    Counted SLICE_ROWS rows at a time (the split words of a whole big table are GBs)."""
    out = np.zeros(table.num_rows, dtype=np.int64)
    for lo in range(0, table.num_rows, SLICE_ROWS):
        part = table.slice(lo, SLICE_ROWS)
        for c in ("prompt", "response"):
            text = pc.utf8_trim_whitespace(pc.fill_null(part.column(c), ""))
            words = pc.list_value_length(pc.utf8_split_whitespace(text))
            out[lo : lo + part.num_rows] += words.to_numpy(zero_copy_only=False)
    return out


def validation_mask(n: int, fraction: float, seed: int, source: str) -> np.ndarray:
    """True for the round(fraction * n) seeded rows of a source held out for validation."""
    n_val = int(round(fraction * n))
    if fraction > 0 and n >= 2:
        n_val = min(max(n_val, 1), n - 1)  # every source gets a validation row, keeps one
    picked = np.zeros(n, dtype=bool)
    picked[_rng(seed, "validation", source).permutation(n)[:n_val]] = True
    return picked


def split_validation(table: pa.Table, fraction: float, seed: int, source: str):
    """(train, validation) with round(fraction * n) seeded rows held out, file order kept."""
    picked = validation_mask(table.num_rows, fraction, seed, source)
    return table.filter(pa.array(~picked)), table.filter(pa.array(picked))


def requested_shares(sizes: dict[str, int], config: MixtureSpec) -> dict[str, float]:
    """Share of the mixture each source should get under the configured strategy."""
    names = list(sizes)
    n = np.array([sizes[s] for s in names], dtype=np.float64)
    if config.strategy == "proportional":
        raw = n
    elif config.strategy == "weights":
        raw = np.array([float((config.weights or {}).get(s, 0.0)) for s in names])
    elif config.strategy == "capped":
        raw = np.minimum(n, float(config.cap))
    else:  # temperature
        raw = n ** (1.0 / config.temperature)
    if raw.sum() <= 0:
        raise DataError(
            "no rows to mix: every source is empty or has weight 0",
            where="mixture",
            fix="check the sources and mixture.weights",
        )
    return dict(zip(names, (raw / raw.sum()).tolist(), strict=True))


def _apportion(total: int, shares: dict[str, float]) -> dict[str, int]:
    """Integer counts summing to `total`, by largest remainder (ties by spec order)."""
    exact = {s: p * total for s, p in shares.items()}
    counts = {s: int(np.floor(v)) for s, v in exact.items()}
    left = total - sum(counts.values())
    for s in sorted(exact, key=lambda s: -(exact[s] - counts[s]))[:left]:
        counts[s] += 1
    return counts


def _draw(n: int, want: int, rng: np.random.Generator) -> np.ndarray:
    """`want` row indices: whole seeded permutations, then part of one more."""
    reps, rest = divmod(want, n)
    parts = [rng.permutation(n) for _ in range(reps)] + [rng.permutation(n)[:rest]]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def _draw_tokens(tokens: np.ndarray, want: int, allow_repeat: bool, rng) -> np.ndarray:
    """Rows in seeded order until their tokens reach `want` (or the source runs out)."""
    n = len(tokens)
    if n == 0 or want <= 0:
        return np.zeros(0, dtype=np.int64)
    total = int(tokens.sum())
    reps = max(1, -(-want // max(total, 1))) if allow_repeat else 1
    order = np.concatenate([rng.permutation(n) for _ in range(reps)])
    cum = np.cumsum(tokens[order])
    stop = int(np.searchsorted(cum, want)) + 1  # first prefix reaching the target
    return order[: min(stop, len(order))]


@dataclass(frozen=True)
class Mixture:
    """Where a written mixture lives and what its manifest says."""

    mixture_id: str
    out_dir: Path
    manifest: dict

    @property
    def train_dir(self) -> Path:
        return self.out_dir / "train"

    @property
    def validation_path(self) -> Path:
        return self.out_dir / VALIDATION


def plan_counts(sizes: dict[str, int], config: MixtureSpec) -> tuple[dict, dict, int]:
    """(shares, requested counts, total) for a mixture sized in examples."""
    shares = requested_shares(sizes, config)
    if config.size is not None:
        total = config.size
    elif config.strategy == "proportional":
        total = sum(sizes.values())
    elif config.strategy == "capped":
        total = sum(min(v, config.cap) for v in sizes.values())
    else:  # largest mixture that needs no source beyond its size
        total = int(min(sizes[s] / p for s, p in shares.items() if p > 0))
    return shares, _apportion(total, shares), total


def source_positions(records: Path, names: list[str]) -> dict[str, np.ndarray]:
    """Each source's row numbers in the Parquet file `records`, in file order (the source
    column alone is read, as a dictionary: a few bytes a row)."""
    column = pq.read_table(records, columns=["source"], read_dictionary=["source"])["source"]
    encoded = column.combine_chunks()
    codes, labels = encoded.indices.to_numpy(), encoded.dictionary.to_pylist()
    empty = np.zeros(0, dtype=np.int64)
    return {n: np.flatnonzero(codes == labels.index(n)) if n in labels else empty for n in names}


def file_token_counts(records: Path) -> np.ndarray:
    """token_counts of every row of the Parquet file `records`, read a batch at a time."""
    counts = [token_counts(part) for part in parquet_slices([records], ["prompt", "response"])]
    return np.concatenate(counts) if counts else np.zeros(0, dtype=np.int64)


def build_mixture(
    records: Path,
    names: list[str],
    input_hashes: dict[str, str],
    config: MixtureSpec,
    seed: int,
    out_dir: Path,
) -> Mixture:
    """Mix the sources `names` (spec order) of the canonical records in the Parquet file
    `records` and write shards + manifest to out_dir.

    Everything is decided on the file's row numbers; the rows are then read in one pass and
    each shard gathered through disk (files/gather.py), so memory holds a batch and a shard,
    not the file."""
    mid = mixture_id(input_hashes, config, seed)
    positions = source_positions(records, names)
    train_idx, val_idx = {}, []
    for name in names:
        held = validation_mask(len(positions[name]), config.validation_fraction, seed, name)
        train_idx[name] = positions[name][~held]
        val_idx.append(positions[name][held])
    by_tokens = config.size_tokens is not None
    sizes = {s: len(idx) for s, idx in train_idx.items()}
    members, picks = {}, []
    if by_tokens:
        all_tokens = file_token_counts(records)
        shares = requested_shares(sizes, config)
        requested = _apportion(config.size_tokens, shares)
        for s, rows in train_idx.items():
            tokens = all_tokens[rows]
            idx = _draw_tokens(tokens, requested[s], config.allow_upsampling, _rng(seed, "draw", s))
            picks.append(rows[idx])
            members[s] = {
                "requested_tokens": requested[s],
                "achieved_tokens": int(tokens[idx].sum()),
                "rows": len(idx),
            }
    else:
        shares, requested, _ = plan_counts(sizes, config)
        for s, rows in train_idx.items():
            want = requested[s] if config.allow_upsampling else min(requested[s], sizes[s])
            idx = _draw(sizes[s], want, _rng(seed, "draw", s)) if sizes[s] else np.zeros(0, int)
            picks.append(rows[idx])
            members[s] = {"requested_rows": requested[s], "rows": len(idx)}
    unit = "achieved_tokens" if by_tokens else "rows"
    total_achieved = sum(m[unit] for m in members.values()) or 1
    for s, m in members.items():
        m.update(
            available_rows=sizes[s],
            validation_rows=len(positions[s]) - sizes[s],
            requested_share=round(shares[s], 6),
            achieved_share=round(m[unit] / total_achieved, 6),
            input_hash=input_hashes[s],
        )
    order = np.concatenate(picks).astype(np.int64) if picks else np.zeros(0, np.int64)
    order = order[_rng(seed, "shuffle").permutation(len(order))]
    # A concurrent or earlier run may finish the same content-addressed id first: keep it.
    with atomic_folder(out_dir) as tmp:
        train_dir = tmp / "train"
        train_dir.mkdir(parents=True, exist_ok=True)
        shards = []
        spill = tmp / "gather"  # removed as it is read back: never part of the mixture
        for k, part in enumerate(gathered_parts([records], order, config.shard_rows, spill)):
            shards.append(f"train-{k:05d}.parquet")
            write_batches([part], train_dir / shards[-1], RECORD_SCHEMA)
        held_out = np.concatenate(val_idx) if val_idx else np.zeros(0, np.int64)
        [validation] = gathered_parts([records], held_out, max(len(held_out), 1), spill)
        write_parquet(validation, tmp / VALIDATION)
        manifest = {
            "mixture_id": mid,
            "seed": seed,
            "parameters": config.model_dump(mode="json"),
            "unit": "whitespace_tokens" if by_tokens else "examples",
            "rows": len(order),
            "validation_rows": validation.num_rows,
            "shards": shards,
            "sources": members,
            "input_hashes": input_hashes,
        }
        write_json(manifest, train_dir / MANIFEST)
    warning = limit_warning(manifest)
    if warning:
        log.warning(warning)
    return load_mixture(out_dir)


def limit_warning(manifest: dict) -> str | None:
    """One line naming the source(s) whose size keeps the mixture smaller than the spec asks,
    and how to change that; None when no source limits it. Reads only the manifest."""
    short = _short_sources(manifest)
    if short:
        return _short_warning(manifest, short)
    return _unsized_limit_warning(manifest)


def _measures(manifest: dict) -> tuple[str, str, str, str]:
    """(achieved key, requested key, unit word, size field) of the manifest's unit."""
    if manifest["unit"] == "whitespace_tokens":
        return "achieved_tokens", "requested_tokens", "tokens", "mixture.size_tokens"
    return "rows", "requested_rows", "rows", "mixture.size"


def _short_sources(manifest: dict) -> list[str]:
    """Sources that gave fewer rows (tokens) than their share asks for (no upsampling)."""
    have, want, _, _ = _measures(manifest)
    return [s for s, m in manifest["sources"].items() if m[have] < m[want]]


def _short_warning(manifest: dict, short: list[str]) -> str:
    """A size was asked for, and the `short` sources ran out before filling their shares."""
    have, want, unit, size_field = _measures(manifest)
    members = manifest["sources"]
    each = ", ".join(f"{s} ({members[s][have]} of {members[s][want]} {unit})" for s in short)
    achieved = sum(m[have] for m in members.values())
    requested = sum(m[want] for m in members.values())
    one = len(short) == 1
    fix = _smaller_share_fix(manifest["parameters"], size_field, "its" if one else "their")
    return (
        f"{'source' if one else 'sources'} {each} cannot fill "
        f"{'its share' if one else 'their shares'}, so the mixture has {achieved} of the "
        f"requested {requested} {unit}; set mixture.allow_upsampling: true to repeat rows, "
        f"or {fix}"
    )


def _unsized_limit_warning(manifest: dict) -> str | None:
    """No size: weights and temperature stop where the source with the fewest rows per unit of
    share runs out, leaving the other sources' remaining rows unused."""
    params, members = manifest["parameters"], manifest["sources"]
    if params["size"] is not None or params["size_tokens"] is not None:
        return None
    if params["strategy"] not in ("weights", "temperature"):
        return None  # proportional takes every row; capped's cap is the user's own limit
    mixed = {s: m for s, m in members.items() if m["requested_share"] > 0}
    available = sum(m["available_rows"] for m in mixed.values())
    if not mixed or manifest["rows"] >= available:
        return None
    limiter = min(mixed, key=lambda s: mixed[s]["available_rows"] / mixed[s]["requested_share"])
    return (
        f"source {limiter} ({mixed[limiter]['available_rows']} rows) limits the mixture to "
        f"{manifest['rows']} of {available} available rows; set mixture.size with "
        f"mixture.allow_upsampling: true to repeat its rows, or "
        f"{_smaller_share_fix(params, 'mixture.size', 'its')}"
    )


def _smaller_share_fix(params: dict, size_field: str, its: str) -> str:
    """The spec change that gives small sources smaller shares under this strategy."""
    if params["strategy"] == "weights":
        return f"lower {its} weight in mixture.weights"
    if params["strategy"] == "temperature":
        return "lower mixture.temperature (1 is proportional to source size)"
    return f"lower {size_field}"


def load_mixture(out_dir: Path) -> Mixture:
    """A mixture written earlier (reuse)."""
    manifest = json.loads((out_dir / "train" / MANIFEST).read_text(encoding="utf-8"))
    return Mixture(manifest["mixture_id"], out_dir, manifest)
