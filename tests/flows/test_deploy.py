"""Schedules: the deployment object, and a real Prefect server executing a served run.

The server test starts `prefect server start` on a free port (its own
PREFECT_HOME), `mlora serve --training-pool mlora-gpu` on a reduced spec, and a `prefect
deploy` of the repo's prefect.yaml; it checks both schedules and both training deployments
through the REST API, sees the server's scheduler create the cron runs, triggers a run,
waits for it to complete (the serving process executes it, a worker on mlora-gpu trains)
and stops every process it started.
"""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest

from multilora_pipeline.data_specs.errors import PipelineError, SpecError
from multilora_pipeline.flows.local_servers import (
    BIN,
    api,
    find_deployment,
    finished,
    prefect_cli,
    prefect_env,
    run_logs,
    start,
    start_prefect_server,
    start_worker,
    stop_process_group,
    wait_for,
)
from multilora_pipeline.flows.training_pool import RUN_ENV, TRAINING_TAG
from multilora_pipeline.tasks.registry.tracking import Tracker
from multilora_pipeline.tasks.registry.versions import CHAMPION, version_by_alias
from multilora_pipeline.tasks.workspace import Workspace
from tests.specs import smallest_pipeline, write_spec

pytestmark = pytest.mark.slow  # Prefect deployments and workers: left out by -m "not slow"

REPO = Path(__file__).resolve().parents[2]


def test_build_deployment_carries_the_schedule_and_parameters(tmp_path):
    from multilora_pipeline.flows.deploy import build_deployment

    spec = write_spec(smallest_pipeline(), tmp_path / "reduced.yaml")
    deployment = build_deployment(spec, tmp_path / "ws", cron="15 2 * * 1", timezone="Europe/Paris")
    assert deployment.name == "reduced"
    assert deployment.entrypoint == "multilora_pipeline.flows.pipeline.pipeline_flow"
    assert deployment.parameters == {
        "spec_path": str(spec.resolve()),
        "workspace_root": str((tmp_path / "ws").resolve()),
    }
    (schedule,) = deployment.schedules
    assert schedule.schedule.cron == "15 2 * * 1"
    assert schedule.schedule.timezone == "Europe/Paris"
    assert "reduced" in deployment.tags


def test_build_deployment_rejects_a_bad_cron_and_a_bad_spec(tmp_path):
    from multilora_pipeline.flows.deploy import build_deployment

    spec = write_spec(smallest_pipeline(), tmp_path / "reduced.yaml")
    with pytest.raises(PipelineError, match="--cron.*invalid cron schedule 'every night'"):
        build_deployment(spec, tmp_path / "ws", cron="every night")
    with pytest.raises(PipelineError, match="--timezone: unknown timezone 'Mars/Base'"):
        build_deployment(spec, tmp_path / "ws", timezone="Mars/Base")
    assert build_deployment(spec, tmp_path / "ws", timezone="Europe/Berlin").schedules
    with pytest.raises(SpecError, match="spec file not found"):
        build_deployment(tmp_path / "missing.yaml", tmp_path / "ws")


# --- a real server ------------------------------------------------------------------------


def test_served_deployment_runs_on_a_real_server(tmp_path):
    env = prefect_env(tmp_path)
    # A time of day 12 hours away: the cron runs get scheduled but never fire during the test.
    hour = (dt.datetime.now(dt.timezone.utc).hour + 12) % 24
    cron = f"0 {hour} * * *"
    spec = write_spec(smallest_pipeline(), tmp_path / "reduced.yaml")
    ws = tmp_path / "ws"
    procs: dict[str, tuple] = {}
    try:
        base = start_prefect_server(tmp_path, env, procs)
        for pool in ("mlora-cpu", "mlora-gpu"):
            prefect_cli("work-pool", "create", pool, "--type", "process", env=env)

        serve_log = tmp_path / "serve.log"
        procs["mlora serve"] = (
            start(
                [
                    sys.executable,
                    "-m",
                    "multilora_pipeline.flows.cli",
                    "--workspace",
                    str(ws),
                    "serve",
                    str(spec),
                    "--cron",
                    cron,
                    "--training-pool",
                    "mlora-gpu",
                ],
                env,
                serve_log,
            ),
            serve_log,
        )
        deployment = wait_for(
            "the served deployment", lambda: find_deployment(base, "reduced"), 60, procs
        )
        (schedule,) = deployment["schedules"]
        assert schedule["schedule"]["cron"] == cron and schedule["active"]
        assert deployment["parameters"]["spec_path"] == str(spec.resolve())
        assert deployment["parameters"]["training_pool"] == "mlora-gpu"
        # `mlora serve --training-pool` declares the training deployment on that pool.
        served_training = wait_for(
            "the training deployment", lambda: find_deployment(base, "mlora-gpu"), 30, procs
        )
        assert served_training["work_pool_name"] == "mlora-gpu"
        assert served_training["job_variables"]["env"] == RUN_ENV

        # The server's scheduler turns the cron into scheduled runs (at `hour`, not now).
        def scheduled_runs():
            return api(
                base,
                "/flow_runs/filter",
                {
                    "flow_runs": {
                        "deployment_id": {"any_": [deployment["id"]]},
                        "state": {"type": {"any_": ["SCHEDULED"]}},
                    }
                },
            )

        runs = wait_for("the cron's scheduled runs", scheduled_runs, 30, procs)
        assert all(dt.datetime.fromisoformat(r["expected_start_time"]).hour == hour for r in runs)

        flow_run = api(base, f"/deployments/{deployment['id']}/create_flow_run", {})

        # Meanwhile: prefect.yaml declares the pipeline on a CPU pool, its training on a GPU one.
        cli = str(BIN / "prefect")
        deploy_env = {**env, "PWD": str(REPO)}
        deployed = subprocess.run(
            [cli, "--no-prompt", "deploy", "--all"],
            cwd=REPO,
            env=deploy_env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
        pooled = find_deployment(base, "demo")
        assert pooled["work_pool_name"] == "mlora-cpu"
        assert pooled["entrypoint"] == "multilora_pipeline.flows.pipeline.pipeline_flow"
        assert pooled["parameters"]["training_pool"] == "mlora-gpu"
        assert pooled["schedules"][0]["schedule"]["cron"] == "0 3 * * *"
        assert pooled["pull_steps"] == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
        ]
        # The training deployment the pipeline looks up on its pool (flows/training_pool.py).
        training = find_deployment(base, "mlora-gpu")
        assert training["work_pool_name"] == "mlora-gpu"
        assert training["entrypoint"] == "multilora_pipeline.flows.training.training_flow"
        assert training["job_variables"]["env"] == RUN_ENV
        assert TRAINING_TAG in training["tags"]

        # The served run trains on the pool: a worker there, with the served workspace.
        start_worker("mlora-gpu", tmp_path, {**env, "MLORA_WORKSPACE": str(ws)}, procs)
        assert (
            wait_for("the triggered run", lambda: finished(base, flow_run["id"]), 180, procs)
            == "COMPLETED"
        ), serve_log.read_text()[-4000:]
        (training_run,) = api(
            base, "/flow_runs/filter", {"flows": {"name": {"any_": ["mlora-train"]}}}
        )
        assert training_run["state"]["type"] == "COMPLETED"
        assert training_run["work_pool_name"] == "mlora-gpu"

        # The project's own lines reach each run's Prefect logs: registry and gate in the
        # pipeline's, training progress in the training run's (shipped in batches by a
        # background thread: they may land after the final state).
        def project_loggers(run_id: str, wanted: set[str]):
            names = {entry["name"] for entry in run_logs(base, run_id)}
            return names if wanted <= names else None

        pipeline_lines = {"mlora.registry", "mlora.pipeline"}  # pipeline: the gate line
        wait_for(
            "the pipeline's log lines in Prefect's store",
            lambda: project_loggers(flow_run["id"], pipeline_lines),
            30,
            procs,
        )
        wait_for(
            "the training run's log lines in Prefect's store",
            lambda: project_loggers(training_run["id"], {"mlora.train"}),
            30,
            procs,
        )
    finally:
        for proc, _ in reversed(list(procs.values())):
            stop_process_group(proc)
    # The run did the real work in the served workspace: a registered champion.
    tracker = Tracker(Workspace.resolve(ws), "reduced")
    champion = version_by_alias(tracker, "mlora-reduced", CHAMPION)
    assert champion is not None and champion.tags["arm"] == "multilora"
    assert all(proc.poll() is not None for proc, _ in procs.values())
