"""The training deployment's contract, without servers: what the pipeline passes, what a
worker checks before it trains, and where the tracking URI comes from.
(tests/flows/test_team_setup.py runs it all on real servers and workers.)"""

from __future__ import annotations

import json
import os
import time

import pytest
import torch

from multilora_pipeline.data_specs.errors import TrainingError
from multilora_pipeline.data_specs.schema import (
    ArmSpec,
    PipelineSpec,
    TrainingSpec,
    demo_spec_path,
    load_spec,
)
from multilora_pipeline.flows.temporary_server import TEMPORARY_API_ENV
from multilora_pipeline.flows.training import (
    reachable_workspace,
    training_parameters,
    worker_base_model,
)
from multilora_pipeline.flows.training_pool import ensure_training_deployment
from multilora_pipeline.tasks.identity import run_key, training_hash
from multilora_pipeline.tasks.training.arm_runs import ArmRun
from multilora_pipeline.tasks.training.train import load_result
from multilora_pipeline.tasks.workspace import Workspace


@pytest.mark.parametrize("tiny", [True, False])
def test_parameters_are_json_relative_to_the_workspace_and_give_the_same_run(tiny, tmp_path):
    spec, _ = load_spec(demo_spec_path(tiny=tiny))
    ws = Workspace.resolve(tmp_path / "ws")
    arm = spec.arms[0].with_learning_rates(3e-4, None, spec.training)
    run = ArmRun(arm, spec.training.for_run(7))
    base = str(ws.models_dir / "tiny-abc") if tiny else "HuggingFaceTB/SmolLM2-135M"
    params = json.loads(json.dumps(training_parameters(ws, spec, "m1", base, run, "r1", "chat")))
    assert params["base_model"] == ("models/tiny-abc" if tiny else base)
    assert params["tracking"] == "workspace"
    assert not any(str(ws.root) in json.dumps(v) for v in params.values())
    # What the worker rebuilds from them is the same run: same key, same folder.
    again = ArmRun(
        ArmSpec.model_validate(params["arm"]),
        TrainingSpec.model_validate(params["training"]),
        params["probe"],
    )
    rebuilt = PipelineSpec.model_validate(params["spec"])
    assert rebuilt == spec
    assert run_key(rebuilt, "m1", again) == params["run_key"] == run_key(spec, "m1", run)
    assert params["training"]["seed"] == 7 and params["arm"]["learning_rate"] == 3e-4


def test_where_a_run_trains_does_not_change_its_identity():
    spec, _ = load_spec(demo_spec_path(tiny=True))
    pooled = spec.model_copy(
        update={"training": spec.training.model_copy(update={"work_pool": "gpu"})}
    )
    run = ArmRun(spec.arms[0], spec.training.for_run(0))
    pooled_run = ArmRun(spec.arms[0], pooled.training.for_run(0))
    assert training_hash(spec, run) == training_hash(pooled, pooled_run)


def test_a_worker_without_the_workspace_or_the_mixture_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("MLORA_WORKSPACE", str(tmp_path / "not-mounted"))
    with pytest.raises(TrainingError, match="sees no pipeline workspace at .*not-mounted"):
        reachable_workspace("m1")
    assert not (tmp_path / "not-mounted").exists()  # the check creates nothing
    ws = Workspace.resolve(tmp_path / "ws").ensure()
    ws.catalog_path.write_bytes(b"")
    monkeypatch.setenv("MLORA_WORKSPACE", str(ws.root))
    with pytest.raises(TrainingError, match="mixture m1 is not in the workspace") as err:
        reachable_workspace("m1")
    assert "export MLORA_WORKSPACE" in str(err.value)


def test_the_worker_finds_the_base_model_in_its_own_mount(tmp_path):
    ws = Workspace.resolve(tmp_path / "mounted-elsewhere").ensure()
    (ws.models_dir / "tiny-abc").mkdir()
    assert worker_base_model(ws, "models/tiny-abc") == str(ws.models_dir / "tiny-abc")
    assert worker_base_model(ws, "HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    with pytest.raises(TrainingError, match="base model folder /nowhere/model is not on this"):
        worker_base_model(ws, "/nowhere/model")


def test_a_result_written_under_another_mount_names_this_ones_folders(tmp_path):
    here = tmp_path / "here" / "multilora"
    here.mkdir(parents=True)
    there = "/mnt/shared/ws/runs/x/multilora"
    (here / "result.json").write_text(
        json.dumps(
            {
                "arm": "multilora",
                "kind": "multilora",
                "output_dir": there,
                "adapter_dir": f"{there}/adapter",
                "peft_dir": f"{there}/peft",
                "steps": 3,
                "train_loss": 1.0,
                "eval_loss": None,
                "tokens_per_second": 1.0,
                "peak_memory_mb": 1.0,
                "trainable_parameters": 1,
                "trainable_share": 0.1,
            }
        )
    )
    result = load_result(here)
    assert (result.output_dir, result.adapter_dir, result.peft_dir) == (
        str(here),
        str(here / "adapter"),
        str(here / "peft"),
    )


def test_a_training_pool_needs_a_prefect_server():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):  # whatever ran before
        with pytest.raises(TrainingError, match="work pool 'gpu' needs a Prefect server"):
            ensure_training_deployment("gpu")


def test_a_training_pool_refuses_a_commands_temporary_server(monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = "http://127.0.0.1:4999/api"
    monkeypatch.setenv(TEMPORARY_API_ENV, url)
    with temporary_settings(updates={PREFECT_API_URL: url}):
        with pytest.raises(TrainingError, match="a temporary one lives only as long as"):
            ensure_training_deployment("gpu")


def test_a_server_that_does_not_answer_is_one_error():
    import socket

    from prefect.settings import PREFECT_API_URL, temporary_settings

    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    with temporary_settings(updates={PREFECT_API_URL: url}):
        with pytest.raises(TrainingError, match=f"server at PREFECT_API_URL={url} does not"):
            ensure_training_deployment("gpu")


def test_a_pool_the_server_lacks_is_named_with_the_commands_to_make_it(prefect_harness):
    with pytest.raises(TrainingError, match="work pool 'gpu-nowhere' does not exist") as err:
        ensure_training_deployment("gpu-nowhere")
    assert "prefect work-pool create gpu-nowhere --type process" in str(err.value)
    assert "prefect worker start --pool gpu-nowhere" in str(err.value)


def test_scoring_on_a_gpu_that_is_not_here_says_set_evaluation_device():
    from multilora_pipeline.flows.pipeline import check_scoring_device

    spec, _ = load_spec(demo_spec_path(tiny=True))
    on_gpu = spec.model_copy(
        update={"training": spec.training.model_copy(update={"device": "cuda"})}
    )
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: cuda scoring is fine here")
    with pytest.raises(TrainingError, match="evaluation.device: training goes to work pool"):
        check_scoring_device(on_gpu, "gpu")
    with pytest.raises(TrainingError, match="training.device is 'cuda' but no GPU"):
        check_scoring_device(on_gpu, None)
    on_cpu = on_gpu.model_copy(
        update={"evaluation": on_gpu.evaluation.model_copy(update={"device": "cpu"})}
    )
    check_scoring_device(on_cpu, "gpu")


@pytest.fixture
def activation_undone(monkeypatch):
    """What `Workspace.activate` sets, restored after the test (the session's workspace)."""
    for key in ("MLORA_WORKSPACE", "PREFECT_HOME", "MLFLOW_TRACKING_URI"):
        monkeypatch.setenv(key, os.environ.get(key, ""))


def test_an_exported_tracking_server_wins_a_local_store_does_not(
    tmp_path, monkeypatch, activation_undone
):
    ws = Workspace.resolve(tmp_path / "ws")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:////elsewhere/mlflow.db")
    assert ws.tracking_server is None
    assert ws.tracking_uri == f"sqlite:///{ws.mlflow_db}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000/")
    assert ws.tracking_uri == ws.tracking_server == "http://mlflow.internal:5000"
    ws.activate()
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://mlflow.internal:5000"


def test_evaluation_device_defaults_to_training_device(tmp_path):
    spec, _ = load_spec(demo_spec_path(tiny=True))
    assert spec.evaluation_device == spec.training.device
    on_cpu = spec.model_copy(
        update={"evaluation": spec.evaluation.model_copy(update={"device": "cpu"})}
    )
    assert on_cpu.evaluation_device == "cpu"
    assert on_cpu.evaluation.scoring_settings() == spec.evaluation.scoring_settings()


def test_ui_points_at_the_tracking_server(monkeypatch, capsys, tmp_path, activation_undone):
    from multilora_pipeline.flows.cli import main

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert main(["--workspace", str(tmp_path / "ws"), "ui"]) == 0
    assert "open http://127.0.0.1:5999" in capsys.readouterr().out


def test_a_worker_on_another_tracking_store_refuses_the_run(monkeypatch, tmp_path):
    from multilora_pipeline.flows.training import check_same_tracking

    ws = Workspace.resolve(tmp_path / "ws")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
    check_same_tracking(ws, "workspace")
    with pytest.raises(TrainingError, match="export the pipeline's MLFLOW_TRACKING_URI"):
        check_same_tracking(ws, "http://mlflow.internal:5000")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.internal:5000")
    check_same_tracking(ws, "http://mlflow.internal:5000")
    with pytest.raises(TrainingError, match="unset MLFLOW_TRACKING_URI on the worker"):
        check_same_tracking(ws, "workspace")


def test_a_stopped_pipeline_cancels_its_training_run_and_a_rerun_waits_on_a_live_one(
    prefect_harness, tmp_path, caplog
):
    """On a real (temporary) server, a pool with no worker: the run is queued and said to
    be; a second wait on the same run key adopts it instead of starting another; once
    stopped (another arm failed), the waits end and the queued run is Cancelled."""
    import threading

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    from multilora_pipeline.flows.training_pool import (
        prepare_training_pool,
        run_tag,
        train_on_pool,
    )

    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="idle-gpu", type="process"))
    prepare_training_pool("idle-gpu")
    spec, _ = load_spec(demo_spec_path(tiny=True))
    ws = Workspace.resolve(tmp_path / "ws")
    run = ArmRun(spec.arms[0], spec.training.for_run(0))
    params = training_parameters(ws, spec, "m1", "models/tiny", run, "r1", "plain")
    tag = run_tag(params["run_key"])
    stop = threading.Event()
    errors: list[BaseException] = []

    def wait_in_thread():
        try:
            train_on_pool("idle-gpu", params, "multilora", stop)
        except BaseException as err:  # noqa: BLE001 - the test reads it
            errors.append(err)

    caplog.set_level("INFO", logger="mlora.pipeline")
    threads = [threading.Thread(target=wait_in_thread) for _ in range(2)]
    threads[0].start()
    with get_client(sync_client=True) as client:
        deadline = time.monotonic() + 30
        while not client.read_flow_runs(flow_run_filter=_tagged(tag)):
            assert time.monotonic() < deadline, "no training flow run was created"
            time.sleep(0.2)
        threads[1].start()
        deadline = time.monotonic() + 30
        while "waiting on training run" not in caplog.text:
            assert time.monotonic() < deadline, "the second wait did not adopt the first run"
            time.sleep(0.2)
        stop.set()
        for thread in threads:
            thread.join(30)
        (child,) = client.read_flow_runs(flow_run_filter=_tagged(tag))
    assert len(errors) == 2 and all("another arm failed" in str(e) for e in errors)
    assert child.state.is_cancelled()
    assert "no worker of work pool 'idle-gpu' is online" in caplog.text


def _tagged(tag: str):
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterTags

    return FlowRunFilter(tags=FlowRunFilterTags(all_=[tag]))
