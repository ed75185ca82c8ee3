"""The bad-input corpus through the data flow: each case fails with its clear error and leaves
no catalog row (and no half-written file); a good control run in the same harness does write."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from multilora_pipeline.data_specs.errors import DataError
from multilora_pipeline.tasks.catalog import Catalog
from multilora_pipeline.tasks.workspace import Workspace
from tests.specs import BAD_INPUTS, DEMO_DATA, one_source_spec

# the data flow on a Prefect server: left out by -m "not slow"
pytestmark = pytest.mark.slow

CASES = json.loads((BAD_INPUTS / "CASES.json").read_text())["cases"]
CONTROL = {
    "kind": "control",
    "file": str(DEMO_DATA / "math_train.jsonl"),
    "template": "gsm8k",
}


def slug(kind: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", kind.lower())


@pytest.fixture(scope="module")
def outcomes(prefect_harness, tmp_path_factory) -> dict[str, tuple[Path, Exception | None]]:
    """Every case run through `run_data_stages` inside ONE flow (a flow run costs ~1 s; the
    stages themselves fail in milliseconds), each in its own fresh workspace."""
    from prefect import flow

    from multilora_pipeline.flows.data import run_data_stages

    root = tmp_path_factory.mktemp("bad_inputs")

    @flow(name="bad-input-corpus")
    def run_every_case() -> dict:
        results = {}
        for case in [*CASES, CONTROL]:
            ws = Workspace.resolve(root / slug(case["kind"])).ensure()
            source = {
                "name": "bad",
                "path": case["file"],
                "template": case["template"],
                "category": "math",
                **case.get("location", {}),
            }
            try:
                run_data_stages(one_source_spec("bad-input", source), BAD_INPUTS, ws)
                results[case["kind"]] = (ws.root, None)
            except DataError as err:
                results[case["kind"]] = (ws.root, err)
        return results

    return run_every_case()


def catalog_rows(root: Path) -> int:
    path = Workspace.resolve(root).catalog_path
    return sum(Catalog(path).counts().values()) if path.exists() else 0


@pytest.mark.parametrize("case", CASES, ids=[c["kind"] for c in CASES])
def test_bad_input_fails_clearly_and_leaves_no_catalog_row(outcomes, case):
    root, err = outcomes[case["kind"]]
    assert err is not None, "the data flow accepted a bad input"
    message = str(err)
    assert case["file"] in message
    for fragment in case["expect"]:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert err.fix, "every error says what to do"
    assert catalog_rows(root) == 0
    assert not [p for p in (root / "data").rglob("*") if ".tmp" in p.name]


def test_the_control_run_writes_the_catalog(outcomes):
    root, err = outcomes["control"]
    assert err is None
    counts = Catalog(Workspace.resolve(root).catalog_path).counts()
    assert counts["mixtures"] == 1 and counts["sources"] == 1
