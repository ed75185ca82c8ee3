"""Write a tiny transformers Llama and its tokenizer as a GGUF file, offline.

Tests of the GGUF base-model path need a GGUF file, and a real one is gigabytes behind a
download. This writes one from the tiny random model of ``models.tiny`` with the ``gguf``
package's writer, laid out the way llama.cpp's ``convert_hf_to_gguf.py`` lays out a Llama
(F32 tensors only), so ``from_pretrained(folder, gguf_file=name)`` loads it back to the same
logits and the same token ids.
"""

from __future__ import annotations

import json
from pathlib import Path

import gguf
import numpy as np


def _permute(weight: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``permute`` of a q/k projection's rows, as its converter applies it.

    HF's rotary embedding rotates dims (i, i + d/2) of each head, llama.cpp's rotates
    adjacent pairs (2i, 2i + 1); the converter reorders each head's rows to match, and
    transformers' GGUF loader undoes it. Without it the weights load but the logits differ.
    """
    return (
        weight.reshape(n_head, 2, weight.shape[0] // n_head // 2, *weight.shape[1:])
        .swapaxes(1, 2)
        .reshape(weight.shape)
    )


def write_llama_gguf(model, tokenizer, path: Path) -> Path:
    """Write ``model`` (a ``LlamaForCausalLM``) and its byte-level BPE ``tokenizer`` to ``path``.

    Put the file in a folder of its own: ``AutoTokenizer.from_pretrained(folder, gguf_file=...)``
    prefers a ``tokenizer.json`` lying in that folder to the GGUF's vocabulary, silently.
    """
    config = model.config
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = gguf.GGUFWriter(path, "llama")

    writer.add_name("tiny-llama")  # a name containing "mistral" would load as Mistral
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_rope_dimension_count(config.head_dim)  # read back as head_dim
    writer.add_rope_freq_base(config.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(config.vocab_size)

    # Tokenizer, as convert_hf_to_gguf writes a byte-level BPE: tokens in the GPT-2 byte
    # alphabet (as tokenizer.json spells them), merges as "a b" strings, added tokens as
    # CONTROL (special) or USER_DEFINED (plain), so the loader keeps them whole.
    state = json.loads(tokenizer.backend_tokenizer.to_str())
    by_id = {index: token for token, index in state["model"]["vocab"].items()}
    added = {t["id"]: t for t in state["added_tokens"]}
    by_id.update({index: t["content"] for index, t in added.items()})
    tokens, types = [], []
    # The embedding may have more rows than the trained vocabulary: llama.cpp pads the token
    # list to the model's vocab_size with unused placeholders, so ids and rows line up.
    for index in range(config.vocab_size):
        if index not in by_id:
            tokens.append(f"[PAD{index}]")
            types.append(gguf.TokenType.UNUSED)
            continue
        tokens.append(by_id[index])
        if index not in added:
            types.append(gguf.TokenType.NORMAL)
        elif added[index]["special"]:
            types.append(gguf.TokenType.CONTROL)
        else:
            types.append(gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in state["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    # Not one of transformers' known split regexes, so it keeps GPT-2's: the one
    # pre_tokenizers.ByteLevel (use_regex=True) applies, which is what models.tiny trains with.
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    # Read back into both the tokenizer and the model config (bos/eos/pad_token_id).
    for kind in ("bos", "eos", "pad", "unk"):
        if (token_id := getattr(tokenizer, f"{kind}_token_id")) is not None:
            getattr(writer, f"add_{kind}_token_id")(token_id)
    # A GGUF has no post-processor: these flags are all the loader rebuilds one from, so
    # state what the tokenizer does (models.tiny's prepends <s>, appends nothing).
    probe = tokenizer("a")["input_ids"]
    writer.add_add_bos_token(probe[0] == tokenizer.bos_token_id)
    writer.add_add_eos_token(probe[-1] == tokenizer.eos_token_id)
    if getattr(tokenizer, "chat_template", None):
        writer.add_chat_template(tokenizer.chat_template)

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and config.tie_word_embeddings:
            continue  # no output.weight is how a GGUF says "tied" (transformers checks this)
        base, suffix = hf_name.rsplit(".", 1)
        gguf_base = names.get_name(base)
        if gguf_base is None:
            raise ValueError(f"no GGUF name for {hf_name!r}: not a plain Llama?")
        weight = tensor.detach().to("cpu").float().numpy()
        if base.endswith("self_attn.q_proj"):
            weight = _permute(weight, config.num_attention_heads)
        elif base.endswith("self_attn.k_proj"):
            weight = _permute(weight, config.num_key_value_heads)
        writer.add_tensor(f"{gguf_base}.{suffix}", weight)

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
