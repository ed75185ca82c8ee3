"""Multiple-choice scoring: lm-eval's acc / acc_norm on hand examples, and the batched
scorer against the one-at-a-time reference, on tiny in-memory models.

The tiny tokenizers and models are in tests/tasks/scoring_models.py (fixtures: conftest.py)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from multilora_pipeline.models.tiny import tiny_config
from multilora_pipeline.tasks.evaluation.scoring import (
    choice_metrics,
    length_groups,
    score_choices,
    score_choices_reference,
)
from tests.tasks.scoring_models import plain, tiny_llama

# --- acc / acc_norm --------------------------------------------------------------------


def test_acc_norm_is_loglik_over_characters_on_hand_examples():
    # lls / len: -4/2 = -2, -6/6 = -1, -5/4 = -1.25 -> acc picks 0, acc_norm picks 1.
    m = choice_metrics([-4.0, -6.0, -5.0], ["ab", "abcdef", "abcd"], label=1)
    assert (m["pred"], m["pred_norm"], m["acc"], m["acc_norm"]) == (0, 1, 0.0, 1.0)
    # The delimiter is not counted: " yes" vs "no" is 3 vs 2 characters.
    m = choice_metrics([-3.0, -2.1], ["yes", "no"], label=0)
    assert (m["pred"], m["pred_norm"]) == (1, 0)  # -1.0 > -1.05
    # Ties go to the first choice, like np.argmax.
    assert choice_metrics([-1.0, -1.0], ["a", "b"], label=1)["acc"] == 0.0


# --- batched scorer == one-at-a-time ------------------------------------------------------


def _family(name: str, vocab: int):
    torch.manual_seed(1)
    config = tiny_config(name, vocab_size=vocab, max_position=256)
    return AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize(
    ("family", "overhead"), [("llama", 0), ("llama", 10_000), ("qwen2", 0), ("gpt2", 0)]
)
def test_batched_scorer_matches_one_at_a_time(bpe, family, overhead):
    """overhead 0 splits multi-token choices into one pass per length (the KV cache is
    reused by several passes); 10_000 runs them all in one pass."""
    model = _family(family, len(bpe))
    contexts = [
        "Question: What is the capital of France?\nAnswer:",
        "Q?",
        "The passage says the river is long and the dog ran across the field.\nQuestion: is it?\nAnswer:",
        "Tom has 3 apples. ",  # trailing space moves into the continuation, as in lm-eval
        "Question: Which one?\nA. x\nB. y\nAnswer:",
    ]
    choices = [
        ["Paris", "Rome is a city in Italy", "Oslo"],
        ["yes", "no"],
        ["True", "False", "the river is very long indeed", "x"],
        ["7", "seven apples", "3 + 4 = 7\n#### 7"],
        ["A", "B"],
    ]
    batched = score_choices(
        model, plain(bpe), contexts, choices, batch_size=3, split_overhead_tokens=overhead
    )
    reference = score_choices_reference(model, plain(bpe), contexts, choices)
    for got, want in zip(batched, reference, strict=True):
        assert got == pytest.approx(want, abs=1e-4)
    assert all(ll < 0 for lls in batched for ll in lls)


def test_scorer_left_truncates_contexts_longer_than_the_model(bpe):
    model = tiny_llama(len(bpe))
    model.config.max_position_embeddings = 32  # far shorter than the context below
    long_context = "The passage says the river is long. " * 20 + "Answer:"
    batched = score_choices(model, plain(bpe), [long_context, "Q?"], [["yes", "no"], ["a", "bb"]])
    reference = score_choices_reference(
        model, plain(bpe), [long_context, "Q?"], [["yes", "no"], ["a", "bb"]]
    )
    assert batched[0] == pytest.approx(reference[0], abs=1e-4)


def test_an_over_long_item_is_truncated_per_choice_as_lm_eval_does(bpe):
    """lm-eval scores (context + choice)[-(window + 1):] for each pair on its own, so a
    long choice costs the context more of its oldest tokens than a short one does."""
    from multilora_pipeline.tasks.evaluation.lm import CausalLM, token_logprobs
    from multilora_pipeline.tasks.evaluation.scoring import encode_requests

    model = tiny_llama(len(bpe))
    window = 32
    model.config.max_position_embeddings = window
    context = "The passage says the river is long. " * 20 + "Answer:"
    options = ["yes", "the river is very long indeed"]
    lm = CausalLM(model, plain(bpe))
    requests = encode_requests(lm, [context], [options], " ")
    assert [r.choices for r in requests] == [(0,), (1,)]  # no longer one shared context
    batched = score_choices(model, plain(bpe), [context], [options])[0]
    assert batched == pytest.approx(
        score_choices_reference(model, plain(bpe), [context], [options])[0], abs=1e-4
    )
    for lls, request in zip(batched, requests, strict=True):
        whole = request.context + request.continuations[0]
        assert len(whole) == window + 1  # lm-eval's (context + continuation)[-(window + 1):]
        ids = torch.tensor([whole[:-1]])
        with torch.no_grad():
            logits = model(ids).logits[0]
        cont = request.continuations[0]
        want = token_logprobs(logits[-len(cont) :], torch.tensor(cont)).sum()
        assert lls == pytest.approx(float(want), abs=1e-4)


def test_long_contexts_raise_no_indexing_warning(bpe, monkeypatch):
    # The scorer truncates itself; transformers' "will result in indexing errors" warning
    # (recorded in deprecation_warnings when it fires) would only alarm users.
    monkeypatch.setattr(bpe, "model_max_length", 8)
    monkeypatch.setattr(bpe, "deprecation_warnings", {})
    model = tiny_llama(len(bpe))
    score_choices(model, plain(bpe), ["The passage says the river is long. " * 4], [["yes", "no"]])
    assert not bpe.deprecation_warnings


def test_length_groups_split_only_where_padding_saved_exceeds_the_overhead():
    lengths = [2, 30, 3, 29, 2]
    assert length_groups(lengths, overhead=10_000) == [[1, 3, 2, 0, 4]]
    # Starting a group at the 3-token row saves 3 rows x (30 - 3) = 81 padded tokens.
    assert length_groups(lengths, overhead=50) == [[1, 3], [2, 0, 4]]
    assert length_groups(lengths, overhead=0) == [[1], [3], [2], [0, 4]]
