"""The whole DAG on a reduced demo spec, and what a bad spec leaves behind (nothing)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from multilora_pipeline.data_specs.errors import DataError, SpecError, TrainingError
from multilora_pipeline.flows.run_report import format_summary
from multilora_pipeline.tasks.catalog import Catalog
from multilora_pipeline.tasks.evaluation.cache import EVAL_ID_TAG
from multilora_pipeline.tasks.workspace import Workspace
from tests.flows.counting_scorer import CountingScorer
from tests.specs import DEMO, reduced_demo, write_spec

pytestmark = pytest.mark.slow  # a whole pipeline run: left out by -m "not slow"


class Lines(logging.Handler):
    """Messages of the Prefect task-run loggers, where the pipeline's tasks log."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@dataclass
class PipelineRuns:
    """Three runs of the reduced demo in one workspace, and what each did."""

    ws: Workspace
    spec: Path
    """The reduced demo spec of the first two runs."""
    first: dict
    second: dict
    """The same spec again."""
    changed: dict
    """The same spec with another evaluation.max_new_tokens."""
    scorings: list[int]
    """Real `evaluate_model` calls per run."""
    base_evals: list[dict[str, int]]
    """Cached base evaluations after each run: key -> file mtime in ns."""
    lines: list[list[str]]
    """Task-run log messages per run."""


@pytest.fixture(scope="module")
def pipeline_runs(prefect_harness, tmp_path_factory) -> PipelineRuns:
    """Run the reduced demo twice in one workspace, then once with a changed evaluation."""
    import multilora_pipeline.flows.pipeline as pipeline
    import multilora_pipeline.tasks.evaluation.arm_scores as arm_scores

    tmp = tmp_path_factory.mktemp("pipeline")
    spec = write_spec(reduced_demo(), tmp / "reduced.yaml")
    edited = reduced_demo()
    edited["evaluation"]["max_new_tokens"] = 4  # decides the generation suite's scores
    changed = write_spec(edited, tmp / "changed.yaml")
    ws = Workspace.resolve(tmp / "workspace")
    scorer, lines = CountingScorer(arm_scores.evaluate_model), Lines()
    summaries, base_evals, messages = [], [], []
    task_logger = logging.getLogger("prefect.task_runs")
    task_logger.addHandler(lines)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(arm_scores, "evaluate_model", scorer)
            for path in (spec, spec, changed):
                scorer.calls.append(0)
                lines.messages = []
                summaries.append(pipeline.pipeline_flow(str(path), str(ws.root)))
                base_evals.append(
                    {p.parent.name: p.stat().st_mtime_ns for p in ws.data_dir.glob("base_eval/*/*")}
                )
                messages.append(lines.messages)
    finally:
        task_logger.removeHandler(lines)
    return PipelineRuns(ws, spec, *summaries, scorer.calls, base_evals, messages)


def test_first_run_goes_through_every_stage(pipeline_runs):
    first = pipeline_runs.first
    assert first["reused_data_stages"] == []
    assert [a["arm"] for a in first["arms"]] == ["multilora", "lora"]
    assert {a["version"] for a in first["arms"]} == {"1", "2"}
    for arm in first["arms"]:
        assert "eval_macro_acc" in arm["metrics"] and "val_loss" in arm["metrics"]
    assert first["champion"] == first["challenger"]  # first eligible version is promoted
    assert first["decision"] == "promoted"


def test_catalog_records_sources_stages_mixture_and_runs(pipeline_runs):
    ws, first = pipeline_runs.ws, pipeline_runs.first
    catalog = Catalog(ws.catalog_path)
    counts = catalog.counts()
    sources = catalog.query("SELECT name FROM sources WHERE spec_hash = ?", [first["spec_hash"]])
    assert len(sources) == 4 and counts["snapshots"] == 7  # 4 sources + 3 suites
    assert counts["mixtures"] == 1 and counts["mixture_members"] == 4
    assert counts["dedup_drops"] > 0  # the demo plants duplicates
    stages = {r["stage"] for r in catalog.query("SELECT stage FROM stage_outputs")}
    assert {"normalise", "dedup", "decontaminate", "mixture"} <= stages
    runs = catalog.query("SELECT arm, mlflow_run_id, model_version, mixture_id FROM runs")
    assert sorted(r["arm"] for r in runs) == ["lora", "multilora"]
    assert {r["mixture_id"] for r in runs} == {first["mixture_id"]}
    assert {r["mlflow_run_id"] for r in runs} == {a["run_id"] for a in first["arms"]}


def test_mlflow_has_parent_and_child_runs_versions_and_aliases(pipeline_runs):
    ws, first, second = pipeline_runs.ws, pipeline_runs.first, pipeline_runs.second
    client = MlflowClient(ws.tracking_uri, ws.tracking_uri)
    parent = client.get_run(first["parent_run_id"])
    assert parent.data.tags["mlora.mixture_id"] == first["mixture_id"]
    assert parent.data.tags["promotion.decision"] == "promoted"
    assert "multilora_eval_macro_acc" in parent.data.metrics
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "plots")}
    assert {"plots/loss_curves.png", "plots/spectra.png", "plots/effective_rank.png"} <= artifacts
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{first['parent_run_id']}'",
    )
    assert sorted(r.data.tags["mlora.arm"] for r in children) == ["lora", "multilora"]
    for child in children:
        history = client.get_metric_history(child.info.run_id, "train_loss")
        assert len(history) == 3  # logging_steps 2 of 6 steps
        for per_step in ("learning_rate", "grad_norm", "tokens_per_second", "peak_memory_mb"):
            assert len(client.get_metric_history(child.info.run_id, per_step)) >= 3, per_step
        # Training helped: held-out loss below the untrained base model's, for both arms.
        base_val_loss = parent.data.metrics["base_val_loss"]
        assert child.data.metrics["val_loss"] < base_val_loss, child.data.tags["mlora.arm"]
    name = first["registered_model"]
    versions = client.search_model_versions(f"name = '{name}'")
    assert len(versions) == 2  # the later runs registered nothing new
    champion = client.get_model_version_by_alias(name, "champion")
    assert str(champion.version) == first["champion"]
    assert champion.tags["mixture_id"] == first["mixture_id"]
    assert second["champion"] == first["champion"]


def test_second_run_reuses_every_data_stage_and_trained_arm(pipeline_runs):
    first, second = pipeline_runs.first, pipeline_runs.second
    assert set(second["reused_data_stages"]) >= {"normalise", "dedup", "decontaminate", "mixture"}
    assert second["mixture_id"] == first["mixture_id"]
    assert all(a["reused"] for a in second["arms"])
    assert [a["run_id"] for a in second["arms"]] == [a["run_id"] for a in first["arms"]]
    assert second["parent_run_id"] != first["parent_run_id"]


def _base_metrics(client, summary) -> dict[str, float]:
    metrics = client.get_run(summary["parent_run_id"]).data.metrics
    return {k: v for k, v in metrics.items() if k.startswith("base_")}


def _base_predictions(client, summary, folder: Path) -> list:
    run_id = summary["parent_run_id"]
    local = client.download_artifacts(run_id, "eval/base_predictions.json", str(folder))
    return json.loads(Path(local).read_text())


def test_second_run_reuses_the_base_evaluation(pipeline_runs, tmp_path):
    runs = pipeline_runs
    assert runs.scorings[:2] == [3, 0]  # base + 2 arms, then nothing: no scorer call
    assert not runs.first["base_evaluation_reused"] and runs.second["base_evaluation_reused"]
    (key,) = runs.base_evals[0]
    assert runs.base_evals[1] == runs.base_evals[0]  # the cache file was not rewritten
    assert any(m.startswith(f"reusing base evaluation {key}") for m in runs.lines[1])
    assert not any("reusing base evaluation" in m for m in runs.lines[0])

    client = MlflowClient(runs.ws.tracking_uri, runs.ws.tracking_uri)
    logged = _base_metrics(client, runs.second)
    assert logged == _base_metrics(client, runs.first)  # same names, same values
    assert {"base_eval_macro_acc", "base_math_gen_exact_match", "base_val_loss"} <= set(logged)
    assert runs.second["base_metrics"] == runs.first["base_metrics"]
    assert _base_predictions(client, runs.second, tmp_path / "2") == _base_predictions(
        client, runs.first, tmp_path / "1"
    )
    for summary in (runs.first, runs.second):
        assert client.get_run(summary["parent_run_id"]).data.tags["mlora.base_eval_id"] == key
    # What `mlora run` prints says so too.
    assert "; base evaluation scored" in format_summary(runs.first)
    assert "; base evaluation reused" in format_summary(runs.second)


def test_changed_evaluation_setting_scores_base_and_arms_again(pipeline_runs):
    runs = pipeline_runs
    # The arms' training is reused, but their scores came from the old settings: the base
    # and both arms are scored again, so the comparison and the gate stay like with like.
    assert runs.scorings[2] == 3
    assert all(a["reused"] for a in runs.changed["arms"])
    assert not runs.changed["base_evaluation_reused"]
    assert not any("reusing base evaluation" in m for m in runs.lines[2])
    (old,) = runs.base_evals[0]
    (new,) = set(runs.base_evals[2]) - {old}
    assert runs.base_evals[2][old] == runs.base_evals[0][old]  # the other entry is untouched
    client = MlflowClient(runs.ws.tracking_uri, runs.ws.tracking_uri)
    tags = client.get_run(runs.changed["parent_run_id"]).data.tags
    assert tags["mlora.base_eval_id"] == new
    assert set(_base_metrics(client, runs.changed)) == set(_base_metrics(client, runs.first))
    for arm in runs.changed["arms"]:
        run = client.get_run(arm["run_id"])
        assert run.data.tags[EVAL_ID_TAG] == new
        primary = runs.changed["primary_metric"]
        assert run.data.metrics[primary] == arm["metrics"][primary]
        version = client.get_model_version(runs.changed["registered_model"], arm["version"])
        assert version.tags[primary] == f"{arm['metrics'][primary]:.4f}"
        assert f"{primary} {arm['metrics'][primary]:.4f}" in version.description


def test_lm_eval_scores_the_exported_tasks_as_the_pipeline_does(pipeline_runs, tmp_path):
    pytest.importorskip("lm_eval")  # a dev dependency: CI has it
    import mlflow

    from multilora_pipeline.flows.lm_eval_export import lm_eval_tasks_flow
    from multilora_pipeline.tasks.evaluation.lm_eval_tasks import run_lm_eval

    runs = pipeline_runs
    written = lm_eval_tasks_flow(str(runs.spec), str(tmp_path / "tasks"), str(runs.ws.root))
    assert set(written["tasks"]) == {"mlora_knowledge_mc", "mlora_boolq_mc", "mlora_math_gen"}
    assert all(t["items"] == 12 for t in written["tasks"].values())  # the suites' max_items
    assert "--include_path" in (tmp_path / "tasks" / "README.md").read_text()
    client = MlflowClient(runs.ws.tracking_uri, runs.ws.tracking_uri)
    mlflow.set_tracking_uri(runs.ws.tracking_uri)
    suites = ["knowledge_mc", "boolq_mc"]
    for arm in runs.first["arms"]:
        # The registered version's own PEFT export, as a user would download it.
        version = mlflow.artifacts.download_artifacts(
            f"models:/{runs.first['registered_model']}/{arm['version']}",
            dst_path=str(tmp_path / arm["arm"]),
        )
        peft = str(Path(version) / "artifacts" / "peft")
        tasks = [f"mlora_{s}" for s in suites]
        chat = written["prompt_format"] == "chat"
        results = run_lm_eval(written["base_model"], peft, tmp_path / "tasks", tasks, chat=chat)
        ours = client.get_run(arm["run_id"]).data.metrics
        for suite in suites:
            theirs = results["results"][f"mlora_{suite}"]
            for metric in ("acc", "acc_norm"):
                assert theirs[f"{metric},none"] == pytest.approx(ours[f"{suite}_{metric}"]), (
                    arm["arm"],
                    suite,
                    metric,
                )


def test_a_downloaded_version_loads_with_auto_peft_on_its_bundled_base(
    pipeline_runs, tmp_path, monkeypatch
):
    import mlflow
    from peft import AutoPeftModelForCausalLM

    runs = pipeline_runs
    mlflow.set_tracking_uri(runs.ws.tracking_uri)
    arm = runs.first["arms"][1]
    root = Path(
        mlflow.artifacts.download_artifacts(
            f"models:/{runs.first['registered_model']}/{arm['version']}", dst_path=str(tmp_path)
        )
    )
    config = json.loads((root / "artifacts" / "peft" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == "artifacts/base_model"  # inside the version
    # The arm's own export in the workspace still names the workspace folder (it was
    # hard-linked into the version: rewriting it there must not have changed this one).
    exports = [
        p
        for p in runs.ws.root.rglob("peft/adapter_config.json")
        if runs.ws.artifacts_dir not in p.parents
    ]
    assert exports
    for export in exports:
        trained = json.loads(export.read_text())["base_model_name_or_path"]
        assert Path(trained).is_absolute() and Path(trained).is_dir()
    monkeypatch.chdir(root)
    model = AutoPeftModelForCausalLM.from_pretrained("artifacts/peft")
    assert model.peft_config["default"].r == config["r"]


def _assert_nothing_written(ws):
    assert not ws.catalog_path.exists()
    if ws.mlflow_db.exists():
        client = MlflowClient(ws.tracking_uri, ws.tracking_uri)
        assert client.search_registered_models() == []


def test_unknown_key_fails_with_its_yaml_path(prefect_harness, tmp_path):
    from multilora_pipeline.flows.pipeline import pipeline_flow

    spec = write_spec(
        reduced_demo(training={"max_steps": 5, "learning_rat": 0.1}), tmp_path / "reduced.yaml"
    )
    with pytest.raises(SpecError, match=r"(?s)reduced\.yaml.*training\.learning_rat: unknown key"):
        pipeline_flow(str(spec), str(tmp_path / "ws"))
    assert not (tmp_path / "ws" / "catalog.duckdb").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_spec_demanding_a_gpu_fails_before_any_work(prefect_harness, tmp_path):
    from multilora_pipeline.flows.pipeline import pipeline_flow

    spec = reduced_demo()
    spec["training"]["device"] = "cuda"
    path = write_spec(spec, tmp_path / "gpu.yaml")
    with pytest.raises(TrainingError, match="no GPU is visible"):
        pipeline_flow(str(path), str(tmp_path / "ws"))
    assert not (tmp_path / "ws" / "catalog.duckdb").exists()
    assert not list((tmp_path / "ws").glob("data/*"))


def test_missing_file_and_malformed_row_leave_nothing_behind(prefect_harness, tmp_path):
    from multilora_pipeline.flows.pipeline import pipeline_flow
    from multilora_pipeline.tasks.workspace import Workspace

    spec = reduced_demo()
    spec["sources"][3]["path"] = str(tmp_path / "nowhere.jsonl")
    missing = write_spec(spec, tmp_path / "missing.yaml")
    ws = Workspace.resolve(tmp_path / "ws1")
    with pytest.raises(DataError, match=r"(?s)nowhere\.jsonl.*not found"):
        pipeline_flow(str(missing), str(ws.root))
    _assert_nothing_written(ws)

    bad = tmp_path / "math_bad.jsonl"
    rows = [json.loads(line) for line in (DEMO.parent / "demo/math_train.jsonl").open()][:20]
    del rows[6]["answer"]  # row 7 has no answer field
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    spec["sources"][3]["path"] = str(bad)
    malformed = write_spec(spec, tmp_path / "malformed.yaml")
    ws = Workspace.resolve(tmp_path / "ws2")
    with pytest.raises(DataError, match=r"(?s)math_bad\.jsonl.*row 7.*answer"):
        pipeline_flow(str(malformed), str(ws.root))
    _assert_nothing_written(ws)


def test_a_second_concurrent_run_of_a_spec_is_refused(tmp_path):
    from multilora_pipeline.data_specs.schema import load_spec
    from multilora_pipeline.flows.pipeline import spec_lock
    from multilora_pipeline.tasks.workspace import Workspace

    ws = Workspace.resolve(tmp_path / "ws").ensure()
    spec = load_spec(DEMO)[0]
    with spec_lock(ws, spec):
        with pytest.raises(TrainingError, match=f"(?s)another `mlora run`.*pid {os.getpid()}"):
            with spec_lock(ws, spec):
                pass
    with spec_lock(ws, spec):  # released: the next run goes ahead
        pass


def test_the_loser_of_the_spec_lock_stops_before_any_stage_or_run(prefect_harness, tmp_path):
    from multilora_pipeline.data_specs.schema import load_spec
    from multilora_pipeline.flows.pipeline import pipeline_flow, spec_lock

    spec_path = write_spec(reduced_demo(), tmp_path / "reduced.yaml")
    ws = Workspace.resolve(tmp_path / "ws").ensure()
    with spec_lock(ws, load_spec(spec_path)[0]):
        with pytest.raises(TrainingError, match="another `mlora run`"):
            pipeline_flow(str(spec_path), str(ws.root))
    assert not ws.catalog_path.exists()  # no data stage ran
    assert not ws.mlflow_db.exists()  # and no parent run was opened


def _open_tracker(root: str, experiment: str, start) -> None:
    from multilora_pipeline.tasks.registry.tracking import Tracker

    start.wait()
    Tracker(Workspace.resolve(root), experiment)


def test_first_runs_at_once_on_a_fresh_workspace_create_one_mlflow_store(tmp_path):
    """MLflow migrates a new SQLite store on first use; two first runs at once raced in that
    migration (`table _alembic_tmp_experiments already exists`). They take turns now."""
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    root = str(Workspace.resolve(tmp_path / "ws").ensure().root)
    start = ctx.Event()
    procs = [
        ctx.Process(target=_open_tracker, args=(root, name, start))
        for name in ("one", "two", "one")
    ]
    for proc in procs:
        proc.start()
    start.set()
    for proc in procs:
        proc.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    client = MlflowClient(Workspace.resolve(root).tracking_uri)
    names = sorted(e.name for e in client.search_experiments() if e.name != "Default")
    assert names == ["one", "two"]  # the same experiment twice is created once


def test_flow_runs_a_killed_process_left_running_are_marked_crashed(prefect_harness, tmp_path):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Running

    from multilora_pipeline.data_specs.schema import load_spec
    from multilora_pipeline.flows.pipeline import pipeline_flow
    from multilora_pipeline.flows.stale_runs import close_stale_runs, run_tag

    ws = Workspace.resolve(tmp_path / "ws").ensure()
    spec = load_spec(DEMO)[0]
    tag = run_tag(ws, spec)
    with get_client(sync_client=True) as client:
        killed = client.create_flow_run(pipeline_flow, tags=[tag], state=Running())
        other_spec = client.create_flow_run(pipeline_flow, tags=["mlora-spec:x@1"], state=Running())

    @flow
    def next_run():
        return close_stale_runs(ws, spec)

    assert next_run() == [str(killed.id)]
    with get_client(sync_client=True) as client:
        assert client.read_flow_run(killed.id).state.type.value == "CRASHED"
        assert "killed" in client.read_flow_run(killed.id).state.message
        assert client.read_flow_run(other_spec.id).state.type.value == "RUNNING"
