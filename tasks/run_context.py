"""What every stage after the data stages of one pipeline run works with: built once by the
pipeline flow (flows/pipeline.py) and handed whole to each task, never unpacked."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field

from multilora_pipeline.data_specs.schema import PipelineSpec
from multilora_pipeline.tasks.data.run_outputs import DataOutputs
from multilora_pipeline.tasks.registry.lineage import Lineage
from multilora_pipeline.tasks.registry.tracking import Tracker
from multilora_pipeline.tasks.training.arm_runs import ArmRun
from multilora_pipeline.tasks.workspace import Workspace


@dataclass
class RunContext:
    """One pipeline run: its workspace, MLflow facade, spec, data, base model and parent run."""

    ws: Workspace
    tracker: Tracker
    spec: PipelineSpec
    data: DataOutputs
    base: str
    parent_id: str
    lineage: Lineage
    stages: dict[str, float]
    """Wall time per stage (the summary's stage_seconds), filled as the stages run."""
    train_elsewhere: Callable[[ArmRun, str], None] | None = None
    """Trains an arm run (with its MLflow run id) somewhere else and returns when it is done:
    on a Prefect work pool (flows/training_pool.py). None trains in this process."""
    stop: threading.Event = field(default_factory=threading.Event)
    """Set when one arm failed or the run was interrupted: the other arms' waits on their
    training runs end, and those runs are cancelled."""


@contextmanager
def timed(stage_seconds: dict[str, float], stage: str):
    """Add the block's wall time to stage_seconds[stage] (the summary's stage times)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        stage_seconds[stage] = stage_seconds.get(stage, 0.0) + time.perf_counter() - start
