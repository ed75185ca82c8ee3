"""Tiny models for the demo and the tests.

``build_tiny_model`` trains a byte-level BPE tokenizer on some text, builds a
randomly initialised Llama of the given sizes, and saves both as a folder that
``AutoModelForCausalLM.from_pretrained`` / ``AutoTokenizer.from_pretrained`` load
exactly like a hub id. ``tiny_config`` gives in-memory configs for the four
architecture families the adapter tests cover (Llama, GPT-2, Qwen2, OPT).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    OPTConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

from .content import atomic_folder

# Order fixes the ids: <pad>=0, <s>=1, </s>=2, <unk>=3, whatever the corpus.
SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
# Byte-level BPE starts from all 256 bytes, plus the special tokens.
_MIN_VOCAB = 256 + len(SPECIAL_TOKENS)

FAMILIES = ("llama", "gpt2", "qwen2", "opt")

# Every linear layer inside the blocks of each family (not lm_head): the names to
# pass as target_modules to adapt "all linear layers" as the MultiLoRA paper does.
BLOCK_LINEARS = {
    "llama": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "qwen2": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    "gpt2": ["c_attn", "c_proj", "c_fc"],  # transformers' Conv1D, not nn.Linear
    "opt": ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"],
}


class TinyModelError(ValueError):
    """Bad arguments to the tiny model builder."""


def tiny_config(
    family: str,
    *,
    vocab_size: int = 128,
    hidden_size: int = 32,
    intermediate_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    max_position: int = 64,
) -> PretrainedConfig:
    """A tiny config of one architecture family, dropout off (for deterministic tests).

    Llama and Qwen2 use 2 key/value heads (grouped-query attention, as real ones do);
    embeddings are untied (see ``build_tiny_model``).
    """
    ids = {"bos_token_id": BOS_ID, "eos_token_id": EOS_ID, "pad_token_id": PAD_ID}
    kv_heads = max(1, num_heads // 2)
    if family in ("llama", "qwen2"):  # same decoder shape; Qwen2 adds biases on q/k/v
        config_class = LlamaConfig if family == "llama" else Qwen2Config
        return config_class(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            intermediate_size=intermediate_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            num_key_value_heads=kv_heads,
            max_position_embeddings=max_position,
            tie_word_embeddings=False,
            **ids,
        )
    if family == "gpt2":
        return GPT2Config(
            vocab_size=vocab_size,
            n_embd=hidden_size,
            n_inner=intermediate_size,
            n_layer=num_layers,
            n_head=num_heads,
            n_positions=max_position,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            tie_word_embeddings=False,
            **ids,
        )
    if family == "opt":
        return OPTConfig(
            vocab_size=vocab_size,
            hidden_size=hidden_size,
            word_embed_proj_dim=hidden_size,
            ffn_dim=intermediate_size,
            num_hidden_layers=num_layers,
            num_attention_heads=num_heads,
            max_position_embeddings=max_position,
            dropout=0.0,
            attention_dropout=0.0,
            tie_word_embeddings=False,
            **ids,
        )
    raise TinyModelError(f"unknown family {family!r}; choose one of {FAMILIES}")


def train_bpe_tokenizer(
    texts: Iterable[str], vocab_size: int, max_length: int
) -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer trained on ``texts`` that prepends <s>, like Llama's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    if vocab_size < _MIN_VOCAB:
        raise TinyModelError(
            f"vocab_size must be at least {_MIN_VOCAB} (256 bytes + {len(SPECIAL_TOKENS)} "
            f"special tokens) for a byte-level BPE, got {vocab_size}"
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", BOS_ID)]
            ),
        ]
    )
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        # min_frequency=1: a small demo corpus otherwise stops far short of vocab_size.
        min_frequency=1,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
        model_max_length=max_length,
    )


def build_tiny_model(
    out_dir: str | os.PathLike,
    texts: Iterable[str],
    *,
    vocab_size: int,
    hidden_size: int,
    intermediate_size: int,
    num_layers: int,
    num_heads: int,
    max_position: int,
    seed: int = 0,
) -> Path:
    """Train a tokenizer on ``texts``, build a seeded random Llama, save both to ``out_dir``.

    If ``out_dir`` already holds a config.json it is returned untouched (the build
    is deterministic for fixed inputs, so rebuilding would give the same folder).
    The folder is assembled under a temp name and renamed into place, so a crash
    never leaves a half-written model behind.

    Embeddings are untied: an adapter on lm_head then never silently changes the
    input embedding too, and every exported/merged weight has one owner.
    """
    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file():
        return out_dir
    if out_dir.exists() and any(out_dir.iterdir()):
        raise TinyModelError(
            f"{out_dir} exists, is not empty and has no config.json; remove it or pick "
            f"another directory for the tiny model"
        )
    tokenizer = train_bpe_tokenizer(texts, vocab_size, max_position)
    config = tiny_config(
        "llama",
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_layers=num_layers,
        num_heads=num_heads,
        max_position=max_position,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config)

    with atomic_folder(out_dir) as tmp:  # out_dir is absent or empty (checked above)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return out_dir
