"""Tokenisation and packing: response-only labels, truncation, no attention across examples."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from multilora_pipeline.data_specs.record import make_record, records_to_table
from multilora_pipeline.models.prompt_format import PromptFormat
from multilora_pipeline.models.tiny import tiny_config
from multilora_pipeline.tasks.training.tokenise import (
    IGNORE,
    TokenisedExample,
    pack_examples,
    tokenise_records,
)
from tests.tasks.scoring_models import plain


@pytest.fixture(scope="module")
def char_tokenizer():
    """A character-level tokenizer: every character is one token, so lengths are predictable."""
    chars = sorted(set("abcdefghijklmnopqrstuvwxyz ?:.\n#0123456789"))
    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3}
    vocab.update({c: i + 4 for i, c in enumerate(chars)})
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )


def _table(pairs):
    return records_to_table(
        [
            make_record(source="s", task="t", category="instruction", prompt=p, response=r)
            for p, r in pairs
        ]
    )


def test_labels_cover_the_response_and_eos_only(char_tokenizer):
    examples, stats = tokenise_records(
        _table([("ab:", " cd")]), plain(char_tokenizer), max_length=32
    )
    (ex,) = examples
    assert len(ex.input_ids) == 1 + 3 + 3 + 1  # bos, prompt, response, eos
    assert ex.labels[:4] == [IGNORE] * 4
    assert ex.labels[4:] == ex.input_ids[4:]
    assert stats.target_tokens == 4


def test_loss_on_prompt_trains_everything_but_the_first_token(char_tokenizer):
    (ex,), _ = tokenise_records(
        _table([("ab:", " cd")]), plain(char_tokenizer), max_length=32, loss_on_prompt=True
    )
    assert ex.labels[0] == IGNORE and ex.labels[1:] == ex.input_ids[1:]


def test_truncation_cuts_the_response_end_and_drops_untrainable_rows(char_tokenizer):
    table = _table([("abc:", " defgh"), ("abcdefghij", " k")])
    examples, stats = tokenise_records(table, plain(char_tokenizer), max_length=7)
    assert stats.truncated == 2 and stats.dropped_no_target == 1
    (ex,) = examples
    assert len(ex.input_ids) == 7 and ex.labels[-1] != IGNORE  # kept, cut inside the response


def test_texts_longer_than_the_model_maximum_raise_no_indexing_warning(char_tokenizer, monkeypatch):
    # tokenise_records truncates itself; transformers' "will result in indexing errors"
    # warning (recorded in deprecation_warnings when it fires) would only alarm users.
    monkeypatch.setattr(char_tokenizer, "model_max_length", 4)
    monkeypatch.setattr(char_tokenizer, "deprecation_warnings", {})
    examples, _ = tokenise_records(
        _table([("abcde:", " ijklmn")]), plain(char_tokenizer), max_length=8
    )
    assert len(examples[0].input_ids) == 8
    assert not char_tokenizer.deprecation_warnings


def test_packing_restarts_positions_and_never_splits_an_example():
    exs = [
        TokenisedExample([1, 5, 6], [IGNORE, 5, 6]),
        TokenisedExample([1, 7], [IGNORE, 7]),
        TokenisedExample([1, 8, 9, 10], [IGNORE, 8, 9, 10]),
    ]
    blocks = pack_examples(exs, max_length=6, pad_id=0)
    assert [b["input_ids"] for b in blocks] == [[1, 5, 6, 1, 7, 0], [1, 8, 9, 10, 0, 0]]
    assert blocks[0]["position_ids"] == [0, 1, 2, 0, 1, 0]
    assert blocks[0]["labels"] == [IGNORE, 5, 6, IGNORE, 7, IGNORE]


def _packed_and_single(model, exs, max_length):
    (block,) = pack_examples(exs, max_length=max_length, pad_id=0)
    # use_cache=False as in training: with a KV cache transformers ignores the packed positions.
    packed = model(
        input_ids=torch.tensor([block["input_ids"]]),
        position_ids=torch.tensor([block["position_ids"]]),
        use_cache=False,
    ).logits[0]
    singles = [model(input_ids=torch.tensor([ex.input_ids])).logits[0] for ex in exs]
    return block, packed, singles


# flex_attention is what keeps packed batches on a fused kernel on a GPU; its forward also
# runs on CPU (its backward does not), so its block-diagonal mask is checked here too.
@pytest.mark.parametrize(
    "attn", ["sdpa", "eager", pytest.param("flex_attention", marks=pytest.mark.slow)]
)
def test_packed_block_has_no_cross_example_attention_and_the_same_loss(attn):
    torch.manual_seed(0)
    model = LlamaForCausalLM._from_config(
        tiny_config("llama", vocab_size=64), attn_implementation=attn
    ).eval()
    g = torch.Generator().manual_seed(1)
    exs = []
    for n in (5, 9, 4):
        ids = [1, *torch.randint(4, 64, (n - 1,), generator=g).tolist()]
        exs.append(TokenisedExample(ids, [IGNORE, IGNORE, *ids[2:]]))
    with torch.no_grad():
        block, packed, singles = _packed_and_single(model, exs, max_length=20)
    start = 0
    for ex, single in zip(exs, singles, strict=True):
        # Same logits token for token: nothing leaked in from the previous example.
        torch.testing.assert_close(
            packed[start : start + len(ex.input_ids)], single, rtol=1e-4, atol=1e-5
        )
        start += len(ex.input_ids)
    labels = torch.tensor(block["labels"])
    packed_loss = F.cross_entropy(packed[:-1], labels[1:], ignore_index=IGNORE, reduction="sum")
    single_loss = sum(
        F.cross_entropy(s[:-1], torch.tensor(ex.labels[1:]), ignore_index=IGNORE, reduction="sum")
        for s, ex in zip(singles, exs, strict=True)
    )
    torch.testing.assert_close(packed_loss, single_loss, rtol=1e-5, atol=1e-5)


def test_chat_template_wraps_the_prompt_when_the_tokenizer_has_one(char_tokenizer):
    char_tokenizer.chat_template = (
        "{% for m in messages %}#{{ m['content'] }}\n{% endfor %}"
        "{% if add_generation_prompt %}a:{% endif %}"
    )
    table = _table([("ab", " cd")])
    assert PromptFormat.resolve(char_tokenizer).kind == "chat"  # auto: the template is there
    (bare,), _ = tokenise_records(table, plain(char_tokenizer), max_length=32)
    (chat,), _ = tokenise_records(table, PromptFormat.resolve(char_tokenizer), max_length=32)
    text = char_tokenizer.decode(chat.input_ids, skip_special_tokens=True)
    assert text.replace(" ", "") == "#ab\na:cd".replace(" ", "")
    # "#", "\n", "a", ":" added; the response's leading space dropped, as lm-eval's chat rendering does
    assert len(chat.input_ids) == len(bare.input_ids) + 4 - 1
    # "cd" + eos are the only targets
    assert chat.labels[-3:] == chat.input_ids[-3:] and set(chat.labels[:-3]) == {-100}
    char_tokenizer.chat_template = None


def test_a_max_length_no_prompt_fits_in_is_refused_with_the_count_and_the_fix(
    char_tokenizer, tmp_path, caplog
):
    import pyarrow.parquet as pq

    from multilora_pipeline.data_specs.errors import TrainingError
    from multilora_pipeline.data_specs.schema import TrainingSpec
    from multilora_pipeline.tasks.training.dataset import build_dataset

    path = tmp_path / "train.parquet"
    pq.write_table(_table([("abcdefghij:", " k"), ("abcdefghijklmno:", " kl")]), path)
    with pytest.raises(TrainingError) as err:
        build_dataset(path, plain(char_tokenizer), TrainingSpec(max_length=8))
    text = str(err.value)
    assert "2 of 2 examples lost their whole response" in text
    assert "the shortest prompt has 12" in text and "raise training.max_length above 12" in text
    pq.write_table(_table([("abcdefghij:", " k"), ("ab:", " cd")]), path)
    rows, stats = build_dataset(path, plain(char_tokenizer), TrainingSpec(max_length=8))
    assert stats["examples"] == 1 and "1 of 2 examples lost their whole response" in caplog.text
