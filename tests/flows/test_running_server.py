"""A `prefect server start` already running here is used without PREFECT_API_URL."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest

from multilora_pipeline.flows.local_servers import (
    api,
    free_port,
    prefect_env,
    start_prefect_server,
    stop_process_group,
)
from multilora_pipeline.flows.running_server import local_server_url, running_server

REPO = Path(__file__).resolve().parents[2]


def test_nothing_listening_means_no_server(monkeypatch):
    monkeypatch.setenv("PREFECT_SERVER_API_PORT", str(free_port()))
    assert running_server() is None


def test_the_address_is_the_one_prefect_server_start_listens_on(monkeypatch):
    monkeypatch.delenv("PREFECT_SERVER_API_HOST", raising=False)
    monkeypatch.delenv("PREFECT_SERVER_API_PORT", raising=False)
    assert local_server_url() == "http://127.0.0.1:4200/api"
    monkeypatch.setenv("PREFECT_SERVER_API_HOST", "0.0.0.0")  # every interface, ours among them
    monkeypatch.setenv("PREFECT_SERVER_API_PORT", "4300")
    assert local_server_url() == "http://127.0.0.1:4300/api"


class OtherPrefect(BaseHTTPRequestHandler):
    """Answers as a server of another Prefect version would."""

    def do_GET(self):
        body = json.dumps("2.0.0").encode() if self.path == "/api/admin/version" else b""
        self.send_response(200 if body else 404)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def test_a_server_of_another_prefect_version_is_not_used(monkeypatch, caplog):
    server = HTTPServer(("127.0.0.1", 0), OtherPrefect)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("PREFECT_SERVER_API_PORT", str(server.server_address[1]))
    try:
        with caplog.at_level(logging.INFO, "mlora.cli"):
            assert running_server() is None
    finally:
        server.shutdown()
    assert "a Prefect 2.0.0 server runs at" in caplog.text


@pytest.mark.slow
def test_mlora_data_uses_the_running_server_and_starts_none(tmp_path):
    env = prefect_env(tmp_path)
    procs: dict = {}
    try:
        base = start_prefect_server(tmp_path, env, procs)
        port = base.removesuffix("/api").rsplit(":", 1)[1]
        command = {**env, "PREFECT_SERVER_API_PORT": port}
        del command["PREFECT_API_URL"]
        done = subprocess.run(
            [sys.executable, "-m", "multilora_pipeline.flows.cli", "--workspace",
             str(tmp_path / "ws"), "data", str(REPO / "data_specs" / "demo_tiny.yaml")],
            capture_output=True, text=True, cwd=REPO, env=command, timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"using the Prefect server running at {base}" in done.stderr
        assert "temporary Prefect server" not in done.stderr
        runs = api(base, "/flow_runs/filter", {})
        assert {r["state_type"] for r in runs} == {"COMPLETED"} and len(runs) >= 1
        assert not (tmp_path / "ws" / "prefect" / "prefect.db").exists()  # no server of its own
    finally:
        for proc, _ in procs.values():
            stop_process_group(proc)
