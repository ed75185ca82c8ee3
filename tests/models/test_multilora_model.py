"""MultiLoRA in whole causal LMs, table-driven over Llama, GPT-2, Qwen2 and OPT."""

import json

import pytest
import torch
from torch._dynamo.utils import counters

from multilora_pipeline.models.multilora import (
    FORMAT_VERSION,
    AdapterFormatError,
    MultiLoRAConfig,
    MultiLoRAError,
    TargetNotFoundError,
    adapter_parameter_groups,
    adapter_state_dict,
    delta_factors,
    delta_weights,
    inject_multilora,
    load_adapter,
    merge_adapters,
    multilora_layers,
    save_adapter,
    scale_parameters,
    set_reference_forward,
    unload_multilora,
    unmerge_adapters,
)
from multilora_pipeline.models.tiny import BLOCK_LINEARS
from multilora_pipeline.models.training_speed import compile_blocks, enable_activation_checkpointing
from tests.models.tiny_models import FAMILIES, TOL, base_model, input_ids, perturb_adapters


def adapted(family, num_layers=2, **config_kwargs):
    model = base_model(family, num_layers=num_layers)
    config = MultiLoRAConfig(
        **{"n_modules": 3, "rank": 4, "alpha": 8, "target_modules": BLOCK_LINEARS[family]}
        | config_kwargs
    )
    report = inject_multilora(model, config)
    return model, report


def lm_loss(model, ids):
    return model(ids, labels=ids).loss


@pytest.mark.parametrize("family", FAMILIES)
def test_injection_report_and_frozen_base(family):
    model, report = adapted(family)
    per_layer = 2  # two blocks in tiny_config
    assert len(report.wrapped) == len(BLOCK_LINEARS[family]) * per_layer + (
        2 if family == "gpt2" else 0  # "c_proj" names both the attention and MLP output
    )
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(
        n.rsplit(".", 1)[-1] in {"lora_A", "lora_B", "lora_scale"} for n in trainable
    )
    assert report.trainable_params == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert report.base_params == sum(p.numel() for p in base_model(family).parameters())
    assert 0 < report.trainable_share == report.trainable_params / report.base_params


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_at_init_equal_base_exactly(family):
    ids = input_ids()
    expected = base_model(family)(ids).logits
    model, _ = adapted(family)
    assert torch.equal(model(ids).logits, expected)


@pytest.mark.parametrize("family", FAMILIES)
def test_fused_and_reference_give_same_logits_and_gradients(family):
    model, _ = adapted(family, scale_shape="vector")
    perturb_adapters(model)
    ids = input_ids()
    runs = []
    for reference in (False, True):
        set_reference_forward(model, reference)
        model.zero_grad()
        loss = lm_loss(model, ids)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        runs.append((model(ids).logits.detach(), grads))
    torch.testing.assert_close(runs[0][0], runs[1][0], **TOL)
    for name, grad in runs[0][1].items():
        torch.testing.assert_close(grad, runs[1][1][name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("family", FAMILIES)
def test_first_step_only_scales_get_gradient_then_all(family):
    model, _ = adapted(family)
    ids = input_ids()
    optimizer = torch.optim.AdamW(adapter_parameter_groups(model, lr=1e-2))
    lm_loss(model, ids).backward()
    for path, layer in multilora_layers(model):
        assert torch.count_nonzero(layer.lora_A.grad) == 0, path
        assert torch.count_nonzero(layer.lora_B.grad) == 0, path
        assert torch.count_nonzero(layer.lora_scale.grad) > 0, path
    optimizer.step()
    optimizer.zero_grad()
    lm_loss(model, ids).backward()
    for path, layer in multilora_layers(model):
        for name in ("lora_A", "lora_B", "lora_scale"):
            assert torch.count_nonzero(getattr(layer, name).grad) > 0, f"{path}.{name}"


@pytest.mark.parametrize("family", FAMILIES)
def test_merged_unmerged_and_reloaded_logits_agree(family, tmp_path):
    model, _ = adapted(family)
    perturb_adapters(model)
    ids = input_ids()
    expected = model(ids).logits.detach()
    assert not torch.allclose(expected, base_model(family)(ids).logits, atol=1e-3)

    merge_adapters(model)
    torch.testing.assert_close(model(ids).logits, expected, **TOL)
    unmerge_adapters(model)
    torch.testing.assert_close(model(ids).logits, expected, **TOL)

    save_adapter(model, tmp_path / "adapter")
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == [
        "adapter.safetensors",
        "adapter_config.json",
    ]
    fresh = base_model(family)
    report = load_adapter(fresh, tmp_path / "adapter")
    assert report.wrapped == [path for path, _ in multilora_layers(model)]
    torch.testing.assert_close(fresh(ids).logits, expected, **TOL)

    deltas = delta_weights(model)
    plain = unload_multilora(model, merge=True)
    assert not list(multilora_layers(plain))
    torch.testing.assert_close(plain(ids).logits, expected, **TOL)
    assert all(d.dtype == torch.float32 and d.dim() == 2 for d in deltas.values())


def test_delta_weights_are_out_by_in():
    for family in ("llama", "gpt2"):
        model, _ = adapted(family)
        perturb_adapters(model)
        for path, delta in delta_weights(model).items():
            layer = model.get_submodule(path)
            assert delta.shape == (layer.out_features, layer.in_features), path


@pytest.mark.parametrize("scale_shape", ["scalar", "vector"])
def test_delta_factors_multiply_to_delta_weights(scale_shape):
    for family in ("llama", "gpt2"):
        model, _ = adapted(family, scale_shape=scale_shape)
        perturb_adapters(model)
        dense, factors = delta_weights(model), delta_factors(model)
        assert list(factors) == list(dense)
        for path, (b, a) in factors.items():
            layer = model.get_submodule(path)
            assert b.shape == (layer.out_features, 12) and a.shape == (12, layer.in_features)
            assert b.dtype == a.dtype == torch.float32 and not (b.requires_grad or a.requires_grad)
            torch.testing.assert_close(b @ a, dense[path], **TOL)
            a.zero_()  # copies: the caller may write to them
        assert all(torch.count_nonzero(layer.lora_A) for _, layer in multilora_layers(model))


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_gradient_checkpointing_non_reentrant(family):
    ids = input_ids()
    grads = []
    for checkpointing in (False, True):
        model, _ = adapted(family)
        perturb_adapters(model)
        model.train()
        if checkpointing:
            enable_activation_checkpointing(model)
            # transformers 5 renamed the flag; the old name warns (and is gone in v6).
            flag = "is_activation_checkpointing"
            assert getattr(model, flag if hasattr(model, flag) else "is_gradient_checkpointing")
        lm_loss(model, ids).backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    assert grads[0].keys() == grads[1].keys()
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.slow  # torch.compile
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_compiled_blocks_match_eager_and_compile_once(family):
    # aot_eager runs dynamo + autograd tracing (what can break) without the C++ compile time.
    ids = input_ids()
    losses, grads = [], []
    for compile_ in (False, True):
        model, _ = adapted(family, num_layers=4)
        perturb_adapters(model)
        model.train()
        model.config.use_cache = False  # as in training; a KV cache would guard per layer
        torch._dynamo.reset()
        counters.clear()
        if compile_:
            assert compile_blocks(model, backend="aot_eager") == 4
        loss = lm_loss(model, ids)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad for n, p in model.named_parameters() if p.requires_grad})
    # Two graphs whatever the depth: the first block's input (from the frozen embedding)
    # needs no gradient, every later block's does; blocks 2-4 reuse block 1's graph.
    assert counters["stats"]["unique_graphs"] == 2
    torch._dynamo.reset()
    torch.testing.assert_close(losses[1], losses[0], **TOL)
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-4, atol=1e-6, msg=name)


def test_compile_names_models_without_known_blocks():
    with pytest.raises(ValueError, match="Sequential lists no decoder block classes"):
        compile_blocks(torch.nn.Sequential(torch.nn.Linear(2, 2)))


def test_regex_targets_select_full_paths():
    model, report = adapted("llama", target_modules=r"^model\.layers\.1\.self_attn\.(q|v)_proj$")
    assert report.wrapped == ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]


def test_lora_init_has_no_scale_parameters():
    model, report = adapted("llama", init="lora", n_modules=1, rank=8)
    assert scale_parameters(model) == []
    groups = adapter_parameter_groups(model, lr=1e-3)
    assert [g["name"] for g in groups] == ["lora"]
    assert all(not k.endswith("lora_scale") for k in adapter_state_dict(model))
    lm_loss(model, input_ids()).backward()  # B = 0: only B gets gradient on step one
    for _, layer in multilora_layers(model):
        assert torch.count_nonzero(layer.lora_A.grad) == 0
        assert torch.count_nonzero(layer.lora_B.grad) > 0


def test_parameter_groups_put_scales_apart():
    model, report = adapted("qwen2")
    groups = adapter_parameter_groups(
        model, lr=1e-4, weight_decay=0.1, scale_lr=1e-2, scale_weight_decay=0.0
    )
    assert [(g["name"], g["lr"], g["weight_decay"]) for g in groups] == [
        ("lora", 1e-4, 0.1),
        ("scales", 1e-2, 0.0),
    ]
    counted = sum(p.numel() for g in groups for p in g["params"])
    assert counted == report.trainable_params
    torch.optim.AdamW(groups)  # accepted as is


def test_missing_target_lists_the_linear_layers():
    model = base_model("llama")
    with pytest.raises(TargetNotFoundError) as info:
        inject_multilora(model, MultiLoRAConfig(target_modules=["c_attn"]))
    message = str(info.value)
    assert "matched no layer of LlamaForCausalLM" in message
    for name in BLOCK_LINEARS["llama"] + ["lm_head"]:
        assert name in message
    assert not list(multilora_layers(model))


def test_target_that_is_not_linear_is_rejected():
    with pytest.raises(TargetNotFoundError, match="not linear layers.*LlamaMLP.*q_proj"):
        inject_multilora(base_model("llama"), MultiLoRAConfig(target_modules=["mlp"]))


def test_double_injection_is_rejected():
    model, _ = adapted("opt")
    with pytest.raises(MultiLoRAError, match="already has MultiLoRA layers"):
        inject_multilora(model, MultiLoRAConfig(target_modules=["fc1"]))


def test_load_rejects_newer_format(tmp_path):
    model, _ = adapted("llama")
    save_adapter(model, tmp_path)
    meta = json.loads((tmp_path / "adapter_config.json").read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (tmp_path / "adapter_config.json").write_text(json.dumps(meta))
    with pytest.raises(AdapterFormatError, match="newer than this code"):
        load_adapter(base_model("llama"), tmp_path)


def test_load_rejects_other_base_sizes(tmp_path):
    model, _ = adapted("llama")
    save_adapter(model, tmp_path)
    bigger = base_model("llama", hidden_size=48)
    with pytest.raises(AdapterFormatError, match="has shape .* but the model expects"):
        load_adapter(bigger, tmp_path)


def test_load_rejects_other_architectures_and_missing_dirs(tmp_path):
    model, _ = adapted("llama")
    save_adapter(model, tmp_path / "llama")
    with pytest.raises(AdapterFormatError, match="targets layers this model lacks"):
        load_adapter(base_model("gpt2"), tmp_path / "llama")
    with pytest.raises(AdapterFormatError, match="adapter_config.json not found"):
        load_adapter(base_model("llama"), tmp_path / "nowhere")


def test_bf16_base_model_trains_fp32_adapters(tmp_path):
    model = base_model("llama").to(torch.bfloat16)
    inject_multilora(model, MultiLoRAConfig(target_modules=BLOCK_LINEARS["llama"]))
    adapter = adapter_state_dict(model)
    assert adapter and all(t.dtype == torch.float32 for t in adapter.values())
    ids = input_ids()
    loss = lm_loss(model, ids)
    assert model(ids).logits.dtype == torch.bfloat16
    loss.backward()
    assert all(p.grad.dtype == torch.float32 for p in scale_parameters(model))
    assert all(torch.count_nonzero(p.grad) > 0 for p in scale_parameters(model))
    save_adapter(model, tmp_path)
    reloaded = base_model("llama").to(torch.bfloat16)
    load_adapter(reloaded, tmp_path)
    assert torch.equal(reloaded(ids).logits, model(ids).logits)
