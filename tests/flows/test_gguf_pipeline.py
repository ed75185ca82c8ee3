"""The whole DAG on a GGUF base model whose tokenizer has a chat template (a tiny one,
written here): converted once, prompted in one format everywhere, recorded in MLflow, and
usable from its PEFT export and, in a fresh process, from the registry."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow import MlflowClient
from transformers import AutoModelForCausalLM, AutoTokenizer

from multilora_pipeline.tasks.training.gguf import gguf_origin
from tests.fresh_process import run_fresh
from tests.gguf_fixture import write_llama_gguf
from tests.specs import reduced_demo, write_spec
from tests.tasks.chat_model import build_chat_model

pytestmark = pytest.mark.slow  # a whole pipeline run: left out by -m "not slow"

PROMPT = "### Instruction:\nAdd 2 and 3.\n\n### Response:\n"


@pytest.fixture(scope="module")
def gguf_run(prefect_harness, tmp_path_factory):
    """One pipeline run of the reduced demo on a tiny chat model given as a GGUF file."""
    import multilora_pipeline.flows.pipeline as pipeline

    tmp = tmp_path_factory.mktemp("gguf-pipeline")
    build_chat_model(tmp / "hf")
    tokenizer = AutoTokenizer.from_pretrained(tmp / "hf")
    model = AutoModelForCausalLM.from_pretrained(tmp / "hf")
    gguf_file = write_llama_gguf(model, tokenizer, tmp / "gguf" / "tiny-chat-f32.gguf")

    spec = reduced_demo()
    spec["name"] = "gguf-demo"
    spec["base_model"] = {"name_or_path": str(gguf_file.parent), "gguf_file": gguf_file.name}
    spec["registry"]["must_beat_base"] = False  # a random base: the gate is not the subject
    path = write_spec(spec, tmp / "reduced.yaml")
    ws_root = tmp / "workspace"
    summary = pipeline.pipeline_flow(str(path), str(ws_root))
    (folder,) = (ws_root / "models").glob("gguf-*")
    return summary, folder, gguf_file, f"sqlite:///{ws_root / 'mlflow.db'}"


def test_the_run_prompts_in_the_chat_format_and_records_the_gguf_origin(gguf_run):
    summary, folder, gguf_file, uri = gguf_run
    assert "chat template" in summary["prompt_format"]
    assert set(summary["stage_seconds"]) >= {"base_model", "data", "evaluate_base", "analyse"}
    origin = gguf_origin(folder)
    client = MlflowClient(uri)
    parent = client.get_run(summary["parent_run_id"]).data.tags
    assert parent["mlora.prompt_format"] == "chat"
    assert parent["mlora.gguf.sha256"] == origin.sha256
    assert parent["mlora.base_model"] == f"{gguf_file.parent}/{gguf_file.name}"
    for arm in summary["arms"]:
        version = client.get_model_version(summary["registered_model"], arm["version"])
        assert version.tags["prompt_format"] == "chat"
        assert version.tags["gguf.sha256"] == origin.sha256
        assert version.tags["gguf.gguf_file"] == gguf_file.name
        run = client.get_run(arm["run_id"]).data.tags
        assert run["mlora.prompt_format"] == "chat"


def test_the_peft_export_loads_on_the_converted_folder(gguf_run, tmp_path):
    from peft import PeftModel

    summary, folder, _, uri = gguf_run
    arm = summary["arms"][1]  # the lora arm
    client = MlflowClient(uri)
    local = client.download_artifacts(arm["run_id"], "peft_adapter", str(tmp_path))
    config = json.loads((tmp_path / "peft_adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == str(folder)
    # No hub repo holds the dequantised weights: the export says which GGUF file they are.
    source = json.loads((tmp_path / "peft_adapter" / "gguf_source.json").read_text())
    assert source["sha256"] == json.loads((folder / "gguf_source.json").read_text())["sha256"]
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(folder), local)
    ids = torch.tensor([[1, 5, 6, 7]])
    base = AutoModelForCausalLM.from_pretrained(folder)
    with torch.no_grad():
        assert not torch.allclose(peft_model(ids).logits, base(ids).logits)  # the update is there
    assert (
        json.loads((tmp_path / "peft_adapter" / "prompt_format.json").read_text())["prompt_format"]
        == "chat"
    )


def test_a_fresh_process_answers_through_the_challenger_alias(gguf_run, tmp_path):
    summary, _, _, uri = gguf_run
    script = (
        "import json, sys, mlflow, pandas as pd\n"
        "mlflow.set_tracking_uri(sys.argv[1])\n"
        "model = mlflow.pyfunc.load_model(f'models:/{sys.argv[2]}@challenger')\n"
        "out = model.predict(pd.DataFrame({'prompt': [sys.argv[3]]}), params={'max_new_tokens': 4})\n"
        "print('RESULT' + json.dumps(out['completion'].tolist()))\n"
    )
    (completion,) = run_fresh(script, [uri, summary["registered_model"], PROMPT], tmp_path)
    assert isinstance(completion, str)
