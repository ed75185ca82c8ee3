"""The data sub-flow: sources and eval suites to a mixture a team can audit.

    per source (mapped):  fetch ──► normalise ──► dedup within the source
    per suite  (mapped):  fetch ──► normalise
    then:                 dedup across sources ──► decontaminate (all suites) ──► mix

Every stage output is a content-addressed folder, workspace.stage_dir(stage, id), whose id
hashes the input ids and the parameters; it is written to a temp folder and renamed. A stage
whose output the catalog knows and whose files exist is skipped ("reusing <stage> output
<id>"). Catalog rows are gathered during the run and written in ONE transaction after every
stage succeeded, so bad input anywhere leaves no catalog row behind.

    mlora data data_specs/demo.yaml          # the flow below, then the per-source table
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from prefect import flow, get_run_logger, task, unmapped
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner
from pydantic import BaseModel

from data_specs.errors import SpecError
from data_specs.record import RECORD_SCHEMA
from data_specs.schema import DedupSpec, EvalSuiteSpec, PipelineSpec, SourceSpec, load_spec
from tasks.catalog import Catalog, CatalogBatch
from tasks.decontaminate import decontaminate, drops_per_source_suite
from tasks.dedup import dedup, drops_per_source_pair
from tasks.fetch import fetch
from tasks.mixture import build_mixture, load_mixture, mixture_id
from tasks.normalise import normalise_batches
from tasks.parquet_io import filtered_slices, write_batches, write_parquet
from tasks.workspace import Workspace

# Bump when a stage's code changes what it writes for the same inputs: old outputs are rebuilt.
STAGE_CODE_VERSION = 2  # 2: meta['query'] for passage tasks, duplicate_row in dedup drops
RECORDS, KEPT, DROPS = "records.parquet", "kept.parquet", "drops.parquet"
# Threads for the mapped per-source tasks: the work is Arrow/numpy (releases the GIL) and I/O.
DEFAULT_THREADS = 4
HASH_SLICE = 100_000  # ids hashed at a time: bounds the Python strings alive at once
STAGES = ("fetch", "normalise", "dedup_source", "dedup", "decontaminate", "mixture")


class DataOutputs(BaseModel):
    """What the data stages hand to training and evaluation (JSON-able)."""

    spec_hash: str
    mixture_id: str
    train_dir: str
    """Folder of Parquet shards (RECORD_SCHEMA) in training order, plus manifest.json."""
    validation_path: str
    """Held-out rows of every source (Parquet)."""
    eval_paths: dict[str, str]
    """Suite name -> Parquet of its canonical eval items."""
    eval_dev_paths: dict[str, str] = {}
    """Suite name -> Parquet of its few-shot exemplars, for suites that name a dev split."""
    source_table: list[dict]
    """Per source: rows_in, exact_drops, near_drops, contamination_drops, rows_in_mixture,
    requested_share, achieved_share."""
    reused_stages: list[str]
    """Stages whose every output was reused from an earlier run."""


@dataclass
class StageOutput:
    """One stage output: small, picklable, what tasks pass to each other."""

    stage: str
    output_id: str
    input_ids: list[str]
    params: dict
    path: str
    rows: int
    content_hash: str
    reused: bool
    extra: dict = field(default_factory=dict)

    def catalog_row(self) -> dict:
        return {
            "stage": self.stage,
            "output_id": self.output_id,
            "input_ids": self.input_ids,
            "params": self.params,
            "path": self.path,
            "rows": self.rows,
            "content_hash": self.content_hash,
        }


@dataclass
class Prepared:
    """A source or suite after fetch and normalise (and within-source dedup for sources)."""

    name: str
    snapshot: dict
    normalised: StageOutput
    deduped: StageOutput | None = None
    dev: StageOutput | None = None
    dev_snapshot: dict | None = None


def _log() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except Exception:  # called outside a flow or task run (plain-function use, tests)
        return logging.getLogger(__name__)


def stage_id(stage: str, input_ids: list[str], params: dict) -> str:
    """Output id: hash of the stage, its input ids, its parameters and the code version."""
    blob = json.dumps(
        {"stage": stage, "inputs": input_ids, "params": params, "code": STAGE_CODE_VERSION},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def file_hash(path: Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def rows_hash(table: pa.Table) -> str:
    """Hash of a table's record ids in order (ids hash each record's content): the sha256 of
    the ids joined by newlines, fed a slice at a time."""
    digest = hashlib.sha256()
    for lo in range(0, table.num_rows, HASH_SLICE):
        ids = table.column("id").slice(lo, HASH_SLICE).to_pylist()
        digest.update((("\n" if lo else "") + "\n".join(ids)).encode())
    return digest.hexdigest()[:16]


def split_by_source(table: pa.Table, names: list[str]) -> dict[str, pa.Table]:
    """Each source's rows in table order. Stage outputs keep sources contiguous (inputs are
    concatenated in spec order and filtered in place), so this is zero-copy slicing; rows of a
    source spread over the table are gathered with one take."""
    encoded = pc.dictionary_encode(table.column("source")).combine_chunks()
    codes, labels = encoded.indices.to_numpy(), encoded.dictionary.to_pylist()
    out = {}
    for name in names:
        rows = np.flatnonzero(codes == labels.index(name)) if name in labels else np.zeros(0, int)
        if len(rows) and rows[-1] - rows[0] + 1 == len(rows):
            out[name] = table.slice(int(rows[0]), len(rows))
        else:
            out[name] = table.take(pa.array(rows, type=pa.int64()))
    return out


def known_outputs(ws: Workspace) -> dict[str, dict]:
    """What the catalog already holds, read once: "stage/id" -> stage output row, plus
    "snapshot/name/hash" and "source/name/spec_hash" keys (a DuckDB connection costs
    ~25 ms: one per lookup or per insert would dominate a fully reused run)."""
    rows = Catalog(ws.catalog_path).query_many(
        {
            "outputs": ("SELECT stage, output_id, path, rows, content_hash FROM stage_outputs", ()),
            "snapshots": ("SELECT name, content_hash FROM snapshots", ()),
            "sources": ("SELECT name, spec_hash FROM sources", ()),
        }
    )
    known = {f"{r['stage']}/{r['output_id']}": r for r in rows["outputs"]}
    for r in rows["snapshots"]:
        known[f"snapshot/{r['name']}/{r['content_hash']}"] = r
    for r in rows["sources"]:
        known[f"source/{r['name']}/{r['spec_hash']}"] = r
    return known


def _reusable(
    ws: Workspace, stage: str, oid: str, files: tuple[str, ...], known: dict[str, dict] | None
) -> dict | None:
    """The catalog row of a finished output whose files are all still there."""
    folder = ws.stage_dir(stage, oid)
    row = None
    if all((folder / f).exists() for f in files):
        if known is None:
            row = Catalog(ws.catalog_path).find_stage_output(stage, oid)
        else:
            row = known.get(f"{stage}/{oid}")
    if isinstance(known, ReuseOnly):
        if row is None:
            raise NotReusable(stage)
        known.hits.append((stage, oid))
    elif row:
        _log().info("reusing %s output %s", stage, oid)
    return row


class NotReusable(Exception):
    """A stage output is missing: the run needs the task path."""


class ReuseOnly(dict):
    """A `known` map that makes stages raise NotReusable instead of computing anything;
    reused outputs are collected in `hits` and logged once the whole chain is reusable."""

    def __init__(self, known: dict):
        super().__init__(known)
        self.hits: list[tuple[str, str]] = []


def _publish(ws: Workspace, stage: str, oid: str, write: Callable[[Path], None]) -> Path:
    """Run `write(tmp_folder)`, then rename the folder into place (content-addressed: if
    another run already published this id, its identical copy is kept)."""
    final = ws.stage_dir(stage, oid)
    tmp = final.with_name(f".{oid}.tmp-{uuid.uuid4().hex[:8]}")
    tmp.mkdir(parents=True)
    try:
        write(tmp)
        if final.exists():
            shutil.rmtree(final)  # a leftover of a run that failed before its catalog commit
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _reused_output(stage, oid, inputs, params, row, extra=None) -> StageOutput:
    return StageOutput(
        stage, oid, inputs, params, row["path"], row["rows"], row["content_hash"], True, extra or {}
    )


# ------------------------------------------------------------------ stages (plain functions)


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
    inputs = [snapshot.content_hash]
    oid = stage_id("normalise", inputs, params)
    row = _reusable(ws, "normalise", oid, (RECORDS,), known)
    if row:
        return _reused_output("normalise", oid, inputs, params, row)
    batches = normalise_batches(
        snapshot, source=item.name, template=item.template, category=item.category, fields=fields
    )
    written = {}

    def write(tmp: Path) -> None:  # batch by batch: one raw slice in memory at a time
        written["rows"] = write_batches(batches, tmp / RECORDS, RECORD_SCHEMA)

    folder = _publish(ws, "normalise", oid, write)
    return StageOutput(
        "normalise",
        oid,
        inputs,
        params,
        str(folder / RECORDS),
        written["rows"],
        file_hash(folder / RECORDS),
        False,
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
    ids = [o.output_id for o in inputs]
    oid = stage_id(stage, ids, params)
    row = _reusable(ws, stage, oid, (KEPT, DROPS), known)
    if row:
        return _reused_output(stage, oid, ids, params, row)
    table = pa.concat_tables([pq.read_table(o.path) for o in inputs])
    result = dedup(table, config, priorities, order)

    def write(tmp: Path) -> None:
        write_batches(filtered_slices(result.table, result.keep), tmp / KEPT, RECORD_SCHEMA)
        write_parquet(result.drops, tmp / DROPS)

    folder = _publish(ws, stage, oid, write)
    return StageOutput(
        stage,
        oid,
        ids,
        params,
        str(folder / KEPT),
        result.kept_rows,
        file_hash(folder / KEPT),
        False,
    )


def decontaminate_stage(
    ws: Workspace,
    deduped: StageOutput,
    suites: dict[str, StageOutput],
    spec: PipelineSpec,
    known: dict | None = None,
) -> StageOutput:
    """Training rows minus those overlapping any eval suite; drops name the eval item."""
    params = {
        "decontamination": spec.decontamination.model_dump(mode="json"),
        "suites": list(suites),
    }
    ids = [deduped.output_id, *(s.output_id for s in suites.values())]
    oid = stage_id("decontaminate", ids, params)
    row = _reusable(ws, "decontaminate", oid, (KEPT, DROPS), known)
    if row:
        return _reused_output("decontaminate", oid, ids, params, row)
    result = decontaminate(
        pq.read_table(deduped.path),
        {name: pq.read_table(s.path) for name, s in suites.items()},
        spec.decontamination,
    )

    def write(tmp: Path) -> None:
        write_parquet(result.kept, tmp / KEPT)
        write_parquet(result.drops, tmp / DROPS)

    folder = _publish(ws, "decontaminate", oid, write)
    return StageOutput(
        "decontaminate",
        oid,
        ids,
        params,
        str(folder / KEPT),
        result.kept.num_rows,
        file_hash(folder / KEPT),
        False,
    )


def mixture_stage(
    ws: Workspace, clean: StageOutput, spec: PipelineSpec, known: dict | None = None
) -> StageOutput:
    """The seeded mixture (shards + manifest) and the validation split."""
    names = [s.name for s in spec.sources]
    by_source = split_by_source(pq.read_table(clean.path), names)
    # A source's input hash covers its content: the ids (content hashes) of its rows, in order.
    hashes = {n: rows_hash(t) for n, t in by_source.items()}
    mid = mixture_id(hashes, spec.mixture, spec.seed)
    params = {"mixture": spec.mixture.model_dump(mode="json"), "seed": spec.seed}
    folder = ws.stage_dir("mixture", mid)
    row = _reusable(ws, "mixture", mid, ("train/manifest.json", "validation.parquet"), known)
    if row:
        mixture = load_mixture(folder)
        return _reused_output(
            "mixture", mid, [clean.output_id], params, row, {"manifest": mixture.manifest}
        )
    if folder.exists():  # leftover of a run that failed before its catalog commit
        shutil.rmtree(folder)
    mixture = build_mixture(by_source, hashes, spec.mixture, spec.seed, folder)
    manifest_hash = file_hash(mixture.train_dir / "manifest.json")
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


# ------------------------------------------------------------------------ Prefect tasks


def _snapshot_info(snap) -> dict:
    return {
        "name": snap.name,
        "content_hash": snap.content_hash,
        "origin": snap.origin,
        "rows": snap.rows,
        "path": str(snap.path),
        "reused": bool(snap.reused),
    }


@task(name="prepare-source", cache_policy=NO_CACHE, persist_result=False)
def prepare_source(
    source: SourceSpec, base_dir: str, ws_root: str, config: DedupSpec, known: dict
) -> Prepared:
    """fetch -> normalise -> dedup within the source (one mapped task per source)."""
    ws = Workspace.resolve(ws_root)
    snap = fetch(source, source.name, Path(base_dir), ws)
    normalised = normalise_stage(ws, snap, source, known)
    within = dedup_stage(ws, "dedup_source", [normalised], config, {}, [source.name], known)
    return Prepared(source.name, _snapshot_info(snap), normalised, within)


@task(name="prepare-suite", cache_policy=NO_CACHE, persist_result=False)
def prepare_suite(suite: EvalSuiteSpec, base_dir: str, ws_root: str, known: dict) -> Prepared:
    """fetch -> normalise for one evaluation suite."""
    ws = Workspace.resolve(ws_root)
    snap = fetch(suite, suite.name, Path(base_dir), ws)
    prepared = Prepared(suite.name, _snapshot_info(snap), normalise_stage(ws, snap, suite, known))
    if suite.dev is not None:
        # The dev split is read exactly like the suite: same template, its own location.
        dev = suite.model_copy(update={"name": f"{suite.name}-dev", **dict(suite.dev), "dev": None})
        dev_snap = fetch(dev, dev.name, Path(base_dir), ws)
        prepared.dev = normalise_stage(ws, dev_snap, dev, known)
        prepared.dev_snapshot = _snapshot_info(dev_snap)
    return prepared


@task(name="dedup-across-sources", cache_policy=NO_CACHE, persist_result=False)
def dedup_across_task(
    ws_root: str, within: list[StageOutput], spec: PipelineSpec, known: dict
) -> StageOutput:
    priorities = {s.name: s.priority for s in spec.sources}
    return dedup_stage(
        Workspace.resolve(ws_root),
        "dedup",
        within,
        spec.dedup,
        priorities,
        [s.name for s in spec.sources],
        known,
    )


@task(name="decontaminate", cache_policy=NO_CACHE, persist_result=False)
def decontaminate_task(
    ws_root: str,
    deduped: StageOutput,
    suites: dict[str, StageOutput],
    spec: PipelineSpec,
    known: dict,
) -> StageOutput:
    return decontaminate_stage(Workspace.resolve(ws_root), deduped, suites, spec, known)


@task(name="mix", cache_policy=NO_CACHE, persist_result=False)
def mixture_task(ws_root: str, clean: StageOutput, spec: PipelineSpec, known: dict) -> StageOutput:
    return mixture_stage(Workspace.resolve(ws_root), clean, spec, known)


# ------------------------------------------------------------------------ composition


def _gather(futures) -> list:
    """Results of mapped futures; waits for all first so a failure leaves nothing running."""
    wait(futures)
    return [f.result() for f in futures]


def _drops(output: StageOutput) -> pa.Table:
    return pq.read_table(Path(output.path).with_name(DROPS))


def _catalog_batch(spec, sources, suites, across, clean, mixed, known) -> CatalogBatch:
    """The rows this run adds to the catalog (nothing for a fully reused run)."""
    batch = CatalogBatch()
    for s, prepared in zip(spec.sources, sources, strict=True):
        if f"source/{s.name}/{spec.spec_hash}" in known:
            continue
        location = s.model_dump(
            mode="json", include={"path", "hf", "url", "sha256", "format", "max_rows"}
        )
        batch.add(
            "sources",
            name=s.name,
            spec_hash=spec.spec_hash,
            template=s.template,
            category=s.category,
            priority=s.priority,
            location=location,
            snapshot_hash=prepared.snapshot["content_hash"],
        )
    snapshots = [p.snapshot for p in [*sources, *suites]]
    snapshots += [p.dev_snapshot for p in suites if p.dev_snapshot]
    for info in snapshots:
        if f"snapshot/{info['name']}/{info['content_hash']}" in known:
            continue
        batch.add(
            "snapshots",
            name=info["name"],
            content_hash=info["content_hash"],
            origin=info["origin"],
            rows=info["rows"],
            path=info["path"],
        )
    outputs = [p.normalised for p in [*sources, *suites]] + [p.deduped for p in sources]
    outputs += [p.dev for p in suites if p.dev]
    for out in [*outputs, across, clean, mixed]:
        if not out.reused:
            batch.add("stage_outputs", **out.catalog_row())
    for out in [*(p.deduped for p in sources), across]:
        if not out.reused:
            batch.add_drops("dedup_drops", out.output_id, _drops(out))
    if not clean.reused:
        batch.add_drops("decontamination_drops", clean.output_id, _drops(clean))
    if mixed.reused:
        return batch
    manifest = mixed.extra["manifest"]
    unit = "tokens" if manifest["unit"] == "whitespace_tokens" else "rows"
    batch.add(
        "mixtures",
        mixture_id=mixed.output_id,
        spec_hash=spec.spec_hash,
        seed=spec.seed,
        strategy=spec.mixture.strategy,
        unit=manifest["unit"],
        rows=manifest["rows"],
        validation_rows=manifest["validation_rows"],
        path=mixed.path,
        manifest=manifest,
    )
    for name, m in manifest["sources"].items():
        achieved = m["achieved_tokens"] if unit == "tokens" else m["rows"]
        batch.add(
            "mixture_members",
            mixture_id=mixed.output_id,
            source=name,
            input_hash=m["input_hash"],
            requested=m[f"requested_{unit}"],
            achieved=achieved,
            requested_share=m["requested_share"],
            achieved_share=m["achieved_share"],
        )
    return batch


def _source_table(spec, sources, across, clean, mixed) -> list[dict]:
    drops = pa.concat_tables([_drops(p.deduped) for p in sources] + [_drops(across)])
    kinds = drops.group_by(["source", "kind"]).aggregate([("id", "count")]).to_pylist()
    dedup_counts = {(r["source"], r["kind"]): r["id_count"] for r in kinds}
    contamination = _drops(clean).group_by("source").aggregate([("id", "count")]).to_pylist()
    contaminated = {r["source"]: r["id_count"] for r in contamination}
    members = mixed.extra["manifest"]["sources"]
    return [
        {
            "source": p.name,
            "rows_in": p.normalised.rows,
            "exact_drops": dedup_counts.get((p.name, "exact"), 0),
            "near_drops": dedup_counts.get((p.name, "near"), 0),
            "contamination_drops": contaminated.get(p.name, 0),
            "validation_rows": members[p.name]["validation_rows"],
            "rows_in_mixture": members[p.name]["rows"],
            "requested_share": members[p.name]["requested_share"],
            "achieved_share": members[p.name]["achieved_share"],
        }
        for p in sources
    ]


def _artifacts(sources, across, clean, table) -> None:
    """Prefect table artifacts: drops per source pair, contamination, shares."""
    pairs = drops_per_source_pair(
        pa.concat_tables([_drops(p.deduped) for p in sources] + [_drops(across)])
    )
    contamination = drops_per_source_suite(_drops(clean))
    shares = [
        {k: r[k] for k in ("source", "rows_in_mixture", "requested_share", "achieved_share")}
        for r in table
    ]
    none = [{"note": "none"}]  # an artifact table may not be empty
    create_table_artifact(
        pairs or none,
        key="dedup-drops-by-source-pair",
        description="Rows dropped as duplicates, per (dropped, kept) source",
    )
    create_table_artifact(
        contamination or none,
        key="contamination-by-source-and-suite",
        description="Training rows removed for overlapping an eval suite",
    )
    create_table_artifact(
        shares,
        key="mixture-requested-vs-achieved",
        description="Requested vs achieved share of each source",
    )


def _run_tasks(spec: PipelineSpec, base: str, ws_root: str, known: dict):
    """The stages as Prefect tasks: per-source and per-suite work mapped on the task runner."""
    source_futures = prepare_source.map(
        spec.sources, unmapped(base), unmapped(ws_root), unmapped(spec.dedup), unmapped(known)
    )
    suite_futures = prepare_suite.map(
        spec.eval_suites, unmapped(base), unmapped(ws_root), unmapped(known)
    )
    sources: list[Prepared] = _gather(source_futures)
    suites: list[Prepared] = _gather(suite_futures)
    across = dedup_across_task(ws_root, [p.deduped for p in sources], spec, known)
    suite_outputs = {p.name: p.normalised for p in suites}
    clean = decontaminate_task(ws_root, across, suite_outputs, spec, known)
    mixed = mixture_task(ws_root, clean, spec, known)
    return sources, suites, across, clean, mixed


def _reuse_all(spec: PipelineSpec, base: str, ws_root: str, known: dict):
    """The same chain as plain calls that only look outputs up (raises NotReusable)."""
    probe = ReuseOnly(known)
    sources = [prepare_source.fn(s, base, ws_root, spec.dedup, probe) for s in spec.sources]
    suites = [prepare_suite.fn(s, base, ws_root, probe) for s in spec.eval_suites]
    across = dedup_across_task.fn(ws_root, [p.deduped for p in sources], spec, probe)
    suite_outputs = {p.name: p.normalised for p in suites}
    clean = decontaminate_task.fn(ws_root, across, suite_outputs, spec, probe)
    mixed = mixture_task.fn(ws_root, clean, spec, probe)
    log = _log()
    for stage, oid in probe.hits:
        log.info("reusing %s output %s", stage, oid)
    return sources, suites, across, clean, mixed


def run_data_stages(spec: PipelineSpec, base_dir: str | Path, workspace: Workspace) -> DataOutputs:
    """Run every data stage for `spec` inside the current flow (any task runner) and commit
    the catalog rows in one transaction once all succeeded."""
    log = _log()
    start = time.perf_counter()
    ws_root, base = str(workspace.root), str(base_dir)
    known = known_outputs(workspace)
    # This spec finished before: look every output up without task runs (~15 ms each). If a
    # source file changed since, the lookup fails at its normalise and the tasks take over.
    ran_before = all(f"source/{s.name}/{spec.spec_hash}" in known for s in spec.sources)
    try:
        if not ran_before:
            raise NotReusable("spec")
        sources, suites, across, clean, mixed = _reuse_all(spec, base, ws_root, known)
    except NotReusable:
        sources, suites, across, clean, mixed = _run_tasks(spec, base, ws_root, known)

    batch = _catalog_batch(spec, sources, suites, across, clean, mixed, known)
    Catalog(workspace.catalog_path).commit(batch)
    table = _source_table(spec, sources, across, clean, mixed)
    if len(batch):  # a fully reused run has the same reports as the run that made them
        _artifacts(sources, across, clean, table)
    reused = {
        # A snapshot counts as reused when the catalog knew it before this run.
        "fetch": all(
            f"snapshot/{p.name}/{p.snapshot['content_hash']}" in known for p in [*sources, *suites]
        ),
        "normalise": all(p.normalised.reused for p in [*sources, *suites]),
        "dedup_source": all(p.deduped.reused for p in sources),
        "dedup": across.reused,
        "decontaminate": clean.reused,
        "mixture": mixed.reused,
    }
    reused_stages = [s for s in STAGES if reused[s]]
    log.info(
        "data stages done in %.2fs: mixture %s, %d rows; reused: %s",
        time.perf_counter() - start,
        mixed.output_id,
        mixed.rows,
        ", ".join(reused_stages) or "none",
    )
    mixture = load_mixture(Path(mixed.path))
    return DataOutputs(
        spec_hash=spec.spec_hash,
        mixture_id=mixed.output_id,
        train_dir=str(mixture.train_dir),
        validation_path=str(mixture.validation_path),
        eval_paths={p.name: p.normalised.path for p in suites},
        eval_dev_paths={p.name: p.dev.path for p in suites if p.dev},
        source_table=table,
        reused_stages=reused_stages,
    )


def make_task_runner(kind: str = "threads"):
    """threads (default: one machine) or dask (a local in-process cluster here; point
    DaskTaskRunner at a scheduler address to spread the per-source work over machines)."""
    if kind == "threads":
        return ThreadPoolTaskRunner(max_workers=DEFAULT_THREADS)
    if kind == "dask":
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(
            cluster_kwargs={
                "processes": False,
                "n_workers": 1,
                "threads_per_worker": 2,
                "dashboard_address": None,
            }
        )
    raise SpecError(
        f"unknown task runner {kind!r}", where="task_runner", fix="use 'threads' or 'dask'"
    )


def _run_from_path(spec_path: str, workspace_root: str | None) -> DataOutputs:
    ws = Workspace.resolve(workspace_root).ensure()
    spec, base_dir = load_spec(spec_path)
    return run_data_stages(spec, base_dir, ws)


@flow(name="mlora-data-dask")
def _data_flow_on_runner(spec_path: str, workspace_root: str | None = None) -> DataOutputs:
    return _run_from_path(spec_path, workspace_root)


@flow(name="mlora-data", task_runner=ThreadPoolTaskRunner(max_workers=DEFAULT_THREADS))
def data_flow(
    spec_path: str, workspace_root: str | None = None, task_runner: str = "threads"
) -> DataOutputs:
    """The data stages alone (`mlora data SPEC`). task_runner: threads | dask."""
    if task_runner != "threads":
        runner = make_task_runner(task_runner)
        return _data_flow_on_runner.with_options(task_runner=runner)(spec_path, workspace_root)
    return _run_from_path(spec_path, workspace_root)


def format_source_table(outputs: DataOutputs) -> str:
    """The per-source table the CLI prints."""
    cols = [
        ("source", "source", "{}"),
        ("rows in", "rows_in", "{}"),
        ("exact", "exact_drops", "{}"),
        ("near", "near_drops", "{}"),
        ("contam.", "contamination_drops", "{}"),
        ("valid.", "validation_rows", "{}"),
        ("in mixture", "rows_in_mixture", "{}"),
        ("requested", "requested_share", "{:.1%}"),
        ("achieved", "achieved_share", "{:.1%}"),
    ]
    rows = [[fmt.format(r.get(key, "")) for _, key, fmt in cols] for r in outputs.source_table]
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, (h, _, _) in enumerate(cols)]
    line = lambda cells: "  ".join(  # noqa: E731
        c.ljust(w) if i == 0 else c.rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    )
    out = [line([h for h, _, _ in cols]), line(["-" * w for w in widths])]
    out += [line(r) for r in rows]
    out.append(f"mixture {outputs.mixture_id}: {outputs.train_dir}")
    out.append(f"reused stages: {', '.join(outputs.reused_stages) or 'none'}")
    return "\n".join(out)
