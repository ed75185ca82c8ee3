"""Test session set-up: an isolated workspace, offline settings, one Prefect harness.

The workspace is activated at import time, before any test module imports
Prefect (Prefect reads PREFECT_HOME once, at import).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

for key, value in {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "ignore",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ[key] = value

from multilora_pipeline.tasks.workspace import Workspace  # noqa: E402

SESSION_ROOT = Path(tempfile.mkdtemp(prefix="mlora-tests-"))
# The user's cache (the Prefect database template, flows/temporary_server.py) stays untouched.
os.environ["XDG_CACHE_HOME"] = str(SESSION_ROOT / "cache")
SESSION_WORKSPACE = Workspace.resolve(SESSION_ROOT / "workspace").activate()
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect API for the whole session (starting one costs ~7 s)."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


@pytest.fixture
def workspace(tmp_path) -> Workspace:
    """A fresh, empty workspace per test (Prefect stays on the session's home)."""
    return Workspace.resolve(tmp_path / "workspace").ensure()


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO
