"""The Prefect server an `mlora` command starts for itself when no server is configured.

Without an API, a flow call starts Prefect's own temporary server, and a command then pays,
one after the other and before any work: ~4 s importing Prefect's server in this process
only to launch it, ~5 s for the server to start, and ~9 s more in a new workspace, whose
Prefect database is migrated from nothing (`mlora data` on a real-sized spec spent 13 of its
25 s there). `TemporaryServer` instead:

- launches the server first, as a subprocess, so that its start overlaps this process's
  own (the spec's data checks, importing the flows);
- gives a new workspace a copy of a Prefect database already migrated by the same Prefect
  version: a template in the user's cache, saved by the first command on the machine;
- stops it when the command ends; the server also stops itself when its parent dies.

The server is Prefect's app as Prefect's temporary server runs it
(`create_app(ephemeral=True)`: the API and the services that record task runs, events and
logs; no UI, no scheduler), on 127.0.0.1, on a socket this process binds and hands over.
"""

from __future__ import annotations

import hashlib
import logging
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import closing, contextmanager
from importlib.metadata import entry_points, version
from pathlib import Path

from multilora_pipeline.data_specs.errors import PipelineError
from multilora_pipeline.models.content import write_text_atomic
from multilora_pipeline.tasks.workspace import Workspace

log = logging.getLogger("mlora.cli")

# Set while a command's flows use its temporary server: work pools' workers cannot reach it.
TEMPORARY_API_ENV = "MLORA_TEMPORARY_PREFECT_API"
# A database URL the user set means a database of their own: nothing to seed there.
DATABASE_URL_ENVS = (
    "PREFECT_SERVER_DATABASE_CONNECTION_URL",
    "PREFECT_API_DATABASE_CONNECTION_URL",
)


def database_template() -> Path:
    """Where a freshly migrated Prefect database is kept, for the installed Prefect and
    Prefect collections (their block types are registered in it)."""
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    collections = sorted(
        f"{entry.dist.name}=={entry.dist.version}"
        for entry in entry_points(group="prefect.collections")
        if entry.dist is not None
    )
    key = hashlib.sha256("\n".join(collections).encode()).hexdigest()[:12]
    return cache / "multilora-pipeline" / f"prefect-{version('prefect')}-{key}.db"


def seed_database(database: Path) -> bool:
    """Give a workspace without a Prefect database a copy of the template; False when it
    has one or there is no template yet. The copy appears whole or not at all (a link of a
    finished temporary file), so two commands starting at once cannot both seed it."""
    template = database_template()
    if database.exists() or not template.is_file():
        return False
    partial = database.with_name(f"{database.name}.tmp-{os.getpid()}")
    try:
        partial.write_bytes(template.read_bytes())
        os.link(partial, database)
    except FileExistsError:
        return False
    finally:
        partial.unlink(missing_ok=True)
    return True


def save_database_template(database: Path) -> None:
    """Keep a just-migrated database (schema and block types, no runs yet) as the template.
    SQLite's backup reads a consistent copy while the server has it open."""
    template = database_template()
    template.parent.mkdir(parents=True, exist_ok=True)
    partial = template.with_name(f"{template.name}.tmp-{os.getpid()}")
    try:
        with closing(sqlite3.connect(database)) as source:
            with closing(sqlite3.connect(partial)) as copy:
                source.backup(copy)
        os.replace(partial, template)
    except (OSError, sqlite3.Error) as err:  # only a cache: the next new workspace migrates
        log.warning("could not keep the Prefect database template %s: %s", template, err)
    finally:
        partial.unlink(missing_ok=True)


def _current_marker(database: Path) -> Path:
    return database.with_name(f"{database.name}.migrated-by")


def database_is_current(database: Path) -> bool:
    """Whether a workspace's database was last migrated by the installed Prefect and Prefect
    collections (the template's name says which); False when it has no database."""
    marker = _current_marker(database)
    return (
        database.is_file()
        and marker.is_file()
        and marker.read_text().strip() == database_template().name
    )


def mark_current(database: Path) -> None:
    """Record that the installed Prefect has migrated `database` (a server started on it)."""
    write_text_atomic(_current_marker(database), database_template().name + "\n")


class TemporaryServer:
    """One command's Prefect server: `launch()` early, `api()` around the flow call,
    `stop()` at the end (or use it as a context manager, which launches and stops)."""

    def __init__(self, ws: Workspace):
        self.ws = ws
        self.log_path = ws.prefect_home / "temporary-server.log"
        self.database: Path | None = (
            None
            if any(os.environ.get(name) for name in DATABASE_URL_ENVS)
            else ws.prefect_home / "prefect.db"
        )
        self.process: subprocess.Popen | None = None
        self.url = ""
        self._new_database = self._seeded = self._current = False
        self._ready = False

    def __enter__(self) -> TemporaryServer:
        self.launch()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def launch(self) -> None:
        """Start the server process and return at once (it answers ~5 s later)."""
        if self.database is not None:
            self._seeded = seed_database(self.database)
            self._new_database = not self._seeded and not self.database.exists()
            if self._seeded:  # the template was migrated by this Prefect
                mark_current(self.database)
            self._current = database_is_current(self.database)
        env = {
            **os.environ,
            "PREFECT_HOME": str(self.ws.prefect_home),  # the database seeded above
            "PREFECT_SERVER_UI_ENABLED": "false",
        }
        if self._current:
            # Migrated, and its block types registered, by this Prefect and these collections:
            # checking the migrations again (alembic reads every revision) and registering
            # the blocks again would only repeat work.
            env["PREFECT_SERVER_DATABASE_MIGRATE_ON_START"] = "false"
            env["PREFECT_SERVER_REGISTER_BLOCKS_ON_START"] = "false"
        with socket.socket() as sock:
            # Bound here and handed over, not picked and re-bound: no other process can
            # take the port in between. Not listening until the server does, so a health
            # probe before then is refused instead of hanging.
            sock.bind(("127.0.0.1", 0))
            self.url = f"http://127.0.0.1:{sock.getsockname()[1]}/api"
            with self.log_path.open("ab") as out:
                out.write(f"--- {time.strftime('%F %T')} for pid {os.getpid()}\n".encode())
                out.flush()
                self.process = subprocess.Popen(
                    [
                        sys.executable,
                        "-m",
                        __name__,
                        str(sock.fileno()),
                        str(os.getpid()),
                    ],
                    pass_fds=[sock.fileno()],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                )
        log.info(
            "no PREFECT_API_URL: starting a temporary Prefect server for this command "
            "(~5 s, alongside the checks; with `prefect server start` running and "
            "PREFECT_API_URL exported, commands skip it)"
        )

    def wait(self) -> str:
        """Block until the server answers; its API URL. One error, with the end of the
        server's log, when it exits or does not answer in time."""
        if self._ready:
            return self.url
        started = time.monotonic()
        timeout = float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", 90))
        while True:
            if self.process is None or self.process.poll() is not None:
                self._fail("exited while starting")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() - started > timeout:
                self._fail(f"did not answer within {timeout:.0f} s")
            time.sleep(0.1)
        self._ready = True
        if self.database is not None and not self._current:
            mark_current(self.database)
            if self._new_database:
                save_database_template(self.database)
        return self.url

    def _fail(self, what: str):
        self.stop()
        tail = self.log_path.read_text(errors="replace")[-2000:] if self.log_path.exists() else ""
        raise PipelineError(
            f"Prefect's temporary server {what}; the end of its log:\n{tail}",
            where=str(self.log_path),
            fix="fix what the log names, or start `prefect server start` and export "
            "PREFECT_API_URL",
        )

    @contextmanager
    def api(self):
        """Point Prefect at the server for the block, once it answers, unless Prefect
        already has an API (a profile, prefect.toml, a test harness): then the server is
        not needed and stops. Prefect's queued logs and events are sent before leaving."""
        from prefect.settings import (
            PREFECT_API_URL,
            PREFECT_FLOWS_HEARTBEAT_FREQUENCY,
            PREFECT_UI_URL,
            get_current_settings,
            temporary_settings,
        )

        if get_current_settings().api.url:
            self.stop()
            yield
            return
        url = self.wait()
        saved = {name: os.environ.get(name) for name in ("PREFECT_API_URL", TEMPORARY_API_ENV)}
        # The environment too: processes the flow starts (Dask workers) report here.
        os.environ["PREFECT_API_URL"] = os.environ[TEMPORARY_API_ENV] = url
        try:
            updates = {
                PREFECT_API_URL: url,
                # No "View at" links to a UI this server does not serve.
                PREFECT_UI_URL: "",
                # Heartbeats find runs whose process died; this server dies with the
                # process. Joining the heartbeat thread also costs each flow up to 1 s.
                PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None,
            }
            with temporary_settings(updates=updates):
                try:
                    yield
                finally:
                    _send_queued_logs_and_events()
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _send_queued_logs_and_events() -> None:
    """Prefect sends logs and events from background workers; drained here, before the
    server stops, they reach it (and the next command's workers start on its new URL)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=10)
    EventsWorker.drain_all(timeout=10)


def _stop_when_orphaned(parent: int) -> None:
    """A command killed with SIGKILL cannot stop its server: the server stops itself once
    its parent is gone (it is then re-parented)."""
    while os.getppid() == parent:
        time.sleep(1)
    os.kill(os.getpid(), signal.SIGTERM)


def serve(fd: int, parent: int) -> None:
    """The server process: Prefect's app, as its temporary server runs it, on socket `fd`."""
    import uvicorn
    from prefect.server.api.server import create_app

    threading.Thread(target=_stop_when_orphaned, args=(parent,), daemon=True).start()
    sock = socket.socket(fileno=fd)
    app = create_app(ephemeral=True, final=True)
    config = uvicorn.Config(app, log_level="error", lifespan="on")
    uvicorn.Server(config).run(sockets=[sock])


if __name__ == "__main__":
    serve(int(sys.argv[1]), int(sys.argv[2]))
