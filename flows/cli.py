"""`mlora`: the command line.

    mlora run SPEC            the whole DAG, then a summary (--training-pool P: train on
                              Prefect work pool P, e.g. a GPU worker's)
    mlora data SPEC           the data stages alone, then the per-source table
                              (--task-runner dask|ray [--ray-address HOST:PORT])
    mlora ui                  the MLflow UI for the workspace, on 127.0.0.1
    mlora promote NAME VER    point the `champion` alias at a version
    mlora rollback NAME       give `champion` back to the previous holder
    mlora serve SPEC --cron   the pipeline as a Prefect deployment on a schedule
                              (--training-pool P: its training on work pool P)
    mlora lm-eval-tasks SPEC DIR   the spec's suites as lm-evaluation-harness tasks

The workspace is activated before Prefect is imported, because Prefect reads
PREFECT_HOME once, at import time.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import sys
from contextlib import nullcontext
from pathlib import Path

from multilora_pipeline.data_specs.errors import PipelineError
from multilora_pipeline.data_specs.schema import check_local_files, load_spec
from multilora_pipeline.flows.run_report import format_summary
from multilora_pipeline.flows.running_server import running_server
from multilora_pipeline.flows.temporary_server import TemporaryServer
from multilora_pipeline.tasks.stores import check_stores
from multilora_pipeline.tasks.workspace import ENV_VAR, Workspace


def _parser() -> argparse.ArgumentParser:
    # --workspace is accepted before or after the command (`mlora --workspace W ui` and
    # `mlora ui --workspace W`); SUPPRESS keeps a sub-command from resetting the other.
    workspace = argparse.ArgumentParser(add_help=False)
    workspace.add_argument(
        "--workspace",
        default=argparse.SUPPRESS,
        help=f"workspace root (default ${ENV_VAR} or ./workspace)",
    )
    parser = argparse.ArgumentParser(
        prog="mlora", description=__doc__.split("\n\n")[0], parents=[workspace]
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, **kwargs) -> argparse.ArgumentParser:
        return sub.add_parser(name, parents=[workspace], **kwargs)

    run = command("run", help="run the whole pipeline on a spec")
    run.add_argument("spec", help="path to a YAML spec, e.g. data_specs/demo.yaml")
    run.add_argument(
        "--summary-json", help="also write the run's summary (metrics, stage times) to this file"
    )
    run.add_argument("--training-pool", help=TRAINING_POOL_HELP)
    data = command("data", help="run the data stages only and print the per-source table")
    data.add_argument("spec")
    data.add_argument(
        "--task-runner",
        choices=["threads", "dask", "ray"],
        default="threads",
        help="threads (default), a local Dask cluster (prefect-dask) or Ray (prefect-ray)",
    )
    data.add_argument(
        "--ray-address",
        help="with --task-runner ray: the cluster's address (HOST:PORT of `ray start --head`); "
        "default: RAY_ADDRESS, else a Ray started in this process",
    )
    ui = command("ui", help="serve the MLflow UI for the workspace on 127.0.0.1")
    ui.add_argument("--port", type=_port, default=5000)
    promote = command("promote", help="make VERSION the champion of registered model NAME")
    promote.add_argument("name")
    promote.add_argument("version")
    rollback = command("rollback", help="restore the previous champion of NAME")
    rollback.add_argument("name")
    serve = command(
        "serve",
        help="serve the pipeline on SPEC as a Prefect deployment with a cron schedule",
        description="Blocks and executes the deployment's runs until stopped (SIGTERM or "
        "Ctrl-C). Schedules fire only against a Prefect server (export PREFECT_API_URL); "
        "without one, trigger runs with `prefect deployment run mlora-pipeline/NAME`.",
    )
    serve.add_argument("spec")
    serve.add_argument(
        "--cron",
        default="0 3 * * *",
        help='cron schedule, five fields (default "0 3 * * *": 03:00 daily)',
    )
    serve.add_argument("--name", help="deployment name (default: the spec name)")
    serve.add_argument("--timezone", help="IANA timezone of the schedule (default UTC)")
    serve.add_argument("--training-pool", help=TRAINING_POOL_HELP)
    lm_eval = command(
        "lm-eval-tasks",
        help="write the spec's suites as lm-evaluation-harness tasks (YAML + data) in DIR",
    )
    lm_eval.add_argument("spec")
    lm_eval.add_argument("dir", help="folder for the task YAMLs and data files")
    return parser


TRAINING_POOL_HELP = (
    "train on this Prefect work pool (a GPU worker) instead of in this process; overrides "
    "the spec's training.work_pool (needs PREFECT_API_URL)"
)


def _port(text: str) -> int:
    """A TCP port number (argparse turns the ValueError into a usage error, exit code 2)."""
    port = int(text)
    if not 1 <= port <= 65535:
        raise ValueError(text)
    return port


def _check_port_free(port: int) -> None:
    """Fail before exec'ing the MLflow server: after exec its bind error would exit 0."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As servers bind (MLflow's too): a port left in TIME_WAIT by a stopped `mlora ui` is
        # free to use, one with a listener is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise PipelineError(
                f"port {port} on 127.0.0.1 is in use ({exc.strerror})",
                fix=f"stop what listens there, or pick another port: mlora ui --port {port + 1}",
            ) from None


def _tracker(ws: Workspace, name: str):
    from multilora_pipeline.tasks.registry.tracking import Tracker

    # The registry is shared by all experiments of the workspace; any experiment name works.
    return Tracker(ws, name.removeprefix("mlora-"))


class QuietPipelineErrors(logging.Filter):
    """Drop Prefect's "failed with exception" records, traceback included, for a PipelineError:
    main prints it once as `error: ...`, and the run's final state line (also in the Prefect
    UI) still carries its message."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], PipelineError))


QUIET_PIPELINE_ERRORS = QuietPipelineErrors()  # one instance: addFilter skips a repeat


def use_running_server() -> None:
    """With no PREFECT_API_URL, a `prefect server start` running here is used as if its URL
    had been exported (flows/running_server.py)."""
    if os.environ.get("PREFECT_API_URL"):
        return
    found = running_server()
    if found:
        os.environ["PREFECT_API_URL"] = found
        logging.getLogger("mlora.cli").info(
            "using the Prefect server running at %s (PREFECT_API_URL is not set): this "
            "command's flow runs show in its UI",
            found,
        )


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if getattr(args, "ray_address", None) and args.task_runner != "ray":
        parser.error("--ray-address is read by the Ray task runner only: add --task-runner ray")
    try:
        ws = Workspace.resolve(getattr(args, "workspace", None)).activate()
    except PipelineError as err:  # before Prefect starts: it needs the workspace writable
        print(f"error: {err}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(message)s", datefmt="%H:%M:%S"
    )
    # One line per request to Prefect's local API (some 422s by design) and MLflow's
    # bookkeeping (system-metrics monitor start/stop, table creation) would bury ours.
    for noisy in ("httpx", "mlflow"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).addFilter(QUIET_PIPELINE_ERRORS)
    spec = spec_dir = None
    try:
        if args.command in ("run", "data", "serve", "lm-eval-tasks"):
            # A spec mistake is reported in a second, before Prefect and torch import.
            spec, spec_dir = load_spec(args.spec, data_only=args.command == "data")
            if args.command != "serve":  # a scheduled run may find files that appear later
                check_local_files(spec, Path(args.spec).resolve(), spec_dir)
        if args.command in ("run", "data"):  # a damaged store, before the server starts
            check_stores(ws, tracking=args.command == "run")
        if args.command in ("run", "data", "lm-eval-tasks", "serve"):
            use_running_server()
        # Launched now, it starts (~5 s) while the data is checked and the flows import.
        server = (
            TemporaryServer(ws)
            if args.command in ("run", "data", "lm-eval-tasks")
            and not os.environ.get("PREFECT_API_URL")
            else None
        )
        with server or nullcontext():
            return _command(args, ws, spec, spec_dir, server.api if server else nullcontext)
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _command(args, ws: Workspace, spec, spec_dir, prefect_api) -> int:
    """Run one command; `prefect_api()` is the block in which flows reach a Prefect API."""
    if args.command in ("run", "data", "lm-eval-tasks"):
        # A bad row: the fetch and normalise stages' own checks, run before Prefect's.
        from multilora_pipeline.tasks.data.preflight import check_local_data

        check_local_data(spec, spec_dir, ws)
    if args.command == "run":
        from multilora_pipeline.flows.pipeline import pipeline_flow

        with prefect_api():
            summary = pipeline_flow(args.spec, str(ws.root), args.training_pool)
        if args.summary_json:
            Path(args.summary_json).write_text(json.dumps(summary, indent=2) + "\n")
        print(format_summary(summary))
    elif args.command == "data":
        from multilora_pipeline.flows.data import data_flow, format_source_table

        with prefect_api():
            outputs = data_flow(
                args.spec,
                str(ws.root),
                task_runner=args.task_runner,
                runner_address=args.ray_address,
            )
        print(format_source_table(outputs))
    elif args.command == "lm-eval-tasks":
        from multilora_pipeline.flows.lm_eval_export import lm_eval_tasks_flow

        with prefect_api():
            written = lm_eval_tasks_flow(args.spec, args.dir, str(ws.root))
        for task, info in written["tasks"].items():
            print(f"{task}: {info['items']} items ({info['yaml']})")
        print(f"run them on a version's PEFT export ($PEFT):\n  {written['command']}")
    elif args.command == "ui":
        if ws.tracking_server:  # its own UI shows the runs: nothing to start here
            print(f"the runs are on the MLflow tracking server: open {ws.tracking_server}")
            return 0
        _check_port_free(args.port)
        cmd = [
            sys.executable,
            "-m",
            "mlflow",
            "ui",
            "--backend-store-uri",
            ws.tracking_uri,
            "--default-artifact-root",
            ws.artifacts_dir.as_uri(),
            "--host",
            "127.0.0.1",
            "--port",
            str(args.port),
        ]
        print(
            f"MLflow UI for {ws.root} on http://127.0.0.1:{args.port} (Ctrl-C to stop)",
            flush=True,
        )
        # Become the server (exec): a signal to `mlora ui` then reaches MLflow itself.
        os.execve(sys.executable, cmd, os.environ.copy())
    elif args.command == "promote":
        from multilora_pipeline.tasks.registry.promote import promote

        previous = promote(_tracker(ws, args.name), args.name, args.version)
        print(f"{args.name}: champion is now v{args.version} (was v{previous})")
    elif args.command == "serve":
        from multilora_pipeline.flows.deploy import serve_pipeline

        serve_pipeline(
            args.spec,
            str(ws.root),
            cron=args.cron,
            name=args.name,
            timezone=args.timezone,
            training_pool=args.training_pool,
        )
    elif args.command == "rollback":
        from multilora_pipeline.tasks.registry.promote import rollback

        restored = rollback(_tracker(ws, args.name), args.name)
        print(f"{args.name}: champion rolled back to v{restored}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
