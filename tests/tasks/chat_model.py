"""A tiny model whose tokenizer has a ChatML-like chat template, and the multiple-choice
row its tokenizer was trained on: for the tests that check a chat model sees the same
tokens in every stage (prompt format, lm-eval, the GGUF pipeline)."""

from __future__ import annotations

from transformers import AutoTokenizer

from multilora_pipeline.models.tiny import build_tiny_model

# Opens with the bos text (<s>), as SmolLM2's and Llama 3's templates do.
CHAT_TEMPLATE = (
    "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<s>assistant\n{% endif %}"
)
PROMPT, CHOICES, LABEL = "The sky is blue.\nQuestion: is the sky blue?\nAnswer:", ["no", "yes"], 1
TEXTS = [PROMPT + " yes", "Question: Tom has 3 apples.\nAnswer: 3 #### 3"] * 20


def build_chat_model(folder):
    """A tiny model folder whose tokenizer has CHAT_TEMPLATE; returns the folder."""
    build_tiny_model(folder, TEXTS, vocab_size=320, hidden_size=32, intermediate_size=64,
                     num_layers=2, num_heads=2, max_position=256, seed=0)  # fmt: skip
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.save_pretrained(folder)
    return folder
