"""The Prefect server a command starts for itself (flows/temporary_server.py): it serves the
command's flows, a new workspace starts from the migrated template, it stops with the
command (killed too), and a server that cannot start is one error with its log."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from importlib.metadata import version

import pytest

from multilora_pipeline.data_specs.errors import PipelineError
from multilora_pipeline.flows.temporary_server import (
    TEMPORARY_API_ENV,
    TemporaryServer,
    database_is_current,
    database_template,
    mark_current,
    save_database_template,
    seed_database,
)
from multilora_pipeline.tasks.workspace import Workspace


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty user cache: no template yet."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def no_prefect_api():
    """Whatever API an earlier test set (the session harness) is not this test's."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        yield


def test_the_template_is_per_prefect_version_in_the_user_cache(cache):
    template = database_template()
    assert template.parent == cache / "multilora-pipeline"
    assert template.name.startswith(f"prefect-{version('prefect')}-")


def test_a_new_workspace_gets_a_whole_copy_of_the_template_once(cache, tmp_path):
    database = tmp_path / "prefect" / "prefect.db"
    database.parent.mkdir()
    assert not seed_database(database)  # no template yet: the server migrates
    assert not database.exists()

    source = tmp_path / "migrated.db"
    with sqlite3.connect(source) as db:
        db.execute("create table alembic_version (version_num text)")
        db.execute("insert into alembic_version values ('head')")
    save_database_template(source)
    assert seed_database(database)
    with sqlite3.connect(database) as db:
        assert db.execute("select version_num from alembic_version").fetchall() == [("head",)]
    database.write_bytes(b"the workspace's own")
    assert not seed_database(database)  # a workspace's database is never replaced
    assert database.read_bytes() == b"the workspace's own"
    assert sorted(p.name for p in database.parent.iterdir()) == ["prefect.db"]  # no .tmp


def test_a_database_migrated_by_this_prefect_is_not_migrated_again(cache, tmp_path):
    database = tmp_path / "prefect.db"
    assert not database_is_current(database)
    database.write_bytes(b"")
    assert not database_is_current(database)  # never started by a server here
    mark_current(database)
    assert database_is_current(database)
    marker = tmp_path / "prefect.db.migrated-by"
    marker.write_text("prefect-2.0.0-000000000000.db\n")  # another Prefect: migrate again
    assert not database_is_current(database)


@pytest.mark.slow  # starts Prefect servers
def test_the_server_serves_the_commands_flows_and_a_new_workspace_starts_from_the_template(
    cache, tmp_path, no_prefect_api
):
    from prefect import flow, task
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings

    @task
    def double(x: int) -> int:
        return 2 * x

    @flow
    def doubled(x: int) -> int:
        return double(x)

    first = Workspace.resolve(tmp_path / "first").ensure()
    with TemporaryServer(first) as server:
        with server.api():
            assert os.environ["PREFECT_API_URL"] == server.url == os.environ[TEMPORARY_API_ENV]
            assert doubled(21) == 42
            with get_client(sync_client=True) as client:
                (run,) = client.read_flow_runs()
                assert run.state.is_completed()
        assert "PREFECT_API_URL" not in os.environ and TEMPORARY_API_ENV not in os.environ
        assert get_current_settings().api.url is None
        process = server.process
    assert process.poll() is not None  # stopped with the block
    assert database_template().is_file()  # kept from the first, freshly migrated database
    assert database_is_current(first.prefect_home / "prefect.db")  # the next start skips it

    second = Workspace.resolve(tmp_path / "second").ensure()
    server = TemporaryServer(second)
    server.launch()
    try:
        assert (second.prefect_home / "prefect.db").is_file()  # seeded before it starts
        assert database_is_current(second.prefect_home / "prefect.db")
        with server.api():
            assert doubled(1) == 2
            with get_client(sync_client=True) as client:
                assert len(client.read_flow_runs()) == 1  # its own database, not a copy of runs
    finally:
        server.stop()


@pytest.mark.slow  # starts a Prefect server
def test_the_server_stops_when_its_command_is_killed(tmp_path):
    script = textwrap.dedent(
        f"""
        from multilora_pipeline.flows.temporary_server import TemporaryServer
        from multilora_pipeline.tasks.workspace import Workspace
        server = TemporaryServer(Workspace.resolve({str(tmp_path / "ws")!r}).ensure())
        server.launch()
        server.wait()
        print(server.process.pid, flush=True)
        import time; time.sleep(300)
        """
    )
    command = subprocess.Popen(
        [sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=os.environ.copy()
    )
    try:
        server_pid = int(command.stdout.readline())
    finally:
        command.kill()  # SIGKILL: no atexit, no finally
        command.wait()
    deadline = time.monotonic() + 15
    while _alive(server_pid):
        assert time.monotonic() < deadline, "the server outlived its command"
        time.sleep(0.2)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # Exited but not yet reaped by its new parent: a zombie holds no port, no database.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ")[1][0] != "Z"


@pytest.mark.slow  # starts a Prefect server (that fails)
def test_a_server_that_cannot_start_is_one_error_with_its_log(tmp_path, monkeypatch, cache):
    # A database in a folder that does not exist: Prefect's start-up fails on it.
    monkeypatch.setenv(
        "PREFECT_SERVER_DATABASE_CONNECTION_URL",
        f"sqlite+aiosqlite:///{tmp_path / 'no' / 'such' / 'prefect.db'}",
    )
    ws = Workspace.resolve(tmp_path / "ws").ensure()
    server = TemporaryServer(ws)
    server.launch()
    with pytest.raises(PipelineError) as error:
        server.wait()
    message = str(error.value)
    assert "Prefect's temporary server exited while starting" in message
    assert str(server.log_path) in message and "unable to open database file" in message
    assert server.process is None and not (ws.prefect_home / "prefect.db").exists()
    assert not database_template().exists()


def test_commands_say_when_they_start_a_temporary_server(tmp_path, caplog, cache):
    caplog.set_level("INFO", logger="mlora.cli")
    server = TemporaryServer(Workspace.resolve(tmp_path / "ws").ensure())
    server.launch()
    server.process.send_signal(signal.SIGKILL)  # the line is the point, not the server
    server.stop()
    (record,) = caplog.records
    assert "starting a temporary Prefect server" in record.message
    assert "PREFECT_API_URL" in record.message
