"""Word tokens, shingles and the renderings of each source's rows that the overlap checks
measure."""

from __future__ import annotations

import random
import re

from settings import SHINGLE
from vocabulary import ONES, TENS


def words(text: str) -> list[str]:
    """Lower-cased word tokens, punctuation dropped: the unit every overlap check uses."""
    return re.findall(r"[a-z0-9]+", text.lower())


def shingles(text: str, n: int = SHINGLE) -> set[tuple[str, ...]]:
    w = words(text)
    return {tuple(w[i : i + n]) for i in range(max(1, len(w) - n + 1))}


def jaccard(a: str, b: str) -> float:
    sa, sb = shingles(a), shingles(b)
    return len(sa & sb) / len(sa | sb)


def number_words(n: int) -> str:
    if n < 20:
        return ONES[n]
    if n < 100:
        return TENS[n // 10] + ("" if n % 10 == 0 else "-" + ONES[n % 10])
    rest = n % 100
    return ONES[n // 100] + " hundred" + ("" if rest == 0 else " and " + number_words(rest))


def pick_distractors(rng: random.Random, gold, pool, k: int = 3) -> list:
    options = [x for x in dict.fromkeys(pool) if x != gold]
    return rng.sample(options, k)


# Renderings of the canonical prompt + response (tasks/data/templates.py formats), used only to
# measure overlaps here; data_specs must not import tasks/, so they are restated.
def text_alpaca(row: dict) -> str:
    block = f"\n\n### Input:\n{row['input']}" if row["input"].strip() else ""
    return f"### Instruction:\n{row['instruction']}{block}\n\n### Response:\n{row['output']}"


def text_boolq(row: dict) -> str:
    return (
        f"{row['passage']}\nQuestion: {row['question']}?\nAnswer: {'yes' if row['label'] else 'no'}"
    )


def text_mmlu(row: list) -> str:
    q, a, b, c, d, ans = row
    return f"{q}\nA. {a}\nB. {b}\nC. {c}\nD. {d}\nAnswer: {ans}"


def text_gsm8k(row: dict) -> str:
    return f"Question: {row['question']}\nAnswer: {row['answer']}"


def prompt_only(source: str, row) -> str:
    """The evaluation prompt (no gold answer), the text decontamination compares against."""
    if source == "knowledge":
        return text_mmlu(row).rsplit(" ", 1)[0]
    if source == "boolq":
        return text_boolq(row).rsplit(" ", 1)[0]
    return f"Question: {row['question']}\nAnswer:"


TEXT = {
    "instructions": text_alpaca,
    "boolq": text_boolq,
    "knowledge": text_mmlu,
    "math": text_gsm8k,
}
