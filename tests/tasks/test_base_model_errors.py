"""A base model that cannot be found or fetched fails with one TrainingError naming
base_model.name_or_path and what to do, from the real transformers / huggingface_hub calls.

Hub answers (gated, no such repo, no such revision) come from a local stand-in for
huggingface.co that replies the way the hub does (status + X-Error-Code header).
"""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hf_constants
from transformers import LlamaConfig

from multilora_pipeline.data_specs.errors import TrainingError
from multilora_pipeline.models.tiny import build_tiny_model
from multilora_pipeline.tasks.training.base_model import check_base_model
from multilora_pipeline.tasks.training.loading import load_base
from tests.specs import one_source_spec

FIELD = "base_model.name_or_path"
# A valid spec's one good source (tests/data_specs/bad_inputs): only `base_model` varies.
GOOD = {"name": "train", "path": "good.jsonl", "template": "gsm8k", "category": "math"}


def load(name_or_path: str, revision: str | None = None):
    return load_base(name_or_path, revision=revision, dtype=torch.float32, trust_remote_code=False)


@pytest.fixture
def empty_offline_cache(monkeypatch, tmp_path) -> Path:
    """Offline, with an empty HF cache: no real download or cached model can be found.

    huggingface_hub reads these settings once at import, so its constants are patched too.
    """
    cache = tmp_path / "hf" / "hub"
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    return cache


def test_missing_local_folder(empty_offline_cache, tmp_path):
    missing = tmp_path / "nomodel"
    with pytest.raises(TrainingError) as err:
        load(str(missing))
    text = str(err.value)
    assert f"{FIELD} '{missing}'" in text and f"no folder {missing}" in text
    assert "the folder must exist and hold config.json" in text
    assert "Repo id must be in the form" not in text  # transformers' own words stay out


def test_folder_without_config_json(empty_offline_cache, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(TrainingError, match="has no config.json") as err:
        load(str(tmp_path / "empty"))
    assert FIELD in str(err.value) and "must hold config.json" in str(err.value)


def test_folder_with_config_but_no_tokenizer(empty_offline_cache, tmp_path):
    LlamaConfig(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2
    ).save_pretrained(tmp_path / "config-only")
    with pytest.raises(TrainingError, match="cannot load from folder") as err:
        load(str(tmp_path / "config-only"))
    assert FIELD in str(err.value) and "the tokenizer files" in str(err.value)


@pytest.mark.parametrize("revision", [None, "v1"])
def test_offline_hub_id_not_in_cache(empty_offline_cache, revision):
    with pytest.raises(TrainingError) as err:
        load("mlora-tests/not-cached", revision)
    text = str(err.value)
    assert f"{FIELD} 'mlora-tests/not-cached'" in text
    assert "not in the Hugging Face cache" in text and str(empty_offline_cache) in text
    assert "HF_HUB_OFFLINE is set" in text
    download = "hf download mlora-tests/not-cached" + (" --revision v1" if revision else "")
    assert f"download it once online ({download} --cache-dir {empty_offline_cache})" in text
    assert "or point base_model.name_or_path at a local folder" in text


def test_check_names_the_spec_file_and_fails_like_the_loader(empty_offline_cache, tmp_path):
    spec = one_source_spec("base-model-errors", GOOD, {"name_or_path": str(tmp_path / "nomodel")})
    with pytest.raises(TrainingError) as err:
        check_base_model(spec, tmp_path / "run.yaml")
    assert str(err.value).startswith(f"spec {tmp_path / 'run.yaml'}, {FIELD} '")
    assert "the folder must exist and hold config.json" in str(err.value)


def test_check_passes_for_a_loadable_folder_and_skips_the_tiny_model(empty_offline_cache, tmp_path):
    texts = [f"the {w} sat on the mat" for w in ("cat", "dog", "owl", "fox")] * 8
    folder = build_tiny_model(
        tmp_path / "model",
        texts,
        vocab_size=300,
        hidden_size=16,
        intermediate_size=32,
        num_layers=1,
        num_heads=2,
        max_position=32,
    )
    check_base_model(one_source_spec("base-model-errors", GOOD, {"name_or_path": str(folder)}))
    # The tiny model is built later, from the mixture: nothing to check.
    check_base_model(one_source_spec("base-model-errors", GOOD, {"tiny": {}}))


class FakeHub(http.server.BaseHTTPRequestHandler):
    """Answers every request for repo `acme/<case>` the way huggingface.co does for that case."""

    ANSWERS = {
        "gated": (401, "GatedRepo"),  # gated, and no token with access
        "missing": (401, "RepoNotFound"),  # no such repo (or private, without a token)
        "norev": (404, "RevisionNotFound"),  # the repo exists, the revision does not
    }

    def _answer(self):
        case = next((c for c in self.ANSWERS if f"acme/{c}" in self.path), None)
        status, code = self.ANSWERS.get(case, (404, "EntryNotFound"))
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_HEAD = _answer

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeHub)
    # A short poll interval: shutdown() waits for one poll.
    thread = threading.Thread(
        target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
    )
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_port}"
    monkeypatch.setattr(hf_constants, "ENDPOINT", endpoint)
    monkeypatch.setattr(
        hf_constants,
        "HUGGINGFACE_CO_URL_TEMPLATE",
        endpoint + "/{repo_id}/resolve/{revision}/{filename}",
    )
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_IMPLICIT_TOKEN", True)  # never send one
    monkeypatch.delenv("HF_TOKEN", raising=False)
    yield
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.mark.parametrize(
    ("repo", "revision", "where", "fix"),
    [
        ("acme/gated", None, "'acme/gated'", "set HF_TOKEN"),
        ("acme/missing", None, "'acme/missing'", "check the id (owner/name)"),
        ("acme/norev", "v9", "'acme/norev', revision 'v9'", "check base_model.revision"),
    ],
)
def test_hub_answers(fake_hub, repo, revision, where, fix):
    with pytest.raises(TrainingError) as err:
        load(repo, revision)
    assert f"{FIELD} {where}:" in str(err.value)
    assert fix in str(err.value)
