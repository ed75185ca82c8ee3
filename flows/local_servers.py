"""Real Prefect and MLflow servers and process workers on 127.0.0.1: the one-machine team
set-up of the README, for the tests and the benchmarks of a repository checkout.

Each process starts in a session of its own, so `stop_process_group` takes its children
along: uvicorn, flow-run processes, MLflow's workers. Not flows/temporary_server.py, the
one-command server `mlora` starts for itself: that one is Prefect's ephemeral app (no
scheduler, no automations) and a single process; these are what a team runs, and the
tests need their scheduler, their zombie automation and a worker per pool.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # the checkout: its prefect.yaml, its cwd
BIN = Path(sys.executable).parent


class ServerError(RuntimeError):
    """A process died or a wait timed out; the message holds the processes' log tails."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(cmd: list[str], env: dict, log: Path, cwd: Path = REPO) -> subprocess.Popen:
    """`cmd` in a session of its own (stopping it signals its children too), logging to `log`."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop_process_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM (Prefect and MLflow shut down gracefully on it), wait, then SIGKILL what is
    left, including children that outlived their parent (MLflow's workers)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def api(base: str, path: str, body: dict | None = None):
    """GET (no body) or POST a JSON request to a Prefect server's REST API."""
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


def run_logs(base: str, flow_run_id: str) -> list[dict]:
    """Every log entry of a flow run (the API pages them, 200 at a time)."""
    entries: list[dict] = []
    while page := api(
        base,
        "/logs/filter",
        {"logs": {"flow_run_id": {"any_": [flow_run_id]}}, "limit": 200, "offset": len(entries)},
    ):
        entries += page
    return entries


def wait_for(what: str, probe, timeout: float, procs: dict[str, tuple], interval: float = 0.5):
    """Poll `probe` until it returns something truthy; fail with the logs if a process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, (proc, log) in procs.items():
            if proc.poll() is not None:
                raise ServerError(
                    f"{name} exited ({proc.returncode}) waiting for {what}:\n"
                    + log.read_text()[-4000:]
                )
        try:
            result = probe()
        except OSError:
            result = None
        if result:
            return result
        time.sleep(interval)
    logs = "\n".join(f"--- {n}\n{log.read_text()[-3000:]}" for n, (_, log) in procs.items())
    raise ServerError(f"timed out after {timeout:.0f}s waiting for {what}\n{logs}")


def find_deployment(base: str, name: str) -> dict | None:
    found = api(base, "/deployments/filter", {"deployments": {"name": {"any_": [name]}}})
    return found[0] if found else None


def flow_run_state(base: str, flow_run_id: str) -> str:
    return api(base, f"/flow_runs/{flow_run_id}")["state"]["type"]


FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def finished(base: str, flow_run_id: str):
    """A probe for `wait_for`: the run's final state type, or None while it runs."""
    state = flow_run_state(base, flow_run_id)
    return state if state in FINAL else None


def prefect_env(folder: Path) -> dict:
    """The environment of every process that talks to a local Prefect server (on a free
    port, its home in `folder`)."""
    port = free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(folder / "prefect-home"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PYTHONUNBUFFERED": "1",
    }
    env.pop("PYTEST_CURRENT_TEST", None)
    return env


def start_prefect_server(folder: Path, env: dict, procs: dict) -> str:
    """`prefect server start` where env's PREFECT_API_URL points; returns that URL once the
    server is healthy."""
    base = env["PREFECT_API_URL"]
    port = urllib.parse.urlsplit(base).port
    log = folder / "prefect-server.log"
    procs["prefect server"] = (
        start(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env,
            log,
        ),
        log,
    )
    wait_for("the Prefect server's health check", lambda: api(base, "/health"), 90, procs)
    return base


def start_mlflow_server(folder: Path, env: dict, procs: dict) -> str:
    """`mlflow server` with proxied artifacts (--serve-artifacts), its store and artifacts in
    `folder`; returns its URL once it answers."""
    port = free_port()
    log = folder / "mlflow-server.log"
    procs["mlflow server"] = (
        start(
            [
                str(BIN / "mlflow"),
                "server",
                "--backend-store-uri",
                f"sqlite:///{folder / 'mlflow-server.db'}",
                "--serve-artifacts",
                "--artifacts-destination",
                str(folder / "mlflow-server-artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            env,
            log,
        ),
        log,
    )
    url = f"http://127.0.0.1:{port}"

    def healthy():
        with urllib.request.urlopen(url + "/health", timeout=5) as response:
            return response.status == 200

    wait_for("the MLflow server's health check", healthy, 90, procs)
    return url


def start_worker(pool: str, folder: Path, env: dict, procs: dict, limit: int | None = None) -> None:
    """A process worker on `pool` that polls every second (the default 10 s is for idle
    production servers, not a test or benchmark that waits on it), running at most `limit`
    flow runs at once (None: no limit)."""
    log = folder / f"worker-{pool}.log"
    with_log = log if not log.exists() else folder / f"worker-{pool}-{len(procs)}.log"
    procs[f"worker {pool}"] = (
        start(
            [str(BIN / "prefect"), "worker", "start", "--pool", pool, "--type", "process"]
            + ([] if limit is None else ["--limit", str(limit)]),
            {**env, "PREFECT_WORKER_QUERY_SECONDS": "1", "PREFECT_WORKER_PREFETCH_SECONDS": "1"},
            with_log,
        ),
        with_log,
    )


def prefect_cli(*args: str, env: dict) -> None:
    """`prefect ARGS` from the repo root, without prompts; fails with its output."""
    done = subprocess.run(
        [str(BIN / "prefect"), "--no-prompt", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode:
        raise ServerError(f"prefect {' '.join(args)}: {done.stdout[-3000:]}{done.stderr[-3000:]}")


def deploy_team_setup(
    folder: Path,
    spec: Path,
    name: str,
    pipeline_pool: str,
    training_pool: str,
    env: dict,
) -> None:
    """Both pools, and both deployments of the repo's prefect.yaml on them, with this spec
    and deployment name (and no schedule): `prefect deploy` as a user runs it. The workers'
    $MLORA_WORKSPACE is the workspace."""
    import yaml

    project = yaml.safe_load((REPO / "prefect.yaml").read_text())
    pipeline, training = project["deployments"]
    pipeline.update(
        name=name,
        # The workspace as the README has it: each worker's $MLORA_WORKSPACE.
        parameters={**pipeline["parameters"], "spec_path": str(spec)},
        schedules=[],
        pull=[{"prefect.deployments.steps.set_working_directory": {"directory": str(REPO)}}],
    )
    pipeline["parameters"]["training_pool"] = training_pool
    pipeline["work_pool"]["name"] = pipeline_pool
    training["name"] = training_pool
    training["work_pool"]["name"] = training_pool
    path = folder / "prefect.yaml"
    path.write_text(yaml.safe_dump(project, sort_keys=False))
    for pool in (pipeline_pool, training_pool):
        prefect_cli("work-pool", "create", pool, "--type", "process", env=env)
    prefect_cli("deploy", "--all", "--prefect-file", str(path), env=env)
