"""One training run of an arm: what it is (ArmRun), where it lives in the workspace, and
training it in this process (its key, what decides its weights, is in tasks/identity.py).

The pipeline's train stage (tasks/training/train_arm.py) and the mlora-train flow a work
pool's worker runs (flows/training.py) both use these, so a run trained on either side is
the same run, in the same folder, found again by the same key.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from multilora_pipeline.data_specs.schema import ArmSpec, PipelineSpec, TrainingSpec
from multilora_pipeline.tasks.identity import training_hash
from multilora_pipeline.tasks.registry.tracking import Tracker
from multilora_pipeline.tasks.training.base_model import load_revision
from multilora_pipeline.tasks.training.launch import launch_arm
from multilora_pipeline.tasks.training.train import ArmResult
from multilora_pipeline.tasks.workspace import Workspace


@dataclass(frozen=True)
class ArmRun:
    """One training run of an arm: the arm with its learning rates fixed, the settings of
    this run (one seed, no grid) and whether it is a learning-rate probe."""

    arm: ArmSpec
    training: TrainingSpec
    probe: bool = False

    def run_name(self, spec: PipelineSpec) -> str:
        """The MLflow run name: the arm's name, with the learning rate and seed when the
        arm has runs at several of them."""
        parts = [self.arm.name]
        if self.arm_has_grid(spec):
            parts.append(f"lr{self.arm.learning_rate or spec.training.learning_rate:g}")
            if self.arm.scale_learning_rate is not None:
                parts.append(f"slr{self.arm.scale_learning_rate:g}")
        if self.arm_has_grid(spec) or len(spec.training.run_seeds) > 1:
            parts.append(f"seed{self.training.seed}")
        if self.probe and spec.training.probe_steps is not None:
            parts.append(f"probe{spec.training.probe_steps}")
        return "-".join(parts)

    def arm_has_grid(self, spec: PipelineSpec) -> bool:
        declared = next(a for a in spec.arms if a.name == self.arm.name)
        return bool(declared.probe_grid(spec.training))


def arm_dir(ws: Workspace, spec: PipelineSpec, mixture_id: str, run: ArmRun) -> Path:
    return ws.runs_dir / spec.name / f"{training_hash(spec, run)}-{mixture_id}" / run.arm.name


def train_here(
    ws: Workspace,
    tracker: Tracker,
    spec: PipelineSpec,
    train_dir: str | Path,
    validation_path: str | Path,
    base: str,
    run: ArmRun,
    mixture_id: str,
    prompt_format: str,
    run_id: str,
) -> ArmResult:
    """Train `run` in this process (or under torchrun) into its arm folder, logging steps and
    system metrics into MLflow run `run_id`: the pipeline's train stage in process, and the
    mlora-train flow on a worker (flows/training.py)."""
    with tracker.system_metrics(run_id):
        return launch_arm(
            arm=run.arm,
            training=run.training,
            model_path=base,
            train_path=str(train_dir),
            validation_path=str(validation_path),
            output_dir=arm_dir(ws, spec, mixture_id, run),
            revision=load_revision(spec),
            dtype=spec.base_model.dtype,
            trust_remote_code=spec.base_model.trust_remote_code,
            attn_implementation=spec.base_model.attn_implementation,
            # What PEFT users load the export on: the hub id, or the folder (a converted
            # GGUF file, the tiny model) the arm was trained on.
            base_model_name=base,
            prompt_format=prompt_format,
            tracking={"workspace": str(ws.root), "experiment": spec.name, "run_id": run_id},
            callbacks=[tracker.training_callback(run_id)],
        )
