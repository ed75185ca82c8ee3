"""Built-in evaluation suite formats, as data: how each suite is scored.

The prompt text itself comes from the normalise templates (tasks/data/templates.py):
an evaluation Parquet row already holds the rendered `prompt`, the `choices`
(continuations without the leading delimiter) and the gold `label`. A format
here only says what the scorer does with such a row: which delimiter joins
prompt and continuation, how few-shot exemplars are joined, the stop sequences
and answer extraction of a generation task, and which metric is the headline.
Each format names the lm-evaluation-harness task whose conventions it follows
(lm-eval v0.4 task YAMLs), so numbers can be compared with lm-eval's.

A spec picks a format through its suite's `template` (the same name the
normalise stage uses); an unknown template falls back to a generic format for
the suite's `kind`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from multilora_pipeline.data_specs.errors import SpecError

if TYPE_CHECKING:
    from multilora_pipeline.data_specs.schema import EvalSuiteSpec


@dataclass(frozen=True)
class SuiteFormat:
    """How a suite is scored (the prompt text comes from the normalise template)."""

    template: str
    """Normalise template whose rendered prompts this format expects."""
    lm_eval_task: str
    """The lm-evaluation-harness task (and YAML) whose format and metric this follows."""
    kind: Literal["multiple_choice", "generation"]
    """multiple_choice: log-likelihood of each choice; generation: greedy decode + exact match."""
    prompt_format: str
    """The prompt the template renders, for the docs (lm-eval's doc_to_text)."""
    target_delimiter: str = " "
    """Between prompt and continuation (lm-eval default: one space)."""
    fewshot_delimiter: str = "\n\n"
    """Between few-shot exemplars and before the item (lm-eval default: a blank line)."""
    description: str | None = None
    """Header before the exemplars; `{field}` is filled from the row's meta JSON
    (left out when a field is missing)."""
    stop_sequences: tuple[str, ...] = ()
    """Generation stops at the first of these (the tokenizer's eos always stops too)."""
    answer_extraction: Literal["gsm8k", "last_number", "text"] = "text"
    """gsm8k: only the number after `#### ` (lm-eval's strict-match; the evaluator also reports
    flexible-extract beside it); last_number: the last number; text: stripped text."""
    lm_eval_few_shot: int = 0
    """The shot count lm-eval's leaderboard setting uses (informational; the spec decides)."""


LM_EVAL_VERSION = "0.4.13"
"""The lm-evaluation-harness release whose task YAMLs, filters and metrics these formats
match (checked against its gsm8k.yaml, RegexFilter and exact_match)."""
# Stop sequences of lm-eval's gsm8k.yaml (`until`); eos is added by the decoder.
GSM8K_STOPS = ("Question:", "</s>", "<|im_end|>")

BUILTIN_SUITES: dict[str, SuiteFormat] = {
    f.template: f
    for f in (
        SuiteFormat(
            template="mmlu",
            lm_eval_task="mmlu (lm_eval/tasks/mmlu/default/_default_template_yaml)",
            kind="multiple_choice",
            prompt_format="{question}\nA. {A}\nB. {B}\nC. {C}\nD. {D}\nAnswer:  -> A | B | C | D",
            # lm-eval prefixes each subject's prompts with this line (few-shot from `dev`).
            description="The following are multiple choice questions (with answers) about {subject}.\n\n",
            lm_eval_few_shot=5,
        ),
        SuiteFormat(
            template="superglue_boolq",
            lm_eval_task="boolq (lm_eval/tasks/super_glue/boolq/default.yaml)",
            kind="multiple_choice",
            prompt_format="{passage}\nQuestion: {question}?\nAnswer:  -> no | yes",
        ),
        SuiteFormat(
            template="superglue_rte",
            lm_eval_task="sglue_rte (lm_eval/tasks/super_glue/rte/default.yaml)",
            kind="multiple_choice",
            prompt_format="{premise}\nQuestion: {hypothesis} True or False?\nAnswer:  -> True | False",
        ),
        SuiteFormat(
            template="superglue_wic",
            lm_eval_task="wic (lm_eval/tasks/super_glue/wic/default.yaml)",
            kind="multiple_choice",
            prompt_format=(
                "Sentence 1: {sentence1}\nSentence 2: {sentence2}\nQuestion: Is the word "
                "'{word}' used in the same way in the two sentences above?\nAnswer:  -> no | yes"
            ),
        ),
        SuiteFormat(
            template="superglue_multirc",
            lm_eval_task="multirc (lm_eval/tasks/super_glue/multirc/default.yaml)",
            kind="multiple_choice",
            prompt_format=(
                "{paragraph}\nQuestion: {question}\nAnswer:  -> "
                "'{answer}\\nIs the answer correct? yes' | '... no'"
            ),
        ),
        SuiteFormat(
            template="arc",
            lm_eval_task="arc_easy / arc_challenge (lm_eval/tasks/arc/arc_easy.yaml)",
            kind="multiple_choice",
            prompt_format="Question: {question}\nAnswer:  -> the choice texts",
            lm_eval_few_shot=25,
        ),
        SuiteFormat(
            template="gsm8k",
            lm_eval_task=(
                f"gsm8k (lm-eval {LM_EVAL_VERSION} lm_eval/tasks/gsm8k/gsm8k.yaml, strict-match "
                "+ flexible-extract)"
            ),
            kind="generation",
            prompt_format="Question: {question}\nAnswer:  -> reasoning ending in '#### N'",
            stop_sequences=GSM8K_STOPS,
            answer_extraction="gsm8k",
            lm_eval_few_shot=5,
        ),
    )
}

GENERIC_FORMATS: dict[str, SuiteFormat] = {
    "multiple_choice": SuiteFormat(
        template="*",
        lm_eval_task="generic multiple_choice (lm-eval defaults)",
        kind="multiple_choice",
        prompt_format="the template's prompt  -> the row's choices",
    ),
    "generation": SuiteFormat(
        template="*",
        lm_eval_task="generic generate_until (lm-eval defaults)",
        kind="generation",
        prompt_format="the template's prompt  -> free text",
        stop_sequences=("\n\n",),
        answer_extraction="text",
    ),
}


def suite_format(spec: EvalSuiteSpec) -> SuiteFormat:
    """The format a spec's suite is scored with: built-in by template, else generic by kind."""
    fmt = BUILTIN_SUITES.get(spec.template)
    if fmt is None:
        return GENERIC_FORMATS[spec.kind]
    if fmt.kind != spec.kind:
        raise SpecError(
            f"template {spec.template!r} is a {fmt.kind} suite, but the spec says kind {spec.kind!r}",
            where=f"eval_suites[{spec.name}].kind",
            fix=f"set kind: {fmt.kind} (or use a generic template)",
        )
    return fmt


# --- answer extraction (generation suites) -------------------------------------------

# lm-eval gsm8k strict-match: the first number after "#### ".
_STRICT = re.compile(r"#### (\-?[0-9\.\,]+)")
# lm-eval gsm8k flexible-extract: the last run of number characters (with $ , .).
_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
# gsm8k.yaml's exact_match `regexes_to_ignore`, applied in order to prediction and gold.
_GSM8K_IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")
INVALID = "[invalid]"
"""What lm-eval's regex filter gives an output with no match (it never equals a gold)."""


def normalise_answer(text: str) -> str:
    """Generic generation suites: stripped, lower case, no commas, $ or trailing dots."""
    text = text.strip().replace(",", "").replace("$", "")
    return text.rstrip(".").strip().lower()


def gsm8k_normalise(text: str) -> str:
    """lm-eval's gsm8k exact_match normalisation: the `regexes_to_ignore` removed (one
    trailing dot, not all; the gold's reasoning up to "#### "), then lower case."""
    for pattern in _GSM8K_IGNORE:
        text = re.sub(pattern, "", text)
    return text.lower()


def _regex_filter(pattern: re.Pattern, text: str, group_select: int) -> str:
    """lm-eval's RegexFilter: the selected match (the first non-empty group of a tuple),
    stripped, or INVALID."""
    found = pattern.findall(text)
    if not found:
        return INVALID
    match = found[group_select]
    if isinstance(match, tuple):
        match = next((m for m in match if m), INVALID)
    return match.strip()


def last_number(text: str) -> str | None:
    """The last number in `text` (digits required), or None when there is none."""
    found = [m.group(0) for m in _FLEXIBLE.finditer(text)]
    found = [f for f in found if any(c.isdigit() for c in f)]
    return found[-1] if found else None


def gold_answer(response: str, method: str) -> str:
    """The normalised gold answer of a generation item; "" when the response holds none."""
    if method == "gsm8k":
        return gsm8k_normalise(response) if "#### " in response else ""
    return extract_answer(response, method)


def extract_answer(text: str, method: str) -> str:
    """The normalised final answer in a completion: gsm8k and gsm8k_flexible exactly as
    lm-eval's two gsm8k filters and its exact_match (INVALID when nothing matches),
    last_number / text for generic suites ("" when none is found)."""
    if method == "text":
        return normalise_answer(text)
    if method == "gsm8k":  # strict-match: no fallback to a stray number ("sy3" is no 3)
        return gsm8k_normalise(_regex_filter(_STRICT, text, 0))
    if method == "gsm8k_flexible":  # flexible-extract: the last match, digit or not
        return gsm8k_normalise(_regex_filter(_FLEXIBLE, text, -1))
    number = last_number(text)
    return normalise_answer(number) if number is not None else ""
