"""Wall time of one spec run in process against the same spec through two work pools.

    .venv/bin/python benchmarks/team_setup.py                      # data_specs/demo_tiny.yaml
    .venv/bin/python benchmarks/team_setup.py --spec data_specs/demo.yaml

- `in_process`: `mlora run SPEC` in a fresh process and workspace (Prefect's temporary
  server, the workspace's SQLite MLflow store): what one machine does today.
- `two_pools`: the team setup of the README on this machine: `prefect server start`,
  `mlflow server --serve-artifacts`, the repo's prefect.yaml deployed on a "cpu" and a
  "gpu" process pool with one worker each, then one pipeline run in a fresh workspace, from
  its creation to Completed. Server and worker start-up is reported apart (`setup_s`): a
  team pays it once, not per run. The gpu worker runs one training run at a time by
  default (`--gpu-limit 1`: one GPU); `--gpu-limit 0` lets the arms train at once.

Both runs start from an empty workspace, so both do the data stages and score the base
model. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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

REPO = Path(__file__).resolve().parents[1]


def in_process(spec: Path, folder: Path) -> dict:
    start = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "multilora_pipeline.flows.cli",
            "--workspace",
            str(folder / "ws"),
            "run",
            str(spec),
            "--summary-json",
            str(folder / "summary.json"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "MLFLOW_TRACKING_URI": ""},
    )
    seconds = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(done.stdout[-3000:] + done.stderr[-3000:])
    summary = json.loads((folder / "summary.json").read_text())
    return {"wall_s": round(seconds, 1), "stage_seconds": summary["stage_seconds"]}


def two_pools(spec: Path, folder: Path, gpu_limit: int | None) -> dict:
    env, procs = prefect_env(folder), {}
    ws = folder / "ws"
    try:
        start = time.perf_counter()
        base = start_prefect_server(folder, env, procs)
        tracking = start_mlflow_server(folder, env, procs)
        worker_env = {**env, "MLORA_WORKSPACE": str(ws), "MLFLOW_TRACKING_URI": tracking}
        deploy_team_setup(folder, spec, "bench", "cpu", "gpu", env)
        start_worker("cpu", folder, worker_env, procs)
        start_worker("gpu", folder, worker_env, procs, limit=gpu_limit)
        deployment = find_deployment(base, "bench")
        setup = time.perf_counter() - start
        start = time.perf_counter()
        run = api(base, f"/deployments/{deployment['id']}/create_flow_run", {})
        state = wait_for("the pipeline run", lambda: finished(base, run["id"]), 3600, procs)
        seconds = time.perf_counter() - start
        if state != "COMPLETED":
            raise SystemExit(f"the pipeline run ended {state}: see {folder}")
        trainings = api(
            base,
            "/flow_runs/filter",
            {"flows": {"name": {"any_": ["mlora-train"]}}, "sort": "START_TIME_ASC"},
        )
        training_spans = [
            (r["start_time"], r["end_time"], round(r["total_run_time"], 1)) for r in trainings
        ]
    finally:
        for proc, _ in reversed(list(procs.values())):
            stop_process_group(proc)
    return {
        "setup_s": round(setup, 1),
        "wall_s": round(seconds, 1),
        "training_runs": [{"start": s, "end": e, "run_time_s": t} for s, e, t in training_spans],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--spec", default=str(REPO / "data_specs" / "demo_tiny.yaml"))
    parser.add_argument(
        "--gpu-limit",
        type=int,
        default=1,
        help="flow runs the gpu worker runs at once (1: one GPU; 0: no limit)",
    )
    args = parser.parse_args()
    spec = Path(args.spec).resolve()
    with tempfile.TemporaryDirectory(prefix="mlora-team-") as tmp:
        here, pooled = Path(tmp) / "in_process", Path(tmp) / "two_pools"
        here.mkdir()
        pooled.mkdir()
        result = {
            "spec": str(spec.relative_to(REPO)) if spec.is_relative_to(REPO) else str(spec),
            "cpu_count": os.cpu_count(),
            "in_process": in_process(spec, here),
            "gpu_worker_limit": args.gpu_limit or None,
            "two_pools": two_pools(spec, pooled, args.gpu_limit or None),
        }
    result["two_pools_over_in_process"] = round(
        result["two_pools"]["wall_s"] / result["in_process"]["wall_s"], 2
    )
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
