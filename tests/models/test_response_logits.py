"""The output head run only where a label is predicted gives the model's own loss and gradients."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from multilora_pipeline.models.multilora import MultiLoRAConfig, inject_multilora, scale_parameters
from multilora_pipeline.models.response_logits import output_head, response_logits
from multilora_pipeline.models.tiny import BLOCK_LINEARS, tiny_config

FAMILIES = ["llama", "gpt2", "qwen2", "opt"]
IGNORE = -100


def batch(vocab: int, rows: int = 3, length: int = 12):
    """Random tokens; labels only on each row's last few tokens (a masked prompt), one row
    with none at all, and one with a label at position 0 (never predicted: nothing before it)."""
    torch.manual_seed(1)
    ids = torch.randint(0, vocab, (rows, length))
    labels = torch.full_like(ids, IGNORE)
    labels[0, -4:] = ids[0, -4:]
    labels[2, :] = ids[2, :]
    return ids, labels


@pytest.mark.parametrize("family", FAMILIES)
def test_loss_and_gradients_equal_the_models_own(family):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(tiny_config(family))
    for p in model.parameters():
        p.requires_grad_(False)
    inject_multilora(
        model, MultiLoRAConfig(n_modules=2, rank=2, target_modules=BLOCK_LINEARS[family])
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    for scale in scale_parameters(model):  # non-zero, so A and B get gradients too
        scale.data.fill_(0.5)
    ids, labels = batch(model.config.vocab_size)
    mask = torch.ones_like(ids)

    own = model(input_ids=ids, attention_mask=mask, labels=labels).loss
    own_grads = torch.autograd.grad(own, trainable)
    logits, targets = response_logits(model, ids, labels, ignore_index=IGNORE, attention_mask=mask)
    assert logits.shape == (4 + 11, model.config.vocab_size)  # row 2: positions 1..11
    assert torch.equal(targets, torch.cat([ids[0, -4:], ids[2, 1:]]))
    ours = torch.nn.functional.cross_entropy(logits.float(), targets)
    ours_grads = torch.autograd.grad(ours, trainable)

    torch.testing.assert_close(ours, own, rtol=1e-5, atol=1e-6)
    for a, b in zip(ours_grads, own_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert not output_head(model)._forward_pre_hooks  # the hook is gone after the call


def test_a_model_whose_head_cannot_be_hooked_gets_full_logits():
    """A mixture-of-experts model adding its router loss is called whole: same targets."""
    model = AutoModelForCausalLM.from_config(tiny_config("llama"))
    model.config.output_router_logits = True
    assert output_head(model) is None
    ids, labels = batch(model.config.vocab_size)
    logits, targets = response_logits(model, ids, labels, ignore_index=IGNORE)
    full = model(input_ids=ids).logits
    torch.testing.assert_close(logits, full[:, :-1][labels[:, 1:] != IGNORE])
    assert targets.numel() == logits.shape[0]
