"""The register stage on a tiny model: artifacts, tags, idempotence, load-by-alias in a fresh process."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from multilora_pipeline.data_specs.errors import RegistryError
from multilora_pipeline.models.multilora import (
    MultiLoRAConfig,
    export_peft,
    inject_multilora,
    load_adapter,
    merge_adapters,
    save_adapter,
    scale_parameters,
)
from multilora_pipeline.models.tiny import build_tiny_model
from multilora_pipeline.tasks.registry.tracking import RUN_KEY_TAG, Tracker
from multilora_pipeline.tasks.registry.versions import (
    CHAMPION,
    attach_run_artifacts,
    find_version,
    get_version,
    register_adapter,
    set_alias,
    version_by_alias,
)
from multilora_pipeline.tasks.workspace import Workspace
from tests.fresh_process import run_fresh

# MLflow registration and a fresh serving process: left out by -m "not slow"
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
NAME = "mlora-tiny"
PROMPTS = ["### Instruction:\nAdd 2 and 3.\n\n### Response:\n", "the quick brown fox"]
MAX_NEW = 6
TAGS = {
    "spec_hash": "0123456789abcdef",
    "mixture_id": "fedcba9876543210",
    "base_model": "tiny",
    "arm": "multilora",
    "adapter_kind": "multilora",
    "code_version": "abc1234",
    "eval_macro_acc": "0.6250",
    "category_nlu_score": "0.5000",
}


@pytest.fixture(scope="module")
def tiny_adapter(tmp_path_factory):
    """A one-layer base model, a MultiLoRA adapter with non-zero scales, its PEFT export."""
    root = tmp_path_factory.mktemp("tiny_adapter")
    texts = [p + " five" for p in PROMPTS] * 10 + [f"a line of words number {i}" for i in range(60)]
    base = build_tiny_model(
        root / "base",
        texts,
        vocab_size=300,
        hidden_size=32,
        intermediate_size=64,
        num_layers=1,
        num_heads=4,
        max_position=64,
    )
    model = AutoModelForCausalLM.from_pretrained(base)
    inject_multilora(model, MultiLoRAConfig(n_modules=2, rank=2))
    torch.manual_seed(0)
    with torch.no_grad():  # zero scales would make ΔW = 0: the adapter must change the output
        for scale in scale_parameters(model):
            scale.uniform_(1.0, 3.0)
    save_adapter(model, root / "adapter")
    export_peft(model, root / "peft", str(base))
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"mixture_id": TAGS["mixture_id"], "sources": {}}))
    return {"base": base, "adapter": root / "adapter", "peft": root / "peft", "manifest": manifest}


def _arm_run(tracker: Tracker, run_key: str) -> tuple[str, str]:
    parent = tracker.start_parent("pipeline", {}, {})
    run_id, _ = tracker.child_run(parent, run_key, "multilora", {})
    tracker.log_metrics(run_id, {"eval_macro_acc": 0.625, "category_nlu_score": 0.5})
    tracker.log_json(
        run_id, {"columns": ["prompt", "prediction"], "data": [["q", "a"]]}, "eval/predictions.json"
    )
    return parent, run_id


def _register(tracker: Tracker, tiny_adapter: dict, run_id: str, run_key: str):
    return register_adapter(
        tracker,
        name=NAME,
        run_id=run_id,
        run_key=run_key,
        adapter_dir=str(tiny_adapter["adapter"]),
        peft_dir=str(tiny_adapter["peft"]),
        base_model=str(tiny_adapter["base"]),
        base_is_local=True,
        model_config={"kind": "multilora", "max_new_tokens": MAX_NEW},
        extra_artifacts={"mixture_manifest": str(tiny_adapter["manifest"])},
        tags=TAGS,
    )


@pytest.fixture(scope="module")
def registered(tiny_adapter, tmp_path_factory):
    """One version registered from an arm run, with the parent's plots attached, as champion."""
    tracker = Tracker(
        Workspace.resolve(tmp_path_factory.mktemp("registry") / "ws").ensure(), "tiny"
    )
    parent, run_id = _arm_run(tracker, "spec:mix:multilora")
    version = _register(tracker, tiny_adapter, run_id, "spec:mix:multilora")
    tracker.log_text(parent, "flat spectra", "analysis/summary.md")
    tracker.log_text(parent, "not a real png", "plots/spectra.png")
    attached = attach_run_artifacts(tracker, NAME, version.version, parent)
    set_alias(tracker, NAME, CHAMPION, version.version)
    return {
        "tracker": tracker,
        "version": version,
        "run_id": run_id,
        "parent": parent,
        "attached": attached,
    }


def _model_files(tracker: Tracker, version: str) -> set[str]:
    source = get_version(tracker, NAME, version).source
    root = tracker.workspace.artifacts_dir / "tiny" / "models" / source.removeprefix("models:/")
    return {p.relative_to(root / "artifacts").as_posix() for p in root.rglob("*") if p.is_file()}


def test_version_holds_every_artifact(registered):
    tracker, version = registered["tracker"], registered["version"]
    files = _model_files(tracker, version.version)
    for expected in [
        "MLmodel",
        "pyfunc_model.py",
        "input_example.json",
        "artifacts/adapter/adapter.safetensors",
        "artifacts/adapter/adapter_config.json",
        "artifacts/peft/adapter_model.safetensors",
        "artifacts/peft/adapter_config.json",
        "artifacts/mixture_manifest.json",
        "artifacts/base_model/model.safetensors",
        "artifacts/evaluation/metrics.json",
        "artifacts/evaluation/predictions.json",
        "analysis/plots/spectra.png",
        "analysis/summary.md",
        "code/multilora_pipeline/models/multilora/layer.py",
    ]:
        assert expected in files, f"{expected} missing from the version's model"
    # The code ships inside the project's namespace: a serving environment gets no top-level
    # `models` (or `tasks`) module.
    assert not any(f.startswith(("code/models", "code/tasks")) or f.endswith(".pkl") for f in files)
    metrics = json.loads(
        (
            tracker.workspace.artifacts_dir
            / "tiny"
            / "models"
            / get_version(tracker, NAME, version.version).source[len("models:/") :]
            / "artifacts/artifacts/evaluation/metrics.json"
        ).read_text()
    )
    assert dict(metrics["data"]) == {"eval_macro_acc": 0.625, "category_nlu_score": 0.5}
    assert sorted(registered["attached"]) == ["analysis", "plots"]


def test_version_tags_and_description(registered):
    tracker, version = registered["tracker"], registered["version"]
    found = get_version(tracker, NAME, version.version)
    assert found.run_id == registered["run_id"]
    assert found.tags == {**TAGS, RUN_KEY_TAG: "spec:mix:multilora"}
    assert "**multilora** (multilora)" in found.description
    assert "eval_macro_acc 0.6250" in found.description
    run_tags = tracker.client.get_run(registered["run_id"]).data.tags
    assert run_tags["mlora.registered_model"] == NAME
    assert run_tags["mlora.model_version"] == version.version
    assert "champion" in tracker.client.get_registered_model(NAME).description


def test_rerun_registers_no_duplicate(registered, tiny_adapter):
    tracker, first = registered["tracker"], registered["version"]
    again = _register(tracker, tiny_adapter, registered["run_id"], "spec:mix:multilora")
    assert again.reused and again.version == first.version
    assert len(tracker.client.search_model_versions(f"name = '{NAME}'")) == 1
    assert find_version(tracker, NAME, "spec:other-mixture:multilora") is None
    # Attaching again leaves the version as it is.
    assert attach_run_artifacts(tracker, NAME, first.version, registered["parent"]) == []


def test_missing_inputs_fail_clearly(registered, tmp_path):
    tracker = registered["tracker"]
    with pytest.raises(RegistryError, match="no version 99"):
        get_version(tracker, NAME, "99")
    assert version_by_alias(tracker, NAME, "no-such-alias") is None
    with pytest.raises(RegistryError, match="not an adapter folder"):
        register_adapter(
            tracker,
            name=NAME,
            run_id=registered["run_id"],
            run_key="other",
            adapter_dir=str(tmp_path),
            peft_dir=None,
            base_model="x",
            base_is_local=False,
            model_config={"kind": "lora"},
            extra_artifacts={},
            tags={},
        )


def _reference_generation(tiny_adapter: dict, with_adapter: bool) -> list[str]:
    """Greedy decoding with plain transformers + models.multilora: no MLflow involved."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_adapter["base"])
    model = AutoModelForCausalLM.from_pretrained(tiny_adapter["base"])
    if with_adapter:
        load_adapter(model, tiny_adapter["adapter"])
        merge_adapters(model)
    model.eval()
    texts = []
    for prompt in PROMPTS:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        with torch.inference_mode():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=MAX_NEW,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
        texts.append(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
    return texts


def test_fresh_process_loads_champion_and_generates(registered, tiny_adapter, tmp_path):
    tracker = registered["tracker"]
    script = (
        "import json, sys, mlflow, pandas as pd\n"
        "mlflow.set_tracking_uri(sys.argv[1])\n"
        f"model = mlflow.pyfunc.load_model('models:/{NAME}@{CHAMPION}')\n"
        "out = model.predict(pd.DataFrame({'prompt': json.loads(sys.argv[2])}))\n"
        "import multilora_pipeline.models.prompt_format as code\n"
        "print('RESULT' + json.dumps([out['completion'].tolist(), code.__file__]))\n"
    )
    # A bare environment outside the repo: the registry alone must be enough to load it.
    completions, code = run_fresh(script, [tracker.uri, json.dumps(PROMPTS)], tmp_path, timeout=120)
    # The layer and prompt code came from the version, not from the repo the test runs in.
    assert "/code/multilora_pipeline/models/" in code and not code.startswith(str(REPO))
    assert completions == _reference_generation(tiny_adapter, with_adapter=True)
    assert completions != _reference_generation(tiny_adapter, with_adapter=False)
    assert all(completions)


def test_registers_while_another_run_is_active_in_the_thread(tiny_adapter, tmp_path):
    """A notebook or a Prefect task thread with its own run open: registering neither fails nor touches it."""
    tracker = Tracker(Workspace.resolve(tmp_path / "ws").ensure(), "tiny")
    _, run_id = _arm_run(tracker, "spec:mix:lora")
    notebook = tracker.client.create_experiment(
        "notebook", artifact_location=(tmp_path / "notebook").as_uri()
    )
    with mlflow.start_run(experiment_id=notebook) as other:
        mlflow.log_param("notebook_param", "kept")
        version = _register(tracker, tiny_adapter, run_id, "spec:mix:lora")
        active = mlflow.active_run()
        assert active is not None and active.info.run_id == other.info.run_id
        assert tracker.client.get_run(other.info.run_id).info.status == "RUNNING"
    untouched = tracker.client.get_run(other.info.run_id)
    assert untouched.data.params == {"notebook_param": "kept"}
    assert untouched.data.metrics == {}
    assert tracker.client.list_artifacts(other.info.run_id) == []
    assert not untouched.outputs or not untouched.outputs.model_outputs
    # Everything went to the arm run and its experiment instead.
    assert version.run_id == run_id and get_version(tracker, NAME, version.version).run_id == run_id
    arm = tracker.client.get_run(run_id)
    assert arm.data.params["kind"] == "multilora" and arm.data.params["max_new_tokens"] == "6"
    assert [o.step for o in arm.outputs.model_outputs] == [0]
    logged = tracker.client.get_logged_model(arm.outputs.model_outputs[0].model_id)
    assert (logged.experiment_id, logged.source_run_id) == (tracker.experiment_id, run_id)
    assert {"MLmodel", "artifacts/adapter/adapter.safetensors"} <= _model_files(
        tracker, version.version
    )
    model = mlflow.pyfunc.load_model(f"models:/{NAME}/{version.version}")
    completions = model.predict(pd.DataFrame({"prompt": PROMPTS}))["completion"].tolist()
    assert completions == _reference_generation(tiny_adapter, with_adapter=True)
