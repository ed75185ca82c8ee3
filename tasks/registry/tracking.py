"""MLflow: the one module that talks to the tracking store (runs, artifacts, registered
models, versions and aliases); the rest of the pipeline goes through `Tracker`.

Layout in MLflow: one experiment per spec, one parent run per pipeline run,
one child run per arm. Every call names its run id explicitly (no reliance
on MLflow's thread-local "active run"), so Prefect may run tasks on any
thread. A child run is keyed by (spec hash, mixture id, arm): a rerun or a
resume after a crash finds and continues the same run instead of adding a
duplicate.
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from contextlib import contextmanager
from functools import cache
from pathlib import Path

import mlflow
from mlflow import MlflowClient
from mlflow.entities import RunStatus
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from mlflow.models.model import ModelInfo
from mlflow.tracking.context.registry import resolve_tags as resolve_context_tags
from mlflow.utils.mlflow_tags import MLFLOW_LOGGED_ARTIFACTS
from transformers import TrainerCallback

from multilora_pipeline.data_specs.errors import RegistryError
from multilora_pipeline.tasks.stores import check_tracking_store
from multilora_pipeline.tasks.workspace import Workspace

RUN_KEY_TAG = "mlora.run_key"
# MLflow caps a param value at 6000 characters; longer values are cut with a marker.
MAX_PARAM_CHARS = 6000


def flatten(config: dict, prefix: str = "") -> dict[str, str]:
    """Nested config -> {'a.b.c': 'value'}; lists of scalars as JSON, lists of dicts by index."""
    flat: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value):
                flat.update(flatten(item, f"{name}.{item.get('name', i)}."))
        else:
            text = value if isinstance(value, str) else json.dumps(value)
            flat[name] = (
                text if len(text) <= MAX_PARAM_CHARS else text[: MAX_PARAM_CHARS - 3] + "..."
            )
    return flat


@cache
def code_version() -> str:
    """Git commit of the code that ran (with +dirty), or the package version outside a checkout."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return version("multilora-pipeline")
        except PackageNotFoundError:
            return "unknown"


class Tracker:
    """MLflow experiment for one spec: in the workspace's SQLite store and artifact folder,
    or on the tracking server `Workspace.tracking_server` names (artifacts proxied by it:
    `mlflow server --serve-artifacts`)."""

    def __init__(self, workspace: Workspace, experiment: str):
        self.workspace = workspace
        self.uri = workspace.tracking_uri
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        check_tracking_store(workspace)
        # The store is created (and migrated) on first use: one process at a time.
        with workspace.exclusive("mlflow"), _store_errors(workspace):
            self.client = MlflowClient(self.uri, self.uri)
            found = self.client.get_experiment_by_name(experiment)
            if found is None:
                # A server stores artifacts where it was told to (its proxy's destination).
                location = (
                    None
                    if workspace.tracking_server
                    else (workspace.artifacts_dir / experiment).as_uri()
                )
                self.experiment_id = self.client.create_experiment(
                    experiment, artifact_location=location
                )
            else:
                self.experiment_id = found.experiment_id

    # runs -----------------------------------------------------------------
    def start_parent(self, run_name: str, tags: dict[str, str], params: dict) -> str:
        run = self.client.create_run(
            self.experiment_id, run_name=run_name, tags={**tags, "mlora.role": "pipeline"}
        )
        self.log_params(run.info.run_id, params)
        return run.info.run_id

    def child_run(
        self, parent_id: str, run_key: str, run_name: str, tags: dict[str, str]
    ) -> tuple[str, bool]:
        """The arm's run: (run_id, finished_before). Reopens an unfinished one after a crash."""
        existing = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.`{RUN_KEY_TAG}` = '{run_key}'",
            order_by=["attributes.start_time DESC"],
            max_results=1,
        )
        if existing:
            run = existing[0]
            finished = run.info.status == RunStatus.to_string(RunStatus.FINISHED)
            if not finished:
                self._adopt(run, parent_id)
            return run.info.run_id, finished
        run = self.client.create_run(
            self.experiment_id,
            run_name=run_name,
            tags={
                **tags,
                RUN_KEY_TAG: run_key,
                "mlflow.parentRunId": parent_id,
                "mlora.role": "arm",
            },
        )
        return run.info.run_id, False

    def _adopt(self, run, parent_id: str) -> None:
        """Continue an interrupted arm run under the pipeline run that resumes it.

        Its old parent died with the process that was killed; it is marked KILLED
        so the UI shows no pipeline run as forever RUNNING.
        """
        old_parent = run.data.tags.get("mlflow.parentRunId")
        if old_parent and old_parent != parent_id:
            previous = self.client.get_run(old_parent)
            if previous.info.status == RunStatus.to_string(RunStatus.RUNNING):
                self.client.set_terminated(old_parent, status="KILLED")
            self.client.set_tag(run.info.run_id, "mlflow.parentRunId", parent_id)
            self.client.set_tag(run.info.run_id, "mlora.resumed_from_parent", old_parent)
        self.client.update_run(run.info.run_id, status="RUNNING")

    def fail_unfinished_children(self, parent_id: str) -> None:
        """Mark the arm runs a failed pipeline run left RUNNING as FAILED (a rerun resumes them)."""
        children = self.client.search_runs(
            [self.experiment_id],
            filter_string=f"tags.mlflow.parentRunId = '{parent_id}' and attributes.status = 'RUNNING'",
        )
        for run in children:
            self.client.set_terminated(run.info.run_id, status="FAILED")

    def finish(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    # logging ----------------------------------------------------------------
    def log_params(self, run_id: str, params: dict) -> None:
        flat = flatten(params)
        existing = self.client.get_run(run_id).data.params
        # Params are immutable in MLflow: a resumed run only adds what it lacks.
        new = [mlflow.entities.Param(k, v) for k, v in flat.items() if k not in existing]
        for i in range(0, len(new), 100):  # the store accepts at most 100 params per batch
            self.client.log_batch(run_id, params=new[i : i + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int | None = None) -> None:
        import time

        now = int(time.time() * 1000)
        batch = [
            mlflow.entities.Metric(k, float(v), now, step or 0)
            for k, v in metrics.items()
            if v is not None
        ]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def set_tags(self, run_id: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_tag(run_id, key, str(value))

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(run_id, str(path), artifact_path)

    def log_text(self, run_id: str, text: str, artifact_file: str) -> None:
        self.client.log_text(run_id, text, artifact_file)

    def log_figure(self, run_id: str, figure, artifact_file: str) -> None:
        self.client.log_figure(run_id, figure, artifact_file)

    def log_table(self, run_id: str, frame, artifact_file: str) -> None:
        """Write `frame` as an MLflow table (the UI lists it), replacing one of that name.

        MlflowClient.log_table appends to an existing file, so an arm scored again under
        new evaluation settings would hold both scorings' predictions in one table.
        """
        with tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp) / Path(artifact_file).name
            frame.to_json(file, orient="split", index=False, date_format="iso")
            parent = str(Path(artifact_file).parent)
            self.client.log_artifact(run_id, str(file), None if parent == "." else parent)
        listed = json.loads(self.run_tags(run_id).get(MLFLOW_LOGGED_ARTIFACTS, "[]"))
        entry = {"path": artifact_file, "type": "table"}
        if entry not in listed:
            self.client.set_tag(run_id, MLFLOW_LOGGED_ARTIFACTS, json.dumps([*listed, entry]))

    def load_table(self, run_id: str, artifact_file: str):
        """A table `log_table` wrote, as a DataFrame; None when the run has no such file."""
        import pandas as pd

        if not self.has_artifacts(run_id, str(Path(artifact_file).parent)):
            return None
        with tempfile.TemporaryDirectory() as tmp:
            try:
                local = self.client.download_artifacts(run_id, artifact_file, tmp)
            except MlflowException:
                return None
            stored = json.loads(Path(local).read_text())
        return pd.DataFrame(stored["data"], columns=stored["columns"])

    def log_json(self, run_id: str, data, artifact_file: str) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            file = Path(tmp) / Path(artifact_file).name
            file.write_text(json.dumps(data, indent=2, default=str))
            parent = str(Path(artifact_file).parent)
            self.client.log_artifact(run_id, str(file), None if parent == "." else parent)

    def run_tags(self, run_id: str) -> dict[str, str]:
        return dict(self.client.get_run(run_id).data.tags)

    def metrics(self, run_id: str) -> dict[str, float]:
        return dict(self.client.get_run(run_id).data.metrics)

    def training_callback(self, run_id: str) -> TrainerCallback:
        return _MlflowStepLogger(self, run_id)

    @contextmanager
    def system_metrics(self, run_id: str, interval_s: float = 5.0):
        """CPU, memory, disk, network (and GPU with nvidia-ml-py) sampled into the run."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(
            run_id, sampling_interval=interval_s, tracking_uri=self.uri, resume_logging=True
        )
        monitor.start()
        try:
            yield
        finally:
            monitor.finish()

    def ui_command(self) -> str:
        if self.workspace.tracking_server:
            return f"open {self.workspace.tracking_server} (the MLflow tracking server's UI)"
        return f"mlora ui --workspace {self.workspace.root}"

    # artifacts of a run --------------------------------------------------------
    def has_artifacts(self, run_id: str, path: str) -> bool:
        return bool(self.client.list_artifacts(run_id, path))

    def download_artifacts(self, run_id: str, path: str, dest: str | Path) -> None:
        self.client.download_artifacts(run_id, path, str(dest))

    # registered models and versions ---------------------------------------------
    def log_pyfunc(self, run_id: str, name: str, **model) -> ModelInfo:
        """Log a pyfunc model (`model`: python_model, artifacts, model_config, signature, ...)
        into run `run_id`, named by id: any run active in this thread is untouched.

        `mlflow.pyfunc.log_model` finds its run on MLflow's thread-local active-run stack,
        and `start_run(run_id=...)` to put the arm run there fails when the thread already
        has a run open (a notebook, a Prefect task thread). So the logged model is created
        through the client, in the arm run's experiment (MLflow would otherwise take the
        active run's), with what log_model itself records on it (the run's params, the
        user/source context tags), and `Model.log`, which pyfunc.log_model wraps, fills it
        given the run id. Nor is the arm run ended here: the caller does.
        """
        run = self.client.get_run(run_id)
        logged = self.client.create_logged_model(
            experiment_id=run.info.experiment_id,
            name=name,
            source_run_id=run_id,
            params=run.data.params,
            tags=resolve_context_tags(),
        )
        # Model.log writes through MLflow's global store: make sure it is this tracker's.
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        return Model.log(
            artifact_path=None,  # required positionally, deprecated for `name` (as pyfunc passes it)
            name=name,
            flavor=mlflow.pyfunc,
            run_id=run_id,
            model_id=logged.model_id,
            **model,
        )

    def registered_model(self, name: str):
        """The registered model `name`, or None."""
        try:
            return self.client.get_registered_model(name)
        except MlflowException:
            return None

    def ensure_registered_model(self, name: str, tags: dict[str, str], description: str) -> None:
        if self.registered_model(name) is not None:
            return
        try:
            self.client.create_registered_model(name, tags=tags, description=description)
        except MlflowException:  # created meanwhile by a concurrent run
            if self.registered_model(name) is None:
                raise

    def set_model_tag(self, name: str, key: str, value: str) -> None:
        self.client.set_registered_model_tag(name, key, value)

    def find_versions(self, name: str, tags: dict[str, str]) -> list:
        """The versions of `name` holding every tag in `tags` ([] when there is no such model)."""
        query = " and ".join(
            [f"name = '{name}'", *(f"tags.`{k}` = '{v}'" for k, v in tags.items())]
        )
        try:
            return list(self.client.search_model_versions(query))
        except MlflowException:  # no such registered model yet
            return []

    def create_version(self, name: str, **version):
        """A new version of `name` (`version`: source, run_id, tags, description, model_id)."""
        return self.client.create_model_version(name, **version)

    def version(self, name: str, version: str):
        """Version `version` of `name`, or None."""
        try:
            return self.client.get_model_version(name, str(version))
        except MlflowException:
            return None

    def set_version_tags(self, name: str, version: str, tags: dict[str, str]) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(name, str(version), key, str(value))

    def describe_version(self, name: str, version: str, description: str) -> None:
        self.client.update_model_version(name, str(version), description=description)

    def set_alias(self, name: str, alias: str, version: str) -> None:
        self.client.set_registered_model_alias(name, alias, str(version))

    def version_by_alias(self, name: str, alias: str):
        """The version `alias` points at, or None when the alias (or the model) does not exist."""
        try:
            return self.client.get_model_version_by_alias(name, alias)
        except MlflowException:
            return None

    def logged_model_has(self, model_id: str, path: str) -> bool:
        return bool(self.client.list_logged_model_artifacts(model_id, path))

    def log_model_artifacts(self, model_id: str, folder: str | Path, path: str) -> None:
        self.client.log_model_artifacts(model_id, str(folder), path)


@contextmanager
def _store_errors(workspace: Workspace):
    """A store SQLite cannot read (truncated, malformed) is one error with what to do."""
    from sqlalchemy.exc import DatabaseError

    try:
        yield
    except (MlflowException, DatabaseError) as err:
        if "malformed" not in str(err) and "not a database" not in str(err):
            raise
        raise RegistryError(
            f"the MLflow store is damaged: {str(err).splitlines()[0][:200]}",
            where=str(workspace.mlflow_db),
            fix="move it aside and restore it from a backup; without one, start a new "
            "workspace (--workspace)",
        ) from None


class _MlflowStepLogger(TrainerCallback):
    """Per-step loss, learning rate, grad norm, tokens/s and eval loss into the arm's run."""

    KEYS = {
        "loss": "train_loss",
        "learning_rate": "learning_rate",
        "grad_norm": "grad_norm",
        "tokens_per_second": "tokens_per_second",
        "peak_memory_mb": "peak_memory_mb",
        "eval_loss": "eval_loss",
    }

    def __init__(self, tracker: Tracker, run_id: str):
        self.tracker, self.run_id = tracker, run_id
        self.logged: dict[str, set[int]] | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not logs or not state.is_world_process_zero:
            return
        if self.logged is None:
            # A run resumed from a checkpoint trains again the steps the killed process had
            # logged after that checkpoint: their points are in the run already, once.
            client = self.tracker.client
            self.logged = {
                name: {m.step for m in client.get_metric_history(self.run_id, name)}
                for name in self.KEYS.values()
            }
        step = state.global_step
        metrics = {
            name: logs[key]
            for key, name in self.KEYS.items()
            if key in logs and step not in self.logged[name]
        }
        if metrics:
            self.tracker.log_metrics(self.run_id, metrics, step=step)
            for name in metrics:
                self.logged[name].add(step)
