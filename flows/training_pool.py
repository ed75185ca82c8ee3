"""Training on a Prefect work pool: the pipeline's side of the `mlora-train` deployment.

    prepare_training_pool (once, before the data stages):
      the deployment mlora-train/<pool> found, or created on the pool (`prefect.yaml` and
                                        `mlora serve --training-pool` declare it too)
      the zombie automation             found, or created once per Prefect server
    train_on_pool (per training run):
      an unfinished child of the same run key (a killed pipeline run's)? wait on it
      else run_deployment(...): a child flow run of the pipeline's
      wait, with a line a minute; stopped here (Ctrl-C, a failure) -> the child is cancelled
      not Completed -> the pipeline fails with the child's state and message

A worker killed mid-run (a lost machine, SIGKILL) leaves its flow run Running for good:
nothing is left to report its end. Prefect's answer is heartbeats plus an automation that
marks a run whose heartbeats stop Crashed ("detect zombie flows" in Prefect's docs). The
deployment turns heartbeats on for its runs and tags them; the automation watches that tag
only. The pipeline then fails with the crash, and the next `mlora run` resumes the
training from its last checkpoint in the shared workspace.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from datetime import timedelta
from uuid import UUID

import httpx
from prefect.deployments import run_deployment
from prefect.deployments.runner import RunnerDeployment
from prefect.exceptions import ObjectNotFound
from prefect.settings import get_current_settings
from prefect.types.entrypoint import EntrypointType

from multilora_pipeline.data_specs.errors import TrainingError
from multilora_pipeline.flows.temporary_server import TEMPORARY_API_ENV
from multilora_pipeline.flows.training import TRAIN_FLOW, training_flow, training_parameters
from multilora_pipeline.models.content import content_key
from multilora_pipeline.tasks.run_context import RunContext
from multilora_pipeline.tasks.training.arm_runs import ArmRun

log = logging.getLogger("mlora.pipeline")

TRAINING_TAG = "mlora-training"
HEARTBEAT_SECONDS = 30
"""Heartbeat period of a training flow run (Prefect's minimum)."""
MISSED_HEARTBEATS = 3
"""Heartbeats a run may miss before the automation marks it Crashed (~90 s of silence)."""
ZOMBIE_AUTOMATION = "mlora: crash training runs whose heartbeats stopped"
# The run's own processes need these from their start (tasks/workspace.py: activate).
RUN_ENV = {
    "PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(HEARTBEAT_SECONDS),
    "PREFECT_LOGGING_EXTRA_LOGGERS": "mlora",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def deployment_name(pool: str) -> str:
    """The training deployment on `pool`: named after the pool, one per pool."""
    return f"{TRAIN_FLOW}/{pool}"


def training_deployment(pool: str) -> RunnerDeployment:
    """The `mlora-train` flow as a deployment on work pool `pool` (not yet registered)."""
    return training_flow.to_deployment(
        name=pool,
        work_pool_name=pool,
        job_variables={"env": RUN_ENV},
        tags=["mlora", TRAINING_TAG],
        description="One training run of one arm (the mlora pipeline calls it per run).",
        # Module path, not file path: any worker where the project is installed can load it.
        entrypoint_type=EntrypointType.MODULE_PATH,
    )


def ensure_training_deployment(pool: str) -> UUID:
    """The id of mlora-train/<pool>, registering it when the server lacks it; one error
    when there is no server to register it with, or no such pool."""
    from prefect.client.orchestration import get_client

    api = get_current_settings().api.url
    if not api or api == os.environ.get(TEMPORARY_API_ENV):
        raise TrainingError(
            f"training on work pool {pool!r} needs a Prefect server: a temporary one lives "
            "only as long as this command, and a worker elsewhere cannot reach it",
            where="training.work_pool (or --training-pool)",
            fix="start `prefect server start` and export PREFECT_API_URL, or train in process "
            "(no work pool)",
        )
    with get_client(sync_client=True) as client:
        try:
            client.read_work_pool(pool)
        except httpx.TransportError as err:  # nothing listens there, or the network is down
            raise TrainingError(
                f"the Prefect server at PREFECT_API_URL={api} does not answer ({err})",
                where="training.work_pool (or --training-pool)",
                fix="start it (prefect server start) or fix PREFECT_API_URL",
            ) from None
        except ObjectNotFound:
            raise TrainingError(
                f"work pool {pool!r} does not exist on the Prefect server {api}",
                where="training.work_pool (or --training-pool)",
                fix=f"create it (prefect work-pool create {pool} --type process) and start a "
                f"worker on the GPU machine (prefect worker start --pool {pool})",
            ) from None
        try:
            found = client.read_deployment_by_name(deployment_name(pool))
        except ObjectNotFound:
            found = None
    if found is not None:
        env = (found.job_variables or {}).get("env") or {}
        if "PREFECT_FLOWS_HEARTBEAT_FREQUENCY" not in env:
            log.warning(
                "deployment %s sets no PREFECT_FLOWS_HEARTBEAT_FREQUENCY in its env: its runs "
                "beat every 180 s (Prefect's default), so a dead worker's run is marked "
                "Crashed only after 9 min; redeploy it from prefect.yaml",
                deployment_name(pool),
            )
        return found.id
    log.info("registering deployment %s on work pool %s", deployment_name(pool), pool)
    return training_deployment(pool).apply()


def ensure_zombie_automation() -> None:
    """Create, once per server, the automation that marks training runs Crashed when their
    heartbeats stop (module docstring)."""
    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    try:
        Automation.read(name=ZOMBIE_AUTOMATION)
        return
    except ValueError:  # not found
        pass
    heartbeat = "prefect.flow-run.heartbeat"
    ends = {f"prefect.flow-run.{s}" for s in ("Completed", "Failed", "Cancelled", "Crashed")}
    Automation(
        name=ZOMBIE_AUTOMATION,
        description=f"Training flow runs (tag {TRAINING_TAG}) beat every {HEARTBEAT_SECONDS}s; "
        f"{MISSED_HEARTBEATS} missed beats mean their worker died.",
        trigger=EventTrigger(
            after={heartbeat},
            expect={heartbeat, *ends},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            match_related=ResourceSpecification(
                {
                    "prefect.resource.role": "tag",
                    "prefect.resource.id": f"prefect.tag.{TRAINING_TAG}",
                }
            ),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=HEARTBEAT_SECONDS * MISSED_HEARTBEATS),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"no heartbeat for {HEARTBEAT_SECONDS * MISSED_HEARTBEATS}s: the "
                "worker or its machine died mid-run",
            )
        ],
    ).create()
    log.info("created the Prefect automation %r", ZOMBIE_AUTOMATION)


def prepare_training_pool(pool: str) -> None:
    """What training on `pool` needs on the server: its deployment and the automation. Run
    once per pipeline run, before any work, so a missing server or pool fails at once."""
    ensure_training_deployment(pool)
    ensure_zombie_automation()


def run_tag(run_key: str) -> str:
    """The tag of every training flow run of one run key: a rerun finds a child an earlier
    pipeline run left running, and waits on it instead of starting a second one."""
    return f"mlora-run:{content_key(run_key)[:16]}"


def train_on_pool(
    pool: str, parameters: dict, label: str, stop: threading.Event | None = None
) -> None:
    """Run one training run as a child flow run of mlora-train/<pool> (`prepare_training_pool`
    first) and wait for it, saying every minute what it waits on; a run that does not
    complete fails this one with its state and message. Interrupted or failed here, or
    `stop` set (another arm failed), the child is cancelled: no training goes on that
    nobody waits for."""
    from prefect.client.orchestration import get_client

    tag = run_tag(parameters["run_key"])
    with get_client(sync_client=True) as client:
        child = _unfinished_child(client, tag)
        if child is not None:
            log.info(
                "[%s] waiting on training run %s, still %s from an earlier pipeline run",
                label,
                child.name,
                child.state.name if child.state else "unknown",
            )
        else:
            _warn_without_workers(client, pool, label)
            child = run_deployment(
                deployment_name(pool),
                parameters=parameters,
                flow_run_name=label,
                tags=[TRAINING_TAG, tag],
                timeout=0,  # created: waited on below
            )
            log.info("[%s] training on work pool %s: flow run %s", label, pool, child.name)
        try:
            state = _wait(client, child.id, pool, label, stop or threading.Event())
        except BaseException:
            _cancel(client, child.id, label)
            raise
    if not state.is_completed():
        raise TrainingError(
            f"training flow run {child.name!r} ({child.id}) on work pool {pool!r} ended "
            f"{state.name}" + (f": {state.message}" if state.message else ""),
            where=f"arm {label}",
            fix="see that flow run's logs in the Prefect UI; then rerun `mlora run`: training "
            "resumes from its last checkpoint",
        )


def pool_trainer(pool: str, ctx: RunContext):
    """`ctx.train_elsewhere` for `pool`: each arm run becomes a flow run of mlora-train/<pool>,
    waited on until it is done (or `ctx.stop` is set)."""

    def train(arm_run: ArmRun, run_id: str) -> None:
        parameters = training_parameters(
            ctx.ws,
            ctx.spec,
            ctx.data.mixture_id,
            ctx.base,
            arm_run,
            run_id,
            ctx.lineage.prompt_format,
        )
        train_on_pool(pool, parameters, arm_run.run_name(ctx.spec), ctx.stop)

    return train


POLL_SECONDS = 5
SAY_EVERY_SECONDS = 60


def _wait(client, flow_run_id, pool: str, label: str, stop: threading.Event):
    """The child's final state; a line every minute while it is not Running (queued, late:
    no worker took it) or runs. Raises TrainingError once `stop` is set."""
    started, said = time.monotonic(), time.monotonic()
    while True:
        if stop.is_set():
            raise TrainingError(
                f"stopped waiting for training flow run {flow_run_id}: another arm failed",
                where=f"arm {label}",
                fix="see the other arm's error; a rerun resumes both from their checkpoints",
            )
        state = client.read_flow_run(flow_run_id).state
        if state is not None and state.is_final():
            return state
        if time.monotonic() - said >= SAY_EVERY_SECONDS:
            said = time.monotonic()
            waited = f"{(said - started) / 60:.0f} min"
            name = state.name if state else "no state"
            hint = "" if name == "Running" else f": no worker of pool {pool!r} has taken it yet"
            log.info("[%s] training run %s after %s%s", label, name, waited, hint)
        stop.wait(POLL_SECONDS)


def _unfinished_child(client, tag: str):
    """A training flow run of this run key that is not over (an earlier pipeline run's)."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
    )
    from prefect.client.schemas.objects import StateType

    open_states = [StateType.SCHEDULED, StateType.PENDING, StateType.RUNNING, StateType.PAUSED]
    runs = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(
            tags=FlowRunFilterTags(all_=[tag]),
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=open_states)),
        ),
        limit=1,
    )
    return runs[0] if runs else None


def _warn_without_workers(client, pool: str, label: str) -> None:
    """A pool without an online worker queues the run until one starts: said at once."""
    from prefect.client.schemas.objects import WorkerStatus

    workers = client.read_workers_for_work_pool(pool)
    if not any(w.status == WorkerStatus.ONLINE for w in workers):
        log.warning(
            "[%s] no worker of work pool %r is online: the training run waits until one "
            "starts (prefect worker start --pool %s)",
            label,
            pool,
            pool,
        )


def _cancel(client, flow_run_id, label: str) -> None:
    """Stop the child: Cancelled if no worker took it yet, else Cancelling (its worker then
    kills the process); a child already over stays as it is."""
    from prefect.states import Cancelled, Cancelling

    try:
        state = client.read_flow_run(flow_run_id).state
        if not state.is_final():
            message = "its pipeline run stopped waiting for it"
            stopped = (
                Cancelled(message=message) if state.is_scheduled() else Cancelling(message=message)
            )
            client.set_flow_run_state(flow_run_id, stopped, force=True)
            log.warning("[%s] cancelled its training flow run %s", label, flow_run_id)
    except Exception:  # the server may be what failed: the automation still ends the run
        log.warning("[%s] could not cancel training flow run %s", label, flow_run_id)
