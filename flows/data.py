"""The data sub-flow: sources and eval suites to a mixture a team can audit.

    per source (mapped):  fetch ──► normalise ──► dedup within the source
    per suite  (mapped):  fetch ──► normalise
    then:                 dedup across sources ──► decontaminate (all suites) ──► mix

This module is the Prefect composition only: the @task wrappers, mapping, the flows, the task
runner and the artifacts. The stages themselves are plain functions in tasks/data/stages.py
over content-addressed outputs (tasks/data/outputs.py): every stage output is a folder,
workspace.stage_dir(stage, id), whose id hashes the input ids and the parameters; a stage
whose output the catalog knows and whose files exist is skipped ("reusing <stage> output
<id>") and its Prefect task run ends as "Cached". Catalog rows (tasks/data/run_record.py) are
gathered during the run and written in ONE transaction after every stage succeeded, so bad
input anywhere leaves no catalog row behind.

    mlora data data_specs/demo.yaml          # the flow below, then the per-source table
"""

from __future__ import annotations

import time
from pathlib import Path

import pyarrow as pa
from prefect import flow, task, unmapped
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait
from prefect.states import Completed
from prefect.task_runners import ThreadPoolTaskRunner

from multilora_pipeline.data_specs.errors import SpecError
from multilora_pipeline.data_specs.schema import (
    DataSpec,
    DedupSpec,
    EvalSuiteSpec,
    SourceSpec,
    load_spec,
)
from multilora_pipeline.tasks.catalog import Catalog
from multilora_pipeline.tasks.data import stages as data_stages
from multilora_pipeline.tasks.data.decontaminate import drops_per_source_suite
from multilora_pipeline.tasks.data.dedup import drops_per_source_pair
from multilora_pipeline.tasks.data.mixture import load_mixture
from multilora_pipeline.tasks.data.outputs import (
    StageOutput,
    known_outputs,
    stage_logger,
)
from multilora_pipeline.tasks.data.run_outputs import DataOutputs
from multilora_pipeline.tasks.data.run_record import catalog_batch, source_table, suite_table
from multilora_pipeline.tasks.data.stages import Prepared, read_drops
from multilora_pipeline.tasks.workspace import Workspace

# Threads for the mapped per-source tasks: the work is Arrow/numpy (releases the GIL) and I/O.
DEFAULT_THREADS = 4
STAGES = ("fetch", "normalise", "dedup_source", "dedup", "decontaminate", "mixture")


# ------------------------------------------------------------------------ Prefect tasks


def _done(value, reused: bool, what: str):
    """A task's return: when every output it covers was found from an earlier run, a
    Completed state named "Cached", so the Prefect UI shows the run as Cached (the reuse is
    decided by the stage's content-addressed ids and the catalog, not by Prefect's cache);
    otherwise the value itself."""
    return Completed(name="Cached", data=value, message=f"reused {what}") if reused else value


def _known_snapshot(snapshot: dict, known: dict) -> bool:
    """Whether the catalog knew this snapshot before the run (then it counts as reused)."""
    return f"snapshot/{snapshot['name']}/{snapshot['content_hash']}" in known


def _all_reused(prepared: Prepared, known: dict) -> bool:
    """Whether the snapshot(s) and every stage output of a source or suite were reused."""
    snapshots = [prepared.snapshot, *([prepared.dev_snapshot] if prepared.dev_snapshot else [])]
    outputs = [prepared.normalised, prepared.deduped, prepared.dev]
    return all(_known_snapshot(s, known) for s in snapshots) and all(
        o.reused for o in outputs if o is not None
    )


@task(name="prepare-source", cache_policy=NO_CACHE, persist_result=False)
def prepare_source(
    source: SourceSpec, spec_dir: str, ws_root: str, config: DedupSpec, known: dict
) -> Prepared:
    """fetch -> normalise -> dedup within the source (one mapped task per source)."""
    ws = Workspace.resolve(ws_root)
    prepared = data_stages.prepare_source(source, Path(spec_dir), ws, config, known)
    return _done(prepared, _all_reused(prepared, known), f"source {source.name}")


@task(name="prepare-suite", cache_policy=NO_CACHE, persist_result=False)
def prepare_suite(suite: EvalSuiteSpec, spec_dir: str, ws_root: str, known: dict) -> Prepared:
    """fetch -> normalise for one evaluation suite."""
    ws = Workspace.resolve(ws_root)
    prepared = data_stages.prepare_suite(suite, Path(spec_dir), ws, known)
    return _done(prepared, _all_reused(prepared, known), f"suite {suite.name}")


@task(name="dedup-across-sources", cache_policy=NO_CACHE, persist_result=False)
def dedup_across_task(
    ws_root: str, within: list[StageOutput], spec: DataSpec, known: dict
) -> StageOutput:
    """Dedup across sources (tasks/data/stages.py:dedup_across)."""
    out = data_stages.dedup_across(Workspace.resolve(ws_root), within, spec, known)
    return _done(out, out.reused, f"dedup output {out.output_id}")


@task(name="decontaminate", cache_policy=NO_CACHE, persist_result=False)
def decontaminate_task(
    ws_root: str,
    deduped: StageOutput,
    suites: dict[str, StageOutput],
    spec: DataSpec,
    known: dict,
) -> StageOutput:
    """Decontaminate against every eval suite (tasks/data/stages.py:decontaminate_stage)."""
    out = data_stages.decontaminate_stage(Workspace.resolve(ws_root), deduped, suites, spec, known)
    return _done(out, out.reused, f"decontaminate output {out.output_id}")


@task(name="mix", cache_policy=NO_CACHE, persist_result=False)
def mixture_task(ws_root: str, clean: StageOutput, spec: DataSpec, known: dict) -> StageOutput:
    """Build the mixture (tasks/data/stages.py:mixture_stage)."""
    out = data_stages.mixture_stage(Workspace.resolve(ws_root), clean, spec, known)
    return _done(out, out.reused, f"mixture {out.output_id}")


# ------------------------------------------------------------------------ composition


def _gather(futures) -> list:
    """Results of mapped futures; waits for all first so a failure leaves nothing running."""
    wait(futures)
    return [f.result() for f in futures]


def _artifacts(sources, across, clean, table) -> None:
    """Prefect table artifacts: drops per source pair, contamination, shares."""
    pairs = drops_per_source_pair(
        pa.concat_tables([read_drops(p.deduped) for p in sources] + [read_drops(across)])
    )
    contamination = drops_per_source_suite(read_drops(clean))
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


def _run_tasks(spec: DataSpec, spec_dir: str, ws_root: str, known: dict):
    """The stages as Prefect tasks: per-source and per-suite work mapped on the task runner."""
    source_futures = prepare_source.map(
        spec.sources, unmapped(spec_dir), unmapped(ws_root), unmapped(spec.dedup), unmapped(known)
    )
    suite_futures = prepare_suite.map(
        spec.eval_suites, unmapped(spec_dir), unmapped(ws_root), unmapped(known)
    )
    sources: list[Prepared] = _gather(source_futures)
    suites: list[Prepared] = _gather(suite_futures)
    # Submitted, not called: a future resolves a Cached state to its value.
    across = dedup_across_task.submit(ws_root, [p.deduped for p in sources], spec, known).result()
    suite_outputs = {p.name: p.normalised for p in suites}
    clean = decontaminate_task.submit(ws_root, across, suite_outputs, spec, known).result()
    mixed = mixture_task.submit(ws_root, clean, spec, known).result()
    return sources, suites, across, clean, mixed


def run_data_stages(spec: DataSpec, spec_dir: str | Path, workspace: Workspace) -> DataOutputs:
    """Run every data stage for `spec` inside the current flow (any task runner) and commit
    the catalog rows in one transaction once all succeeded."""
    log = stage_logger()
    start = time.perf_counter()
    removed = workspace.remove_abandoned()  # what a killed run left half-written
    if removed:
        log.info(
            "removed %d temporary file(s) or folder(s) that killed runs left behind: %s",
            len(removed),
            ", ".join(str(p.relative_to(workspace.root)) for p in removed[:5]),
        )
    ws_root = str(workspace.root)
    known = known_outputs(workspace)  # read once: every stage looks its output up in it
    sources, suites, across, clean, mixed = _run_tasks(spec, str(spec_dir), ws_root, known)

    batch = catalog_batch(spec, sources, suites, across, clean, mixed, known, workspace.root)
    Catalog(workspace.catalog_path).commit(batch)
    table = source_table(sources, across, clean, mixed)
    if len(batch):  # a fully reused run has the same reports as the run that made them
        _artifacts(sources, across, clean, table)
    reused = {
        # A snapshot counts as reused when the catalog knew it before this run.
        "fetch": all(_known_snapshot(p.snapshot, known) for p in [*sources, *suites]),
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
        suite_table=suite_table(suites),
    )


def make_task_runner(kind: str = "threads", address: str | None = None):
    """threads (default: one machine), dask (a local in-process cluster here; point
    DaskTaskRunner at a scheduler address to spread the per-source work over machines) or ray
    (prefect-ray: the per-source and per-suite tasks run as Ray tasks on the cluster at
    `address`, e.g. 127.0.0.1:6379 from `ray start --head`; without one, a local Ray). Every
    Ray node must see the workspace at the same path (a shared filesystem) and have this
    package installed; the stage code is the same, so are the outputs (tests/flows/
    test_ray_runner.py compares the mixture file for file)."""
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
    if kind == "ray":
        from prefect_ray import RayTaskRunner

        return RayTaskRunner(address=address, init_kwargs={"include_dashboard": False})
    raise SpecError(
        f"unknown task runner {kind!r}", where="task_runner", fix="use 'threads', 'dask' or 'ray'"
    )


def _run_from_path(spec_path: str, workspace_root: str | None) -> DataOutputs:
    ws = Workspace.resolve(workspace_root).ensure()
    spec, spec_dir = load_spec(spec_path, data_only=True)  # base_model and arms optional
    return run_data_stages(spec, spec_dir, ws)


@flow(name="mlora-data-on-runner")
def _data_flow_on_runner(spec_path: str, workspace_root: str | None = None) -> DataOutputs:
    return _run_from_path(spec_path, workspace_root)


@flow(name="mlora-data", task_runner=ThreadPoolTaskRunner(max_workers=DEFAULT_THREADS))
def data_flow(
    spec_path: str,
    workspace_root: str | None = None,
    task_runner: str = "threads",
    runner_address: str | None = None,
) -> DataOutputs:
    """The data stages alone (`mlora data SPEC`). task_runner: threads | dask | ray;
    runner_address: the Ray cluster to use (ray only)."""
    if task_runner != "threads":
        runner = make_task_runner(task_runner, runner_address)
        return _data_flow_on_runner.with_options(task_runner=runner)(spec_path, workspace_root)
    return _run_from_path(spec_path, workspace_root)


def format_source_table(outputs: DataOutputs) -> str:
    """The per-source table the CLI prints."""
    cols = [
        ("source", "source", "{}"),
        ("rows in", "rows_in", "{}"),
        ("bad", "invalid_drops", "{}"),
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
    for suite in outputs.suite_table:
        line = f"suite {suite['suite']}: {suite['items']} items"
        if suite["repeated"]:
            line += f", {suite['repeated']} repeating an earlier item " + (
                "(dropped)" if suite["dropped"] else "(kept; drop_duplicates: true removes them)"
            )
        out.append(line)
    out.append(f"mixture {outputs.mixture_id}: {outputs.train_dir}")
    out.append(f"reused stages: {', '.join(outputs.reused_stages) or 'none'}")
    return "\n".join(out)
