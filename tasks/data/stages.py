"""The data stages as plain functions over content-addressed outputs (tasks/data/outputs.py).

    per source:  fetch ──► normalise ──► dedup within the source     (prepare_source)
    per suite:   fetch ──► normalise (and its dev split)              (prepare_suite)
    then:        dedup across sources ──► decontaminate ──► mix

Each stage computes its output id from its inputs and parameters, reuses a finished output
with that id, or writes a new one (temp folder, then rename): one skeleton for all,
`produce` in tasks/data/outputs.py (the mixture, whose id hashes its sources' rows, keeps
its own). flows/data.py wraps these in Prefect tasks and maps them; they run alone too
(tests, benchmarks).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from multilora_pipeline.data_specs.errors import DataError
from multilora_pipeline.data_specs.record import RECORD_SCHEMA
from multilora_pipeline.data_specs.schema import DataSpec, DedupSpec, EvalSuiteSpec, SourceSpec
from multilora_pipeline.models.content import file_sha256
from multilora_pipeline.tasks.data.decontaminate import DECON_DROP_SCHEMA, decontaminate_file
from multilora_pipeline.tasks.data.dedup import dedup, exact_repeats, source_file, source_row
from multilora_pipeline.tasks.data.fetch import Snapshot, fetch
from multilora_pipeline.tasks.data.files.parquet_io import (
    filtered_slices,
    parquet_slices,
    write_batches,
    write_parquet,
)
from multilora_pipeline.tasks.data.files.records import ParquetRecords
from multilora_pipeline.tasks.data.mixture import build_mixture, load_mixture
from multilora_pipeline.tasks.data.normalise import normalise_batches
from multilora_pipeline.tasks.data.outputs import (
    DROPS,
    KEPT,
    RECORDS,
    StageOutput,
    produce,
    reusable,
    reused_output,
    stage_logger,
)
from multilora_pipeline.tasks.identity import mixture_id
from multilora_pipeline.tasks.workspace import Workspace

SKIPPED = "skipped.parquet"  # rows a normalise output left out under bad_rows: skip
HASH_SLICE = 100_000  # ids hashed at a time: bounds the Python strings alive at once


@dataclass
class Prepared:
    """A source or suite after fetch and normalise (and within-source dedup for sources)."""

    name: str
    snapshot: dict
    normalised: StageOutput
    deduped: StageOutput | None = None
    dev: StageOutput | None = None
    dev_snapshot: dict | None = None


def rows_hashes(records: Path | str, names: list[str]) -> dict[str, str]:
    """Each source's hash of its record ids in file order (ids hash each record's content):
    the sha256 of the ids joined by newlines, read HASH_SLICE rows at a time."""
    digests = {name: hashlib.sha256() for name in names}
    started = dict.fromkeys(names, False)
    for batch in parquet_slices([records], ["id", "source"], HASH_SLICE):
        sources = pc.dictionary_encode(batch.column("source")).combine_chunks()
        labels = sources.dictionary.to_pylist()
        for name in set(labels) & set(names):
            mine = pc.equal(sources.indices, labels.index(name))
            ids = pc.filter(batch.column("id"), mine).to_pylist()
            if ids:
                digests[name].update((("\n" if started[name] else "") + "\n".join(ids)).encode())
                started[name] = True
    return {name: digest.hexdigest()[:16] for name, digest in digests.items()}


def read_drops(output: StageOutput) -> pa.Table:
    """The drops table written next to a dedup or decontaminate output."""
    return pq.read_table(Path(output.path).with_name(DROPS))


# ------------------------------------------------------------------------------ stages


def normalise_stage(
    ws: Workspace, snapshot, item: SourceSpec | EvalSuiteSpec, known: dict | None = None
) -> StageOutput:
    """Canonical records of one snapshot (reused when the snapshot and template are unchanged)."""
    fields = getattr(item, "fields", None)
    params = {
        "name": item.name,
        "template": item.template,
        "category": item.category,
        "fields": fields,
    }
    # Reading options only when given: earlier outputs keep their ids.
    if item.explode:
        params["explode"] = list(item.explode)
    if item.end_marker:
        params["end_marker"] = item.end_marker
    skip = item.bad_rows == "skip"
    if skip:
        params.update(bad_rows="skip", max_bad_fraction=item.max_bad_fraction)

    def write(tmp: Path) -> int:  # batch by batch: one raw slice in memory at a time
        skipped: list[dict] | None = [] if skip else None
        batches = normalise_batches(
            snapshot,
            source=item.name,
            template=item.template,
            category=item.category,
            fields=fields,
            explode=item.explode,
            end_marker=item.end_marker,
            skipped=skipped,
        )
        rows = write_batches(batches, tmp / RECORDS, RECORD_SCHEMA)
        if skip:
            _check_skipped(skipped, snapshot, item)
            write_parquet(skipped_table(item.name, skipped), tmp / SKIPPED)
        return rows

    suite = isinstance(item, EvalSuiteSpec)
    if suite and item.drop_duplicates:
        params["drop_duplicates"] = True
    files = (RECORDS, *([SKIPPED] if skip else []), *([REPEATS] if suite else []))

    def write_suite(tmp: Path) -> int:  # a suite is small: its repeats are found whole
        rows = write(tmp)
        records = pq.read_table(tmp / RECORDS)
        repeats, first = suite_repeats(records)
        write_parquet(repeats_table(item.name, records, first, item.drop_duplicates), tmp / REPEATS)
        if item.drop_duplicates and repeats.any():
            write_parquet(records.filter(pa.array(~repeats)), tmp / RECORDS)
            rows -= int(repeats.sum())
        return rows

    return produce(
        ws,
        "normalise",
        [snapshot.content_hash],
        params,
        files,
        write_suite if suite else write,
        known,
    )


REPEATS = "repeats.parquet"  # a suite's items that repeat an earlier item
REPEATS_SCHEMA = pa.schema(
    [
        ("suite", pa.string()),
        ("row", pa.int64()),
        ("file", pa.string()),  # for a suite of several files: rows are numbered per file
        ("duplicate_of_row", pa.int64()),
        ("duplicate_of_file", pa.string()),
        ("dropped", pa.bool_()),
    ]
)


def suite_repeats(records: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """(is a repeat, index of the first copy) per item: the same prompt content and choices
    (dedup's exact key)."""
    rows = np.arange(records.num_rows)
    repeats, firsts = exact_repeats([records], ["prompt", "choices"], rows)
    first = rows.copy()
    first[repeats] = firsts
    return first != rows, first


def repeats_table(suite: str, records: pa.Table, first: np.ndarray, dropped: bool) -> pa.Table:
    metas = records.column("meta").to_pylist()
    rows, files = [source_row(m) for m in metas], [source_file(m) for m in metas]
    return pa.Table.from_pylist(
        [
            {
                "suite": suite,
                "row": rows[i],
                "file": files[i],
                "duplicate_of_row": rows[f],
                "duplicate_of_file": files[f],
                "dropped": dropped,
            }
            for i, f in enumerate(first.tolist())
            if f != i
        ],
        schema=REPEATS_SCHEMA,
    )


def read_repeats(output: StageOutput) -> pa.Table:
    """A suite's repeated items (none for a source, or an output written before they were
    recorded)."""
    path = Path(output.path).with_name(REPEATS)
    return pq.read_table(path) if path.exists() else REPEATS_SCHEMA.empty_table()


SKIPPED_SCHEMA = pa.schema(
    [
        ("source", pa.string()),
        ("row", pa.int64()),
        ("file", pa.string()),
        ("field", pa.string()),
        ("reason", pa.string()),
    ]
)


def skipped_table(source: str, skipped: list[dict]) -> pa.Table:
    return pa.Table.from_pylist([{"source": source, **b} for b in skipped], schema=SKIPPED_SCHEMA)


def read_skipped(output: StageOutput) -> pa.Table:
    """The rows a normalise output left out under `bad_rows: skip` (none otherwise)."""
    path = Path(output.path).with_name(SKIPPED)
    return pq.read_table(path) if path.exists() else SKIPPED_SCHEMA.empty_table()


def _check_skipped(skipped: list[dict], snapshot, item) -> None:
    """Skipping is allowed up to `max_bad_fraction` of the rows, and never of all of them."""
    if not skipped:
        return
    share = len(skipped) / max(snapshot.rows, 1)
    log = stage_logger()
    log.warning(
        "normalise %s: skipped %d bad row(s) (%.1f%%), recorded in the catalog; first: row %s, "
        "field %r: %s",
        item.name,
        len(skipped),
        100 * share,
        skipped[0]["row"],
        skipped[0]["field"],
        skipped[0]["reason"],
    )
    if item.max_bad_fraction is not None and share > item.max_bad_fraction:
        raise DataError(
            f"{len(skipped)} of {snapshot.rows} rows are bad ({share:.1%}), more than "
            f"max_bad_fraction {item.max_bad_fraction:.1%}",
            where=snapshot.origin,
            fix="fix the file, check the template and fields, or raise max_bad_fraction",
        )


def dedup_stage(
    ws: Workspace,
    stage: str,
    inputs: list[StageOutput],
    config: DedupSpec,
    priorities: dict[str, int],
    order: list[str],
    known: dict | None = None,
) -> StageOutput:
    """Exact + near dedup of the concatenated inputs; kept rows and drops as Parquet."""
    params = {"dedup": config.model_dump(mode="json"), "priorities": priorities, "order": order}

    def write(tmp: Path) -> int:  # the inputs are read a slice at a time, never whole
        records = ParquetRecords([Path(o.path) for o in inputs], spill_dir=tmp / "gather")
        # Several inputs are sources each deduplicated within already (dedup_across).
        result = dedup(records, config, priorities, order, across=len(inputs) > 1)
        kept = filtered_slices(records.slices(RECORD_SCHEMA.names), result.keep)
        write_batches(kept, tmp / KEPT, RECORD_SCHEMA)
        write_parquet(result.drops, tmp / DROPS)
        return result.kept_rows

    ids = [o.output_id for o in inputs]
    return produce(ws, stage, ids, params, (KEPT, DROPS), write, known)


def decontaminate_stage(
    ws: Workspace,
    deduped: StageOutput,
    suites: dict[str, StageOutput],
    spec: DataSpec,
    known: dict | None = None,
) -> StageOutput:
    """Training rows minus those overlapping any eval suite; drops name the eval item."""
    params = {
        "decontamination": spec.decontamination.model_dump(mode="json"),
        "suites": list(suites),
    }

    def write(tmp: Path) -> int:  # the training rows stream from the file, a batch at a time
        suite_tables = {name: pq.read_table(s.path) for name, s in suites.items()}
        drops = []

        def kept():
            for part in decontaminate_file(deduped.path, suite_tables, spec.decontamination):
                drops.append(part.drops)
                yield part.kept

        rows = write_batches(kept(), tmp / KEPT, RECORD_SCHEMA)
        write_batches(drops, tmp / DROPS, DECON_DROP_SCHEMA)
        return rows

    ids = [deduped.output_id, *(s.output_id for s in suites.values())]
    return produce(ws, "decontaminate", ids, params, (KEPT, DROPS), write, known)


def mixture_stage(
    ws: Workspace, clean: StageOutput, spec: DataSpec, known: dict | None = None
) -> StageOutput:
    """The seeded mixture (shards + manifest) and the validation split."""
    names = [s.name for s in spec.sources]
    # A source's input hash covers its content: the ids (content hashes) of its rows, in order.
    hashes = rows_hashes(clean.path, names)
    mid = mixture_id(hashes, spec.mixture, spec.seed)
    params = {"mixture": spec.mixture.model_dump(mode="json"), "seed": spec.seed}
    folder = ws.stage_dir("mixture", mid)
    row = reusable(ws, "mixture", mid, ("train/manifest.json", "validation.parquet"), known)
    if row:
        mixture = load_mixture(folder)
        return reused_output(
            "mixture", mid, [clean.output_id], params, row, folder, {"manifest": mixture.manifest}
        )
    # A folder without its catalog row (a run that failed before its commit, or one of
    # another spec still committing) is whole (atomic_folder): read, not built again.
    if (folder / "train" / "manifest.json").is_file():
        mixture = load_mixture(folder)
    else:
        mixture = build_mixture(Path(clean.path), names, hashes, spec.mixture, spec.seed, folder)
    manifest_hash = file_sha256(mixture.train_dir / "manifest.json")
    return StageOutput(
        "mixture",
        mid,
        [clean.output_id],
        params,
        str(folder),
        mixture.manifest["rows"],
        manifest_hash,
        False,
        {"manifest": mixture.manifest},
    )


# ------------------------------------------------------------- per-source and per-suite chains


def snapshot_info(snap: Snapshot) -> dict:
    """The small, picklable facts of a snapshot that the catalog records."""
    return {
        "name": snap.name,
        "content_hash": snap.content_hash,
        "origin": snap.origin,
        "rows": snap.rows,
        "path": str(snap.path),
        "reused": bool(snap.reused),
    }


def prepare_source(
    source: SourceSpec, spec_dir: Path, ws: Workspace, config: DedupSpec, known: dict | None
) -> Prepared:
    """fetch -> normalise -> dedup within the source."""
    snap = fetch(source, source.name, Path(spec_dir), ws)
    normalised = normalise_stage(ws, snap, source, known)
    within = dedup_stage(ws, "dedup_source", [normalised], config, {}, [source.name], known)
    return Prepared(source.name, snapshot_info(snap), normalised, within)


def prepare_suite(
    suite: EvalSuiteSpec, spec_dir: Path, ws: Workspace, known: dict | None
) -> Prepared:
    """fetch -> normalise for one evaluation suite (and its dev split, if it names one)."""
    snap = fetch(suite, suite.name, Path(spec_dir), ws)
    prepared = Prepared(suite.name, snapshot_info(snap), normalise_stage(ws, snap, suite, known))
    dev = suite.dev_suite()
    if dev is not None:
        dev_snap = fetch(dev, dev.name, Path(spec_dir), ws)
        prepared.dev = normalise_stage(ws, dev_snap, dev, known)
        prepared.dev_snapshot = snapshot_info(dev_snap)
    return prepared


def dedup_across(
    ws: Workspace, within: list[StageOutput], spec: DataSpec, known: dict | None
) -> StageOutput:
    """Dedup across sources: the within-source outputs together, ties broken by priority."""
    priorities = {s.name: s.priority for s in spec.sources}
    return dedup_stage(
        ws, "dedup", within, spec.dedup, priorities, [s.name for s in spec.sources], known
    )
