"""MultiLoRALinear on its own: init, fused vs per-module, merge, Conv1D, dtypes, compile."""

import math

import pytest
import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from multilora_pipeline.models.multilora import MultiLoRAConfig, MultiLoRALinear

IN, OUT, TOKENS = 24, 40, 6


def make_layer(seed=0, base_dtype=torch.float32, **config_kwargs):
    torch.manual_seed(seed)
    base = nn.Linear(IN, OUT, bias=True).to(base_dtype)
    config = MultiLoRAConfig(**{"n_modules": 3, "rank": 4, "alpha": 8, **config_kwargs})
    return MultiLoRALinear(base, config)


def randomise_scales(layer, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.lora_scale.copy_(torch.randn(layer.lora_scale.shape, generator=generator))


def test_multilora_init_kaiming_a_and_b_zero_scales():
    layer = make_layer(n_modules=4, rank=8)
    assert layer.lora_A.shape == (32, IN) and layer.lora_B.shape == (OUT, 32)
    assert layer.lora_A.dtype == layer.lora_B.dtype == torch.float32
    # kaiming_uniform_(a=sqrt(5)) bound is 1/sqrt(fan_in); B_i's fan-in is r, not n*r.
    assert layer.lora_A.abs().max() <= 1 / math.sqrt(IN)
    assert layer.lora_B.abs().max() <= 1 / math.sqrt(8)
    assert layer.lora_B.abs().max() > 1 / math.sqrt(32)  # B was not initialised as one block
    assert torch.count_nonzero(layer.lora_scale) == 0
    assert isinstance(layer.lora_scale, nn.Parameter) and layer.lora_scale.shape == (4,)
    assert not any(p.requires_grad for p in layer.base_layer.parameters())
    assert torch.count_nonzero(layer.delta_weight()) == 0


def test_lora_init_zero_b_and_frozen_unit_scale():
    layer = make_layer(init="lora", n_modules=1, rank=8, alpha=16)
    assert torch.count_nonzero(layer.lora_B) == 0 and torch.count_nonzero(layer.lora_A) > 0
    assert not isinstance(layer.lora_scale, nn.Parameter)
    assert torch.equal(layer.lora_scale, torch.ones(1))
    assert layer.scaling == 2.0
    assert {n for n, p in layer.named_parameters() if p.requires_grad} == {"lora_A", "lora_B"}


def test_vector_scales_have_one_value_per_module_and_output():
    layer = make_layer(scale_shape="vector")
    assert layer.lora_scale.shape == (3, OUT)


@pytest.mark.parametrize("scale_shape", ["scalar", "vector"])
@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_fused_equals_per_module_outputs_and_gradients(scale_shape, dropout):
    layer = make_layer(scale_shape=scale_shape, dropout=dropout).train()
    randomise_scales(layer)
    x = torch.randn(2, TOKENS, IN)
    results = []
    for reference in (False, True):
        layer.use_reference = reference
        layer.zero_grad()
        torch.manual_seed(123)  # same dropout mask in both paths
        x_req = x.clone().requires_grad_(True)
        out = layer(x_req)
        out.pow(2).sum().backward()
        grads = [layer.lora_A.grad, layer.lora_B.grad, layer.lora_scale.grad, x_req.grad]
        results.append((out.detach(), [g.clone() for g in grads]))
    (fused, fused_grads), (ref, ref_grads) = results
    torch.testing.assert_close(fused, ref, rtol=1e-5, atol=1e-5)
    for g_fused, g_ref in zip(fused_grads, ref_grads, strict=True):
        torch.testing.assert_close(g_fused, g_ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("scale_shape", ["scalar", "vector"])
def test_delta_weight_is_the_sum_over_modules(scale_shape):
    layer = make_layer(scale_shape=scale_shape)
    randomise_scales(layer)
    r, c = layer.rank, layer.scaling
    expected = sum(
        c
        * layer.lora_scale[i].reshape(-1, 1)
        * (layer.lora_B[:, i * r : (i + 1) * r] @ layer.lora_A[i * r : (i + 1) * r])
        for i in range(3)
    )
    torch.testing.assert_close(layer.delta_weight(), expected.detach())
    x = torch.randn(5, IN)
    torch.testing.assert_close(
        layer(x) - layer.base_layer(x), x @ expected.detach().t(), rtol=1e-5, atol=1e-5
    )


def test_merge_and_unmerge_are_exact_in_fp32():
    layer = make_layer().eval()
    randomise_scales(layer)
    x = torch.randn(4, IN)
    original_weight = layer.base_layer.weight.detach().clone()
    expected = layer(x).detach()
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(layer.base_layer(x), expected, rtol=1e-5, atol=1e-5)
    layer.merge()  # idempotent: must not add ΔW twice
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(layer.base_layer.weight, original_weight, rtol=0, atol=1e-6)
    torch.testing.assert_close(layer(x), expected, rtol=1e-5, atol=1e-5)


def test_conv1d_is_wrapped_with_the_transposed_layout():
    torch.manual_seed(0)
    linear = nn.Linear(IN, OUT)
    conv = Conv1D(OUT, IN)  # Conv1D(nf=out, nx=in), weight (in, out)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.t())
        conv.bias.copy_(linear.bias)
    config = MultiLoRAConfig(n_modules=2, rank=4)
    wrapped_linear, wrapped_conv = MultiLoRALinear(linear, config), MultiLoRALinear(conv, config)
    assert (wrapped_conv.in_features, wrapped_conv.out_features) == (IN, OUT)
    with torch.no_grad():
        wrapped_conv.lora_A.copy_(wrapped_linear.lora_A)
        wrapped_conv.lora_B.copy_(wrapped_linear.lora_B)
        for layer in (wrapped_linear, wrapped_conv):
            layer.lora_scale.fill_(0.7)
    x = torch.randn(3, IN)
    torch.testing.assert_close(wrapped_conv(x), wrapped_linear(x))
    torch.testing.assert_close(wrapped_conv.delta_weight(), wrapped_linear.delta_weight())
    expected = wrapped_conv(x).detach()
    wrapped_conv.merge()
    torch.testing.assert_close(wrapped_conv.base_layer(x), expected, rtol=1e-5, atol=1e-5)


def test_rejects_non_linear_modules():
    with pytest.raises(ValueError, match="wraps nn.Linear or transformers Conv1D, got LayerNorm"):
        MultiLoRALinear(nn.LayerNorm(8), MultiLoRAConfig())


def test_bf16_base_keeps_fp32_adapter_and_matches_fp32_math():
    layer = make_layer(base_dtype=torch.bfloat16)
    randomise_scales(layer)
    x = torch.randn(4, IN, dtype=torch.bfloat16)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    assert layer.lora_A.dtype == layer.lora_B.dtype == layer.lora_scale.dtype == torch.float32
    out.float().sum().backward()
    assert layer.lora_A.grad.dtype == torch.float32 and layer.lora_scale.grad.dtype == torch.float32
    reference = x.float() @ (layer.base_layer.weight.float() + layer.delta_weight()).t()
    reference = reference + layer.base_layer.bias.float()
    torch.testing.assert_close(out.float(), reference.detach(), rtol=2e-2, atol=2e-2)
    # Merging into bf16 computes in fp32 and rounds once.
    layer.merge()
    assert layer.base_layer.weight.dtype == torch.bfloat16


def test_bf16_autocast_skips_the_fp32_copy_and_matches_the_reference():
    # The GPU training path: bf16 base under autocast. The adapter must not round-trip its
    # input through fp32, must give the per-module reference's result and fp32 gradients.
    layer = make_layer(base_dtype=torch.bfloat16)
    randomise_scales(layer)
    x = torch.randn(2, TOKENS, IN, dtype=torch.bfloat16)
    outs, grads = [], []
    for reference in (False, True):
        layer.use_reference = reference
        layer.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = layer(x)
        out.float().pow(2).mean().backward()
        outs.append(out.float())
        grads.append(layer.lora_scale.grad.clone())
    assert out.dtype == torch.bfloat16 and grads[0].dtype == torch.float32
    torch.testing.assert_close(outs[0], outs[1], rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(grads[0], grads[1], rtol=2e-2, atol=1e-3)
    layer.use_reference = False
    with torch.autocast("cpu", dtype=torch.bfloat16):
        graph = torch._dynamo.explain(layer)(x)
    casts = [
        node
        for g in graph.graphs
        for node in g.graph.nodes
        if node.target == "to" and torch.float32 in node.args
    ]
    assert not casts, "the autocast path should not copy the activations to fp32"
    torch._dynamo.reset()


def test_unbatched_input_is_accepted():
    layer = make_layer()
    randomise_scales(layer)
    x = torch.randn(IN)
    torch.testing.assert_close(layer(x), layer(x.unsqueeze(0))[0])


@pytest.mark.slow  # torch.compile
def test_compiles_without_graph_breaks():
    layer = make_layer(dropout=0.1, scale_shape="vector").train()
    randomise_scales(layer)
    x = torch.randn(2, TOKENS, IN)
    explanation = torch._dynamo.explain(layer)(x)
    assert explanation.graph_break_count == 0, explanation.break_reasons
    assert explanation.graph_count == 1
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    compiled(x).sum().backward()
    assert layer.lora_A.grad is not None and layer.lora_scale.grad is not None
    torch._dynamo.reset()
