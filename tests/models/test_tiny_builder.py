"""build_tiny_model: the saved folder loads through the Auto classes like a hub id."""

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from multilora_pipeline.models.tiny import FAMILIES, TinyModelError, build_tiny_model, tiny_config
from tests.models.tiny_models import TEXTS

SIZES = dict(
    vocab_size=320,
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,
    max_position=64,
)


def test_builds_a_folder_that_loads_like_a_hub_model(tmp_path):
    out = build_tiny_model(tmp_path / "tiny", TEXTS, **SIZES)
    assert (out / "config.json").is_file() and (out / "tokenizer.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp left

    tokenizer = AutoTokenizer.from_pretrained(out)
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    assert model.config.model_type == "llama"
    assert model.config.vocab_size == 320 and model.config.hidden_size == 32
    assert not model.config.tie_word_embeddings
    assert (tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id) == (0, 1, 2)
    assert tokenizer.unk_token == "<unk>"
    assert len(tokenizer) <= model.config.vocab_size
    assert tokenizer.model_max_length == 64

    text = "Question: what is 12 plus 30?"
    ids = tokenizer(text)["input_ids"]
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == text
    assert len(ids) - 1 < len(text.encode())  # BPE learned merges: fewer tokens than bytes

    batch = tokenizer(["a", "longer text"], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, batch["input_ids"].shape[1], 320)
    generated = model.generate(**tokenizer("The quick", return_tensors="pt"), max_new_tokens=3)
    assert generated.shape[1] > 3


def test_same_seed_same_weights_and_existing_folder_untouched(tmp_path):
    first = build_tiny_model(tmp_path / "a", TEXTS, **SIZES, seed=3)
    second = build_tiny_model(tmp_path / "b", TEXTS, **SIZES, seed=3)
    a = AutoModelForCausalLM.from_pretrained(first).state_dict()
    b = AutoModelForCausalLM.from_pretrained(second).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)

    stamp = (first / "model.safetensors").stat().st_mtime_ns
    again = build_tiny_model(first, ["other text"], **{**SIZES, "hidden_size": 64})
    assert again == first
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp


def test_refuses_non_empty_folder_without_config_and_tiny_vocab(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "notes.txt").write_text("keep me")
    with pytest.raises(TinyModelError, match="not empty and has no config.json"):
        build_tiny_model(tmp_path / "x", TEXTS, **SIZES)
    with pytest.raises(TinyModelError, match="vocab_size must be at least 260"):
        build_tiny_model(tmp_path / "y", TEXTS, **{**SIZES, "vocab_size": 100})


@pytest.mark.parametrize("family", FAMILIES)
def test_tiny_config_builds_each_family(family):
    model = AutoModelForCausalLM.from_config(tiny_config(family))
    assert model.config.vocab_size == 128
    assert sum(p.numel() for p in model.parameters()) < 100_000


def test_tiny_config_rejects_unknown_family():
    with pytest.raises(TinyModelError, match="unknown family 'mamba'"):
        tiny_config("mamba")
