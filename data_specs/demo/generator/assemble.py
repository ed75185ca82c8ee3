"""Every file's rows, with the duplicates and leaks planted at seeded places."""

from __future__ import annotations

import random

from knowledge_boolq import boolq_item, knowledge_items
from math_instructions import instruction_item, math_item, paragraph_item
from overlap import eval_grams, numbers_of, shares_ngram, unique
from planting import Planter, case_copy, near_copy
from rendering import TEXT, jaccard, text_alpaca, text_boolq, text_gsm8k
from settings import N_EVAL, N_TRAIN, SEED


def build() -> tuple[dict[str, list], list[dict]]:
    rng = random.Random(SEED)
    used_names: set = set()
    know_train, know_eval = knowledge_items(rng)
    # Evaluation items first; training rows that share a 13-gram with them are redrawn,
    # so the only contamination is what gets planted below.
    boolq_eval = [boolq_item(rng, used_names, i) for i in range(N_EVAL["boolq"])]
    math_eval = unique(rng, math_item, N_EVAL["math"], text_gsm8k, key=numbers_of)
    boolq_grams, math_grams = eval_grams("boolq", boolq_eval), eval_grams("math", math_eval)
    boolq_train = []
    while len(boolq_train) < N_TRAIN:
        row = boolq_item(rng, used_names, len(boolq_train))
        if not shares_ngram(text_boolq(row), boolq_grams):
            boolq_train.append(row)
    seen = {numbers_of(r) for r in math_eval}
    math_train = unique(
        rng,
        math_item,
        N_TRAIN,
        text_gsm8k,
        key=lambda r: "*" if shares_ngram(text_gsm8k(r), math_grams) else numbers_of(r),
        seen=seen | {"*"},
    )
    instructions = unique(rng, instruction_item, N_TRAIN - 20, text_alpaca)
    instructions += unique(rng, paragraph_item, 20, text_alpaca)
    rng.shuffle(instructions)
    files = {
        "instructions": instructions,
        "boolq": boolq_train,
        "knowledge": know_train,
        "math": math_train,
        "knowledge_eval": know_eval,
        "boolq_eval": boolq_eval,
        "math_eval": math_eval,
    }
    plant = Planter(rng)
    originals = {k: list(v) for k, v in files.items()}  # choose sources among the unplanted rows

    def some(name: str, k: int, where=None) -> list:
        pool = [r for r in originals[name] if where is None or where(r)]
        return rng.sample(pool, k)

    # exact duplicates within a source (the same row twice)
    for name in ("instructions", "boolq", "knowledge", "math"):
        for row in some(name, 3):
            plant.insert(
                files[name], row.copy() if isinstance(row, dict) else list(row), row, "exact", name
            )
    # duplicates that differ only in case, spacing or punctuation
    for name, fields in (
        ("instructions", ["instruction", "output"]),
        ("boolq", ["question"]),
        ("knowledge", [0]),
        ("math", ["question"]),
    ):
        for row in some(name, 2):
            plant.insert(files[name], case_copy(row, fields), row, "normalised", name)
    # near duplicates within a source
    long_rows = {
        "instructions": (
            lambda r: r["instruction"].startswith("Rewrite the following paragraph"),
            ["input"],
        ),
        "boolq": (None, ["passage"]),
        "math": (None, ["question"]),
    }
    for name, (where, keys) in long_rows.items():
        for row in some(name, 3, where):
            copy, score = near_copy(rng, row, keys, TEXT[name])
            plant.insert(files[name], copy, row, "near", name, jaccard=score)

    # near duplicates across sources: an instruction row restating a math row
    def restated(row: dict) -> dict:
        return {"instruction": row["question"], "input": "", "output": row["answer"]}

    def cross_score(row: dict) -> float:
        return round(jaccard(text_alpaca(restated(row)), text_gsm8k(row)), 3)

    # only long problems stay above 0.8 once the two templates' boilerplate differs
    for row in some("math", 3, lambda r: cross_score(r) >= 0.82):
        copy, score = restated(row), cross_score(row)
        plant.insert(files["instructions"], copy, row, "near_cross", "instructions", jaccard=score)
    # training rows that copy evaluation items (verbatim, or with one word changed)
    suites = {
        "knowledge": ("knowledge_eval", "knowledge_mc"),
        "boolq": ("boolq_eval", "boolq_mc"),
        "math": ("math_eval", "math_gen"),
    }
    for name, (eval_file, suite) in suites.items():
        for i, item in enumerate(some(eval_file, 3)):
            copy = item.copy() if isinstance(item, dict) else list(item)
            kind = "leak_exact"
            if i == 2 and name != "knowledge":  # knowledge prompts are short: verbatim only
                copy, _ = near_copy(
                    rng,
                    item,
                    ["passage" if name == "boolq" else "question"],
                    TEXT[name],
                    low=0.5,
                    high=0.99,
                )
                kind = "leak_near"
            plant.insert(files[name], copy, item, kind, name, suite=suite)
    for i, row in enumerate(files["boolq"]):
        row["idx"] = i  # BoolQ idx is the row's position in its split
    return files, plant.resolve(files)
