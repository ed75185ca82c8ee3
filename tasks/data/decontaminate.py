"""Decontaminate: drop training rows that overlap an evaluation suite.

Three tests, against every suite (first matching suite in spec order is reported), each
drop labelled truthfully with the suite's row of the item it matches:
- n-gram: the row shares a content word n-gram (13 by default, GPT-3 / lm-eval practice) with
  an eval item's prompt or response, and asks the item's question (QUESTION_SUPPORT);
- exact: the prompt equals an eval prompt after normalisation (a verbatim copy of any
  length: similarity 1.0);
- near: a prompt without an n-gram of its own has word-set Jaccard >= near_threshold with
  an eval prompt.
For n-gram drops `evidence` holds the matched n-gram and `similarity` the word-set Jaccard
of the row (prompt and response) with the eval item.

What counts as content, so that a drop means a leak (benchmarks/real_data_report.py checks
it on disjoint halves of GSM8K and MMLU, every drop labelled by hand):
- Both sides are compared on content, as in dedup: prompts without their template's
  boilerplate, case and word-edge punctuation folded, symbol-only tokens left out. A prompt
  is also cut where its template joins its parts (SEAM): no n-gram spans an MMLU stem and
  its options, so "... to the store. A. Wrong, Wrong B. Wrong, Not wrong ..." is no match.
- Template: an n-gram in more than `boilerplate_fraction` of the suite's items, or of one
  group's (`boilerplate_group`, MMLU's subject), counted with the training rows of that
  group ("Construct a complete truth table ..." opens formal_logic items and no others). An
  n-gram counts only if half its words lie outside such spans, and shorter template phrases
  ("Which of the following is the most appropriate next step in management?") are found as
  frequent TEMPLATE_SPAN-grams.
- The question: a shared n-gram matches only if the row also holds half of the words the
  item's prompt has outside its template and its answer. GPT-3 and lm-eval match an item's
  full text, and a row that reproduces a gold answer with its question reworded still
  matches (data_specs/demo/PLANTED.json lists three templated math rows, `incidental_leaks`);
  two different GSM8K problems whose solutions share "there are 7 days in a week so ..." do
  not.

Memory: each suite is indexed once and whole (sorted 64-bit hashes of its content n-grams,
its prompts): the small side. The training rows, the big side, stream past the indexes
BATCH_ROWS at a time, their n-grams hashed once per batch for all suites.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from multilora_pipeline.data_specs.formats import TEMPLATE_FORMATS
from multilora_pipeline.data_specs.record import RECORD_SCHEMA
from multilora_pipeline.data_specs.schema import DecontaminationSpec
from multilora_pipeline.tasks.data.dedup import content, source_file, source_row
from multilora_pipeline.tasks.data.files.parquet_io import parquet_slices
from multilora_pipeline.tasks.data.minhash import normalised_words, word_shingles
from multilora_pipeline.tasks.data.outputs import stage_logger

DECON_DROP_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("row", pa.int64()),
        pa.field("file", pa.string()),  # the row's file, for a source of several files
        pa.field("suite", pa.string(), nullable=False),
        pa.field("eval_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # exact | near | ngram
        pa.field("similarity", pa.float64(), nullable=False),
        pa.field("eval_row", pa.int64()),  # the suite file's row of the matched item
        pa.field("eval_file", pa.string()),  # that file, for a suite of several files
        pa.field("evidence", pa.string()),  # ngram: the matched n-gram (normalised words)
    ]
)


@dataclass(frozen=True)
class DecontaminationResult:
    """Rows kept (input order) and rows removed with the eval item they match."""

    kept: pa.Table
    drops: pa.Table


@dataclass
class SuiteIndex:
    """What one suite offers for matching: its content n-grams and its short prompts."""

    name: str
    ngram_hashes: np.ndarray  # sorted uint64, boilerplate removed
    ngram_item: np.ndarray  # eval item index of each hash (first item that has it)
    ids: list[str]
    rows: list[int | None]  # the suite file's row of each item
    files: list[str | None]  # and its file, for a suite of several files
    item_words: list[frozenset]  # per item: words of its prompt and response
    plain: StemIndex  # the items' prompts
    questions: list[frozenset]  # per item: its prompt's words outside template spans
    # and not in its answer (what a row must hold to ask the item's question)
    with_choices: StemIndex  # prompts with their choices (multiple-choice training rows)


@dataclass
class StemIndex:
    """Short-prompt matching over one word list per item."""

    prompts: dict[str, int]  # normalised text -> item index
    word_sets: list[frozenset]  # per item: its set of words
    by_word: dict[str, list[int]]  # word -> items that have it

    @classmethod
    def of(cls, words: list[list[str]]) -> StemIndex:
        word_sets = [frozenset(w) for w in words]
        by_word: dict[str, list[int]] = defaultdict(list)
        for i, ws in enumerate(word_sets):
            for w in ws:
                by_word[w].append(i)
        prompts: dict[str, int] = {}
        for i, w in enumerate(words):
            if w:
                prompts.setdefault(" ".join(w), i)
        return cls(prompts, word_sets, dict(by_word))

    @cached_property
    def keys(self) -> pa.Array:
        return pa.array(list(self.prompts), pa.string())

    @cached_property
    def key_items(self) -> list[int]:
        return list(self.prompts.values())


# Where a prompt's template joins its parts (formats.TemplateFormat.boilerplate): the text is
# cut there, so no n-gram spans an MMLU stem and its options, or one option and the next.
SEAM = "\x1e"


@dataclass(frozen=True)
class FieldPieces:
    """Every row's prompt, cut at its template's seams, and its response, as separate
    texts: n-grams are taken within one piece."""

    texts: pa.Array
    rows: np.ndarray  # the row each piece belongs to
    fields: np.ndarray  # 0: a piece of the prompt, 1: the response

    @classmethod
    def of(cls, table: pa.Table) -> FieldPieces:
        n = table.num_rows
        prompts = pc.split_pattern(content(table, "prompt", seam=SEAM), SEAM)
        per_row = pc.list_value_length(prompts).to_numpy()
        texts = pa.concat_arrays([pc.list_flatten(prompts), content(table, "response")])
        rows = np.concatenate([np.repeat(np.arange(n), per_row), np.arange(n)])
        fields = np.concatenate([np.zeros(int(per_row.sum()), np.int8), np.ones(n, np.int8)])
        return cls(texts, rows, fields)


@dataclass(frozen=True)
class PieceNgrams:
    """The full n-grams of some pieces: hash, piece, and the piece word where it starts."""

    hashes: np.ndarray  # uint64, in piece order, each piece's n-grams in text order
    pieces: np.ndarray
    starts: np.ndarray  # first word in the piece's normalised words
    flat_starts: np.ndarray  # the same over all pieces' words laid end to end
    lengths: np.ndarray  # normalised words per piece

    @classmethod
    def of(cls, texts: pa.Array, n: int) -> PieceNgrams:
        sh = word_shingles(texts, n, full_hash=True, keep_symbols=False)
        doc_of = np.repeat(np.arange(len(sh.lengths)), np.diff(sh.offsets))
        full = sh.lengths[doc_of] >= n  # a shorter piece's one shingle is no n-gram
        within = np.arange(len(doc_of)) - sh.offsets[doc_of]  # shingle k starts at word k
        word_start = np.concatenate([[0], np.cumsum(sh.lengths)])[:-1]
        flat = word_start[doc_of] + within
        return cls(sh.hashes[full], doc_of[full], within[full], flat[full], sh.lengths)

    @property
    def total_words(self) -> int:
        return int(self.lengths.sum())


def build_suite_index(
    name: str, items: pa.Table, config: DecontaminationSpec, context: pa.Table | None = None
) -> SuiteIndex:
    """Index one eval suite (canonical records) for the three tests. `context`: training
    rows of the suite's groups (grouped_rows), counted with the items when telling a group's
    template from content and never matched: five formal_logic items of a small suite do
    not show that "Construct a complete truth table ..." opens the subject's items, the
    subject's training rows beside them do."""
    n = config.ngram
    population = items if context is None else pa.concat_tables([items, context])
    pieces = FieldPieces.of(population)
    grams = PieceNgrams.of(pieces.texts, n)
    item = pieces.rows[grams.pieces]
    groups, fallback_cut = _grouping(name, population, config)
    template = _template(grams.hashes, item, population.num_rows, groups, fallback_cut, config)
    # An n-gram occurrence counts only if most of its words lie outside template spans:
    # "... as of 2020? Scenario 1 | I asked" is template plus two words, and "no abnormalities.
    # Which of the following is the most appropriate next step in" is a template phrase that
    # is shorter than n words (found as frequent TEMPLATE_SPAN-grams) plus two.
    spans = [(grams.flat_starts[template], n)]
    if TEMPLATE_SPAN < n:
        short = PieceNgrams.of(pieces.texts, TEMPLATE_SPAN)
        short_item = pieces.rows[short.pieces]
        common = _template(
            short.hashes, short_item, population.num_rows, groups, fallback_cut, config
        )
        spans.append((short.flat_starts[common], TEMPLATE_SPAN))
    covered = _template_words(spans, grams.total_words)
    start = grams.flat_starts
    own = n - (covered[start + n] - covered[start])
    keep = ~template & (own >= MIN_OWN_WORDS_SHARE * n) & (item < items.num_rows)
    kept_hashes, first_at = np.unique(grams.hashes[keep], return_index=True)
    responses = normalised_words(items.column("response")).to_pylist()
    words = normalised_words(content(items, "prompt")).to_pylist()
    return SuiteIndex(
        name=name,
        ngram_hashes=kept_hashes,
        ngram_item=item[keep][first_at].astype(np.int64),
        ids=items.column("id").to_pylist(),
        rows=[source_row(m) for m in items.column("meta").to_pylist()],
        files=[source_file(m) for m in items.column("meta").to_pylist()],
        item_words=[frozenset(p) | frozenset(r) for p, r in zip(words, responses, strict=True)],
        plain=StemIndex.of(words),
        questions=[
            q - frozenset(r) or q
            for q, r in zip(
                _question_words(pieces, grams.lengths, covered, items.num_rows),
                responses,
                strict=True,
            )
        ],
        with_choices=StemIndex.of(stem_words(items).to_pylist()),
    )


# A matching n-gram must have at least this share of its words outside template spans.
MIN_OWN_WORDS_SHARE = 0.5
# Template phrases shorter than the n-gram are found as frequent n-grams of this length.
TEMPLATE_SPAN = 8


def _question_words(
    pieces: FieldPieces, lengths: np.ndarray, covered: np.ndarray, n_items: int
) -> list[frozenset]:
    """Per item: the words of its prompt outside template spans (what a row must hold to
    ask the item's question), or all of them where the template covers the prompt whole."""
    words = pc.list_flatten(normalised_words(pieces.texts)).to_numpy(zero_copy_only=False)
    piece_of = np.repeat(np.arange(len(lengths)), lengths)
    row = pieces.rows[piece_of]
    mine = (pieces.fields[piece_of] == 0) & (row < n_items)
    own = np.diff(covered) == 0
    all_words: list[set] = [set() for _ in range(n_items)]
    own_words: list[set] = [set() for _ in range(n_items)]
    for r, word, is_own in zip(row[mine].tolist(), words[mine], own[mine].tolist(), strict=True):
        all_words[r].add(word)
        if is_own:
            own_words[r].add(word)
    return [frozenset(o or a) for o, a in zip(own_words, all_words, strict=True)]


def _grouping(name: str, items: pa.Table, config: DecontaminationSpec):
    """(each item's group or None, the whole-suite cut standing in for missing groups)."""
    field = config.boilerplate_group
    groups = _group_values(items, field) if field else []
    if any(v is not None for v in groups):
        return groups, None
    if not (field and _expects_group(items, field)):
        return None, None
    # Grouped data without its groups (MMLU without subjects): one subject's template is
    # then only a few percent of the suite. A stricter whole-suite cut stands in.
    n_items = items.num_rows
    cut = max(GROUP_TEMPLATE_MIN_ITEMS, FALLBACK_FRACTION * config.boilerplate_fraction * n_items)
    stage_logger().warning(
        "decontaminate: suite %s has no %r field, so its groups' templates cannot be told "
        "apart: n-grams in %d or more of its %d items count as boilerplate (give the "
        "field, e.g. with file_fields for one file per subject)",
        name,
        field,
        int(np.ceil(cut)),
        n_items,
    )
    return None, cut


def grouped_tasks(config: DecontaminationSpec) -> list[str]:
    """The record tasks whose format groups its items by boilerplate_group (MMLU's subject)."""
    field = config.boilerplate_group
    return [t for t, f in TEMPLATE_FORMATS.items() if field and f.group_field == field]


def grouped_rows(train: pa.Table, config: DecontaminationSpec) -> pa.Table | None:
    """The training rows of grouped_tasks that say their group: the context in which a
    suite's group templates are counted."""
    field = config.boilerplate_group
    tasks = grouped_tasks(config)
    if not tasks:
        return None
    rows = train.filter(pc.is_in(train.column("task"), pa.array(tasks)))
    if rows.num_rows == 0:
        return None
    has_group = [v is not None for v in _group_values(rows, field)]
    return rows.filter(pa.array(has_group)) if any(has_group) else None


def _template(
    hashes: np.ndarray,
    item: np.ndarray,
    n_items: int,
    groups: list | None,
    fallback_cut: float | None,
    config: DecontaminationSpec,
) -> np.ndarray:
    """Per n-gram occurrence: True when the n-gram is boilerplate, shared by more than
    boilerplate_fraction of the suite's items or of one group's (_group_boilerplate)."""
    if len(hashes) == 0:
        return np.zeros(0, dtype=bool)
    # Count each n-gram once per item.
    pair = np.unique(np.stack([hashes, item.astype(np.uint64)], axis=1), axis=0)
    uniq, inverse, counts = np.unique(pair[:, 0], return_inverse=True, return_counts=True)
    template = counts > config.boilerplate_fraction * n_items
    if groups is not None:
        template |= _group_boilerplate(groups, config, pair, inverse.reshape(-1), len(uniq))
    elif fallback_cut is not None:
        template |= counts >= fallback_cut
    return template[np.searchsorted(uniq, hashes)]


def _template_words(spans: list[tuple[np.ndarray, int]], total_words: int) -> np.ndarray:
    """Prefix sums (length total_words + 1) of "this word lies in a template span"; spans
    are (flat start words, length) pairs."""
    diff = np.zeros(total_words + 1, dtype=np.int64)
    for starts, length in spans:
        np.add.at(diff, starts, 1)
        np.add.at(diff, starts + length, -1)
    inside = np.cumsum(diff)[:total_words] > 0
    return np.concatenate([[0], np.cumsum(inside)])


# A group template is shared by at least this many items of the group: two items sharing a
# passage (MMLU history questions, BoolQ) is content, not a template.
GROUP_TEMPLATE_MIN_ITEMS = 3


# Without its groups, a grouped suite's whole-suite cut is this share of boilerplate_fraction.
FALLBACK_FRACTION = 0.1


def _group_values(items: pa.Table, field: str) -> list:
    return [json.loads(m or "{}").get(field) for m in items.column("meta").to_pylist()]


def _expects_group(items: pa.Table, field: str) -> bool:
    """Whether the suite's format groups its items by `field` (formats.group_field)."""
    tasks = pc.unique(items.column("task")).to_pylist()
    return any(TEMPLATE_FORMATS.get(t) and TEMPLATE_FORMATS[t].group_field == field for t in tasks)


def _group_boilerplate(
    values: list, config: DecontaminationSpec, pair: np.ndarray, ngram: np.ndarray, n: int
) -> np.ndarray:
    """Per distinct n-gram: True when it is the template of one group of items (more than
    boilerplate_fraction of the group, and at least GROUP_TEMPLATE_MIN_ITEMS items)."""
    codes, labels = pd.factorize(np.array([str(v) for v in values], dtype=object))
    sizes = np.bincount(codes)
    group = codes[pair[:, 1].astype(np.int64)]
    cells, cell_counts = np.unique(np.stack([ngram, group], axis=1), axis=0, return_counts=True)
    template = (cell_counts >= GROUP_TEMPLATE_MIN_ITEMS) & (
        cell_counts > config.boilerplate_fraction * sizes[cells[:, 1]]
    )
    out = np.zeros(n, dtype=bool)
    out[cells[template, 0]] = True
    return out


def stem_words(table: pa.Table) -> pa.ListArray:
    """What the short-prompt tests compare: the prompt's words, and for a multiple-choice
    item its choices' words after them. ARC's "Which statement is an opinion?" opens many
    items whose options all differ: the stem alone is not the item."""
    stems = pc.binary_join_element_wise(content(table, "prompt"), content(table, "choices"), " ")
    return normalised_words(stems)


@dataclass(frozen=True)
class RowNgrams:
    """The full n-grams of a batch of training rows, hashed once and probed against every
    suite: within the pieces of each row (FieldPieces), in row order."""

    pieces: FieldPieces
    grams: PieceNgrams

    @classmethod
    def of(cls, batch: pa.Table, n: int) -> RowNgrams:
        pieces = FieldPieces.of(batch)
        return cls(pieces, PieceNgrams.of(pieces.texts, n))

    def has_prompt_ngram(self, n_rows: int) -> np.ndarray:
        """Per row: whether a piece of its prompt is n words or longer. Rows without one
        (a short question, or MMLU's short stem with its short options) are compared whole."""
        pieces = self.grams.pieces[self.pieces.fields[self.grams.pieces] == 0]
        out = np.zeros(n_rows, dtype=bool)
        out[self.pieces.rows[pieces]] = True
        return out

    def words(self, piece: int, start: int, n: int) -> str:
        """The normalised words of one n-gram occurrence (a drop's evidence)."""
        text = self.pieces.texts.slice(piece, 1)
        return " ".join(normalised_words(text).to_pylist()[0][start : start + n])


NgramHit = tuple[int, int, int]
"""(eval item, the row's piece, the n-gram's first word in that piece)."""


def _ngram_hits(ngrams: RowNgrams, index: SuiteIndex) -> dict[int, list[NgramHit]]:
    """Row -> its n-grams that are content n-grams of the suite, prompt before response."""
    hashes = ngrams.grams.hashes
    if len(index.ngram_hashes) == 0 or len(hashes) == 0:
        return {}
    pos = np.searchsorted(index.ngram_hashes, hashes)
    pos = np.minimum(pos, len(index.ngram_hashes) - 1)
    hit = np.flatnonzero(index.ngram_hashes[pos] == hashes)
    pieces = ngrams.grams.pieces[hit]
    out: dict[int, list[NgramHit]] = defaultdict(list)
    for row, item, piece, start in zip(
        ngrams.pieces.rows[pieces].tolist(),
        index.ngram_item[pos[hit]].tolist(),
        pieces.tolist(),
        ngrams.grams.starts[hit].tolist(),
        strict=True,
    ):
        out[row].append((item, piece, start))
    return out


# A shared n-gram makes a row match an eval item only if the row also asks the item's
# question: at least this share of the words of the item's prompt (outside its template, and
# not in its answer: an answer phrase the row shares brings its words along) are the row's. An unrelated
# GSM8K problem whose solution says "there are 7 days in a week so she eats 3 * 7" shares an
# answer phrase, a law question quoting "... refrain from any legal action against the
# company" a stock phrase (a third of the item's words); a copied or reworded item, or a
# passage with another question, holds 70-100 % (benchmarks/real_data_report.py).
QUESTION_SUPPORT = 0.5


def _asks(row_words: frozenset, question_words: frozenset) -> bool:
    return len(row_words & question_words) >= QUESTION_SUPPORT * len(question_words)


def _exact_prompts(keys: pa.Array, index: StemIndex) -> list[tuple[int, int]]:
    """(row, item) for every row whose prompt is an item's prompt, whatever its length: a copy
    of an item that is mostly template (formal_logic's instruction and a short formula) has
    no content n-gram to find it by."""
    found = pc.index_in(keys, value_set=index.keys)
    is_copy = pc.is_valid(found)
    rows = np.flatnonzero(is_copy.to_numpy(zero_copy_only=False))
    positions = pc.filter(found, is_copy).to_numpy(zero_copy_only=False)
    return [(r, index.key_items[p]) for r, p in zip(rows.tolist(), positions.tolist(), strict=True)]


def _short_prompt_hit(words: list[str], index: StemIndex, threshold: float):
    """("near", item, similarity) for a short prompt that nearly equals an eval prompt (an
    equal one was found by _exact_prompts, which every row goes through first)."""
    mine = frozenset(words)
    if not mine:
        return None
    # Prefix filter: Jaccard >= t needs |A & B| >= t|A|, so B must share one of any
    # |A| - ceil(t|A|) + 1 words of A; take A's rarest words to keep the candidate list short.
    prefix = len(mine) - math.ceil(threshold * len(mine)) + 1
    rarest = sorted(mine, key=lambda w: (len(index.by_word.get(w, ())), w))[:prefix]
    candidates = {item for w in rarest for item in index.by_word.get(w, ())}
    best = None
    for item in sorted(candidates):
        other = index.word_sets[item]
        jac = len(mine & other) / len(mine | other)
        if jac >= threshold and (best is None or jac > best[2]):
            best = ("near", item, jac)
    return best


# Training rows checked at a time. Their n-gram arrays cost ~50-60 bytes per word (~200 MB for
# 50k Alpaca-sized rows) and only their short prompts become Python lists: memory stays flat
# however big the training table, while each suite's index (the small side) stays whole.
BATCH_ROWS = 50_000

Hit = tuple[str, str, float, str, int | None, str | None, str | None]
"""(suite, kind, similarity, eval id, eval file row, eval file, evidence)."""


def decontaminate(
    train: pa.Table, suites: dict[str, pa.Table], config: DecontaminationSpec
) -> DecontaminationResult:
    """Remove training rows that overlap any eval suite (dict in spec order), in memory.

    A row is reported against the first suite it matches, n-gram before exact/near. The
    stage streams a file through decontaminate_batches instead; this is the same, whole."""
    train = train.select(RECORD_SCHEMA.names)
    batches = (train.slice(start, BATCH_ROWS) for start in range(0, train.num_rows, BATCH_ROWS))
    context = grouped_rows(train, config) if config.enabled else None
    parts = list(decontaminate_batches(batches, suites, config, context))
    if not parts:
        return DecontaminationResult(train, DECON_DROP_SCHEMA.empty_table())
    return DecontaminationResult(
        pa.concat_tables([p.kept for p in parts]), pa.concat_tables([p.drops for p in parts])
    )


def decontaminate_file(
    path: str | Path, suites: dict[str, pa.Table], config: DecontaminationSpec
) -> Iterator[DecontaminationResult]:
    """decontaminate_batches over a Parquet file of training rows, read BATCH_ROWS at a time.
    Only the rows of grouped_tasks (MMLU's) are read whole, for the context."""
    context = None
    tasks = grouped_tasks(config)
    if config.enabled and tasks:
        context = grouped_rows(pq.read_table(path, filters=[("task", "in", tasks)]), config)
    batches = parquet_slices([path], RECORD_SCHEMA.names, BATCH_ROWS)
    return decontaminate_batches(batches, suites, config, context)


def decontaminate_batches(
    batches: Iterable[pa.Table],
    suites: dict[str, pa.Table],
    config: DecontaminationSpec,
    context: pa.Table | None,
) -> Iterator[DecontaminationResult]:
    """Each batch of training rows (RECORD_SCHEMA) without the rows that overlap a suite, and
    those rows' drops. `context`: grouped_rows of the whole training set, whose groups'
    templates the suites' indexes count. The suites are indexed once, at the first batch;
    memory is the indexes and one batch, however many rows stream past."""
    indexes = None
    for batch in batches:
        batch = batch.select(RECORD_SCHEMA.names)
        hits: dict[int, Hit] = {}
        if config.enabled and batch.num_rows:
            if indexes is None:
                indexes = [
                    build_suite_index(name, items.select(RECORD_SCHEMA.names), config, context)
                    for name, items in suites.items()
                ]
            hits = _batch_hits(batch, indexes, config)
        keep = np.ones(batch.num_rows, dtype=bool)
        keep[list(hits)] = False
        yield DecontaminationResult(batch.filter(pa.array(keep)), _drops_table(batch, hits))


def _batch_hits(
    batch: pa.Table, indexes: list[SuiteIndex], config: DecontaminationSpec
) -> dict[int, Hit]:
    """Batch row -> match, suites in spec order: n-gram overlap first, then (prompts shorter
    than n words) an exact or near-identical eval prompt."""
    ngrams = RowNgrams.of(batch, config.ngram)
    prompt_words = normalised_words(content(batch, "prompt"))
    # Every row's prompt, for the exact test; a multiple-choice row's with its choices.
    is_mc = pc.is_valid(batch.column("choices"))
    joined = pc.binary_join(prompt_words, " ")
    prompt_keys = pc.if_else(is_mc, pa.scalar(None, pa.string()), joined)
    choice_keys = pc.if_else(is_mc, pc.binary_join(stem_words(batch), " "), None)
    short = np.flatnonzero(~ngrams.has_prompt_ngram(batch.num_rows))
    # A multiple-choice training row is compared with its choices, against items with theirs.
    picked = batch.take(pa.array(short, pa.int64()))
    has_choices = pc.is_valid(picked.column("choices")).to_numpy(zero_copy_only=False)
    short_words = [
        (stems, has)
        for stems, has in zip(
            pc.if_else(
                pa.array(has_choices), stem_words(picked), prompt_words.take(pa.array(short))
            ).to_pylist(),
            has_choices.tolist(),
            strict=True,
        )
    ]
    hits: dict[int, Hit] = {}
    row_words: dict[int, tuple[list[str], frozenset]] = {}  # only rows that hit reach Python

    def words_of(row: int) -> tuple[list[str], frozenset]:
        """The row's prompt words, and the words of its prompt and response."""
        if row not in row_words:
            one = batch.slice(row, 1)
            prompt, response = (
                normalised_words(content(one, f)).to_pylist()[0] for f in ("prompt", "response")
            )
            row_words[row] = prompt, frozenset(prompt) | frozenset(response)
        return row_words[row]

    for index in indexes:
        for row, candidates in _ngram_hits(ngrams, index).items():
            if row not in hits:
                found = _ngram_match(index, candidates, *words_of(row))
                if found:
                    item, kind, similarity, (piece, start) = found
                    gram = ngrams.words(piece, start, config.ngram) if kind == "ngram" else None
                    hits[row] = _hit(index, item, kind, similarity, gram)
        for keys, stems in ((prompt_keys, index.plain), (choice_keys, index.with_choices)):
            for row, item in _exact_prompts(keys, stems):
                hits.setdefault(row, _hit(index, item, "exact", 1.0))
        for row, (words, mc) in zip(short.tolist(), short_words, strict=True):
            if row in hits:
                continue
            stems = index.with_choices if mc else index.plain
            found = _short_prompt_hit(words, stems, config.near_threshold)
            if found:
                kind, item, sim = found
                hits[row] = _hit(index, item, kind, sim)
    return hits


def _ngram_match(index: SuiteIndex, candidates: list[NgramHit], prompt: list[str], words):
    """(item, kind, similarity, (piece, start)) of the row's first n-gram hit that counts:
    the item's prompt itself is an exact match, any other needs the item's question."""
    for item, piece, start in candidates:
        if index.plain.prompts.get(" ".join(prompt)) == item:
            return item, "exact", 1.0, (piece, start)
        if not _asks(words, index.questions[item]):
            continue
        other = index.item_words[item]
        similarity = len(words & other) / max(len(words | other), 1)
        return item, "ngram", similarity, (piece, start)
    return None


def _hit(index: SuiteIndex, item: int, kind: str, similarity: float, evidence=None) -> Hit:
    return (
        index.name,
        kind,
        similarity,
        index.ids[item],
        index.rows[item],
        index.files[item],
        evidence,
    )


def _drops_table(train: pa.Table, hits: dict[int, Hit]) -> pa.Table:
    """One row per removed training row, in table order (only those rows reach Python)."""
    rows = sorted(hits)
    removed = train.take(pa.array(rows, pa.int64()))
    ids, srcs, metas = (removed.column(c).to_pylist() for c in ("id", "source", "meta"))
    return pa.Table.from_pylist(
        [
            {
                "id": ids[i],
                "source": srcs[i],
                "row": source_row(metas[i]),
                "file": source_file(metas[i]),
                "suite": suite,
                "eval_id": eval_id,
                "kind": kind,
                "similarity": round(sim, 6),
                "eval_row": eval_row,
                "eval_file": eval_file,
                "evidence": evidence,
            }
            for i, (suite, kind, sim, eval_id, eval_row, eval_file, evidence) in enumerate(
                hits[r] for r in rows
            )
        ],
        schema=DECON_DROP_SCHEMA,
    )


def drops_per_source_suite(drops: pa.Table) -> list[dict]:
    """Counts of removed rows per (source, suite, kind), for reports."""
    if drops.num_rows == 0:
        return []
    grouped = drops.group_by(["source", "suite", "kind"]).aggregate([("id", "count")])
    rows = sorted(grouped.to_pylist(), key=lambda r: (r["source"], r["suite"], r["kind"]))
    return [
        {"source": r["source"], "suite": r["suite"], "kind": r["kind"], "rows": r["id_count"]}
        for r in rows
    ]
