"""Where `mlora data` spends its wall time on a real-sized spec: on the data, or on Prefect.

    .venv/bin/python benchmarks/data_command.py                  # 2 runs per case
    .venv/bin/python benchmarks/data_command.py --repeats 3 --data DIR --formats DIR

The spec is the one benchmarks/real_data_report.py writes (../shared/data/real and
../shared/data/formats: 16 sources and suites, a 6,828-row mixture). Each case runs the
command in a fresh process, and every case but `same_workspace_again` in a new workspace:

- `prefects_temporary_server`: the command as it was before flows/temporary_server.py:
  checks, then the flow call, which starts Prefect's own temporary server (the baseline);
- `first_on_this_machine`: `mlora data`, its user cache empty (no Prefect database
  template yet: the new workspace's database is migrated from nothing);
- `new_workspace`: `mlora data` again in a new workspace: seeded from the template;
- `same_workspace_again`: the workspace of the last run: its stages are all reused;
- `running_prefect_server`: `prefect server start` running, PREFECT_API_URL exported;
- `running_prefect_server_found`: the same server, PREFECT_API_URL not exported: the
  command finds it where `prefect server start` listens (flows/running_server.py), and
  `..._found_under_load` with one busy process per core beside it;
- `new_workspace_under_load`: `mlora data` in a new workspace while one busy process per
  CPU core competes with it (a training run or a test suite beside it: issue 26).

Phases come from the command's own log lines: `checks` (start to the data checks' end),
`to_flow` (to "Beginning flow run": the flows' imports and waiting for the server),
`stages` (the flow's "data stages done in"), `rest` (to the process's exit). `data_s` is
the checks' own time plus the stages. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from multilora_pipeline.flows.local_servers import (
    free_port,
    prefect_env,
    start_prefect_server,
    stop_process_group,
)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.real_data_report import DEFAULT_DATA, DEFAULT_FORMATS, write_spec  # noqa: E402

# The command as it ran before: the same checks, then the flow call (Prefect's server).
BASELINE = """
import sys
from pathlib import Path
from multilora_pipeline.data_specs.schema import check_local_files, load_spec
from multilora_pipeline.tasks.workspace import Workspace
import logging
ws = Workspace.resolve(sys.argv[2]).activate()
logging.basicConfig(level=logging.INFO, format="%(name)s %(message)s")
spec, base = load_spec(sys.argv[1], data_only=True)
check_local_files(spec, Path(sys.argv[1]).resolve(), base)
from multilora_pipeline.tasks.data.preflight import check_local_data
check_local_data(spec, base, ws)
from multilora_pipeline.flows.data import data_flow
data_flow(sys.argv[1], str(ws.root))
"""

CHECKS = re.compile(r"checked the spec's local data files in ([\d.]+)s")
STAGES = re.compile(r"data stages done in ([\d.]+)s")


def timed_run(command: list[str], env: dict) -> dict:
    """One command; the wall time of each phase, from when its log lines appeared."""
    started = time.perf_counter()
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO
    )
    marks: dict[str, float] = {}
    lines = []
    for line in proc.stdout:
        now = time.perf_counter() - started
        lines.append(line)
        if match := CHECKS.search(line):
            marks["checks_end"], marks["checks_own"] = now, float(match[1])
        elif "Beginning flow run" in line and "flow_begin" not in marks:
            marks["flow_begin"] = now
        elif match := STAGES.search(line):
            marks["stages_end"], marks["stages"] = now, float(match[1])
    wall = time.perf_counter() - started
    if proc.wait() != 0 or len(marks) < 5:
        raise SystemExit(f"{command} failed or logged no phases:\n{''.join(lines)[-3000:]}")
    return {
        "wall_s": round(wall, 2),
        "checks_s": round(marks["checks_end"], 2),
        "to_flow_s": round(marks["flow_begin"] - marks["checks_end"], 2),
        "stages_s": round(marks["stages"], 2),
        "rest_s": round(wall - marks["stages_end"], 2),
        "data_s": round(marks["checks_own"] + marks["stages"], 2),
        "data_share": round((marks["checks_own"] + marks["stages"]) / wall, 3),
    }


@contextmanager
def cpu_load():
    """One busy Python process per core for the duration of the block."""
    busy = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"])
        for _ in range(os.cpu_count() or 1)
    ]
    try:
        yield
    finally:
        for proc in busy:
            proc.kill()
            proc.wait()


def summary(runs: list[dict]) -> dict:
    """The median of each figure over the runs, and the runs themselves."""
    medians = {key: round(statistics.median(r[key] for r in runs), 3) for key in runs[0]}
    return {**medians, "runs": runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--formats", default=str(DEFAULT_FORMATS))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="mlora-data-command-") as tmp:
        work = Path(tmp)
        spec = str(write_spec(Path(args.data), Path(args.formats), work))
        env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
        env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", MLFLOW_DISABLE_TELEMETRY="true")
        # Where the commands look for a running server: nothing there but in the cases
        # that start one (a server the user runs on 4200 would skew the others).
        env["PREFECT_SERVER_API_PORT"] = str(free_port())
        mlora = [sys.executable, "-m", "multilora_pipeline.flows.cli", "data", spec]
        count = iter(range(10**6))

        def workspace() -> str:
            return str(work / f"ws{next(count)}")

        cases: dict[str, list[dict]] = {name: [] for name in CASES}
        for repeat in range(args.repeats):
            cache = {**env, "XDG_CACHE_HOME": str(work / f"cache{repeat}")}
            cases["prefects_temporary_server"].append(
                timed_run([sys.executable, "-c", BASELINE, spec, workspace()], cache)
            )
            cases["first_on_this_machine"].append(
                timed_run([*mlora, "--workspace", workspace()], cache)
            )
            last = workspace()
            cases["new_workspace"].append(timed_run([*mlora, "--workspace", last], cache))
            cases["same_workspace_again"].append(timed_run([*mlora, "--workspace", last], cache))
            with cpu_load():
                cases["new_workspace_under_load"].append(
                    timed_run([*mlora, "--workspace", workspace()], cache)
                )
        procs: dict = {}
        (work / "server").mkdir()
        server_env = prefect_env(work / "server")
        try:
            base = start_prefect_server(work / "server", server_env, procs)
            found = {**env, "PREFECT_SERVER_API_PORT": base.removesuffix("/api").rsplit(":")[-1]}
            for _ in range(args.repeats):
                cases["running_prefect_server"].append(
                    timed_run([*mlora, "--workspace", workspace()], {**env, **server_env})
                )
                cases["running_prefect_server_found"].append(
                    timed_run([*mlora, "--workspace", workspace()], found)
                )
                with cpu_load():
                    cases["running_prefect_server_found_under_load"].append(
                        timed_run([*mlora, "--workspace", workspace()], found)
                    )
        finally:
            for proc, _ in procs.values():
                stop_process_group(proc)
    print(
        json.dumps(
            {
                "benchmark": "data_command",
                "spec": "benchmarks/real_data_report.py write_spec (6,828-row mixture)",
                "cpus": os.cpu_count(),
                "cases": {name: summary(runs) for name, runs in cases.items()},
            },
            indent=2,
        )
    )


CASES = (
    "prefects_temporary_server",
    "first_on_this_machine",
    "new_workspace",
    "same_workspace_again",
    "running_prefect_server",
    "running_prefect_server_found",
    "new_workspace_under_load",
    "running_prefect_server_found_under_load",
)

if __name__ == "__main__":
    main()
