"""Screenshots of the MLflow UI for the README, taken with headless Chromium.

    .venv/bin/python docs/take_screenshots.py [--workspace /tmp/mlora-shots] [--port 5077]

Runs the demo pipeline until the workspace holds two finished pipeline runs
(~3 min on 2 cores the first time), starts `mlora ui` on 127.0.0.1, and
saves under docs/:

    mlflow_compare_runs.png      the run comparison of the two arms (what differs)
    mlflow_registered_model.png  the registered model: versions, tags, `champion` alias
    mlflow_model_version.png     the champion version: description, tags, source run

Needs Chromium (`apt-get install -y chromium`), driven over the DevTools
protocol so the script can close the assistant panel and flip switches; the
MLflow UI is a React app, so each page gets a few seconds to fetch and render.
Each PNG is reduced to a 256-colour palette to stay small. Not part of the
test suite.
"""

from __future__ import annotations

import argparse
import base64
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
SPEC = REPO / "data_specs" / "demo.yaml"
MODEL = "mlora-demo"
WINDOW = "1440,900"
# Seconds for the React app to fetch from the API and render after a navigation.
RENDER_SECONDS = 8.0
# UI state kept in the browser's localStorage: the assistant panel closed, the
# "Model training" (not GenAI) navigation.
UI_STATE = {
    "mlflow.assistant.panelOpen_v1": "false",
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": "true",
    "mlflow.workflowType_v1": '"machine_learning"',
}
CLOSE_ASSISTANT = '[data-component-id="mlflow.assistant.chat_panel.close"]'
MAX_PNG_BYTES = 300_000


def log(message: str) -> None:
    print(f"[screenshots] {message}", flush=True)


def mlora(workspace: Path, *args: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "multilora_pipeline.flows.cli",
        "--workspace",
        str(workspace),
        *args,
    ]


def finished_pipeline_runs(workspace: Path) -> list:
    from multilora_pipeline.tasks.registry.tracking import Tracker
    from multilora_pipeline.tasks.workspace import Workspace

    tracker = Tracker(Workspace.resolve(workspace), "demo")
    return tracker.client.search_runs(
        [tracker.experiment_id],
        "tags.`mlora.role` = 'pipeline' and attributes.status = 'FINISHED'",
        order_by=["attributes.start_time ASC"],
    )


def ensure_two_runs(workspace: Path) -> None:
    """Run the demo until the workspace has two finished pipeline runs."""
    done = len(finished_pipeline_runs(workspace)) if (workspace / "mlflow.db").exists() else 0
    for i in range(done, 2):
        log(f"demo run {i + 1}/2 in {workspace} ...")
        start = time.monotonic()
        subprocess.run(
            mlora(workspace, "run", str(SPEC)), cwd=REPO, check=True, stdout=subprocess.DEVNULL
        )
        log(f"demo run {i + 1}/2 done in {time.monotonic() - start:.0f}s")


def start_ui(workspace: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen(
        mlora(workspace, "ui", "--port", str(port)),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5):
                log(f"MLflow UI up on port {port}")
                return proc
        except OSError:
            if proc.poll() is not None:
                raise SystemExit("mlora ui exited before answering /health") from None
            time.sleep(0.5)
    stop(proc)
    raise SystemExit("mlora ui did not answer /health within 90 s")


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM the UI's process group, then SIGKILL what is left after 20 s."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if found := shutil.which(name):
            return found
    raise SystemExit("Chromium not found: apt-get install -y chromium")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Browser:
    """Headless Chromium driven over the DevTools protocol (websockets, no Selenium).

    Plain `chromium --screenshot` cannot click, and the MLflow UI needs a few
    clicks: close the assistant panel, switch the comparison to "diff only".
    """

    def __init__(self, profile: Path):
        port = free_port()
        self.proc = subprocess.Popen(
            [
                chromium_binary(),
                "--headless=new",
                "--no-sandbox",
                "--disable-gpu",
                "--hide-scrollbars",
                "--no-first-run",
                "--disable-extensions",
                f"--user-data-dir={profile}",
                f"--remote-debugging-port={port}",
                f"--window-size={WINDOW}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/json", timeout=5) as r:
                    page = next(t for t in json.loads(r.read()) if t["type"] == "page")
                break
            except (OSError, StopIteration):
                if time.monotonic() > deadline:
                    stop(self.proc)
                    raise SystemExit("Chromium's DevTools endpoint did not come up") from None
                time.sleep(0.3)
        from websockets.sync.client import connect

        self.ws = connect(page["webSocketDebuggerUrl"], max_size=100_000_000)
        self.ids = itertools.count(1)

    def call(self, method: str, **params):
        message_id = next(self.ids)
        self.ws.send(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:  # skip events until our answer arrives
            message = json.loads(self.ws.recv())
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message["result"]

    def js(self, expression: str):
        result = self.call(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        return result["result"].get("value")

    def open(self, url: str, settle: float = RENDER_SECONDS) -> None:
        self.call("Page.navigate", url=url)
        time.sleep(settle)  # the React app fetches from the API after the page loads
        # The assistant panel opens on a first visit and takes a third of the width.
        if self.js(f"!!document.querySelector('{CLOSE_ASSISTANT}')"):
            self.js(f"document.querySelector('{CLOSE_ASSISTANT}').click()")
            time.sleep(1)

    def screenshot(self, out: Path, width: int, height: int) -> None:
        self.call(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )
        time.sleep(2)  # re-layout at the new size
        data = self.call("Page.captureScreenshot", format="png")["data"]
        out.write_bytes(base64.b64decode(data))
        shrink(out)
        log(f"{out.relative_to(REPO)}: {out.stat().st_size // 1024} KiB")

    def close(self) -> None:
        self.ws.close()
        stop(self.proc)


def shrink(png: Path) -> None:
    from PIL import Image

    with Image.open(png) as image:
        small = image.convert("RGB").quantize(colors=256, method=Image.Quantize.MEDIANCUT)
    small.save(png, optimize=True)
    if png.stat().st_size > MAX_PNG_BYTES:
        log(f"warning: {png.name} is {png.stat().st_size // 1024} KiB (> 300 KiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workspace", default="/tmp/mlora-shots", type=Path)
    parser.add_argument("--port", default=5077, type=int)
    args = parser.parse_args()
    workspace = args.workspace.resolve()
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    ensure_two_runs(workspace)
    parents = finished_pipeline_runs(workspace)
    experiment = parents[0].info.experiment_id
    from multilora_pipeline.tasks.registry.tracking import Tracker
    from multilora_pipeline.tasks.workspace import Workspace

    tracker = Tracker(Workspace.resolve(workspace), "demo")
    arms = tracker.client.search_runs(
        [experiment],
        f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'",
        order_by=["attributes.start_time ASC"],
    )
    champion = tracker.client.get_model_version_by_alias(MODEL, "champion")

    ui = start_ui(workspace, args.port)
    browser = None
    try:
        browser = Browser(workspace / "chromium-profile")
        base = f"http://127.0.0.1:{args.port}/#"
        browser.open(f"{base}/models")
        browser.js(
            f"Object.entries({json.dumps(UI_STATE)}).forEach(([k, v]) => "
            "localStorage.setItem(k, v))"
        )
        browser.call("Page.reload")  # the app reads that state when it starts
        time.sleep(RENDER_SECONDS)

        runs = urllib.parse.quote(json.dumps([r.info.run_id for r in arms]))
        experiments = urllib.parse.quote(json.dumps([experiment]))
        browser.open(f"{base}/compare-runs?runs={runs}&experiments={experiments}")
        # "Show diff only" for params, metrics and tags: what differs between the arms.
        browser.js("document.querySelectorAll('[role=switch]').forEach(s => s.click())")
        browser.screenshot(DOCS / "mlflow_compare_runs.png", 1440, 2100)

        browser.open(f"{base}/models/{MODEL}")
        browser.screenshot(DOCS / "mlflow_registered_model.png", 1440, 1500)

        browser.open(f"{base}/models/{MODEL}/versions/{champion.version}")
        browser.screenshot(DOCS / "mlflow_model_version.png", 1440, 1250)
    finally:
        if browser is not None:
            browser.close()
        stop(ui)
        log("MLflow UI and Chromium stopped")


if __name__ == "__main__":
    main()
