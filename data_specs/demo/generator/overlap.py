"""What counts as overlap: new items only, evaluation 13-grams without boilerplate, the
pipeline's word normalisation."""

from __future__ import annotations

import random
import re
from collections import defaultdict

from rendering import TEXT, prompt_only, words
from settings import BOILERPLATE, NGRAM


def unique(rng: random.Random, make, n: int, text, key=None, seen: set | None = None) -> list:
    """n items from `make` whose key (default: normalised text) is new: no accidental duplicates."""
    seen, out = set(seen or ()), []
    while len(out) < n:
        item = make(rng)
        key_of = key(item) if key else " ".join(words(text(item)))
        if key_of in seen:
            continue
        seen.add(key_of)
        out.append(item)
    return out


def eval_grams(source: str, items: list) -> set:
    """The 13-grams of evaluation prompts, without boilerplate (in > BOILERPLATE of items)."""
    owners: dict = defaultdict(set)
    for j, item in enumerate(items):
        w = words(prompt_only(source, item))
        for i in range(len(w) - NGRAM + 1):
            owners[tuple(w[i : i + NGRAM])].add(j)
    return {g for g, js in owners.items() if len(js) <= BOILERPLATE * len(items)}


def pipeline_words(text: str) -> list[str]:
    """Words as tasks/data/minhash.py normalises them: punctuation is deleted inside a token, so
    a GSM8K annotation like ``<<27/9=3>>3`` is one word (27933), not four."""
    return [w for w in (re.sub(r"[^\w\s]|_", "", t) for t in text.lower().split()) if w]


def answer_grams(source: str, items: list) -> dict:
    """13-gram -> eval rows (1-based) for the gold answers, boilerplate removed. The pipeline
    matches training rows against an eval item's full text (prompt and answer, as GPT-3 /
    lm-eval do); templated math rationales with the same numbers share answer 13-grams."""
    owners: dict = defaultdict(set)
    for j, item in enumerate(items):
        w = pipeline_words(TEXT[source](item)[len(prompt_only(source, item)) :])
        for i in range(len(w) - NGRAM + 1):
            owners[tuple(w[i : i + NGRAM])].add(j + 1)
    return {g: js for g, js in owners.items() if len(js) <= BOILERPLATE * len(items)}


def shares_ngram(text: str, grams: set) -> bool:
    w = words(text)
    return any(tuple(w[i : i + NGRAM]) in grams for i in range(len(w) - NGRAM + 1))


def numbers_of(item: dict) -> str:
    """Math problems that differ only in a name are near duplicates: key them by their numbers."""
    return " ".join(re.findall(r"\d+", item["question"]))
