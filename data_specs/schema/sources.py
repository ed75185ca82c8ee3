"""Where the data comes from: training sources and evaluation suites.

`DataLocation` (a local path, a hub dataset or a URL, and how to read it) is what both
share; `SourceSpec` adds the task it teaches, `EvalSuiteSpec` how it is scored. Templates
are checked by name when the spec loads.
"""

from __future__ import annotations

import re
from difflib import get_close_matches
from typing import Annotated, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from multilora_pipeline.data_specs.formats import TEMPLATE_NAMES
from multilora_pipeline.data_specs.schema.credentials import check_url
from multilora_pipeline.data_specs.schema.strict import NAME_RE, Strict


def _known_template(name: str) -> str:
    """`name` if it is a template, else a ValueError with the closest name and all of them."""
    if name in TEMPLATE_NAMES:
        return name
    # "rte" means superglue_rte: a suffix match catches what spelling similarity misses.
    hint = [t for t in TEMPLATE_NAMES if t.endswith(f"_{name}")]
    hint = hint or get_close_matches(name, TEMPLATE_NAMES, n=1)
    guess = f"; did you mean {hint[0]!r}?" if hint else ""
    raise ValueError(
        f"unknown template {name!r}{guess} (use one of: {', '.join(sorted(TEMPLATE_NAMES))})"
    )


TemplateName = Annotated[str, AfterValidator(_known_template)]


class HubDataset(Strict):
    """A Hugging Face dataset, addressed exactly (id, config, split, revision)."""

    id: str
    """Dataset id on the hub, e.g. ``super_glue`` or ``tatsu-lab/alpaca``."""
    config: str | None = None
    """Dataset configuration name (e.g. ``boolq``); None for the default."""
    split: str = "train"
    """Split to read; slicing syntax like ``train[:5000]`` is allowed."""
    revision: str | None = None
    """Pinned git revision (commit sha or tag). Pin it: an unpinned source can change under you."""
    streaming: bool = False
    """Stream instead of downloading the whole split (large sets); combine with max_rows."""


class DataLocation(Strict):
    """Where a table comes from: exactly one of path, hf or url."""

    path: str | None = None
    """Local file (jsonl, json, csv, tsv, parquet), relative to the spec file's folder; or a
    folder (every file in it of the format, by name) or a glob (``mmlu/dev/*.csv``)."""
    hf: HubDataset | None = None
    """A Hugging Face hub dataset."""
    url: str | None = None
    """An http(s) URL of a file in one of the local formats."""
    sha256: str | None = None
    """Expected sha256 of the downloaded file (url sources); a mismatch is an error."""
    format: Literal["jsonl", "json", "csv", "tsv", "parquet"] | None = None
    """File format; inferred from the file suffix when omitted."""
    max_rows: int | None = Field(default=None, gt=0)
    """Read at most this many rows (first rows in file order)."""
    columns: list[str] | None = Field(default=None, min_length=1)
    """Column names of a headerless CSV/TSV, in file order: the first line is then data, not
    a header (FLAN's TSVs, MMLU's CSVs; the mmlu template knows its own)."""

    bad_rows: Literal["fail", "skip"] = "fail"
    """What a row the template cannot read does: fail stops the run and lists every such
    row of the batch (up to 20, with a count of the rest); skip leaves them out and records
    each in the catalog (`invalid_drops`: row, file, field, reason), so none disappears
    unaudited."""
    max_bad_fraction: float | None = Field(default=None, gt=0, le=1)
    """With bad_rows: skip, fail anyway when more than this share of the rows is bad."""
    end_marker: str | None = Field(default=None, min_length=1)
    """A literal text the data ends every response with (``###eos_token###``), removed
    (with the whitespace after it) before anything else reads the response."""
    explode: list[str] = []
    """List fields of nested JSON to unnest, outer first: each element becomes a row, and
    struct fields are reached by dotted path in `fields` (``explode: [instances]`` with
    ``fields: {input: instances.input, output: instances.output}`` reads Self-Instruct's
    seed tasks). Built-in formats that publish a nested layout (SuperGLUE MultiRC) unnest
    it themselves."""
    file_fields: str | None = None
    """For a `path` naming a folder or a glob (several files): a regular expression matched
    against each file's name without its suffix; its named groups become columns of that
    file's rows, e.g. ``(?P<subject>.+)_dev`` gives MMLU's subject from
    ``abstract_algebra_dev.csv``. Every row also records its file (``__file__``)."""

    @field_validator("file_fields")
    @classmethod
    def _named_groups(cls, pattern):
        if pattern is None:
            return None
        try:
            groups = re.compile(pattern).groupindex
        except re.error as err:
            raise ValueError(f"file_fields is not a regular expression: {err}") from None
        if not groups:
            raise ValueError("file_fields needs a named group, e.g. (?P<subject>.+)_dev")
        return pattern

    @field_validator("columns")
    @classmethod
    def _distinct_columns(cls, columns):
        if columns is not None and len(set(columns)) != len(columns):
            raise ValueError(f"columns must be distinct, got {columns}")
        return columns

    @model_validator(mode="after")
    def _one_location(self):
        given = [k for k in ("path", "hf", "url") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of path, hf or url (got {given or 'none'})")
        if self.url is not None:
            check_url(self.url)
        return self


class SourceSpec(DataLocation):
    """One training source: where it is, how to read it, which task it teaches."""

    name: str = Field(pattern=NAME_RE)
    """Unique short name (lowercase, digits, _ or -); used in ids, tables and reports."""
    template: TemplateName
    """Normalisation template, checked when the spec loads: alpaca, dolly, chat, superglue_boolq,
    superglue_rte, superglue_wic, superglue_multirc, superglue_cb, superglue_copa, mmlu, arc, gsm8k,
    generic (with `fields`), or pretemplated (prompt and response already rendered)."""
    category: str = "instruction"
    """Task family, used for balancing and per-category metrics (instruction, nlu, knowledge, math)."""
    priority: int = 0
    """Dedup keeps the copy from the source with the highest priority (ties: spec order)."""
    fields: dict[str, str] | None = None
    """Template field -> source column, for columns named otherwise than the template
    expects (e.g. ``{question: query}``); for the generic template, the canonical fields
    prompt, response, choices and label."""


class EvalSuiteSpec(DataLocation):
    """One evaluation suite: never trained on, used for decontamination and scoring."""

    name: str = Field(pattern=NAME_RE)
    """Unique short name; metrics are logged as ``<name>_<metric>`` (e.g. ``mmlu_acc``)."""
    template: TemplateName
    """Normalisation template (as for sources); it must keep choices and label for multiple_choice."""
    kind: Literal["multiple_choice", "generation"] = "multiple_choice"
    """multiple_choice: log-likelihood over choices (acc, acc_norm); generation: greedy decode + exact match."""
    category: str = "knowledge"
    """Category used for per-category metrics and the promotion gate."""
    max_items: int | None = Field(default=None, gt=0)
    """Score at most this many items (first in file order); None scores all."""
    dev: DataLocation | None = None
    """Where few-shot exemplars come from (e.g. MMLU's dev split), read with the suite's
    template and fields (and its reading options, unless the dev split gives its own);
    None takes them from the suite itself, never the item being scored."""
    fields: dict[str, str] | None = None
    """Template field -> source column, as for sources."""
    drop_duplicates: bool = False
    """Items that repeat an earlier item of the suite (same prompt and choices, case,
    spacing and word-edge punctuation folded; MMLU's test split has about a hundred) are
    always reported, in the catalog (`suite_duplicates`) and the `mlora data` table; true
    also removes the repeats, so each item is scored once (the first copy stays)."""

    def dev_suite(self) -> EvalSuiteSpec | None:
        """The dev split as a suite of its own (`<name>-dev`): read exactly like the suite,
        same template, its own location."""
        if self.dev is None:
            return None
        own = {k: getattr(self.dev, k) for k in self.dev.model_fields_set}  # what it says itself
        location = {k: None for k in ("path", "hf", "url", "sha256", "max_rows")} | own
        return self.model_copy(update={"name": f"{self.name}-dev", **location, "dev": None})
