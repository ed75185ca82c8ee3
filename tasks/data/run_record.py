"""What a finished data run records: the catalog rows it adds and the per-source table.

Catalog rows are gathered after every stage succeeded and committed in ONE transaction by
the caller, so bad input anywhere leaves no catalog row behind.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from multilora_pipeline.data_specs.schema import DataSpec
from multilora_pipeline.tasks.catalog import CatalogBatch
from multilora_pipeline.tasks.data.outputs import StageOutput
from multilora_pipeline.tasks.data.stages import Prepared, read_drops, read_repeats, read_skipped


def catalog_batch(
    spec: DataSpec,
    sources: list[Prepared],
    suites: list[Prepared],
    across: StageOutput,
    clean: StageOutput,
    mixed: StageOutput,
    known: dict,
    root: Path,
) -> CatalogBatch:
    """The rows this run adds to the catalog (nothing for a fully reused run). Paths are
    recorded relative to the workspace `root`, so a moved or copied workspace's catalog
    still names its own files."""
    batch = CatalogBatch()

    def relative(path: str) -> str:
        found = Path(path)
        return str(found.relative_to(root)) if found.is_relative_to(root) else path

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
            path=relative(info["path"]),
        )
    outputs = [p.normalised for p in [*sources, *suites]] + [p.deduped for p in sources]
    outputs += [p.dev for p in suites if p.dev]
    for out in [*outputs, across, clean, mixed]:
        if not out.reused:
            batch.add("stage_outputs", **{**out.catalog_row(), "path": relative(out.path)})
    for out in [*(p.deduped for p in sources), across]:
        if not out.reused:
            batch.add_drops("dedup_drops", out.output_id, read_drops(out))
    if not clean.reused:
        batch.add_drops("decontamination_drops", clean.output_id, read_drops(clean))
    for out in outputs:  # rows `bad_rows: skip` left out, each with its reason
        skipped = read_skipped(out)
        if not out.reused and skipped.num_rows:
            batch.add_drops("invalid_drops", out.output_id, skipped)
        repeats = read_repeats(out)
        if not out.reused and repeats.num_rows:
            batch.add_drops("suite_duplicates", out.output_id, repeats)
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
        path=relative(mixed.path),
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


def suite_table(suites: list[Prepared]) -> list[dict]:
    """Per suite: items scored, items that repeat an earlier one, and whether they were
    dropped (drop_duplicates)."""
    out = []
    for p in suites:
        repeats = read_repeats(p.normalised)
        dropped = bool(repeats.num_rows) and all(repeats.column("dropped").to_pylist())
        out.append(
            {
                "suite": p.name,
                "items": p.normalised.rows,
                "repeated": repeats.num_rows,
                "dropped": dropped,
            }
        )
    return out


def source_table(
    sources: list[Prepared], across: StageOutput, clean: StageOutput, mixed: StageOutput
) -> list[dict]:
    """Per source: rows in (read from its files, bad ones included), rows skipped as bad,
    exact/near/contamination drops, validation rows, rows in the mixture, requested and
    achieved share (what `mlora data` prints). Read left to right, each count comes out of
    the rows before it."""
    drops = pa.concat_tables([read_drops(p.deduped) for p in sources] + [read_drops(across)])
    kinds = drops.group_by(["source", "kind"]).aggregate([("id", "count")]).to_pylist()
    dedup_counts = {(r["source"], r["kind"]): r["id_count"] for r in kinds}
    contamination = read_drops(clean).group_by("source").aggregate([("id", "count")]).to_pylist()
    contaminated = {r["source"]: r["id_count"] for r in contamination}
    members = mixed.extra["manifest"]["sources"]
    skipped = {p.name: read_skipped(p.normalised).num_rows for p in sources}
    return [
        {
            "source": p.name,
            "rows_in": p.normalised.rows + skipped[p.name],
            "invalid_drops": skipped[p.name],
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
