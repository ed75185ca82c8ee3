"""Run the train stage in one process, or data-parallel under torchrun.

With one process the arm trains in the caller's process. With more (one per
visible GPU by default, or `training.processes`), the caller starts
`torchrun --standalone --nproc_per_node N -m multilora_pipeline.tasks.training.launch ARGS.json`;
every rank runs `train_arm`, Trainer wraps the model in DDP, rank 0 logs to
MLflow and writes the adapter and result.json, and the caller reads the
result back. On CPU the ranks talk over gloo, which is how the distributed
path is tested on a machine without GPUs.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import torch

from multilora_pipeline.data_specs.errors import TrainingError
from multilora_pipeline.data_specs.schema import ArmSpec, TrainingSpec
from multilora_pipeline.tasks.training.loading import resolve_device
from multilora_pipeline.tasks.training.train import ArmResult, load_result, train_arm

log = logging.getLogger("mlora.train")
ARGS_FILE = "launch.json"


def process_count(training: TrainingSpec) -> int:
    """training.processes, else one per visible GPU (1 on CPU)."""
    if training.processes:
        return training.processes
    return max(1, torch.cuda.device_count()) if resolve_device(training.device) == "cuda" else 1


def launch_arm(
    *,
    arm: ArmSpec,
    training: TrainingSpec,
    output_dir: str | Path,
    tracking: dict | None = None,
    callbacks=(),
    **train_kwargs,
) -> ArmResult:
    """Train an arm with `process_count(training)` processes; returns its result.

    `tracking` ({"workspace": root, "experiment": name, "run_id": id}) lets the
    ranks log to MLflow themselves; `callbacks` apply to the in-process case.
    """
    output_dir = Path(output_dir)
    n = process_count(training)
    if n == 1:
        return train_arm(
            arm=arm,
            training=training,
            output_dir=output_dir,
            callbacks=list(callbacks),
            **train_kwargs,
        )
    done = load_result(output_dir)
    if done is not None:
        return done
    output_dir.mkdir(parents=True, exist_ok=True)
    args = {
        "arm": arm.model_dump(mode="json"),
        "training": training.model_dump(mode="json"),
        "output_dir": str(output_dir),
        "tracking": tracking,
        **{k: (str(v) if isinstance(v, Path) else v) for k, v in train_kwargs.items()},
    }
    args_file = output_dir / ARGS_FILE
    args_file.write_text(json.dumps(args, indent=2))
    log_file = output_dir / "launch.log"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={n}",
        "-m",
        __name__,  # this module, wherever the package is installed
        str(args_file),
    ]
    log.info("[%s] data-parallel training on %d processes (log: %s)", arm.name, n, log_file)
    with log_file.open("a") as out:
        code = subprocess.call(cmd, stdout=out, stderr=subprocess.STDOUT, env=os.environ.copy())
    result = load_result(output_dir)
    if code != 0 or result is None:
        tail = "".join(log_file.read_text().splitlines(keepends=True)[-15:])
        raise TrainingError(
            f"distributed training exited with code {code}:\n{tail}",
            where=f"arm {arm.name}",
            fix=f"see {log_file}",
        )
    return result


def _worker(args_file: str) -> None:
    args = json.loads(Path(args_file).read_text())
    arm, training = ArmSpec(**args.pop("arm")), TrainingSpec(**args.pop("training"))
    tracking = args.pop("tracking")
    callbacks = []
    if tracking and int(os.environ.get("RANK", "0")) == 0:
        from multilora_pipeline.tasks.registry.tracking import Tracker
        from multilora_pipeline.tasks.workspace import Workspace

        tracker = Tracker(Workspace.resolve(tracking["workspace"]), tracking["experiment"])
        callbacks.append(tracker.training_callback(tracking["run_id"]))
    try:
        train_arm(arm=arm, training=training, callbacks=callbacks, **args)
    finally:
        _close_process_group()


def _close_process_group() -> None:
    """Tear the process group down before the interpreter exits: left to interpreter shutdown,
    gloo's threads can be destroyed unjoined and the rank aborts ("terminate called without
    an active exception", SIGABRT) after an otherwise finished run."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S"
    )
    _worker(sys.argv[1])
