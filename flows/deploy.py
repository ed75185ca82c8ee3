"""Schedules: the pipeline flow as a Prefect deployment (`mlora serve SPEC --cron ...`).

Two ways to run it (the README shows both):

- embedded: no Prefect server. `mlora serve` registers the deployment with
  the temporary API it starts itself and executes runs that someone triggers
  (`prefect deployment run mlora-pipeline/<spec>` with the same PREFECT_HOME).
  Cron schedules do not fire: the scheduler runs only inside a real server.
- with a server: `prefect server start`, then `PREFECT_API_URL=http://127.0.0.1:4200/api
  mlora serve ...`; the server's scheduler creates a run at every cron tick and the
  serving process executes it. `prefect.yaml` declares the same deployment for
  a work pool instead (`prefect deploy`, then `prefect worker start`).

The deployment's entrypoint is the module path `multilora_pipeline.flows.pipeline.pipeline_flow`,
so any process where the project is installed can execute it, whatever its
working directory. With a training pool (`--training-pool`, or the spec's
training.work_pool) the training deployment `mlora-train/<pool>` is declared on that pool
as well (flows/training_pool.py), and served runs send their training there.
"""

from __future__ import annotations

import logging
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prefect import serve
from prefect.deployments.runner import RunnerDeployment
from prefect.schedules import Cron
from prefect.settings import get_current_settings
from prefect.types.entrypoint import EntrypointType

from multilora_pipeline.data_specs.errors import PipelineError
from multilora_pipeline.data_specs.schema import load_spec
from multilora_pipeline.flows.pipeline import pipeline_flow
from multilora_pipeline.flows.training_pool import prepare_training_pool
from multilora_pipeline.tasks.workspace import Workspace

log = logging.getLogger("mlora.deploy")

# 03:00 every night: the demo's data rarely changes faster than daily.
DEFAULT_CRON = "0 3 * * *"


def build_deployment(
    spec_path: str | Path,
    workspace_root: str | Path | None = None,
    *,
    cron: str = DEFAULT_CRON,
    name: str | None = None,
    timezone: str | None = None,
    training_pool: str | None = None,
) -> RunnerDeployment:
    """The pipeline on `spec_path` as a deployment with a cron schedule (not yet registered).

    The spec is validated now, so a bad spec fails before anything is served;
    the deployment is named after the spec unless `name` is given. `training_pool` is
    passed to every run (training on that work pool).
    """
    spec, _ = load_spec(spec_path)
    _check_timezone(timezone)
    try:
        schedule = Cron(cron, timezone=timezone)
    except ValueError as err:
        raise PipelineError(
            f"invalid cron schedule {cron!r} ({err})",
            where="--cron",
            fix='give five fields: minute hour day-of-month month day-of-week, e.g. "0 3 * * *"',
        ) from None
    workspace = Workspace.resolve(workspace_root)
    parameters = {
        "spec_path": str(Path(spec_path).resolve()),
        "workspace_root": str(workspace.root),
    }
    if training_pool:
        parameters["training_pool"] = training_pool
    return pipeline_flow.to_deployment(
        name=name or spec.name,
        schedules=[schedule],
        parameters=parameters,
        description=spec.description or f"mlora pipeline on {spec.name}",
        tags=["mlora", spec.name],
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def _check_timezone(timezone: str | None) -> None:
    if timezone is None:
        return
    try:
        ZoneInfo(timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise PipelineError(
            f"unknown timezone {timezone!r}",
            where="--timezone",
            fix='give an IANA name such as "Europe/Berlin" or "America/New_York" (default UTC)',
        ) from None


def serve_pipeline(
    spec_path: str | Path,
    workspace_root: str | Path | None = None,
    *,
    cron: str = DEFAULT_CRON,
    name: str | None = None,
    timezone: str | None = None,
    limit: int = 1,
    training_pool: str | None = None,
) -> None:
    """Register the deployment and execute its runs until SIGTERM / Ctrl-C (blocks).

    `limit` runs at most that many flow runs at once: 1 by default, because
    runs of one spec compete for the same cores or GPU and the same workspace. With
    `training_pool` (else the spec's training.work_pool), the training deployment is
    declared on that pool too, and its workers train what these runs send them.
    """
    deployment = build_deployment(
        spec_path,
        workspace_root,
        cron=cron,
        name=name,
        timezone=timezone,
        training_pool=training_pool,
    )
    pool = training_pool or load_spec(spec_path)[0].training.work_pool
    if pool:
        prepare_training_pool(pool)
    if not get_current_settings().api.url:
        log.warning(
            "no PREFECT_API_URL: serving on Prefect's temporary API, where the cron %r never "
            "fires; trigger runs with `prefect deployment run mlora-pipeline/%s` (same "
            "PREFECT_HOME), or start `prefect server start` and export PREFECT_API_URL",
            cron,
            deployment.name,
        )
    serve(deployment, limit=limit)
