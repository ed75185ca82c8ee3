"""`mlora promote`, `rollback`, `serve` (argument errors) and `ui` through the command line."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from multilora_pipeline.flows.cli import main
from multilora_pipeline.flows.local_servers import stop_process_group
from multilora_pipeline.tasks.registry.tracking import Tracker
from multilora_pipeline.tasks.registry.versions import CHAMPION, version_by_alias
from multilora_pipeline.tasks.workspace import Workspace

# the CLI in subprocesses with Prefect and MLflow servers: left out by -m "not slow"
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
NAME = "mlora-cli"


@pytest.fixture(scope="module")
def workspace_with_versions(tmp_path_factory):
    """A workspace whose registered model has three versions (no champion yet)."""
    ws = Workspace.resolve(tmp_path_factory.mktemp("cli") / "ws").ensure()
    tracker = Tracker(ws, "cli")
    tracker.client.create_registered_model(NAME)
    for _ in range(3):
        run_id = tracker.client.create_run(tracker.experiment_id).info.run_id
        tracker.client.create_model_version(NAME, f"runs:/{run_id}/adapter", run_id)
    return ws


@pytest.fixture
def mlora():
    """multilora_pipeline.flows.cli.main, with the environment restored afterwards (main activates the workspace)."""
    saved = dict(os.environ)
    yield lambda *args: main([str(a) for a in args])
    os.environ.clear()
    os.environ.update(saved)


def _champion(ws: Workspace) -> str:
    return str(version_by_alias(Tracker(ws, "cli"), NAME, CHAMPION).version)


def test_promote_and_rollback(mlora, workspace_with_versions, capsys):
    ws = workspace_with_versions
    assert mlora("--workspace", ws.root, "promote", NAME, 1) == 0
    assert mlora("--workspace", ws.root, "promote", NAME, 3) == 0
    assert "champion is now v3 (was v1)" in capsys.readouterr().out
    assert _champion(ws) == "3"
    assert mlora("--workspace", ws.root, "rollback", NAME) == 0
    assert "rolled back to v1" in capsys.readouterr().out
    assert _champion(ws) == "1"
    assert mlora("--workspace", ws.root, "promote", NAME, 7) == 2
    assert "has no version 7" in capsys.readouterr().err
    assert mlora("--workspace", ws.root, "promote", "mlora-nosuch", 1) == 2
    assert "no registered model named 'mlora-nosuch'" in capsys.readouterr().err
    assert _champion(ws) == "1"


def test_workspace_may_follow_the_command(mlora, workspace_with_versions, capsys):
    # The form `mlora run` prints at its end ("see it in the MLflow UI: mlora ui --workspace W").
    ws = workspace_with_versions
    assert mlora("promote", NAME, 2, "--workspace", ws.root) == 0
    assert _champion(ws) == "2"
    assert mlora("rollback", NAME, "--workspace", ws.root) == 0
    assert "rolled back to" in capsys.readouterr().out


# Runs `mlora ARGS` and prints which heavy modules it imported before exiting.
PROBE = (
    "import sys; from multilora_pipeline.flows.cli import main; rc = main(sys.argv[1:]); "
    "print(sorted({'prefect', 'torch', 'mlflow'} & set(sys.modules))); sys.exit(rc)"
)


@pytest.mark.parametrize("command", ["run", "data", "serve"])
def test_a_bad_spec_fails_in_one_line_before_prefect_or_torch_load(command, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text((REPO / "data_specs" / "demo_tiny.yaml").read_text() + "\nsurprise: 1\n")
    done = subprocess.run(
        [sys.executable, "-c", PROBE, command, str(bad), "--workspace", str(tmp_path / "ws")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stdout.strip() == "[]"  # nothing heavy was imported to find the mistake
    assert done.stderr.startswith(f"error: {bad}: invalid spec")
    assert "surprise: unknown key" in done.stderr and "Traceback" not in done.stderr


def test_a_missing_data_file_is_named_by_its_field_before_prefect_starts(tmp_path):
    demo = REPO / "data_specs" / "demo"
    spec = (
        (REPO / "data_specs" / "demo_tiny.yaml")
        .read_text()
        .replace("path: demo/", f"path: {demo}/")
    )
    bad = tmp_path / "missing.yaml"
    bad.write_text(spec.replace("math_train.jsonl", "nosuch.jsonl"))
    done = subprocess.run(
        [sys.executable, "-c", PROBE, "run", str(bad), "--workspace", str(tmp_path / "ws")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 2 and done.stdout.strip() == "[]"
    assert done.stderr.startswith(f"error: {bad}: missing data files:")
    # The demo's fourth source is the math one.
    assert f"sources[3].path: no file {demo / 'nosuch.jsonl'}" in done.stderr
    assert not (tmp_path / "ws" / "catalog.duckdb").exists()


@pytest.mark.parametrize("command", ["run", "data"])
def test_a_bad_row_is_named_by_file_row_and_field_before_prefect_starts(command, tmp_path):
    import json
    import shutil
    import time

    data = tmp_path / "demo"
    shutil.copytree(REPO / "data_specs" / "demo", data)
    lines = (data / "math_train.jsonl").read_text().splitlines()
    row = json.loads(lines[6])
    lines[6] = json.dumps({**row, "answer": ""})
    (data / "math_train.jsonl").write_text("\n".join(lines) + "\n")
    spec = tmp_path / "spec.yaml"
    spec.write_text((REPO / "data_specs" / "demo_tiny.yaml").read_text())
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", PROBE, command, str(spec), "--workspace", str(tmp_path / "ws")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    seconds = time.perf_counter() - started
    assert done.returncode == 2, done.stderr
    assert done.stdout.strip() == "[]"  # Prefect never imported (its server, launched, is stopped)
    error = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "Traceback" not in done.stderr
    assert f"{data / 'math_train.jsonl'}" in error[0] and "row 7" in error[0], error
    assert "answer" in error[0]
    assert not (tmp_path / "ws" / "catalog.duckdb").exists()
    print(f"bad row reported in {seconds:.1f}s")  # the figure for the note


def _truncate_half(path: Path) -> None:
    with path.open("r+b") as handle:
        handle.truncate(path.stat().st_size // 2)


@pytest.mark.parametrize("store", ["catalog", "mlflow", "empty mlflow"])
def test_a_damaged_store_is_one_error_before_prefect_starts(store, tmp_path):
    from multilora_pipeline.tasks.catalog import Catalog

    ws = Workspace.resolve(tmp_path / "ws").ensure()
    catalog = Catalog(ws.catalog_path)
    catalog.record_run(spec_hash="s", mixture_id="m", arm="a", mlflow_run_id="r")  # trained once
    if store == "catalog":
        _truncate_half(ws.catalog_path)
        expected = f"error: {ws.catalog_path}: the catalog is damaged"
    elif store == "mlflow":
        Tracker(ws, "cli").start_parent("run", tags={}, params={"a": 1})
        _truncate_half(ws.mlflow_db)
        expected = f"error: {ws.mlflow_db}: the MLflow store is truncated"
    else:
        ws.mlflow_db.write_bytes(b"")
        expected = f"error: {ws.mlflow_db}: the MLflow store is empty, but the workspace catalog"
    spec = REPO / "data_specs" / "demo_tiny.yaml"
    done = subprocess.run(
        [sys.executable, "-c", PROBE, "run", str(spec), "--workspace", str(ws.root)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stdout.strip() == "[]"  # neither Prefect nor MLflow nor torch was imported
    assert done.stderr.startswith(expected), done.stderr
    assert "Traceback" not in done.stderr


def test_serve_rejects_a_bad_cron(tmp_path):
    # A subprocess: `serve` sets up Prefect's logging, which must not bind to pytest's capture.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "multilora_pipeline.flows.cli",
            "--workspace",
            str(tmp_path / "ws"),
            "serve",
            str(REPO / "data_specs" / "demo_tiny.yaml"),
            "--cron",
            "61 * * * *",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert done.returncode == 2
    assert "invalid cron schedule '61 * * * *'" in done.stderr


def test_ui_serves_the_workspace(workspace_with_versions, tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    log = tmp_path / "ui.log"
    with open(log, "wb") as out:
        # Own session: `mlora ui` runs `mlflow ui` (and its workers) as children.
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "multilora_pipeline.flows.cli",
                "--workspace",
                str(workspace_with_versions.root),
                "ui",
                "--port",
                str(port),
            ],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=5) as response:
                    assert response.read().strip() == b"OK"
                    break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.5)
        query = f"{base}/api/2.0/mlflow/registered-models/search?max_results=10"
        with urllib.request.urlopen(query, timeout=10) as response:
            models = json.loads(response.read())["registered_models"]
        assert [m["name"] for m in models] == [NAME]  # the workspace's store, not ./mlflow.db
    finally:
        stop_process_group(proc)


def test_run_with_a_missing_base_model_prints_one_error_line(
    mlora, prefect_harness, tmp_path, capsys
):
    """Checked before any work: one `error:` line naming the spec, the field and the fix."""
    import yaml

    spec = yaml.safe_load((REPO / "data_specs" / "demo_tiny.yaml").read_text())
    for item in spec["sources"] + spec["eval_suites"]:
        item["path"] = str(REPO / "data_specs" / item["path"])
    spec["base_model"] = {"name_or_path": str(tmp_path / "nomodel")}
    path = tmp_path / "nomodel.yaml"
    path.write_text(yaml.safe_dump(spec))
    ws = tmp_path / "ws"

    assert mlora("--workspace", ws, "run", path) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err
    assert errors == [
        f"error: spec {path}, base_model.name_or_path '{tmp_path / 'nomodel'}': "
        f"no folder {tmp_path / 'nomodel'} -- the folder must exist and hold config.json "
        "(a relative path starts from the directory mlora runs in), "
        "or give a hub id such as Qwen/Qwen2.5-0.5B"
    ]
    assert not (ws / "catalog.duckdb").exists() and not (ws / "mlflow.db").exists()
    # Only the raw snapshots the pre-Prefect data check fetched (a content-keyed cache the
    # next run reuses): no stage output, no catalog row, no run.
    assert [p.name for p in (ws / "data").iterdir()] == ["raw"]


def test_ui_on_a_taken_port_is_an_error_with_exit_code_2(mlora, tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert mlora("--workspace", tmp_path / "ws", "ui", "--port", port) == 2
    err = capsys.readouterr().err
    assert f"error: port {port} on 127.0.0.1 is in use" in err and "--port" in err


@pytest.mark.parametrize("port", ["0", "70000", "http"])
def test_ui_on_an_impossible_port_is_a_usage_error(mlora, tmp_path, capsys, port):
    with pytest.raises(SystemExit) as exit_:
        mlora("--workspace", tmp_path / "ws", "ui", "--port", port)
    assert exit_.value.code == 2
    assert "argument --port: invalid" in capsys.readouterr().err


def test_a_workspace_that_takes_no_writes_is_one_error_before_prefect_starts(
    mlora, tmp_path, capsys
):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    spec = REPO / "data_specs" / "demo_tiny.yaml"
    start = time.monotonic()
    assert mlora("--workspace", blocker / "ws", "run", spec) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "the workspace is not writable" in err
    assert "--workspace" in err and time.monotonic() - start < 10  # no Prefect start-up
    assert mlora("--workspace", blocker / "ws", "promote", NAME, "1") == 2


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permissions")
def test_a_read_only_workspace_is_refused(mlora, tmp_path, capsys):
    ws = tmp_path / "ws"
    Workspace.resolve(ws).ensure()
    ws.chmod(0o555)
    try:
        assert mlora("--workspace", ws, "promote", NAME, "1") == 2
    finally:
        ws.chmod(0o755)
    assert "the workspace is not writable: Permission denied" in capsys.readouterr().err
