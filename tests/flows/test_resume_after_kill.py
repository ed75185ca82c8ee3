"""SIGKILL in the middle of training; the next `mlora run` resumes and ends where an uninterrupted run ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from safetensors.torch import load_file

from multilora_pipeline.data_specs.schema import load_spec
from multilora_pipeline.tasks.training.train import train_arm
from tests.specs import reduced_demo, write_spec

pytestmark = pytest.mark.slow  # a whole pipeline run: left out by -m "not slow"


def _mlora(ws: Path, spec: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "multilora_pipeline.flows.cli",
            "--workspace",
            str(ws),
            "run",
            str(spec),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=env,
        text=True,
        start_new_session=True,  # one process group: the kill takes Prefect's server along
    )


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return out


def _adapter(ws: Path) -> dict[str, torch.Tensor]:
    (file,) = ws.glob("runs/*/*/multilora/adapter/adapter.safetensors")
    return load_file(str(file))


def test_killed_training_resumes_to_the_same_adapter(tmp_path):
    multilora = reduced_demo()
    multilora["arms"] = [a for a in multilora["arms"] if a["name"] == "multilora"]
    # Long enough to be killed between checkpoints; every step is deterministic on CPU.
    multilora["training"].update(max_steps=30, save_steps=5, eval_steps=15, logging_steps=5)
    spec = write_spec(multilora, tmp_path / "reduced.yaml")
    reference, killed = tmp_path / "reference", tmp_path / "killed"

    victim = _mlora(killed, spec)
    deadline = time.time() + 240
    while not list(killed.glob("runs/*/*/multilora/checkpoint-10/trainer_state.json")):
        assert victim.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    os.killpg(victim.pid, signal.SIGKILL)
    victim.wait()
    assert not list(killed.glob("runs/*/*/multilora/result.json"))

    resumed_log = _finish(_mlora(killed, spec))
    assert "resuming from checkpoint-" in resumed_log

    # The uninterrupted reference: the same arm on the same base model and mixture, in one go.
    loaded = load_spec(spec)[0]
    (base,) = killed.glob("models/tiny-*")
    (mixture,) = killed.glob("data/mixture/*/train")
    train_arm(
        arm=loaded.arms[0],
        training=loaded.training,
        model_path=str(base),
        train_path=mixture,
        validation_path=mixture.parent / "validation.parquet",
        output_dir=reference / "runs/x/y/multilora",
    )
    straight, resumed = _adapter(reference), _adapter(killed)
    assert straight.keys() == resumed.keys()
    for key in straight:
        torch.testing.assert_close(resumed[key], straight[key], rtol=1e-5, atol=1e-6)

    uri = f"sqlite:///{killed / 'mlflow.db'}"
    client = MlflowClient(uri, uri)
    (experiment,) = [e for e in client.search_experiments() if e.name == "demo-tiny"]
    arm_runs = client.search_runs([experiment.experiment_id], "tags.`mlora.arm` = 'multilora'")
    assert len(arm_runs) == 1 and arm_runs[0].info.status == "FINISHED"
    assert len(client.search_model_versions("name = 'mlora-demo-tiny'")) == 1
    parents = client.search_runs([experiment.experiment_id], "tags.`mlora.role` = 'pipeline'")
    assert sorted(p.info.status for p in parents) == ["FINISHED", "KILLED"]
