"""write_llama_gguf: the GGUF it writes loads back in transformers as the same model."""

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from multilora_pipeline.models.tiny import build_tiny_model
from tests.gguf_fixture import write_llama_gguf
from tests.models.tiny_models import TEXTS

SIZES = dict(
    vocab_size=320,  # more than the corpus fills: the token list gets padded
    hidden_size=32,
    intermediate_size=64,
    num_layers=2,
    num_heads=4,  # 2 key/value heads: k is permuted with its own head count
    max_position=64,
)
PROBES = [
    "The quick brown fox",
    "Question: what is 12 plus 30?\nAnswer:",
    "  two  spaces, héllo ☃ and <s> inside</s>",
    "",
]
TEMPLATE = "{% for m in messages %}<s>{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = build_tiny_model(tmp_path_factory.mktemp("tiny") / "model", TEXTS, **SIZES)
    return folder, AutoTokenizer.from_pretrained(folder)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_gguf_loads_back_to_the_same_logits_and_token_ids(tiny, tmp_path, tied):
    folder, tokenizer = tiny
    config = AutoConfig.from_pretrained(folder)
    config.tie_word_embeddings = tied
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    tokenizer.chat_template = TEMPLATE if tied else None  # both with and without a template

    # A folder of its own: next to the model's tokenizer.json, that would load instead.
    path = write_llama_gguf(model, tokenizer, tmp_path / "gguf" / "tiny.gguf")
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name).eval()
    loaded_tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)

    assert loaded.config.tie_word_embeddings is tied
    assert loaded.config.vocab_size == config.vocab_size
    assert loaded.config.num_key_value_heads == config.num_key_value_heads
    assert loaded.dtype == torch.float32

    batch = tokenizer(PROBES, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = model(**batch).logits
        actual = loaded(**batch).logits
    torch.testing.assert_close(actual, expected)

    for text in PROBES:
        ids = tokenizer(text)["input_ids"]
        assert loaded_tokenizer(text)["input_ids"] == ids, text
        assert loaded_tokenizer.decode(ids) == tokenizer.decode(ids)
    assert (loaded_tokenizer.bos_token_id, loaded_tokenizer.eos_token_id) == (1, 2)
    assert (loaded_tokenizer.pad_token_id, loaded_tokenizer.unk_token_id) == (0, 3)
    # Every source token keeps its id. (transformers 5.24 also adds GPT-2's <|endoftext|>
    # after the last id to any "gpt2" GGUF vocabulary lacking it, so not equality.)
    assert tokenizer.get_vocab().items() <= loaded_tokenizer.get_vocab().items()

    if tied:
        messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "42"}]
        assert loaded_tokenizer.chat_template == TEMPLATE
        assert loaded_tokenizer.apply_chat_template(messages, tokenize=False) == (
            tokenizer.apply_chat_template(messages, tokenize=False)
        )
    else:
        assert loaded_tokenizer.chat_template is None
