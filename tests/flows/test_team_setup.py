"""The team setup, for real on 127.0.0.1: a Prefect server with two process work pools
("cpu" runs the pipeline, "gpu" its training, both on this CPU), one worker each, and an
MLflow tracking server with proxied artifacts; the deployments come from the repo's
prefect.yaml with this test's spec, workspace and pool names.

The first pipeline run's training worker is SIGKILLed mid-training (a lost machine): the
zombie automation marks its flow run Crashed and the pipeline fails with that. A new worker
and a second run resume the training from its checkpoint, and the run ends with one arm
run and one registered version on the MLflow server, loadable by alias in a fresh process.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import mlflow
import pytest
from mlflow import MlflowClient

from multilora_pipeline.flows.local_servers import (
    api,
    deploy_team_setup,
    find_deployment,
    finished,
    prefect_env,
    start_mlflow_server,
    start_prefect_server,
    start_worker,
    stop_process_group,
    wait_for,
)
from tests.fresh_process import run_fresh
from tests.specs import smallest_pipeline, write_spec

pytestmark = pytest.mark.slow  # servers, workers and two pipeline runs: ~4 min

PIPELINE, TRAINING_POOL, PIPELINE_POOL = "team", "gpu", "cpu"


def _flow_runs(base: str, flow: str) -> list[dict]:
    return api(
        base,
        "/flow_runs/filter",
        {"flows": {"name": {"any_": [flow]}}, "sort": "EXPECTED_START_TIME_ASC"},
    )


def test_training_on_a_gpu_pool_survives_a_killed_worker(tmp_path):
    team = smallest_pipeline()
    # Trained long enough to be killed between two checkpoints.
    team["training"].update(max_steps=120, save_steps=10, eval_steps=60, logging_steps=10)
    spec, ws = write_spec(team, tmp_path / "reduced.yaml"), tmp_path / "ws"
    env = prefect_env(tmp_path)
    procs: dict[str, tuple] = {}
    try:
        base = start_prefect_server(tmp_path, env, procs)
        tracking = start_mlflow_server(tmp_path, env, procs)
        # What a worker needs: the workspace (shared storage) and the MLflow URI.
        worker_env = {**env, "MLORA_WORKSPACE": str(ws), "MLFLOW_TRACKING_URI": tracking}
        deploy_team_setup(tmp_path, spec, PIPELINE, PIPELINE_POOL, TRAINING_POOL, env)
        start_worker(PIPELINE_POOL, tmp_path, worker_env, procs)
        start_worker(TRAINING_POOL, tmp_path, worker_env, procs)
        pipeline = find_deployment(base, PIPELINE)

        # Run 1: kill the training worker (and its flow-run process) between checkpoints.
        first = api(base, f"/deployments/{pipeline['id']}/create_flow_run", {})
        checkpoints = "runs/*/*/multilora/checkpoint-10/trainer_state.json"
        wait_for("the first checkpoint", lambda: list(ws.glob(checkpoints)), 300, procs, 0.02)
        # A lost machine: the training run's process and its worker die at once, unannounced.
        (training,) = _flow_runs(base, "mlora-train")
        os.kill(int(str(training["infrastructure_pid"]).rsplit(":", 1)[-1]), signal.SIGKILL)
        gpu_worker, _ = procs.pop(f"worker {TRAINING_POOL}")
        os.killpg(gpu_worker.pid, signal.SIGKILL)
        gpu_worker.wait()
        assert not list(ws.glob("runs/*/*/multilora/result.json"))
        # The automation marks the silent training run Crashed; the pipeline fails with it.
        assert (
            wait_for("the first run to fail", lambda: finished(base, first["id"]), 300, procs)
            == "FAILED"
        )
        message = api(base, f"/flow_runs/{first['id']}")["state"]["message"]
        assert "on work pool 'gpu' ended Crashed" in message and "no heartbeat" in message

        # Run 2: a new worker; training resumes from the checkpoint and the pipeline ends.
        start_worker(TRAINING_POOL, tmp_path, worker_env, procs)
        second = api(base, f"/deployments/{pipeline['id']}/create_flow_run", {})
        assert (
            wait_for("the second run", lambda: finished(base, second["id"]), 300, procs)
            == "COMPLETED"
        )

        # Prefect: both training runs ran on the gpu pool, each a child of its pipeline run.
        trainings = _flow_runs(base, "mlora-train")
        assert [r["state"]["type"] for r in trainings] == ["CRASHED", "COMPLETED"]
        for training, parent in zip(trainings, (first, second), strict=True):
            assert training["work_pool_name"] == TRAINING_POOL
            assert (
                api(base, f"/task_runs/{training['parent_task_run_id']}")["flow_run_id"]
                == parent["id"]
            )
        pipelines = _flow_runs(base, "mlora-pipeline")
        assert {r["work_pool_name"] for r in pipelines} == {PIPELINE_POOL}
        _check_tracking_server(tracking, tmp_path)
    finally:
        for proc, _ in reversed(list(procs.values())):
            stop_process_group(proc)
    assert all(proc.poll() is not None for proc, _ in procs.values())
    # The training resumed where the killed worker's last checkpoint left it.
    (result,) = ws.glob("runs/*/*/multilora/result.json")
    assert json.loads(result.read_text())["resumed_from_step"] >= 10
    # Tracking went to the server, not to a store in the workspace.
    assert not (ws / "mlflow.db").exists()


def _check_tracking_server(tracking: str, tmp_path: Path) -> None:
    """Runs, child runs, artifacts, one version with its aliases, on the MLflow server; the
    champion loads by alias in a fresh process that knows only the server's URL."""
    # MLflow resolves a run's logged models through the global tracking URI, not the client's.
    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking)
    try:
        _check_runs_and_versions(MlflowClient(tracking, tracking), tracking, tmp_path)
    finally:
        mlflow.set_tracking_uri(previous)


def _check_runs_and_versions(client: MlflowClient, tracking: str, tmp_path: Path) -> None:
    experiment = client.get_experiment_by_name("reduced")
    assert experiment.artifact_location.startswith("mlflow-artifacts:")  # proxied by the server
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time ASC"])
    parents = [r for r in runs if r.data.tags.get("mlora.role") == "pipeline"]
    arms = [r for r in runs if r.data.tags.get("mlora.role") == "arm"]
    assert [p.info.status for p in parents] == ["FAILED", "FINISHED"]
    (arm,) = arms  # resumed, not duplicated
    assert arm.info.status == "FINISHED"
    assert arm.data.tags["mlflow.parentRunId"] == parents[1].info.run_id
    assert arm.data.tags["mlora.resumed_from_parent"] == parents[0].info.run_id
    steps = [m.step for m in client.get_metric_history(arm.info.run_id, "train_loss")]
    assert steps == sorted(set(steps)) and steps[-1] == 120  # each step's point once
    assert client.list_artifacts(arm.info.run_id, "adapter")
    (version,) = client.search_model_versions("name = 'mlora-reduced'")
    assert version.run_id == arm.info.run_id
    assert client.get_model_version_by_alias("mlora-reduced", "champion").version == version.version
    script = (
        "import json, sys, mlflow, pandas as pd\n"
        "mlflow.set_tracking_uri(sys.argv[1])\n"
        "model = mlflow.pyfunc.load_model('models:/mlora-reduced@champion')\n"
        "out = model.predict(pd.DataFrame({'prompt': ['Is the sky blue?']}))\n"
        "print('RESULT' + json.dumps(out['completion'].tolist()))\n"
    )
    (tmp_path / "fresh").mkdir()
    (completion,) = run_fresh(script, [tracking], tmp_path / "fresh", timeout=180)
    assert isinstance(completion, str)
