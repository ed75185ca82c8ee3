"""A damaged or lost MLflow store is one clear error, never silently recreated."""

from __future__ import annotations

import pytest

from multilora_pipeline.data_specs.errors import RegistryError
from multilora_pipeline.tasks.registry.tracking import Tracker
from multilora_pipeline.tasks.stores import check_tracking_store
from multilora_pipeline.tasks.workspace import Workspace

pytestmark = pytest.mark.slow  # creates real SQLite stores (MLflow migrations, ~3 s each)


def test_a_lost_store_is_refused_while_the_catalog_knows_runs(workspace: Workspace):
    check_tracking_store(workspace, known_runs=0)  # a new workspace: nothing to lose
    with pytest.raises(
        RegistryError, match="store is missing, but the workspace catalog records 2"
    ):
        check_tracking_store(workspace, known_runs=2)
    workspace.mlflow_db.write_bytes(b"")
    with pytest.raises(RegistryError, match="store is empty, but .* records 1 .*restore mlflow.db"):
        check_tracking_store(workspace, known_runs=1)


def test_an_overwritten_store_is_refused_before_mlflow_opens_it(workspace: Workspace):
    workspace.mlflow_db.write_text("<html>not a database</html>")
    with pytest.raises(RegistryError, match="not an SQLite database.*move it aside"):
        Tracker(workspace, "demo")


def test_a_truncated_store_is_one_error_with_what_to_do(workspace: Workspace):
    tracker = Tracker(workspace, "demo")
    tracker.start_parent("run", tags={}, params={"a": 1})
    db = workspace.mlflow_db
    with db.open("r+b") as handle:
        handle.truncate(db.stat().st_size // 2)
    with pytest.raises(RegistryError, match="MLflow store is truncated.*move it aside"):
        Tracker(workspace, "other")


def test_a_table_logged_again_replaces_the_first(workspace: Workspace):
    """MlflowClient.log_table appends: an arm scored again would hold two scorings' rows."""
    import json

    import pandas as pd

    tracker = Tracker(workspace, "demo")
    run_id = tracker.start_parent("run", tags={}, params={})
    tracker.log_table(
        run_id, pd.DataFrame({"suite": ["a", "a"], "correct": [True, False]}), "eval/p.json"
    )
    tracker.log_table(
        run_id, pd.DataFrame({"suite": ["a", "a"], "correct": [False, False]}), "eval/p.json"
    )
    table = tracker.load_table(run_id, "eval/p.json")
    assert table.to_dict("list") == {"suite": ["a", "a"], "correct": [False, False]}
    listed = json.loads(tracker.run_tags(run_id)["mlflow.loggedArtifacts"])
    assert listed == [{"path": "eval/p.json", "type": "table"}]  # the UI lists it once


def test_a_resumed_run_logs_each_step_once(workspace: Workspace):
    """A run killed after a checkpoint logged steps past it; the resumed process trains those
    steps again, and its callback must not add a second point for them."""
    from types import SimpleNamespace

    tracker = Tracker(workspace, "demo")
    run_id = tracker.start_parent("run", tags={}, params={})

    def train(callback, steps):
        for step in steps:
            state = SimpleNamespace(global_step=step, is_world_process_zero=True)
            callback.on_log(None, state, None, logs={"loss": 1.0 / step, "learning_rate": 1e-3})

    train(tracker.training_callback(run_id), [2, 4, 6])  # killed after step 6; checkpoint at 4
    train(tracker.training_callback(run_id), [6, 8])  # the resumed process, from checkpoint 4
    for name in ("train_loss", "learning_rate"):
        steps = [m.step for m in tracker.client.get_metric_history(run_id, name)]
        assert sorted(steps) == [2, 4, 6, 8], name
