"""Run a Python snippet in a fresh interpreter outside the repo, as a user of the registry would."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def run_fresh(script: str, args: list[str], cwd: Path, timeout: int = 180):
    """Run `script` with `args` in a new interpreter in `cwd` with a bare environment (no
    repo on the path, no project settings) and return the JSON it printed after `RESULT`."""
    done = subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={
            "PATH": "/usr/bin:/bin",
            "HOME": str(cwd),
            "HF_HUB_OFFLINE": "1",
            "MLFLOW_DISABLE_TELEMETRY": "true",
            "TOKENIZERS_PARALLELISM": "false",
        },
    )
    assert done.returncode == 0, done.stderr[-3000:]
    line = next(x for x in done.stdout.splitlines() if x.startswith("RESULT"))
    return json.loads(line.removeprefix("RESULT"))
