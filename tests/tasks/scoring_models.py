"""Tiny tokenizers and models for the evaluation tests (scoring, generation, evaluate)."""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from torch import nn
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast
from transformers.modeling_outputs import CausalLMOutputWithPast

from multilora_pipeline.models.prompt_format import PromptFormat
from multilora_pipeline.models.tiny import tiny_config

CORPUS = [
    "Question: What is the capital of France?\nA. Paris\nB. Rome\nC. Oslo\nD. Bern\nAnswer: A",
    "The passage says the river is long.\nQuestion: is the river long?\nAnswer: yes",
    "Question: Tom has 3 apples and buys 4 more. How many?\nAnswer: 3 + 4 = 7\n#### 7",
    "A dog ran across the field. True or False? Answer: True",
] * 3


def make_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE; vocab_size 260 gives one token per byte (no merges)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def tiny_llama(vocab: int, seed: int = 0) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    return LlamaForCausalLM(tiny_config("llama", vocab_size=vocab, max_position=256)).eval()


class BigramLM(nn.Module):
    """A causal LM whose next token depends only on the current one: preferences by construction."""

    def __init__(self, vocab: int, table: dict[int, int] | None = None, bias=None):
        super().__init__()
        self.vocab, self.table = vocab, table or {}
        self.bias = torch.zeros(vocab) if bias is None else bias
        self.dummy = nn.Parameter(torch.zeros(1))  # gives the module a device

    def forward(self, input_ids, attention_mask=None, position_ids=None, **kwargs):
        logits = self.bias.expand(*input_ids.shape, self.vocab).clone()
        for token, nxt in self.table.items():
            logits[input_ids == token] = 0.0
            logits[..., nxt] += 20.0 * (input_ids == token)  # near-certain next token
        return CausalLMOutputWithPast(logits=logits)


def plain(tokenizer) -> PromptFormat:
    """The plain prompt format (no chat template) for `tokenizer`."""
    return PromptFormat(tokenizer, "plain")
