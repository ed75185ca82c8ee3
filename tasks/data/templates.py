"""Normalisation templates: named recipes from a raw snapshot's columns to prompt/response.

Formats follow lm-evaluation-harness, so a record scores the same way here as
there. The contract for multiple choice: `choices` hold the continuations
WITHOUT the leading space, evaluation scores ``" " + choice`` after the prompt,
`label` is the gold index, and the training `response` is ``" " + gold choice``
(prompt + response is the natural text). Generation items (gsm8k) have no
choices or label; `response` holds the gold answer.

Templates work on whole Arrow columns (pyarrow.compute), not per-row Python,
so millions of rows normalise in seconds; only the nested formats (chat, arc)
loop in Python. A template's `fields` mapping renames columns: template field
-> source column (for `generic`: canonical field -> source column).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from multilora_pipeline.data_specs.errors import DataError, SpecError
from multilora_pipeline.data_specs.formats import TEMPLATE_FORMATS, TemplateFormat

ROW_COLUMN = "__row__"
FILE_COLUMN = "__file__"  # the file of each row, in snapshots of several files (fetch)
# Meta key of the part of an item that tells it apart from items sharing its passage (BoolQ's
# question, RTE's hypothesis): near-dedup only merges rows whose queries also match.
QUERY = "query"


@dataclass(frozen=True)
class Rendered:
    """What a template produces, one entry per raw row."""

    prompt: pa.Array
    response: pa.Array
    choices: pa.Array | None = None
    """list<string> continuations, or None for generation/instruction data."""
    label: pa.Array | None = None
    """int64 gold index into choices."""
    meta: dict[str, pa.Array] = field(default_factory=dict)
    """Extra per-row values kept in the record's meta JSON (ints or strings)."""


class BadRows(DataError):
    """Rows of a raw table a template cannot read: every such row a check found at once
    (table indices), with the field and what is wrong. normalise reports them all, or skips
    them under a source's `bad_rows: skip`."""

    def __init__(self, indices, field_name: str, what: str, *, where: str, fix: str, whats=None):
        super().__init__(what, where=where, fix=fix)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.field_name = field_name
        self.whats = whats
        """What is wrong with each row, when it differs by row (None: `what` for all)."""


class Rows:
    """The raw snapshot table, with accessors that fail naming the file, row and field."""

    def __init__(self, table: pa.Table, origin: str, fields: dict[str, str] | None = None):
        self.table, self.origin, self.fields = table, origin, dict(fields or {})
        self.n = table.num_rows

    def name(self, field_name: str) -> str:
        """The source column behind a template field (after the `fields` mapping)."""
        return self.fields.get(field_name, field_name)

    def has(self, field_name: str) -> bool:
        return self.name(field_name) in self.table.column_names

    def row(self, index: int) -> int:
        """The file row (``__row__``) of table index `index`."""
        if ROW_COLUMN in self.table.column_names:
            return self.table.column(ROW_COLUMN)[index].as_py()
        return index + 1

    def fail(self, index, field_name: str, what: str, fix: str, whats=None) -> BadRows:
        """The error for the row at table index `index` (or every index of an array: the
        message names the first, the error carries them all; `whats`: per row)."""
        indices = np.atleast_1d(np.asarray(index, dtype=np.int64))
        first = int(indices[0])
        where = f"{self._file(first)}, row {self.row(first)}, field {self.name(field_name)!r}"
        return BadRows(indices, self.name(field_name), what, where=where, fix=fix, whats=whats)

    def file_of(self, index: int) -> str | None:
        """The file of row `index` in a snapshot of several files, else None."""
        if FILE_COLUMN in self.table.column_names:
            return self.table.column(FILE_COLUMN)[index].as_py()
        return None

    def column_error(self, field_name: str, what: str, fix: str) -> DataError:
        """A problem of a whole column (its type), not of some rows: never skipped. It
        names the first row, where the type was found."""
        row = f", row {self.row(0)}" if self.n else ""
        where = f"{self._file(0) if self.n else self.origin}{row}, field {self.name(field_name)!r}"
        return DataError(what, where=where, fix=fix)

    def _file(self, index: int) -> str:
        """The origin, and for a snapshot of several files the file of row `index`."""
        file = self.file_of(index) if self.n else None
        return f"{self.origin}: {file}" if file else self.origin

    def column(self, field_name: str) -> pa.Array:
        """A required column as one Array; a missing column is a DataError."""
        name = self.name(field_name)
        if name not in self.table.column_names:
            present = [c for c in self.table.column_names if c != ROW_COLUMN]
            raise DataError(
                f"required field {name!r} is missing (columns: {present})",
                where=f"{self._file(0) if self.n else self.origin}, row {self.row(0) if self.n else 1}, field {name!r}",
                fix="map it with `fields:` in the spec or pick the right template",
            )
        return self.table.column(name).combine_chunks()

    def text(self, field_name: str, *, required: bool = True) -> pa.Array:
        """A text column; required ones must be non-empty, optional missing ones are ""."""
        if not required and not self.has(field_name):
            return pa.array([""] * self.n, pa.string())
        col = self.column(field_name)
        if not (
            pa.types.is_string(col.type)
            or pa.types.is_large_string(col.type)
            or pa.types.is_integer(col.type)
            or pa.types.is_floating(col.type)
        ):
            raise self.column_error(
                field_name,
                f"expected text, got {col.type}",
                "pick the template that matches this dataset, or map the field",
            )
        col = col.cast(pa.string())
        if required:
            empty = pc.or_kleene(
                pc.is_null(col), pc.equal(pc.utf8_length(pc.utf8_trim_whitespace(col)), 0)
            )
            bad = np.flatnonzero(empty.to_numpy(zero_copy_only=False))
            if bad.size:
                raise self.fail(
                    bad, field_name, "required field is empty", "fill it in or drop the row"
                )
            return col
        return col.fill_null("")

    def labels(self, field_name: str, mapping: dict[str, int]) -> pa.Array:
        """Map label values of any type (bool, int, "yes", "entailment", ...) to int64 indices."""
        col = self.column(field_name)
        t = col.type
        if not (
            pa.types.is_boolean(t)
            or pa.types.is_integer(t)
            or pa.types.is_floating(t)
            or pa.types.is_string(t)
            or pa.types.is_large_string(t)
            or pa.types.is_null(t)
        ):
            raise self.column_error(
                field_name,
                f"label has type {t}; expected bool, int or text",
                "pick the template that matches this dataset",
            )
        keys = pc.utf8_lower(pc.utf8_trim_whitespace(col.cast(pa.string())))
        index = pc.index_in(keys, value_set=pa.array(list(mapping), pa.string()))
        bad = np.flatnonzero(pc.is_null(index).to_numpy(zero_copy_only=False))
        if bad.size:
            expected = f"; expected one of {sorted(mapping)}"
            whats = [
                ("label is empty" if v is None else f"unknown label value {v!r}") + expected
                for v in col.take(pa.array(bad)).to_pylist()
            ]
            raise self.fail(
                bad,
                field_name,
                whats[0],
                "fix the label or use the template meant for this dataset",
                whats=whats,
            )
        return pa.array(np.fromiter(mapping.values(), np.int64)).take(index)

    def optional_meta(self, field_name: str) -> pa.Array | None:
        """A column to keep in meta when the source has it."""
        return self.column(field_name) if self.has(field_name) else None


@dataclass(frozen=True)
class Template:
    """A named normalisation recipe: its format (data_specs/formats.py) and its render function."""

    name: str
    render: Callable[[Rows], Rendered]
    format: TemplateFormat

    @property
    def required(self) -> tuple[str, ...]:
        return self.format.required

    @property
    def csv_columns(self) -> tuple[str, ...] | None:
        return self.format.csv_columns

    @property
    def multiple_choice(self) -> bool:
        return self.format.multiple_choice


# One render function per name of data_specs/formats.py: register() refuses any other name,
# and a test checks that every one is registered.
TEMPLATES: dict[str, Template] = {}


def register(name: str):
    """Decorator: add a render function to TEMPLATES under `name`."""
    if name not in TEMPLATE_FORMATS:
        raise ValueError(
            f"template {name!r} is not in data_specs.formats.TEMPLATE_FORMATS: add it there, "
            "or specs naming it fail to load"
        )

    def wrap(render: Callable[[Rows], Rendered]) -> Callable[[Rows], Rendered]:
        TEMPLATES[name] = Template(name, render, TEMPLATE_FORMATS[name])
        return render

    return wrap


def get_template(name: str) -> Template:
    """The registered template, or a SpecError listing the known ones."""
    try:
        return TEMPLATES[name]
    except KeyError:
        raise SpecError(
            f"unknown template {name!r}", where="template", fix=f"use one of {sorted(TEMPLATES)}"
        ) from None


def csv_columns_for(name: str) -> list[str] | None:
    """Column names for a headerless CSV of this template's format, else None."""
    template = TEMPLATES.get(name)
    return list(template.csv_columns) if template and template.csv_columns else None


# ---------------------------------------------------------------- Arrow helpers


def join(*parts) -> pa.Array:
    """Concatenate string arrays and literal strings element-wise."""
    values = [pa.scalar(p, pa.string()) if isinstance(p, str) else p for p in parts]
    return pc.binary_join_element_wise(*values, "")


def same_choices(choices: list[str], n: int) -> pa.Array:
    """The same list of choices on each of n rows, built without a Python loop."""
    k = len(choices)
    values = pa.array(choices, pa.string()).take(np.tile(np.arange(k), n))
    return pa.ListArray.from_arrays(np.arange(0, k * n + 1, k, dtype=np.int32), values)


def choices_from(*columns: pa.Array) -> pa.Array:
    """Per-row choices: row i gets [columns[0][i], columns[1][i], ...]."""
    k, n = len(columns), len(columns[0])
    stacked = pa.concat_arrays([c.cast(pa.string()) for c in columns])
    order = (np.arange(k)[None, :] * n + np.arange(n)[:, None]).ravel()  # row-major interleave
    return pa.ListArray.from_arrays(np.arange(0, k * n + 1, k, dtype=np.int32), stacked.take(order))


def gold_response(choices: pa.Array, label: pa.Array) -> pa.Array:
    """ " " + choices[label] for every row (the natural continuation)."""
    offsets = choices.offsets.to_numpy(zero_copy_only=False)[:-1]
    picked = choices.values.take(pa.array(offsets + label.to_numpy(zero_copy_only=False)))
    return join(" ", picked)


def yes_no(rows: Rows, field_name: str, choices: list[str]) -> pa.Array:
    """Labels for a two-way task whose choices are [negative, positive]."""
    negative = {"0": 0, "false": 0, "no": 0, "n": 0}
    positive = {"1": 1, "true": 1, "yes": 1, "y": 1}
    return rows.labels(
        field_name, {**negative, **positive, choices[0].lower(): 0, choices[1].lower(): 1}
    )


def multiple_choice(
    prompt: pa.Array, choices: list[str] | pa.Array, label: pa.Array, meta: dict | None = None
) -> Rendered:
    choice_array = same_choices(choices, len(prompt)) if isinstance(choices, list) else choices
    return Rendered(prompt, gold_response(choice_array, label), choice_array, label, meta or {})


def idx_meta(rows: Rows) -> dict:
    idx = rows.optional_meta("idx")
    return {"idx": idx} if idx is not None else {}


# ---------------------------------------------------------------- instruction data


@register("alpaca")
def alpaca(rows: Rows) -> Rendered:
    """Stanford Alpaca prompt (without its preamble); the Input block is left out when empty.

    "### Instruction:\\n{instruction}\\n\\n### Input:\\n{input}\\n\\n### Response:\\n" -> output
    """
    instruction, output = rows.text("instruction"), rows.text("output")
    given = rows.text("input", required=False)
    with_input = join(
        "### Instruction:\n", instruction, "\n\n### Input:\n", given, "\n\n### Response:\n"
    )
    without = join("### Instruction:\n", instruction, "\n\n### Response:\n")
    has_input = pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(given)), 0)
    return Rendered(pc.if_else(has_input, with_input, without), output)


@register("dolly")
def dolly(rows: Rows) -> Rendered:
    """databricks-dolly-15k in the Alpaca format: context is the Input block; category -> meta."""
    rendered = alpaca(
        Rows(
            rows.table,
            rows.origin,
            {
                "instruction": rows.name("instruction"),
                "output": rows.name("response"),
                "input": rows.name("context"),
            },
        )
    )
    category = rows.optional_meta("category")
    return Rendered(
        rendered.prompt,
        rendered.response,
        meta={"category": category} if category is not None else {},
    )


CHAT_ROLES = {
    "system": "System",
    "user": "User",
    "human": "User",
    "assistant": "Assistant",
    "gpt": "Assistant",
}


@register("chat")
def chat(rows: Rows) -> Rendered:
    """A simple transcript ("User: ...\\nAssistant:") of every turn but the last assistant reply.

    Messages are {role, content} (OpenAI) or {from, value} (ShareGPT); the last
    one must be the assistant's: it becomes the response (with a leading space).
    """
    prompts, responses = [], []
    for index, conversation in enumerate(rows.column("messages").to_pylist()):
        if not conversation:
            raise rows.fail(index, "messages", "empty conversation", "drop the row")
        lines = []
        for turn in conversation:
            role = CHAT_ROLES.get(str(turn.get("role") or turn.get("from") or "").lower())
            content = turn.get("content", turn.get("value"))
            if role is None or content is None:
                raise rows.fail(
                    index,
                    "messages",
                    f"bad message {turn!r}: need role/content with role in {sorted(CHAT_ROLES)}",
                    "fix the message",
                )
            lines.append((role, content))
        if lines[-1][0] != "Assistant":
            raise rows.fail(
                index,
                "messages",
                "the last message must be the assistant's reply",
                "drop trailing user turns",
            )
        prompts.append("".join(f"{r}: {c}\n" for r, c in lines[:-1]) + "Assistant:")
        responses.append(" " + lines[-1][1])
    return Rendered(pa.array(prompts, pa.string()), pa.array(responses, pa.string()))


@register("gsm8k")
def gsm8k(rows: Rows) -> Rendered:
    """lm-eval gsm8k: "Question: {question}\\nAnswer:" -> " {answer}" (reasoning + "#### N").

    The answer is the `answer` field (reasoning ending in "#### N", as GSM8K publishes it),
    or, for data that keeps them apart (FLAN's CoT GSM8K), the `rationale` field and the
    `final_answer` field joined as "{rationale}\\n#### {final_answer}".
    A generation task: no choices or label; meta keeps the final answer.
    """
    question = rows.text("question")
    if not rows.has("answer") and rows.has("rationale") and rows.has("final_answer"):
        answer = join(
            pc.utf8_rtrim_whitespace(rows.text("rationale")),
            "\n#### ",
            pc.utf8_trim_whitespace(rows.text("final_answer")),
        )
    else:
        answer = rows.text("answer")
    final = pc.extract_regex(answer, r"####\s*(?P<final>[^\n]*?)\s*$")
    bad = np.flatnonzero(pc.is_null(final).to_numpy(zero_copy_only=False))
    if bad.size:
        raise rows.fail(
            bad,
            "answer",
            "no final '#### <number>' line in the answer",
            "end the answer with '#### ' and the final number",
        )
    final = pc.struct_field(final, [0])
    return Rendered(
        join("Question: ", question, "\nAnswer:"), join(" ", answer), meta={"final": final}
    )


@register("generic")
def generic(rows: Rows) -> Rendered:
    """Any table: `fields` maps canonical fields (prompt, response, choices, label) to columns.

    With choices and label, a missing response becomes " " + the gold choice.
    """
    unknown = set(rows.fields) - {"prompt", "response", "choices", "label"}
    if unknown:
        raise SpecError(
            f"generic template: unknown fields {sorted(unknown)}",
            where="fields",
            fix="map only prompt, response, choices and label",
        )
    prompt = rows.text("prompt")
    if rows.has("choices") and rows.has("label"):
        choices = rows.column("choices")
        if not pa.types.is_list(choices.type) and not pa.types.is_large_list(choices.type):
            raise rows.column_error(
                "choices", f"choices must be a list, got {choices.type}", "map a list column"
            )
        choices = choices.cast(pa.list_(pa.string()))
        lengths = pc.list_value_length(choices).to_numpy(zero_copy_only=False)
        label = rows.labels("label", {str(i): i for i in range(int(lengths.max(initial=0)))})
        bad = np.flatnonzero(label.to_numpy() >= lengths)
        if bad.size:
            raise rows.fail(
                bad,
                "label",
                "label is past the last choice",
                "fix the label or the choices",
            )
        response = rows.text("response") if rows.has("response") else gold_response(choices, label)
        return Rendered(prompt, response, choices, label)
    return Rendered(prompt, rows.text("response"))


@register("pretemplated")
def pretemplated(rows: Rows) -> Rendered:
    """Data already rendered into a prompt format (a Dolly subset in the Alpaca prompt):
    prompt and response are taken as they are, never wrapped again. One rule joins them:
    when the prompt does not end with whitespace and the response does not start with it
    (``### Response:`` + ``Potential…``), the response gets one leading space, as lm-eval's
    target delimiter puts one between a context and its continuation. A literal end marker
    the data carries (``###eos_token###``) is the source's `end_marker`."""
    prompt, response = rows.text("prompt"), rows.text("response")
    glued = pc.and_(
        pc.invert(pc.match_substring_regex(prompt, r"\s$")),
        pc.invert(pc.match_substring_regex(response, r"^\s")),
    )
    return Rendered(prompt, pc.if_else(glued, join(" ", response), response))


# ---------------------------------------------------------------- SuperGLUE


@register("superglue_boolq")
def superglue_boolq(rows: Rows) -> Rendered:
    """lm-eval boolq: "{passage}\\nQuestion: {question}?\\nAnswer:", choices ["no", "yes"]."""
    question = rows.text("question")
    prompt = join(rows.text("passage"), "\nQuestion: ", question, "?\nAnswer:")
    meta = {**idx_meta(rows), QUERY: question}
    return multiple_choice(prompt, ["no", "yes"], yes_no(rows, "label", ["no", "yes"]), meta)


@register("superglue_rte")
def superglue_rte(rows: Rows) -> Rendered:
    """lm-eval sglue_rte: "{premise}\\nQuestion: {hypothesis} True or False?\\nAnswer:".

    Choices ["True", "False"]; label 0 = entailment -> True.
    """
    hypothesis = rows.text("hypothesis")
    prompt = join(rows.text("premise"), "\nQuestion: ", hypothesis, " True or False?\nAnswer:")
    label = rows.labels(
        "label",
        {
            "0": 0,
            "entailment": 0,
            "true": 0,
            "yes": 0,
            "1": 1,
            "not_entailment": 1,
            "false": 1,
            "no": 1,
        },
    )
    return multiple_choice(prompt, ["True", "False"], label, {**idx_meta(rows), QUERY: hypothesis})


@register("superglue_cb")
def superglue_cb(rows: Rows) -> Rendered:
    """lm-eval cb: "{premise}\\nQuestion: {hypothesis}. True, False, or Neither?\\nAnswer:"."""
    hypothesis = rows.text("hypothesis")
    prompt = join(
        rows.text("premise"), "\nQuestion: ", hypothesis, ". True, False, or Neither?\nAnswer:"
    )
    label = rows.labels(
        "label",
        {
            "0": 0,
            "entailment": 0,
            "true": 0,
            "1": 1,
            "contradiction": 1,
            "false": 1,
            "2": 2,
            "neutral": 2,
            "neither": 2,
        },
    )
    meta = {**idx_meta(rows), QUERY: hypothesis}
    return multiple_choice(prompt, ["True", "False", "Neither"], label, meta)


@register("superglue_wic")
def superglue_wic(rows: Rows) -> Rendered:
    """lm-eval wic: "Sentence 1: ..\\nSentence 2: ..\\nQuestion: Is the word '{word}' used in the
    same way in the two sentences above?\\nAnswer:", choices ["no", "yes"].

    The word is the `word` column, else sentence1[start1:end1] as lm-eval does.
    """
    sentence1 = rows.text("sentence1")
    if rows.has("word"):
        word = rows.text("word")
    else:
        spans = zip(
            sentence1.to_pylist(),
            rows.column("start1").to_pylist(),
            rows.column("end1").to_pylist(),
            strict=True,
        )
        word = pa.array([s[a:b] for s, a, b in spans], pa.string())
    prompt = join(
        "Sentence 1: ",
        sentence1,
        "\nSentence 2: ",
        rows.text("sentence2"),
        "\nQuestion: Is the word '",
        word,
        "' used in the same way in the two sentences above?\nAnswer:",
    )
    return multiple_choice(
        prompt, ["no", "yes"], yes_no(rows, "label", ["no", "yes"]), idx_meta(rows)
    )


@register("superglue_multirc")
def superglue_multirc(rows: Rows) -> Rendered:
    """lm-eval multirc: "{paragraph}\\nQuestion: {question}\\nAnswer:", choices
    ["{answer}\\nIs the answer correct? no", "... yes"].

    Ordered [no, yes] so label 1 (the answer is correct) indexes "yes"
    (lm-eval's yaml lists yes first with target=label, which inverts the gold).
    """
    answer, question = rows.text("answer"), rows.text("question")
    prompt = join(rows.text("paragraph"), "\nQuestion: ", question, "\nAnswer:")
    choices = choices_from(
        join(answer, "\nIs the answer correct? no"), join(answer, "\nIs the answer correct? yes")
    )
    label = yes_no(rows, "label", ["no", "yes"])
    idx = rows.optional_meta("idx")
    if idx is not None and not pa.types.is_integer(idx.type):
        idx = None  # the hub's idx is a struct of three ints; the row number identifies it anyway
    # The question alone: an answer option is told apart by the response, which holds it.
    # With the answer in the query, a long shared answer made two different questions of one
    # passage a near pair.
    meta = {QUERY: question, **({"idx": idx} if idx is not None else {})}
    return multiple_choice(prompt, choices, label, meta)


@register("superglue_copa")
def superglue_copa(rows: Rows) -> Rendered:
    """lm-eval copa: premise without its final period + " because" / " therefore";
    choices are choice1/choice2 with a lower-cased first letter."""
    premise = pc.utf8_trim_whitespace(rows.text("premise"))
    connector = pa.array(["because", "therefore"]).take(
        rows.labels("question", {"cause": 0, "effect": 1})
    )
    prompt = join(pc.utf8_slice_codeunits(premise, 0, -1), " ", connector)

    def lower_first(col: pa.Array) -> pa.Array:
        return join(
            pc.utf8_lower(pc.utf8_slice_codeunits(col, 0, 1)), pc.utf8_slice_codeunits(col, 1)
        )

    choices = choices_from(lower_first(rows.text("choice1")), lower_first(rows.text("choice2")))
    label = rows.labels("label", {"0": 0, "1": 1})
    return multiple_choice(prompt, choices, label, idx_meta(rows))


# ---------------------------------------------------------------- world knowledge


MMLU_LETTERS = ["A", "B", "C", "D"]


def unnest(rows: Rows, column: str) -> Rows:
    """Rows whose columns are the fields of the struct column `column` (plus ``__row__``)."""
    col = rows.column(column)
    if not pa.types.is_struct(col.type):
        raise rows.column_error(
            column, f"expected a struct of fields, got {col.type}", "map the fields"
        )
    names = [col.type.field(i).name for i in range(col.type.num_fields)]
    table = pa.Table.from_arrays(col.flatten(), names=names)
    if ROW_COLUMN in rows.table.column_names:
        table = table.append_column(ROW_COLUMN, rows.table.column(ROW_COLUMN))
    return Rows(table, rows.origin, rows.fields)


@register("mmlu")
def mmlu(rows: Rows) -> Rendered:
    """lm-eval mmlu: "{question}\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:", choices ["A".."D"].

    Reads the headerless CSV (question, A, B, C, D, answer letter) or the hub
    form (question, choices list, answer index); subject -> meta when present.
    The hub's ``auxiliary_train`` config nests each row in a struct column ``train``.
    """
    if not rows.has("question") and rows.has("train"):
        rows = unnest(rows, "train")
    if rows.has("choices"):
        listed = rows.column("choices")
        lengths = pc.list_value_length(listed)
        bad = np.flatnonzero(pc.not_equal(lengths, 4).to_numpy(zero_copy_only=False))
        if bad.size:
            raise rows.fail(bad, "choices", "MMLU needs exactly 4 choices", "fix the row")
        options = [pc.list_element(listed, i).cast(pa.string()) for i in range(4)]
    else:
        options = [rows.text(letter) for letter in MMLU_LETTERS]
    parts: list = [pc.utf8_trim_whitespace(rows.text("question"))]
    for letter, option in zip(MMLU_LETTERS, options, strict=True):
        parts += [f"\n{letter}. ", option]
    prompt = join(*parts, "\nAnswer:")
    label = rows.labels(
        "answer",
        {**{c.lower(): i for i, c in enumerate(MMLU_LETTERS)}, **{str(i): i for i in range(4)}},
    )
    subject = rows.optional_meta("subject")
    return multiple_choice(
        prompt, MMLU_LETTERS, label, {"subject": subject} if subject is not None else {}
    )


@register("arc")
def arc(rows: Rows) -> Rendered:
    """lm-eval arc_easy/arc_challenge: "Question: {question}\\nAnswer:", choices = choice texts.

    Hub form: question + choices {text: [...], label: [...]} + answerKey; the
    AI2 jsonl form (question {stem, choices: [{text, label}]}) works too.
    """
    questions = rows.column("question").to_pylist()
    raw_choices = rows.column("choices").to_pylist() if rows.has("choices") else [None] * rows.n
    keys = rows.column("answerKey").to_pylist()
    prompts, choice_lists, labels = [], [], []
    for index, (question, choices, key) in enumerate(
        zip(questions, raw_choices, keys, strict=True)
    ):
        if isinstance(question, dict):  # AI2 jsonl: the choices live inside the question
            choices = {
                "text": [c["text"] for c in question["choices"]],
                "label": [c["label"] for c in question["choices"]],
            }
            question = question["stem"]
        if not question or not choices or not choices.get("text"):
            raise rows.fail(index, "question", "question or choices are empty", "fix the row")
        if key not in choices["label"]:
            raise rows.fail(
                index,
                "answerKey",
                f"answerKey {key!r} is not one of the choice labels {choices['label']}",
                "fix the answer key",
            )
        prompts.append(f"Question: {question}\nAnswer:")
        choice_lists.append([str(t) for t in choices["text"]])
        labels.append(choices["label"].index(key))
    choices_array = pa.array(choice_lists, pa.list_(pa.string()))
    return multiple_choice(
        pa.array(prompts, pa.string()), choices_array, pa.array(labels, pa.int64()), {}
    )


def describe() -> str:
    """One line per template: name and required fields (for help texts and errors)."""
    return "\n".join(f"{t.name}: {', '.join(t.required)}" for t in TEMPLATES.values())


__all__ = [
    "TEMPLATES",
    "Rendered",
    "Rows",
    "Template",
    "csv_columns_for",
    "get_template",
    "register",
    "describe",
]
