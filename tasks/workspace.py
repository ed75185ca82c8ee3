"""The workspace: one root folder that holds every byte the pipeline writes.

This module is the only place that knows the layout. Prefect, MLflow and the
Hugging Face caches are pointed inside it by `activate()`, which must run
before `prefect` is imported (Prefect reads PREFECT_HOME at import time).
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from multilora_pipeline.data_specs.errors import PipelineError

ENV_VAR = "MLORA_WORKSPACE"
TRACKING_ENV = "MLFLOW_TRACKING_URI"
DEFAULT_ROOT = "workspace"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def resolve(cls, root: str | Path | None = None) -> Workspace:
        """`root`, else $MLORA_WORKSPACE, else ./workspace; always absolute."""
        chosen = root or os.environ.get(ENV_VAR) or DEFAULT_ROOT
        return cls(Path(chosen).expanduser().resolve())

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.duckdb"

    @property
    def data_dir(self) -> Path:
        """Snapshots, stage outputs and mixtures, as Parquet."""
        return self.root / "data"

    @property
    def models_dir(self) -> Path:
        """Base models the pipeline builds itself (the tiny demo model)."""
        return self.root / "models"

    @property
    def runs_dir(self) -> Path:
        """Training checkpoints and adapters, one folder per arm run."""
        return self.root / "runs"

    @property
    def mlflow_db(self) -> Path:
        return self.root / "mlflow.db"

    @property
    def tracking_server(self) -> str | None:
        """The MLflow tracking server exported in $MLFLOW_TRACKING_URI (an http(s) URL), or
        None: then runs, registry and artifacts live in this workspace (`mlflow.db`,
        `mlartifacts/`). A local store named there (sqlite:, file:) is not used: a
        workspace's store is its own."""
        uri = os.environ.get(TRACKING_ENV, "")
        return uri.rstrip("/") if uri.startswith(("http://", "https://")) else None

    @property
    def tracking_uri(self) -> str:
        return self.tracking_server or f"sqlite:///{self.mlflow_db}"

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "mlartifacts"

    @property
    def prefect_home(self) -> Path:
        return self.root / "prefect"

    @property
    def hf_home(self) -> Path:
        return self.root / "hf"

    def stage_dir(self, stage: str, output_id: str) -> Path:
        """Where a data stage writes the output with this id."""
        return self.data_dir / stage / output_id

    def ensure(self) -> Workspace:
        """Create the folders and check the workspace takes writes (a read-only folder or a
        full disk is one error now, not tracebacks from Prefect's and MLflow's start-up)."""
        try:
            for path in (
                self.root,
                self.data_dir,
                self.models_dir,
                self.runs_dir,
                self.artifacts_dir,
                self.prefect_home,
            ):
                path.mkdir(parents=True, exist_ok=True)
            probe = self.root / f".write-probe-{os.getpid()}"
            probe.write_bytes(b"\0" * 4096)
            probe.unlink()
        except OSError as err:
            raise PipelineError(
                f"the workspace is not writable: {err.strerror or err}",
                where=str(self.root),
                fix="point --workspace (or MLORA_WORKSPACE) at a writable folder with free "
                "space, or fix the folder's permissions",
            ) from None
        return self

    def remove_abandoned(self) -> list[Path]:
        """Delete what killed runs left half-written (temporary mixtures, conversions,
        downloads) in the data and model folders; a live run's are kept (its pid is in the
        name). Returns what was removed."""
        from multilora_pipeline.models.content import remove_abandoned_temporaries

        removed = []
        for folder in (self.data_dir, self.models_dir):
            if folder.is_dir():
                removed += remove_abandoned_temporaries(folder)
        return removed

    @contextmanager
    def exclusive(self, what: str):
        """Hold the workspace's lock for `what` (blocking): one process at a time does it.

        MLflow creates and migrates its SQLite schema on a store's first use; two first
        runs at once race in that migration (`table _alembic_tmp_experiments already
        exists`), so the tracker opens its store under `exclusive("mlflow")`. An flock:
        a killed holder releases it at once.
        """
        path = self.root / f".{what}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def activate(self) -> Workspace:
        """Create the folders and point Prefect, MLflow and HF at them (env vars).

        Settings the user already exported win, except PREFECT_HOME and a local MLflow
        store, which belong to the workspace; an exported tracking server is kept
        (`tracking_server`).
        """
        self.ensure()
        os.environ[ENV_VAR] = str(self.root)
        os.environ["PREFECT_HOME"] = str(self.prefect_home)
        os.environ[TRACKING_ENV] = self.tracking_uri
        os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
        os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
        os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
        os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
        # One "Downloading artifacts" bar per artifact read is noise in a pipeline log.
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
        # The project's own log lines (training steps, fetch counts, registry) also go to
        # Prefect's log store, so a scheduled run shows them in its Prefect UI page.
        os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "mlora")
        os.environ.setdefault("HF_HOME", str(self.hf_home))
        return self
