"""PEFT interop: the export loads in plain PEFT, and the lora init matches PEFT's LoRA."""

import json

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file

from multilora_pipeline.models.multilora import (
    MultiLoRAConfig,
    MultiLoRAError,
    export_peft,
    inject_multilora,
    merge_adapters,
    multilora_layers,
)
from multilora_pipeline.models.tiny import BLOCK_LINEARS
from tests.models.tiny_models import (
    FAMILIES,
    TOL,
    base_model,
    input_ids,
    perturb_adapters,
)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("scale_shape", ["scalar", "vector"])
def test_peft_export_loads_with_plain_peft(family, scale_shape, tmp_path):
    model = base_model(family)
    config = MultiLoRAConfig(
        n_modules=3,
        rank=4,
        alpha=8,
        scale_shape=scale_shape,
        target_modules=BLOCK_LINEARS[family],
    )
    inject_multilora(model, config)
    perturb_adapters(model)
    ids = input_ids()
    expected = model(ids).logits.detach()

    export_peft(model, tmp_path, base_model_name_or_path=f"org/tiny-{family}", revision="abc123")
    peft_config = json.loads((tmp_path / "adapter_config.json").read_text())
    # A hub base is named by id and revision (never a local cache path): PEFT loads it at that.
    assert (peft_config["base_model_name_or_path"], peft_config["revision"]) == (
        f"org/tiny-{family}",
        "abc123",
    )
    assert (peft_config["r"], peft_config["lora_alpha"]) == (12, 12)
    assert peft_config["fan_in_fan_out"] == (family == "gpt2")
    assert sorted(peft_config["target_modules"]) == sorted(BLOCK_LINEARS[family])
    tensors = load_file(str(tmp_path / "adapter_model.safetensors"))
    assert len(tensors) == 2 * len(list(multilora_layers(model)))

    peft_model = PeftModel.from_pretrained(base_model(family), tmp_path).eval()
    # PEFT loads non-strictly and only warns on unknown keys: check every tensor arrived.
    loaded = {k.replace(".default", ""): v for k, v in peft_model.state_dict().items()}
    for key, value in tensors.items():
        assert torch.equal(loaded[key], value), key
    torch.testing.assert_close(peft_model(ids).logits, expected, **TOL)

    merged = peft_model.merge_and_unload()
    torch.testing.assert_close(merged(ids).logits, expected, **TOL)


def test_export_of_merged_model_and_partial_targets(tmp_path):
    """A regex over some layers exports full paths, so PEFT adapts exactly those."""
    model = base_model("gpt2")
    inject_multilora(
        model, MultiLoRAConfig(target_modules=r"^transformer\.h\.0\.attn\.c_proj$", rank=2)
    )
    perturb_adapters(model)
    ids = input_ids()
    expected = model(ids).logits.detach()
    merge_adapters(model)  # export reads the adapter, not the (merged) base weight
    export_peft(model, tmp_path, base_model_name_or_path=None)
    peft_config = json.loads((tmp_path / "adapter_config.json").read_text())
    assert peft_config["target_modules"] == ["transformer.h.0.attn.c_proj"]
    peft_model = PeftModel.from_pretrained(base_model("gpt2"), tmp_path).eval()
    torch.testing.assert_close(peft_model(ids).logits, expected, **TOL)


def test_export_needs_adapters(tmp_path):
    with pytest.raises(MultiLoRAError, match="no MultiLoRA layers"):
        export_peft(base_model("llama"), tmp_path, "x")


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("use_rslora", [False, True])
def test_lora_init_matches_peft_lora_given_same_a_and_b(family, use_rslora):
    targets = BLOCK_LINEARS[family]
    ours = base_model(family)
    inject_multilora(
        ours,
        MultiLoRAConfig(
            init="lora",
            n_modules=1,
            rank=8,
            alpha=16,
            use_rslora=use_rslora,
            target_modules=targets,
        ),
    )
    peft_model = get_peft_model(
        base_model(family),
        LoraConfig(
            r=8,
            lora_alpha=16,
            use_rslora=use_rslora,
            target_modules=targets,
            fan_in_fan_out=family == "gpt2",
        ),
    ).eval()
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for path, layer in multilora_layers(ours):
            layer.lora_B.copy_(0.2 * torch.randn(layer.lora_B.shape, generator=generator))
            peft_layer = peft_model.base_model.model.get_submodule(path)
            peft_layer.lora_A["default"].weight.copy_(layer.lora_A)
            peft_layer.lora_B["default"].weight.copy_(layer.lora_B)
    ids = input_ids()
    ours_logits = ours(ids, labels=ids)
    peft_logits = peft_model(ids, labels=ids)
    torch.testing.assert_close(ours_logits.logits, peft_logits.logits, **TOL)
    ours_logits.loss.backward()
    peft_logits.loss.backward()
    for path, layer in multilora_layers(ours):
        peft_layer = peft_model.base_model.model.get_submodule(path)
        torch.testing.assert_close(
            layer.lora_A.grad, peft_layer.lora_A["default"].weight.grad, rtol=1e-4, atol=1e-6
        )
        torch.testing.assert_close(
            layer.lora_B.grad, peft_layer.lora_B["default"].weight.grad, rtol=1e-4, atol=1e-6
        )
