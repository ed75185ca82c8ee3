"""One prompt format per run: training, held-out loss, multiple choice, generation and the
served model put the same tokens in front of the model.

The tiny tokenizer here has a ChatML-like chat template, so a stage that scored the raw
prompt (as multiple choice and generation once did while training used the template)
feeds different ids and fails these tests.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from multilora_pipeline.data_specs.record import make_record, records_to_table
from multilora_pipeline.models.multilora import MultiLoRAConfig, inject_multilora, save_adapter
from multilora_pipeline.models.prompt_format import FORMAT_FILE, PromptFormat, PromptFormatError
from multilora_pipeline.tasks.evaluation.evaluate import heldout_loss
from multilora_pipeline.tasks.evaluation.generate import generate_greedy
from multilora_pipeline.tasks.evaluation.scoring import CausalLM, encode_requests
from multilora_pipeline.tasks.registry.pyfunc_model import AdapterGenerator
from multilora_pipeline.tasks.training.tokenise import tokenise_records
from tests.tasks.chat_model import CHOICES, LABEL, PROMPT, build_chat_model
from tests.tasks.scoring_models import BigramLM, plain


@pytest.fixture(scope="module")
def chat_folder(tmp_path_factory):
    return build_chat_model(tmp_path_factory.mktemp("chat") / "model")


class FirstInput:
    """Records the input_ids of every forward call of a module."""

    def __init__(self, module):
        self.calls: list[list[int]] = []
        module.register_forward_pre_hook(self, with_kwargs=True)

    def __call__(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.calls.append(ids[0].tolist())


def _trained_ids(fmt: PromptFormat) -> tuple[list[int], list[int]]:
    """(prompt ids, prompt + response ids) of the row as training tokenises it."""
    table = records_to_table(
        [
            make_record(
                source="s", task="t", prompt=PROMPT, response=" " + CHOICES[LABEL], category="nlu"
            )
        ]
    )
    (example,), _ = tokenise_records(table, fmt, max_length=256)
    response = fmt.tokenizer(fmt.response(" " + CHOICES[LABEL]), add_special_tokens=False)[
        "input_ids"
    ]
    whole = example.input_ids[: -len(fmt.end_ids())]  # without the eos training appends
    return whole[: len(whole) - len(response)], whole


def test_every_stage_feeds_the_tokens_training_fed(chat_folder, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(chat_folder)
    model = AutoModelForCausalLM.from_pretrained(chat_folder).eval()
    fmt = PromptFormat.resolve(tokenizer)  # auto: the tokenizer has a template
    assert fmt.kind == "chat"
    prompt_ids, trained = _trained_ids(fmt)
    assert trained[0] == tokenizer.bos_token_id and trained.count(tokenizer.bos_token_id) == 2

    # Multiple choice: context + the gold continuation are the trained sequence.
    (request,) = encode_requests(CausalLM(model, fmt), [PROMPT], [CHOICES], " ")
    assert request.context + request.continuations[LABEL] == trained
    # The raw prompt would be another sequence: this test tells the formats apart.
    (raw,) = encode_requests(CausalLM(model, plain(tokenizer)), [PROMPT], [CHOICES], " ")
    assert raw.context != request.context

    # Generation: the first forward sees the trained prompt.
    seen = FirstInput(model)
    generate_greedy(model, fmt, [PROMPT], max_new_tokens=1)
    assert seen.calls[0] == prompt_ids

    # Held-out loss scores exactly the training example (same ids, same targets).
    seen.calls.clear()
    table = records_to_table(
        [make_record(source="s", task="t", prompt=PROMPT, response=" yes", category="nlu")]
    )
    heldout_loss(model, fmt, table)
    assert seen.calls[0] == trained + fmt.end_ids()

    # The served model (MLflow pyfunc) encodes the prompt the same way.
    adapted = AutoModelForCausalLM.from_pretrained(chat_folder)
    inject_multilora(adapted, MultiLoRAConfig(n_modules=2, rank=2, target_modules=["q_proj"]))
    save_adapter(adapted, tmp_path / "adapter")
    served = AdapterGenerator()
    served.load_context(
        SimpleNamespace(
            artifacts={"base_model": str(chat_folder), "adapter": str(tmp_path / "adapter")},
            model_config={"kind": "multilora", "prompt_format": "chat", "max_new_tokens": 2},
        )
    )
    seen = FirstInput(served.model)
    import pandas as pd

    served.predict(None, pd.DataFrame({"prompt": [PROMPT]}))
    assert seen.calls[0] == prompt_ids


def test_plain_format_adds_bos_once_and_chat_needs_a_template(chat_folder, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(chat_folder)
    (ids,) = plain(tokenizer).encode([PROMPT])
    assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1
    tokenizer.chat_template = None
    assert PromptFormat.resolve(tokenizer).kind == "plain"  # auto without a template
    with pytest.raises(PromptFormatError, match="no chat template"):
        PromptFormat.resolve(tokenizer, "chat")
    # Recorded beside adapters: what lm-eval needs to prompt the same way.
    written = PromptFormat(AutoTokenizer.from_pretrained(chat_folder), "chat").write(tmp_path)
    assert written.name == FORMAT_FILE and "--apply_chat_template" in written.read_text()


def test_generation_stops_at_every_end_of_turn_token(chars):
    ids = chars.convert_tokens_to_ids
    end_of_turn = ids("|")  # stands for <|im_end|>: not the tokenizer's eos
    model = BigramLM(len(chars), table={ids(":"): ids("7"), ids("7"): end_of_turn})
    model.generation_config = GenerationConfig(eos_token_id=[chars.eos_token_id, end_of_turn])
    assert generate_greedy(model, plain(chars), ["Answer:"], max_new_tokens=6) == ["7"]
    model.generation_config = GenerationConfig(eos_token_id=chars.eos_token_id)
    assert generate_greedy(model, plain(chars), ["Answer:"], max_new_tokens=3)[0].startswith("7|")


def test_multiple_choice_scores_are_finite_in_both_formats(chat_folder):
    from multilora_pipeline.tasks.evaluation.scoring import score_choices

    tokenizer = AutoTokenizer.from_pretrained(chat_folder)
    model = AutoModelForCausalLM.from_pretrained(chat_folder).eval()
    for fmt in (PromptFormat.resolve(tokenizer), plain(tokenizer)):
        (lls,) = score_choices(model, fmt, [PROMPT], [CHOICES])
        assert all(torch.isfinite(torch.tensor(lls)))


def test_a_chat_response_is_the_assistant_turn_without_the_delimiter_space(chat_folder):
    tokenizer = AutoTokenizer.from_pretrained(chat_folder)
    chat, flat = PromptFormat.resolve(tokenizer), plain(tokenizer)
    table = records_to_table(
        [make_record(source="s", task="t", prompt=PROMPT, response=" yes", category="nlu")]
    )
    words = tokenizer(["yes", " yes"], add_special_tokens=False)["input_ids"]
    assert words[0] != words[1]  # the tiny tokenizer tells the two apart
    for fmt, answer in ((chat, words[0]), (flat, words[1])):
        (example,), _ = tokenise_records(table, fmt, max_length=256)
        (prompt_ids,) = fmt.encode([PROMPT])
        assert example.input_ids == prompt_ids + answer + fmt.end_ids()
    # Multiple choice: lm-eval's chat scoring, the generation prompt's newline moved into
    # every choice and no delimiter before it; the gold continuation is what was trained.
    # The newline every choice starts with is scored once, with the context (`shared`).
    model = AutoModelForCausalLM.from_pretrained(chat_folder).eval()
    (request,) = encode_requests(CausalLM(model, chat), [PROMPT], [CHOICES], " ")
    (prompt_ids,) = chat.encode([PROMPT])
    assert request.shared == 1 and request.context == prompt_ids
    assert request.context[-1:] == tokenizer("\n", add_special_tokens=False)["input_ids"]
    assert request.continuations[LABEL] == words[0]


def test_a_suite_header_is_the_system_turn_of_a_chat_and_leads_a_plain_prompt(chat_folder):
    tokenizer = AutoTokenizer.from_pretrained(chat_folder)
    header = "The following are multiple choice questions (with answers) about marketing.\n\n"
    (chat,) = PromptFormat.resolve(tokenizer).render([PROMPT], [header])
    assert chat == f"<s>system\n{header}</s>\n<s>user\n{PROMPT}</s>\n<s>assistant\n"
    (flat,) = plain(tokenizer).render([PROMPT], [header])
    assert flat == header + PROMPT
    assert plain(tokenizer).render([PROMPT], [""]) == plain(tokenizer).render([PROMPT])
