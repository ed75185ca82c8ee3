"""The `mlora-train` flow: one training run of one arm, as a Prefect deployment of its own.

When a spec (training.work_pool) or `mlora run --training-pool` names a work pool, the
pipeline hands each training run to this flow on that pool (flows/training_pool.py) and
waits; a worker of the pool (a GPU machine) executes it. The worker needs three things:

- the project installed (the same code version as the pipeline: the run key says so);
- the pipeline's workspace on shared storage, at $MLORA_WORKSPACE (any mount point: every
  path the pipeline passes is relative to the workspace root);
- the MLflow tracking URI, $MLFLOW_TRACKING_URI, the same as the pipeline's (a tracking
  server once the workers run on other machines than the pipeline; checked first).

The flow writes what the in-process train stage writes: checkpoints, the adapter and
result.json in the arm's folder of the workspace, and per-step and system metrics in the
MLflow run the pipeline opened for it. A rerun resumes from the last checkpoint, as in
process. The pipeline logs the final metrics and the adapter once the flow run completed.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prefect import flow

from multilora_pipeline.data_specs.errors import TrainingError
from multilora_pipeline.data_specs.schema import ArmSpec, PipelineSpec, TrainingSpec
from multilora_pipeline.tasks.data.mixture import load_mixture
from multilora_pipeline.tasks.identity import run_key as key_of
from multilora_pipeline.tasks.registry.tracking import Tracker
from multilora_pipeline.tasks.registry.tracking import code_version as current_code_version
from multilora_pipeline.tasks.training.arm_runs import ArmRun, arm_dir, train_here
from multilora_pipeline.tasks.workspace import ENV_VAR, Workspace

log = logging.getLogger("mlora.train")

TRAIN_FLOW = "mlora-train"


def training_parameters(
    ws: Workspace,
    spec: PipelineSpec,
    mixture_id: str,
    base: str,
    run: ArmRun,
    run_id: str,
    prompt_format: str,
) -> dict:
    """The deployment's parameters for `run`: small, JSON, and every
    path relative to the workspace root."""
    return {
        "spec": spec.params(),  # URLs redacted: flow-run parameters are read by everyone
        "tracking": _tracking(ws),
        "mixture_id": mixture_id,
        "arm": run.arm.model_dump(mode="json"),
        "training": run.training.model_dump(mode="json"),
        "probe": run.probe,
        "base_model": _relative_to(ws, base),
        "prompt_format": prompt_format,
        "mlflow_run_id": run_id,
        "run_key": key_of(spec, mixture_id, run),
        "code_version": current_code_version(),
    }


def _tracking(ws: Workspace) -> str:
    """Where runs are tracked, as the pipeline and its worker must agree on it: the server's
    URL, or "workspace" for the workspace's own store."""
    return ws.tracking_server or "workspace"


def check_same_tracking(ws: Workspace, pipeline_tracking: str) -> None:
    """The worker must log into the MLflow store the pipeline opened the run in."""
    if _tracking(ws) != pipeline_tracking:
        ours = _tracking(ws)
        raise TrainingError(
            f"this worker tracks into {ours!r} (MLFLOW_TRACKING_URI), the pipeline into "
            f"{pipeline_tracking!r}: the run it logs into is not in this worker's store",
            where="the mlora-train worker",
            fix="export the pipeline's MLFLOW_TRACKING_URI in the worker's environment"
            if pipeline_tracking != "workspace"
            else "unset MLFLOW_TRACKING_URI on the worker (the pipeline tracks in the workspace)",
        )


def _relative_to(ws: Workspace, base: str) -> str:
    """A base model the pipeline built or converted in the workspace, relative to its root;
    a hub id (or a folder outside the workspace) as given."""
    path = Path(base)
    return (
        str(path.relative_to(ws.root))
        if path.is_absolute() and path.is_relative_to(ws.root)
        else base
    )


def worker_base_model(ws: Workspace, base_model: str) -> str:
    """The base model as this worker finds it: a workspace-relative folder under its own
    mount of the workspace, a hub id as is; an absolute folder must exist here too."""
    inside = ws.root / base_model
    if not Path(base_model).is_absolute() and inside.exists():
        return str(inside)
    if Path(base_model).is_absolute() and not Path(base_model).exists():
        raise TrainingError(
            f"the base model folder {base_model} is not on this worker",
            where="mlora-train parameter base_model",
            fix="put the base model in the shared workspace, or name it by hub id in the spec",
        )
    return base_model


def reachable_workspace(mixture_id: str):
    """This worker's workspace and the run's mixture in it, or one error saying what the
    worker lacks: the workspace (not mounted, or $MLORA_WORKSPACE unset) or the mixture."""
    ws = Workspace.resolve()
    fix = (
        f"mount the pipeline's workspace (shared storage) on this worker and export {ENV_VAR} "
        "to its path in the worker's environment, then rerun `mlora run`: training resumes "
        "from its last checkpoint"
    )
    if not ws.catalog_path.is_file():
        raise TrainingError(
            f"this worker sees no pipeline workspace at {ws.root} (no catalog.duckdb)",
            where=f"the mlora-train worker (${ENV_VAR}={ws.root})",
            fix=fix,
        )
    folder = ws.stage_dir("mixture", mixture_id)
    if not (folder / "train" / "manifest.json").is_file():
        raise TrainingError(
            f"mixture {mixture_id} is not in the workspace this worker sees ({folder} is "
            "missing or incomplete)",
            where=f"the mlora-train worker (${ENV_VAR}={ws.root})",
            fix=fix,
        )
    return ws, load_mixture(folder)


@flow(name=TRAIN_FLOW, flow_run_name="{arm[name]}-seed{training[seed]}", log_prints=True)
def training_flow(
    spec: dict,
    tracking: str,
    mixture_id: str,
    arm: dict,
    training: dict,
    probe: bool,
    base_model: str,
    prompt_format: str,
    mlflow_run_id: str,
    run_key: str,
    code_version: str,
) -> dict:
    """Train one run of one arm in this worker's view of the workspace (module docstring);
    returns where its result is, relative to the workspace."""
    ws, mixture = reachable_workspace(mixture_id)
    check_same_tracking(ws, tracking)
    ws.activate()  # HF caches in the workspace; the tracking URI the worker exported wins
    pipeline_spec = PipelineSpec.model_validate(spec)
    run = ArmRun(ArmSpec.model_validate(arm), TrainingSpec.model_validate(training), probe)
    if key_of(pipeline_spec, mixture_id, run) != run_key:
        raise TrainingError(
            f"this worker's code (version {current_code_version()}) computes another run "
            f"key than the pipeline's (version {code_version}) for the same run: it would "
            "train into another folder than the pipeline reads",
            where="the mlora-train worker",
            fix=f"install the pipeline's code version ({code_version}) on the worker",
        )
    tracker = Tracker(ws, pipeline_spec.name)
    result = train_here(
        ws,
        tracker,
        pipeline_spec,
        mixture.train_dir,
        mixture.validation_path,
        worker_base_model(ws, base_model),
        run,
        mixture_id,
        prompt_format,
        mlflow_run_id,
    )
    log.info("[%s] trained %d steps: result in %s", run.arm.name, result.steps, result.output_dir)
    done = arm_dir(ws, pipeline_spec, mixture_id, run)
    return {"result": str(done.relative_to(ws.root)), "steps": result.steps}
