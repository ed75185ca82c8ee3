"""A Prefect server the user already runs on this machine, found without PREFECT_API_URL.

`prefect server start` listens on PREFECT_SERVER_API_HOST:PREFECT_SERVER_API_PORT
(127.0.0.1:4200 unless set). A command with no PREFECT_API_URL first looks there: a server
of this Prefect's version that answers is used as if its URL had been exported, so the
command skips starting a temporary server (flows/temporary_server.py: ~3.5 s alone, ~5.6 s
on a busy machine, benchmarks/data_command.py) and its flow runs show in that server's UI.
Nothing listening costs one refused connection (well under a millisecond); a server of
another Prefect version is not used (the client and server would disagree on the API).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import urllib.request
from importlib.metadata import version

log = logging.getLogger("mlora.cli")

DEFAULT_HOST, DEFAULT_PORT = "127.0.0.1", 4200  # `prefect server start`'s own defaults
CONNECT_TIMEOUT_S = 0.2
ANSWER_TIMEOUT_S = 2.0


def local_server_url() -> str:
    """Where `prefect server start` listens with this environment's settings."""
    host = os.environ.get("PREFECT_SERVER_API_HOST") or DEFAULT_HOST
    if host in ("0.0.0.0", "::"):  # every interface: this machine's is one of them
        host = DEFAULT_HOST
    port = os.environ.get("PREFECT_SERVER_API_PORT") or DEFAULT_PORT
    return f"http://{host}:{port}/api"


def running_server() -> str | None:
    """The API URL of a Prefect server of this version listening locally, else None."""
    url = local_server_url()
    host, port = url.removeprefix("http://").removesuffix("/api").rsplit(":", 1)
    try:
        with socket.create_connection((host.strip("[]"), int(port)), CONNECT_TIMEOUT_S):
            pass
    except (OSError, ValueError):
        return None  # nothing there: the usual case, one refused connection
    try:
        with urllib.request.urlopen(f"{url}/admin/version", timeout=ANSWER_TIMEOUT_S) as answer:
            theirs = json.loads(answer.read())
    except (OSError, ValueError):
        log.info("%s does not answer as a Prefect server: not using it", url)
        return None
    ours = version("prefect")
    if theirs != ours:
        log.info(
            "a Prefect %s server runs at %s, but this is Prefect %s: not using it "
            "(export PREFECT_API_URL to use it anyway)",
            theirs,
            url,
            ours,
        )
        return None
    return url
