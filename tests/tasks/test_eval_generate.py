"""Greedy generation: stop sequences, eos and the token budget end a row, and batching
gives the same text as one prompt at a time, on tiny in-memory models."""

from __future__ import annotations

from multilora_pipeline.tasks.evaluation.generate import generate_greedy
from tests.tasks.scoring_models import BigramLM, plain, tiny_llama


def test_greedy_generation_stops_at_stop_sequences_and_eos(chars):
    ids = chars.convert_tokens_to_ids
    nl = chars.encode("\n", add_special_tokens=False)[0]
    space = chars.encode(" ", add_special_tokens=False)[0]
    # After ":" comes " 42" then newlines forever; after "?" comes " 9" then eos.
    table = {
        ids(":"): space,
        space: ids("4"),
        ids("4"): ids("2"),
        ids("2"): nl,
        nl: nl,
        ids("?"): ids("9"),
        ids("9"): chars.eos_token_id,
    }
    model = BigramLM(len(chars), table=table)
    prompts = ["Question: how many?\nAnswer:", "Q: a much longer prompt here. Answer:", "Why?"]
    out = generate_greedy(
        model, plain(chars), prompts, max_new_tokens=10, stop_sequences=["\n\n"], batch_size=2
    )
    assert out == [" 42", " 42", "9"]
    # Without a stop sequence the budget ends it.
    out = generate_greedy(model, plain(chars), prompts[:1], max_new_tokens=5)
    assert out == [" 42\n\n"]


def test_batched_generation_equals_one_at_a_time(bpe):
    model = tiny_llama(len(bpe), seed=3)
    prompts = ["Question: Tom has 3 apples.\nAnswer:", "Q?", "The passage says the river is long."]
    batched = generate_greedy(model, plain(bpe), prompts, max_new_tokens=8, batch_size=3)
    single = [generate_greedy(model, plain(bpe), [p], max_new_tokens=8)[0] for p in prompts]
    assert batched == single
    assert all(batched)
