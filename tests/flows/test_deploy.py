"""Schedules: the deployment object, and a real Prefect server executing a served run.

The server test starts `prefect server start` on a free port (its own
PREFECT_HOME), `mlora serve` on a reduced spec, and a `prefect deploy` of the
repo's prefect.yaml; it checks both schedules through the REST API, sees the
server's scheduler create the cron runs, triggers a run, waits for it to
complete (the serving process executes it) and stops every process it started.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from multilora_pipeline.data_specs.errors import PipelineError, SpecError
from multilora_pipeline.tasks.registry.tracking import Tracker
from multilora_pipeline.tasks.registry.versions import CHAMPION, version_by_alias
from multilora_pipeline.tasks.workspace import Workspace
from tests.flows.processes import stop_process_group

pytestmark = pytest.mark.slow  # Prefect deployments and workers: left out by -m "not slow"

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data_specs" / "demo"


def write_reduced_spec(folder: Path) -> Path:
    """Two small sources, one 8-item suite, a one-layer width-32 model, one arm, 10 steps."""
    spec = folder / "reduced.yaml"
    spec.write_text(
        f"""
name: reduced
description: smallest pipeline that exercises every stage
sources:
  - {{name: instructions, path: {DEMO}/instructions.json, template: alpaca,
      category: instruction, max_rows: 40}}
  - {{name: boolq, path: {DEMO}/boolq_train.jsonl, template: superglue_boolq,
      category: nlu, max_rows: 40}}
eval_suites:
  - {{name: boolq_mc, path: {DEMO}/boolq_eval.jsonl, template: superglue_boolq,
      kind: multiple_choice, category: nlu, max_items: 8}}
base_model:
  tiny: {{vocab_size: 300, hidden_size: 32, intermediate_size: 64, num_layers: 1,
          num_heads: 4, max_position: 128}}
arms:
  - {{name: multilora, kind: multilora, n_modules: 2, rank: 2}}
training: {{max_steps: 10, batch_size: 4, max_length: 64, warmup_steps: 1,
            save_steps: 10, eval_steps: 10, logging_steps: 5}}
evaluation: {{batch_size: 8, max_new_tokens: 4}}
registry: {{must_beat_base: false}}  # a random base: its adapters sit at chance too
"""
    )
    return spec


def test_build_deployment_carries_the_schedule_and_parameters(tmp_path):
    from multilora_pipeline.flows.deploy import build_deployment

    spec = write_reduced_spec(tmp_path)
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

    spec = write_reduced_spec(tmp_path)
    with pytest.raises(PipelineError, match="--cron.*invalid cron schedule 'every night'"):
        build_deployment(spec, tmp_path / "ws", cron="every night")
    with pytest.raises(PipelineError, match="--timezone: unknown timezone 'Mars/Base'"):
        build_deployment(spec, tmp_path / "ws", timezone="Mars/Base")
    assert build_deployment(spec, tmp_path / "ws", timezone="Europe/Berlin").schedules
    with pytest.raises(SpecError, match="spec file not found"):
        build_deployment(tmp_path / "missing.yaml", tmp_path / "ws")


# --- a real server ------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _start(cmd: list[str], env: dict, log: Path, cwd: Path = REPO) -> subprocess.Popen:
    # A session of its own: stopping it signals its children too (uvicorn, flow-run processes).
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def _api(base: str, path: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        base + path,
        data=data,
        headers={"content-type": "application/json"},
        method="GET" if body is None else "POST",
    )
    for attempt in range(5):
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as err:
            # The server answers 503 while its SQLite database is busy (its scheduler writes
            # the cron's runs at the same moment): what a Prefect client retries, so do we.
            if err.code != 503 or attempt == 4:
                raise
            time.sleep(0.5 * 2**attempt)


def _run_logs(base: str, flow_run_id: str) -> list[dict]:
    """Every log entry of a flow run (the API pages them, 200 at a time)."""
    entries: list[dict] = []
    while page := _api(
        base,
        "/logs/filter",
        {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200, "offset": len(entries)},
    ):
        entries += page
    return entries


def _wait_for(what: str, probe, timeout: float, procs: dict[str, tuple]):
    """Poll `probe` until it returns something truthy; fail with the logs if a process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, (proc, log) in procs.items():
            if proc.poll() is not None:
                pytest.fail(
                    f"{name} exited ({proc.returncode}) waiting for {what}:\n"
                    + log.read_text()[-4000:]
                )
        try:
            result = probe()
        except OSError:
            result = None
        if result:
            return result
        time.sleep(0.5)
    logs = "\n".join(f"--- {n}\n{log.read_text()[-3000:]}" for n, (_, log) in procs.items())
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")


def _deployment(base: str, name: str) -> dict | None:
    found = _api(base, "/deployments/filter", {"deployments": {"name": {"any_": [name]}}})
    return found[0] if found else None


def test_served_deployment_runs_on_a_real_server(tmp_path):
    port = _free_port()
    base = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        "PREFECT_HOME": str(tmp_path / "server-home"),
        "PREFECT_API_URL": base,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    env.pop("PYTEST_CURRENT_TEST", None)
    bin_dir = Path(sys.executable).parent
    # A time of day 12 hours away: the cron runs get scheduled but never fire during the test.
    hour = (dt.datetime.now(dt.timezone.utc).hour + 12) % 24
    cron = f"0 {hour} * * *"
    spec = write_reduced_spec(tmp_path)
    ws = tmp_path / "ws"
    procs: dict[str, tuple] = {}
    try:
        server_log = tmp_path / "server.log"
        procs["server"] = (
            _start(
                [
                    str(bin_dir / "prefect"),
                    "server",
                    "start",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                ],
                env,
                server_log,
            ),
            server_log,
        )
        _wait_for("the server's health check", lambda: _api(base, "/health"), 60, procs)

        serve_log = tmp_path / "serve.log"
        procs["mlora serve"] = (
            _start(
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
                ],
                env,
                serve_log,
            ),
            serve_log,
        )
        deployment = _wait_for(
            "the served deployment", lambda: _deployment(base, "reduced"), 60, procs
        )
        (schedule,) = deployment["schedules"]
        assert schedule["schedule"]["cron"] == cron and schedule["active"]
        assert deployment["parameters"]["spec_path"] == str(spec.resolve())

        # The server's scheduler turns the cron into scheduled runs (at `hour`, not now).
        def scheduled_runs():
            return _api(
                base,
                "/flow_runs/filter",
                {
                    "flow_runs": {
                        "deployment_id": {"any_": [deployment["id"]]},
                        "state": {"type": {"any_": ["SCHEDULED"]}},
                    }
                },
            )

        runs = _wait_for("the cron's scheduled runs", scheduled_runs, 30, procs)
        assert all(dt.datetime.fromisoformat(r["expected_start_time"]).hour == hour for r in runs)

        flow_run = _api(base, f"/deployments/{deployment['id']}/create_flow_run", {})

        # Meanwhile: prefect.yaml declares the same pipeline for a work pool.
        cli = str(bin_dir / "prefect")
        deploy_env = {**env, "PWD": str(REPO)}
        subprocess.run(
            [cli, "work-pool", "create", "mlora-process", "--type", "process"],
            cwd=REPO,
            env=deploy_env,
            check=True,
            capture_output=True,
            timeout=60,
        )
        deployed = subprocess.run(
            [cli, "--no-prompt", "deploy", "--all"],
            cwd=REPO,
            env=deploy_env,
            capture_output=True,
            text=True,
            timeout=90,
        )
        assert deployed.returncode == 0, deployed.stdout[-3000:] + deployed.stderr[-3000:]
        pooled = _deployment(base, "demo")
        assert pooled["work_pool_name"] == "mlora-process"
        assert pooled["entrypoint"] == "multilora_pipeline.flows.pipeline.pipeline_flow"
        assert pooled["schedules"][0]["schedule"]["cron"] == "0 3 * * *"
        assert pooled["pull_steps"] == [
            {"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}
        ]

        def finished():
            state = _api(base, f"/flow_runs/{flow_run['id']}")["state"]["type"]
            return state if state in {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"} else None

        assert _wait_for("the triggered run", finished, 150, procs) == "COMPLETED", (
            serve_log.read_text()[-4000:]
        )
        # The project's own lines (training progress, registry) reach the run's Prefect logs
        # (shipped in batches by a background thread: they may land after the final state).
        wanted = {"mlora.train", "mlora.registry", "mlora.pipeline"}  # pipeline: the gate line

        def project_loggers():
            names = {entry["name"] for entry in _run_logs(base, flow_run["id"])}
            return names if wanted <= names else None

        _wait_for("the project's log lines in Prefect's store", project_loggers, 30, procs)
    finally:
        for proc, _ in reversed(list(procs.values())):
            stop_process_group(proc)
    # The run did the real work in the served workspace: a registered champion.
    tracker = Tracker(Workspace.resolve(ws), "reduced")
    champion = version_by_alias(tracker, "mlora-reduced", CHAMPION)
    assert champion is not None and champion.tags["arm"] == "multilora"
    assert all(proc.poll() is not None for proc, _ in procs.values())
