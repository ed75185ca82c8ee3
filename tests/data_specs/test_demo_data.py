"""The bundled demo data is what its generator writes, and only the data is packaged."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import tomllib

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data_specs" / "demo"
GENERATOR = DEMO / "generator"


def test_regenerating_the_demo_data_gives_the_committed_bytes(tmp_path):
    subprocess.run(
        [sys.executable, str(GENERATOR), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    written = sorted(p.name for p in tmp_path.iterdir())
    committed = sorted(p.name for p in DEMO.iterdir() if p.is_file())
    assert written == committed
    changed = [n for n in written if (tmp_path / n).read_bytes() != (DEMO / n).read_bytes()]
    assert changed == [], "rerun the generator and commit its output, or fix what changed it"


def test_the_wheel_ships_the_demo_data_and_not_its_generator():
    patterns = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"][
        "package-data"
    ]["multilora_pipeline.data_specs"]
    shipped = {
        p for pattern in patterns for p in (REPO / "data_specs").glob(pattern) if p.is_file()
    }
    assert {p for p in DEMO.iterdir() if p.is_file()} <= shipped
    assert not [p for p in shipped if p.suffix == ".py" or GENERATOR in p.parents]
