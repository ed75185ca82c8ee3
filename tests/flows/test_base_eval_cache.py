"""The base evaluation cache (tasks/evaluation/cache.py): its key, input by input, and its file.

The pipeline's use of it (an unchanged rerun reuses the scores, a changed evaluation
setting re-scores) is tested on the shared pipeline runs in tests/flows/test_pipeline.py.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest

from multilora_pipeline.data_specs.schema import load_spec
from multilora_pipeline.tasks.evaluation.cache import (
    base_eval_inputs,
    base_eval_path,
    load_base_eval,
    save_base_eval,
)
from multilora_pipeline.tasks.evaluation.evaluate import EvalResult
from multilora_pipeline.tasks.identity import base_eval_key
from tests.specs import DEMO

# ----------------------------------------------------------------- the key, input by input


class KeyOf:
    """The cache key of the demo spec on a hub base model, with one thing changed."""

    def __init__(self, folder: Path):
        self.demo = load_spec(DEMO)[0]
        hub = self.demo.base_model.model_copy(update={"tiny": None, "name_or_path": "org/model"})
        self.spec = self.demo.model_copy(update={"base_model": hub})
        self.suite = self.spec.eval_suites[0].name
        self.eval_paths = {}
        for suite in self.spec.eval_suites:  # stand-ins: only their bytes are hashed
            self.eval_paths[suite.name] = str(folder / f"{suite.name}.parquet")
            Path(self.eval_paths[suite.name]).write_text(f"rows of {suite.name}")

    def __call__(self, change=lambda spec: spec, **inputs) -> str:
        given = {
            "base": "org/model",
            "device": "cpu",
            "mixture_id": "mix1",
            "eval_paths": self.eval_paths,
            "eval_dev_paths": {},
            **inputs,
        }
        return base_eval_key(base_eval_inputs(change(self.spec), **given))


@pytest.fixture
def key_of(tmp_path) -> KeyOf:
    return KeyOf(tmp_path)


def _with(section: str, **fields):
    """A spec change: `fields` set on the spec's `section`."""
    return lambda s: s.model_copy(update={section: getattr(s, section).model_copy(update=fields)})


def _with_suite(**fields):
    def change(s):
        suites = [s.eval_suites[0].model_copy(update=fields), *s.eval_suites[1:]]
        return s.model_copy(update={"eval_suites": suites})

    return change


DECIDING = {
    "revision": dict(change=_with("base_model", revision="abc123")),
    "dtype": dict(change=_with("base_model", dtype="bfloat16")),
    "attn_implementation": dict(change=_with("base_model", attn_implementation="eager")),
    "trust_remote_code": dict(change=_with("base_model", trust_remote_code=True)),
    "model": dict(base="org/other-model"),
    "device": dict(device="cuda"),
    "few_shot": dict(change=_with("evaluation", few_shot=5)),
    "batch_size": dict(change=_with("evaluation", batch_size=3)),
    "max_new_tokens": dict(change=_with("evaluation", max_new_tokens=7)),
    "suite max_items": dict(change=_with_suite(max_items=3)),
    "suite template": dict(change=_with_suite(template="arc")),
    "suite category": dict(change=_with_suite(category="other")),
    "validation rows": dict(mixture_id="mix2"),
    "max_length": dict(change=_with("training", max_length=64)),
    "prompt_format": dict(change=lambda s: s.model_copy(update={"prompt_format": "plain"})),
}


def test_every_deciding_input_changes_the_key(key_of, tmp_path):
    baseline = key_of()
    keys = {name: key_of(**args) for name, args in DECIDING.items()}
    assert baseline not in keys.values()
    assert len(set(keys.values())) == len(keys)  # and no two changes collide

    suite = key_of.suite
    Path(key_of.eval_paths[suite]).write_text("edited rows")
    assert key_of() != baseline  # the data content, not the path
    dev = tmp_path / "dev.parquet"
    dev.write_text("shots")
    assert key_of(eval_dev_paths={suite: str(dev)}) not in (baseline, key_of())


def test_a_local_model_folder_changed_in_place_changes_the_key(key_of, tmp_path):
    folder = tmp_path / "my-model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights v1")
    before = key_of(base=str(folder))
    assert key_of(base=str(folder)) == before
    (folder / "model.safetensors").write_bytes(b"weights v2, retrained")
    assert key_of(base=str(folder)) != before


def test_tiny_model_key_follows_its_build_folder_not_the_workspace(key_of):
    def tiny(_):  # the demo as it is: its own base model, the tiny one built in the workspace
        return key_of.demo

    here = key_of(tiny, base="/ws1/models/tiny-aaaa")
    assert key_of(tiny, base="/ws2/models/tiny-aaaa") == here
    assert key_of(tiny, base="/ws1/models/tiny-bbbb") != here
    assert key_of(_with("base_model", tiny=None), base="/ws1/models/tiny-aaaa") != here


def test_settings_that_do_not_decide_base_scores_keep_the_key(key_of, tmp_path):
    baseline = key_of()
    suite = key_of.suite
    moved = tmp_path / "moved.parquet"
    moved.write_bytes(Path(key_of.eval_paths[suite]).read_bytes())
    assert key_of(eval_paths={**key_of.eval_paths, suite: str(moved)}) == baseline
    assert key_of(_with_suite(path="elsewhere.csv")) == baseline
    assert key_of(_with("training", learning_rate=0.1, max_steps=3)) == baseline
    assert key_of(_with("registry", min_improvement=0.5)) == baseline
    assert key_of(lambda s: s.model_copy(update={"description": "x", "arms": s.arms[:1]})) == (
        baseline
    )


# ----------------------------------------------------------------- the file


def test_saved_evaluation_loads_back_equal(workspace):
    predictions = pd.DataFrame(
        {"suite": ["a", "b"], "correct": [True, False], "choice_loglik": ["[-1.5]", ""]}
    )
    evaluation = EvalResult({"a_acc": 0.5, "val_loss": 7.25}, predictions)
    assert load_base_eval(workspace, "k1") is None
    save_base_eval(workspace, "k1", {"some": "inputs"}, evaluation)
    loaded = load_base_eval(workspace, "k1")
    assert loaded.metrics == evaluation.metrics
    pd.testing.assert_frame_equal(loaded.predictions, predictions)
    assert [p.name for p in base_eval_path(workspace, "k1").parent.iterdir()] == [
        "evaluation.json"
    ]  # no temp file left behind


def test_damaged_cache_file_means_score_again(workspace, caplog):
    path = base_eval_path(workspace, "k2")
    path.parent.mkdir(parents=True)
    path.write_text('{"metrics": {"a_acc": 0.5}')  # cut short
    with caplog.at_level(logging.WARNING):
        assert load_base_eval(workspace, "k2") is None
    assert "unreadable cached base evaluation" in caplog.text and str(path) in caplog.text
