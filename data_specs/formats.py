"""The formats a spec's `template:` may name, and what each needs of a raw row.

One table, read by the spec schema (an unknown template fails when the spec loads) and by
tasks/data/templates.py, which registers one render function for each name here and for
no other (a test checks both ways).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class NestedLayout:
    """A format's published nested layout, unnested before the template reads it."""

    trigger: str
    """The dotted field whose presence says the data is in this layout."""
    explode: tuple[str, ...]
    """List fields to explode, outer first."""
    fields: dict[str, str]
    """Template field -> dotted path (a spec's own `fields` win)."""


@dataclass(frozen=True)
class TemplateFormat:
    required: tuple[str, ...]
    """Raw fields the template needs (before the `fields` mapping)."""
    csv_columns: tuple[str, ...] | None = None
    """Column names of the format's headerless CSV (mmlu); None: CSV files have a header."""
    multiple_choice: bool = False
    """True when records carry choices and a gold label."""
    nested: NestedLayout | None = None
    """The nested layout the dataset's authors publish, if the format has one."""
    group_field: str | None = None
    """The meta field that groups the format's items into templated families (MMLU's
    subject), which decontamination expects to find."""
    boilerplate: tuple[str, ...] = ()
    """The literal text the template wraps a prompt's content in: dedup keys and shingles
    leave it out, so one question rendered by two templates is one question."""


ALPACA_WORDS = ("### Instruction:\n", "\n\n### Input:\n", "\n\n### Response:\n")


TEMPLATE_FORMATS: dict[str, TemplateFormat] = {
    "alpaca": TemplateFormat(("instruction", "output"), boilerplate=ALPACA_WORDS),
    "dolly": TemplateFormat(("instruction", "response"), boilerplate=ALPACA_WORDS),
    "chat": TemplateFormat(
        ("messages",), boilerplate=("System: ", "User: ", "Assistant: ", "Assistant:")
    ),
    "gsm8k": TemplateFormat(("question", "answer"), boilerplate=("Question: ", "\nAnswer:")),
    "generic": TemplateFormat(("prompt",)),
    "pretemplated": TemplateFormat(("prompt", "response")),
    "superglue_boolq": TemplateFormat(
        ("passage", "question", "label"),
        multiple_choice=True,
        boilerplate=("\nQuestion: ", "?\nAnswer:"),
    ),
    "superglue_rte": TemplateFormat(
        ("premise", "hypothesis", "label"),
        multiple_choice=True,
        boilerplate=("\nQuestion: ", " True or False?\nAnswer:"),
    ),
    "superglue_cb": TemplateFormat(
        ("premise", "hypothesis", "label"),
        multiple_choice=True,
        boilerplate=("\nQuestion: ", ". True, False, or Neither?\nAnswer:"),
    ),
    "superglue_wic": TemplateFormat(
        ("sentence1", "sentence2", "label"),
        multiple_choice=True,
        boilerplate=(
            "Sentence 1: ",
            "\nSentence 2: ",
            "\nQuestion: Is the word '",
            "' used in the same way in the two sentences above?\nAnswer:",
        ),
    ),
    "superglue_multirc": TemplateFormat(
        ("paragraph", "question", "answer", "label"),
        multiple_choice=True,
        boilerplate=("\nQuestion: ", "\nAnswer:"),
        # SuperGLUE's MultiRC.zip: one passage per line, its questions, their answers.
        nested=NestedLayout(
            trigger="passage.questions",
            explode=("passage.questions", "passage.questions.answers"),
            fields={
                "paragraph": "passage.text",
                "question": "passage.questions.question",
                "answer": "passage.questions.answers.text",
                "label": "passage.questions.answers.label",
            },
        ),
    ),
    "superglue_copa": TemplateFormat(
        ("premise", "choice1", "choice2", "question", "label"), multiple_choice=True
    ),
    "mmlu": TemplateFormat(
        ("question", "answer"),
        csv_columns=("question", "A", "B", "C", "D", "answer"),
        multiple_choice=True,
        boilerplate=("\nA. ", "\nB. ", "\nC. ", "\nD. ", "\nAnswer:"),
        group_field="subject",
    ),
    "arc": TemplateFormat(
        ("question", "choices", "answerKey"),
        multiple_choice=True,
        boilerplate=("Question: ", "\nAnswer:"),
    ),
}
TEMPLATE_NAMES = tuple(TEMPLATE_FORMATS)
