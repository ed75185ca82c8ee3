"""The names of the metrics evaluation logs: one vocabulary for the evaluation stage that
writes them, the spec that may pick one as `registry.primary_metric`, the gate that
compares them and the summaries that show them.

    <suite>_acc, <suite>_acc_norm        multiple-choice suites (lm-eval's two accuracies)
    <suite>_balanced_acc                 multiple-choice suites: mean recall over the gold labels
    <suite>_majority, <suite>_chance     what acc is read against: always the most common
                                         answer, and uniform guessing (from the suite's labels)
    <suite>_exact_match                  generation suites (the headline score)
    <suite>_strict_match, _flexible_extract   gsm8k generation suites (lm-eval's two scores)
    category_<category>_score            mean headline score of a category's suites
    eval_macro_acc                       mean headline score over every suite
    val_loss, val_ppl                    held-out loss of the mixture's validation rows
"""

from __future__ import annotations

MACRO = "eval_macro_acc"
CATEGORY_PREFIX = "category_"
HELD_OUT_LOSS = "val_loss"
HELD_OUT_PPL = "val_ppl"
MULTIPLE_CHOICE = ("acc", "acc_norm")
GENERATION = ("exact_match",)
GSM8K = ("strict_match", "flexible_extract")
"""lm-eval's gsm8k scores: `#### N` answer only, and the last number in the text."""
BALANCED_ACC = "balanced_acc"
MAJORITY, CHANCE = "majority", "chance"
BASELINES = (MAJORITY, CHANCE)
"""A multiple-choice suite's two constant references: the same for every model scored on it."""
SUITE_SCORES = (*MULTIPLE_CHOICE, BALANCED_ACC, *GENERATION)
"""The per-suite scores a summary shows beside the macro mean."""


def suite_metric(suite: str, kind: str) -> str:
    return f"{suite}_{kind}"


def category_metric(category: str) -> str:
    return f"{CATEGORY_PREFIX}{category}_score"


def suite_kinds(kind: str, template: str) -> tuple[str, ...]:
    """The metric kinds a suite of `kind` (multiple_choice / generation) and `template` logs."""
    if kind == "multiple_choice":
        return MULTIPLE_CHOICE
    return GENERATION + (GSM8K if template == "gsm8k" else ())


def headline_kind(kind: str) -> str:
    """The kind that is a suite's headline score (what categories and the macro mean average)."""
    return MULTIPLE_CHOICE[0] if kind == "multiple_choice" else GENERATION[0]
