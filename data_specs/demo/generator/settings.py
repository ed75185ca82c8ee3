"""The generator's fixed choices: the seed, sizes and the overlap measures the checks use."""

from __future__ import annotations

SEED = 1234
N_TRAIN = 300  # rows per training source before planting: a few hundred, as the spec asks
N_EVAL = {"knowledge": 80, "boolq": 80, "math": 40}  # math eval is generation: slower to score
NGRAM = 13  # decontamination n-gram (GPT-3 / lm-eval convention)
SHINGLE = 5  # near-dedup word shingle
BOILERPLATE = 0.1  # n-grams in more than this share of eval items are template, not content
