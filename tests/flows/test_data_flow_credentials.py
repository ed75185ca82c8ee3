"""HF_TOKEN comes from the environment only and never reaches the catalog, the stage outputs,
the error message or the log output, whether the hub fetch works or fails."""

from __future__ import annotations

import logging

import pytest

from multilora_pipeline.data_specs.errors import DataError
from multilora_pipeline.tasks.catalog import TABLES, Catalog
from multilora_pipeline.tasks.workspace import Workspace
from tests.specs import BAD_INPUTS, one_source_spec

# the data flow on a Prefect server: left out by -m "not slow"
pytestmark = pytest.mark.slow

TOKEN = "hf_SeCrEtT0kenThatMustNeverLeak123"


def hub_spec(dataset_id: str):
    source = {
        "name": "hub",
        "hf": {"id": dataset_id, "split": "train"},
        "template": "gsm8k",
        "category": "math",
    }
    return one_source_spec("hub-token", source)


def catalog_text(ws: Workspace) -> str:
    if not ws.catalog_path.exists():
        return ""
    queries = {t: (f"SELECT * FROM {t}", ()) for t in TABLES}
    return repr(Catalog(ws.catalog_path).query_many(queries))


def files_text(ws: Workspace) -> str:
    """Every small text-like file the stages wrote (manifests, Parquet metadata and strings)."""
    out = []
    for path in (ws.data_dir).rglob("*"):
        if path.is_file() and path.suffix in (".json", ".parquet", ".jsonl"):
            out.append(path.read_bytes().decode("latin-1"))
    return "\n".join(out)


@pytest.fixture
def token(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return TOKEN


def run_in_flow(spec, ws: Workspace):
    from prefect import flow

    from multilora_pipeline.flows.data import run_data_stages

    @flow(name="hub-token")
    def run():
        try:
            return run_data_stages(spec, BAD_INPUTS, ws)
        except DataError as err:
            return err

    return run()


def test_token_stays_out_of_catalog_files_and_logs_on_success(
    prefect_harness, token, tmp_path, caplog, capfd
):
    folder = tmp_path / "local_hub_dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text(
        "".join(
            f'{{"question": "What is {i} plus {i}?", "answer": "{i} + {i} = {2 * i}\\n#### {2 * i}"}}\n'
            for i in range(3, 40)
        )
    )
    ws = Workspace.resolve(tmp_path / "workspace").ensure()
    with caplog.at_level(logging.DEBUG):
        outputs = run_in_flow(hub_spec(str(folder)), ws)
    assert not isinstance(outputs, Exception), outputs
    assert "hub" in catalog_text(ws)  # the source was recorded ...
    for text in (catalog_text(ws), files_text(ws), caplog.text, *capfd.readouterr()):
        assert token not in text  # ... without the token


def test_token_stays_out_of_a_hub_error_and_its_logs(
    prefect_harness, token, tmp_path, caplog, capfd, monkeypatch
):
    import datasets

    def echoing_load_dataset(*args, **kwargs):
        # Some HTTP errors echo request headers: the message then holds the token.
        raise ConnectionError(f"401 for url (Authorization: Bearer {kwargs.get('token')})")

    ws = Workspace.resolve(tmp_path / "workspace").ensure()
    with caplog.at_level(logging.DEBUG):
        offline = run_in_flow(hub_spec("no-such-org/no-such-dataset"), ws)
        monkeypatch.setattr(datasets, "load_dataset", echoing_load_dataset)
        echoed = run_in_flow(hub_spec("some-org/gated-dataset"), ws)
    assert isinstance(offline, DataError) and "cannot load the hub dataset" in str(offline)
    assert isinstance(echoed, DataError) and "Bearer ***" in str(echoed)
    for text in (str(offline), str(echoed), caplog.text, *capfd.readouterr()):
        assert token not in text
    assert catalog_text(ws) == ""  # a failed run leaves no catalog row
