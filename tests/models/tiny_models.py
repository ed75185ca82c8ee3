"""Tiny models for the model tests: random causal LMs of each family (with inputs and
perturbed adapters for the MultiLoRA tests), and the corpus built models' tokenizers learn."""

import torch
from transformers import AutoModelForCausalLM

from multilora_pipeline.models.multilora import multilora_layers
from multilora_pipeline.models.tiny import tiny_config

FAMILIES = ["llama", "gpt2", "qwen2", "opt"]
TOL = {"rtol": 1e-5, "atol": 1e-5}


def base_model(family, seed=0, **sizes):
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(family, **sizes)).eval()


def input_ids(seed=0, batch=2, length=12):
    return torch.randint(4, 128, (batch, length), generator=torch.Generator().manual_seed(seed))


def perturb_adapters(model, seed=1):
    """Give every adapter tensor random values so ΔW is non-zero in every direction."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, layer in multilora_layers(model):
            for tensor in (layer.lora_A, layer.lora_B, layer.lora_scale):
                tensor.copy_(0.2 * torch.randn(tensor.shape, generator=generator))


# The corpus of build_tiny_model's tokenizer in test_tiny_builder and test_gguf_fixture.
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Question: what is 12 plus 30?\nAnswer: 42",
    "MultiLoRA scales LoRA horizontally with learnable scales.",
] * 20
