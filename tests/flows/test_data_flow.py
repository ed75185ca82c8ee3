"""The data sub-flow end to end on the demo spec: outputs, catalog rows, reuse, Dask, bad input."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from multilora_pipeline.data_specs.errors import DataError
from multilora_pipeline.data_specs.record import RECORD_SCHEMA
from multilora_pipeline.data_specs.schema import load_spec
from multilora_pipeline.tasks.catalog import Catalog

# the data flow on a Prefect server: left out by -m "not slow"
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data_specs" / "demo_tiny.yaml"


@pytest.fixture(scope="module")
def demo_runs(prefect_harness, tmp_path_factory):
    """The demo data flow run twice in one fresh workspace."""
    from multilora_pipeline.flows.data import data_flow

    root = tmp_path_factory.mktemp("data_flow") / "workspace"
    first = data_flow(str(DEMO), str(root))
    second = data_flow(str(DEMO), str(root))
    return root, first, second


def test_outputs_are_complete(demo_runs):
    root, first, _ = demo_runs
    shards = sorted(Path(first.train_dir).glob("*.parquet"))
    assert shards and all(
        pq.read_schema(s).equals(RECORD_SCHEMA, check_metadata=False) for s in shards
    )
    train_rows = sum(pq.read_metadata(s).num_rows for s in shards)
    assert (Path(first.train_dir) / "manifest.json").exists()
    assert pq.read_table(first.validation_path).num_rows > 0
    assert set(first.eval_paths) == {"knowledge_mc", "boolq_mc", "math_gen"}
    table = {r["source"]: r for r in first.source_table}
    assert set(table) == {"instructions", "boolq", "knowledge", "math"}
    assert sum(r["rows_in_mixture"] for r in table.values()) == train_rows
    for r in table.values():
        assert r["rows_in"] == (
            r["exact_drops"]
            + r["near_drops"]
            + r["contamination_drops"]
            + r["validation_rows"]
            + r["rows_in_mixture"]
        )
    assert sum(r["exact_drops"] + r["near_drops"] for r in table.values()) > 0
    assert sum(r["contamination_drops"] for r in table.values()) > 0
    assert first.reused_stages == []


def test_second_run_reuses_every_stage(demo_runs):
    _, first, second = demo_runs
    assert second.mixture_id == first.mixture_id
    assert second.source_table == first.source_table
    assert second.reused_stages == [
        "fetch",
        "normalise",
        "dedup_source",
        "dedup",
        "decontaminate",
        "mixture",
    ]


def test_a_reused_stage_shows_as_cached_in_prefect(demo_runs):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    from multilora_pipeline.flows.data import data_flow

    root, first, _ = demo_runs
    state = data_flow(str(DEMO), str(root), return_state=True)
    assert state.result().mixture_id == first.mixture_id
    flow_run = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
    with get_client(sync_client=True) as client:
        for _ in range(100):  # task states reach the API in the background: wait for the last
            runs = client.read_task_runs(flow_run_filter=flow_run)
            if all(run.state.is_final() for run in runs):
                break
            time.sleep(0.1)
    # One run per source and suite, then dedup, decontaminate and mix: all found, none recomputed.
    spec, _ = load_spec(DEMO)
    assert len(runs) == len(spec.sources) + len(spec.eval_suites) + 3
    assert {run.state.name for run in runs} == {"Cached"}, [(r.name, r.state.name) for r in runs]


def test_catalog_holds_the_run(demo_runs):
    root, first, _ = demo_runs
    catalog = Catalog(root / "catalog.duckdb")
    counts = catalog.counts()
    assert counts["sources"] == 4 and counts["snapshots"] == 7 and counts["mixtures"] == 1
    assert counts["mixture_members"] == 4
    # normalise x7, dedup_source x4, dedup, decontaminate, mixture: once each despite two runs
    assert counts["stage_outputs"] == 14
    table = {r["source"]: r for r in first.source_table}
    assert counts["dedup_drops"] == sum(r["exact_drops"] + r["near_drops"] for r in table.values())
    assert counts["decontamination_drops"] == sum(r["contamination_drops"] for r in table.values())
    (mixture,) = catalog.query("SELECT mixture_id, rows FROM mixtures")
    assert mixture["mixture_id"] == first.mixture_id


def test_format_source_table(demo_runs):
    from multilora_pipeline.flows.data import format_source_table

    text = format_source_table(demo_runs[1])
    assert "instructions" in text and "rows in" in text and demo_runs[1].mixture_id in text


def test_dask_runner_gives_the_same_mixture(demo_runs, tmp_path):
    from multilora_pipeline.flows.data import data_flow

    outputs = data_flow(str(DEMO), str(tmp_path / "workspace"), task_runner="dask")
    assert outputs.mixture_id == demo_runs[1].mixture_id


@pytest.mark.parametrize("original", ["renamed", "kept"])
def test_a_moved_or_copied_workspace_reuses_its_own_files(demo_runs, tmp_path, original):
    """Issue 26: the catalog named outputs by absolute path, so a copy read the original's
    files (or died with FileNotFoundError once the original was renamed)."""
    from multilora_pipeline.flows.data import data_flow

    root, first, _ = demo_runs
    source = tmp_path / "original"
    shutil.copytree(root, source)  # the module's workspace stays as it was for other tests
    copy = tmp_path / "copy"
    shutil.copytree(source, copy)
    if original == "renamed":
        source.rename(tmp_path / "gone")
    again = data_flow(str(DEMO), str(copy))
    assert again.mixture_id == first.mixture_id
    assert set(again.reused_stages) >= {"normalise", "dedup", "decontaminate", "mixture"}
    used = [again.train_dir, again.validation_path, *again.eval_paths.values()]
    assert all(Path(p).is_relative_to(copy) for p in used), used
    assert pq.read_table(again.eval_paths["boolq_mc"]).num_rows > 0  # its own files, readable
    catalog = Catalog(copy / "catalog.duckdb")
    paths = [r["path"] for r in catalog.query("SELECT path FROM stage_outputs")]
    paths += [r["path"] for r in catalog.query("SELECT path FROM mixtures")]
    assert paths and not any(Path(p).is_absolute() for p in paths)


def test_bad_input_leaves_no_catalog_row(prefect_harness, tmp_path):
    from multilora_pipeline.flows.data import data_flow

    spec_dir = tmp_path / "spec"
    shutil.copytree(REPO / "data_specs" / "demo", spec_dir / "demo")
    shutil.copy(DEMO, spec_dir / "demo.yaml")
    math = spec_dir / "demo" / "math_train.jsonl"
    lines = math.read_text().splitlines()
    lines[40] = lines[40][: len(lines[40]) // 2]  # a truncated JSON line
    math.write_text("\n".join(lines) + "\n")
    root = tmp_path / "workspace"
    with pytest.raises(DataError, match="math_train.jsonl"):
        data_flow(str(spec_dir / "demo.yaml"), str(root))
    assert not (root / "catalog.duckdb").exists() or all(
        n == 0 for n in Catalog(root / "catalog.duckdb").counts().values()
    )
    leftovers = [p for p in (root / "data").rglob("*") if ".tmp" in p.name]
    assert leftovers == []


def test_a_changed_source_is_recomputed(prefect_harness, tmp_path):
    from multilora_pipeline.flows.data import data_flow

    spec_dir = tmp_path / "spec"
    shutil.copytree(REPO / "data_specs" / "demo", spec_dir / "demo")
    shutil.copy(DEMO, spec_dir / "demo.yaml")
    root = tmp_path / "workspace"
    first = data_flow(str(spec_dir / "demo.yaml"), str(root))
    math = spec_dir / "demo" / "math_train.jsonl"
    math.write_text("\n".join(math.read_text().splitlines()[:-20]) + "\n")  # drop 20 rows
    second = data_flow(str(spec_dir / "demo.yaml"), str(root))
    assert second.mixture_id != first.mixture_id
    assert "mixture" not in second.reused_stages and "fetch" not in second.reused_stages
    rows = {r["source"]: r["rows_in"] for r in second.source_table}
    assert rows["math"] == 291 and rows["boolq"] == 311
    assert Catalog(root / "catalog.duckdb").counts()["mixtures"] == 2


def test_a_suite_dev_split_is_normalised_and_used_for_few_shot(prefect_harness, tmp_path):
    import yaml

    from multilora_pipeline.data_specs.schema import load_spec
    from multilora_pipeline.flows.data import data_flow
    from multilora_pipeline.tasks.evaluation.evaluate import build_contexts
    from multilora_pipeline.tasks.evaluation.suites import suite_format

    spec = yaml.safe_load(DEMO.read_text())
    for item in spec["sources"] + spec["eval_suites"]:
        item["path"] = str(DEMO.parent / item["path"])
    spec["eval_suites"][0]["dev"] = {
        "path": str(DEMO.parent / "demo/knowledge_eval.csv"),
        "max_rows": 3,
    }
    path = tmp_path / "dev.yaml"
    path.write_text(yaml.safe_dump(spec))
    outputs = data_flow(str(path), str(tmp_path / "ws"))
    assert set(outputs.eval_dev_paths) == {"knowledge_mc"}
    dev = pq.read_table(outputs.eval_dev_paths["knowledge_mc"]).to_pylist()
    items = pq.read_table(outputs.eval_paths["knowledge_mc"]).to_pylist()
    assert len(dev) == 3 and dev[0]["prompt"] == items[0]["prompt"]
    snapshots = {
        r["name"]
        for r in Catalog(tmp_path / "ws" / "catalog.duckdb").query("SELECT name FROM snapshots")
    }
    assert "knowledge_mc-dev" in snapshots
    suite = load_spec(path)[0].eval_suites[0]
    (context,) = build_contexts(items[5:6], suite_format(suite), 2, dev_rows=dev)
    assert context.startswith(dev[0]["prompt"]) and dev[1]["prompt"] in context


def test_a_data_spec_needs_no_base_model_or_arms(prefect_harness, tmp_path):
    import yaml

    from multilora_pipeline.data_specs.errors import SpecError
    from multilora_pipeline.data_specs.schema import load_spec
    from multilora_pipeline.flows.data import data_flow

    spec = yaml.safe_load(DEMO.read_text())
    for key in ("base_model", "arms", "training", "evaluation", "registry", "prompt_format"):
        spec.pop(key, None)
    for item in spec["sources"] + spec["eval_suites"]:
        item["path"] = str(DEMO.parent / item["path"])
    path = tmp_path / "data_only.yaml"
    path.write_text(yaml.safe_dump(spec))
    outputs = data_flow(str(path), str(tmp_path / "ws"))
    assert outputs.source_table and Path(outputs.train_dir).is_dir()
    with pytest.raises(SpecError, match="base_model: field required|base_model"):
        load_spec(path)  # `mlora run` still needs the model and the arms
    spec["arms"] = [{"name": "x", "kind": "lora", "surprise": 1}]
    path.write_text(yaml.safe_dump(spec))
    with pytest.raises(SpecError, match="surprise: unknown key"):  # given, they are checked
        load_spec(path, data_only=True)


def test_skipped_bad_rows_and_repeated_suite_items_are_in_the_catalog_and_the_table(
    prefect_harness, tmp_path
):
    import json

    import yaml

    from multilora_pipeline.flows.data import data_flow, format_source_table

    lines = (DEMO.parent / "demo/boolq_train.jsonl").read_text().splitlines()
    lines[4] = json.dumps({**json.loads(lines[4]), "label": "perhaps"})
    (tmp_path / "boolq_train.jsonl").write_text("\n".join(lines) + "\n")
    spec = yaml.safe_load(DEMO.read_text())
    for item in spec["sources"] + spec["eval_suites"]:
        item["path"] = str(DEMO.parent / item["path"])
    boolq = next(s for s in spec["sources"] if s["name"] == "boolq")
    boolq.update(path=str(tmp_path / "boolq_train.jsonl"), bad_rows="skip")
    # And a suite that repeats one of its items: reported, kept.
    suite = next(s for s in spec["eval_suites"] if s["name"] == "boolq_mc")
    items = Path(suite["path"]).read_text().splitlines()
    (tmp_path / "boolq_eval.jsonl").write_text("\n".join([*items, items[2]]) + "\n")
    suite["path"] = str(tmp_path / "boolq_eval.jsonl")
    path = tmp_path / "skip.yaml"
    path.write_text(yaml.safe_dump(spec))
    outputs = data_flow(str(path), str(tmp_path / "ws"))
    row = next(r for r in outputs.source_table if r["source"] == "boolq")
    assert row["invalid_drops"] == 1 and row["rows_in"] == len(lines)  # read, the bad one too
    assert " bad " in format_source_table(outputs).splitlines()[0] + " "
    (drop,) = Catalog(tmp_path / "ws" / "catalog.duckdb").query("SELECT * FROM invalid_drops")
    assert (drop["source"], drop["row"], drop["field"]) == ("boolq", 5, "label")
    assert "unknown label value 'perhaps'" in drop["reason"]
    repeated = next(r for r in outputs.suite_table if r["suite"] == "boolq_mc")
    assert (repeated["repeated"], repeated["dropped"]) == (1, False)
    assert "1 repeating an earlier item (kept; drop_duplicates" in format_source_table(outputs)
    (dup,) = Catalog(tmp_path / "ws" / "catalog.duckdb").query("SELECT * FROM suite_duplicates")
    assert (dup["suite"], dup["row"], dup["duplicate_of_row"]) == ("boolq_mc", len(items) + 1, 3)
