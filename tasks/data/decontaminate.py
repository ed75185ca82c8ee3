"""Decontaminate: drop training rows that overlap an evaluation suite.

Three tests, against every suite (first matching suite in spec order is reported), each
drop labelled truthfully with the suite's row of the item it matches:
- n-gram: the row shares a word n-gram (13 by default, GPT-3 / lm-eval practice) with an
  eval item's prompt or response, ignoring n-grams found in more than `boilerplate_fraction`
  of the suite's items (instructions and answer templates, not content), or in more than that
  share of one group's items (`boilerplate_group`, MMLU's subject: "Construct a complete truth
  table ..." opens many formal_logic items and no others);
- exact: the prompt equals an eval prompt after normalisation (a verbatim copy of any
  length: similarity 1.0);
- near: a prompt shorter than n words has word-set Jaccard >= near_threshold with one;
- ngram (the rest of the n-gram hits): `evidence` holds the matched n-gram and `similarity`
  the word-set Jaccard of the row (prompt and response) with the eval item.
Both sides are compared on content, as in dedup: prompts without their template's
boilerplate, case and word-edge punctuation folded, symbol-only tokens left out of n-grams.

Why the eval item's response counts too: GPT-3 and lm-eval decontaminate against an eval
item's full text, and a training row that reproduces a gold answer (a GSM8K rationale, a
passage quoted in an answer) teaches the answer even when the question is reworded. The price
is visible in the demo: three templated math rows whose rationale has the same numbers as an
eval rationale ("each friend has 14 - 5 = 9 cookies left ...") are removed although their
questions differ; data_specs/demo/PLANTED.json lists them as `incidental_leaks`. Templated
answers shared by many items are not affected: boilerplate n-grams are ignored.

Memory: each suite is indexed once and whole (sorted 64-bit hashes of its content n-grams,
its short prompts): the small side. The training rows, the big side, stream past the indexes
BATCH_ROWS at a time, their n-grams hashed once per batch for all suites.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from multilora_pipeline.data_specs.formats import TEMPLATE_FORMATS
from multilora_pipeline.data_specs.record import RECORD_SCHEMA
from multilora_pipeline.data_specs.schema import DecontaminationSpec
from multilora_pipeline.tasks.data.dedup import content, source_row
from multilora_pipeline.tasks.data.minhash import normalised_words, word_shingles
from multilora_pipeline.tasks.data.outputs import stage_logger

DECON_DROP_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("row", pa.int64()),
        pa.field("suite", pa.string(), nullable=False),
        pa.field("eval_id", pa.string(), nullable=False),
        pa.field("kind", pa.string(), nullable=False),  # exact | near | ngram
        pa.field("similarity", pa.float64(), nullable=False),
        pa.field("eval_row", pa.int64()),  # the suite file's row of the matched item
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
    item_words: list[frozenset]  # per item: words of its prompt and response
    plain: StemIndex  # the items' prompts
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
            prompts.setdefault(" ".join(w), i)
        return cls(prompts, word_sets, dict(by_word))


def _field_docs(table: pa.Table) -> tuple[pa.Array, np.ndarray]:
    """Prompt and response of every row as separate texts, and the row each came from:
    n-grams never span the boundary between two fields."""
    n = table.num_rows
    texts = pa.concat_arrays([content(table, "prompt"), content(table, "response")])
    return texts, np.concatenate([np.arange(n), np.arange(n)])


def build_suite_index(name: str, items: pa.Table, config: DecontaminationSpec) -> SuiteIndex:
    """Index one eval suite (canonical records) for the three tests."""
    n_items = items.num_rows
    texts, owner = _field_docs(items)
    sh = word_shingles(texts, config.ngram, full_hash=True, keep_symbols=False)  # word n-grams
    doc_of = np.repeat(np.arange(len(sh.lengths)), np.diff(sh.offsets))
    full = sh.lengths[doc_of] >= config.ngram  # short fields are for the exact/near tests
    hashes, item = sh.hashes[full], owner[doc_of[full]]
    # Count each n-gram once per item, then drop the ones too many items share.
    pair = np.unique(np.stack([hashes, item.astype(np.uint64)], axis=1), axis=0)
    uniq, first, inverse, counts = np.unique(
        pair[:, 0], return_index=True, return_inverse=True, return_counts=True
    )
    is_content = counts <= config.boilerplate_fraction * n_items
    groups = _group_values(items, config.boilerplate_group) if config.boilerplate_group else []
    if any(v is not None for v in groups):
        is_content &= ~_group_boilerplate(groups, config, pair, inverse.reshape(-1), len(uniq))
    elif config.boilerplate_group and _expects_group(items, config.boilerplate_group):
        # Grouped data without its groups (MMLU without subjects): one subject's template is
        # then only a few percent of the suite. A stricter whole-suite cut stands in.
        cut = max(
            GROUP_TEMPLATE_MIN_ITEMS, FALLBACK_FRACTION * config.boilerplate_fraction * n_items
        )
        is_content &= counts < cut
        stage_logger().warning(
            "decontaminate: suite %s has no %r field, so its groups' templates cannot be told "
            "apart: n-grams in %d or more of its %d items count as boilerplate (give the "
            "field, e.g. with file_fields for one file per subject)",
            name,
            config.boilerplate_group,
            int(np.ceil(cut)),
            n_items,
        )
    # An n-gram occurrence counts only if most of its words lie outside template spans:
    # "... as of 2020? Scenario 1 | I asked" is template plus two words, not a leak.
    occurrence = np.searchsorted(uniq, hashes)
    start = _word_positions(sh, doc_of, full, config.ngram)
    covered = _template_words(start[~is_content[occurrence]], int(sh.lengths.sum()), config.ngram)
    own = config.ngram - (covered[start + config.ngram] - covered[start])
    keep = is_content[occurrence] & (own >= MIN_OWN_WORDS_SHARE * config.ngram)
    kept_hashes, first_at = np.unique(hashes[keep], return_index=True)
    responses = normalised_words(items.column("response")).to_pylist()
    words = normalised_words(content(items, "prompt")).to_pylist()
    return SuiteIndex(
        name=name,
        ngram_hashes=kept_hashes,
        ngram_item=item[keep][first_at].astype(np.int64),
        ids=items.column("id").to_pylist(),
        rows=[source_row(m) for m in items.column("meta").to_pylist()],
        item_words=[frozenset(p) | frozenset(r) for p, r in zip(words, responses, strict=True)],
        plain=StemIndex.of(words),
        with_choices=StemIndex.of(stem_words(items).to_pylist()),
    )


# A matching n-gram must have at least this share of its words outside template spans.
MIN_OWN_WORDS_SHARE = 0.5


def _word_positions(sh, doc_of: np.ndarray, full: np.ndarray, n: int) -> np.ndarray:
    """Flat word index (over all documents) where each kept n-gram occurrence starts."""
    word_start = np.concatenate([[0], np.cumsum(sh.lengths)])[:-1]
    within = np.arange(len(doc_of)) - sh.offsets[doc_of]  # shingle k of its document = word k
    return (word_start[doc_of] + within)[full]


def _template_words(starts: np.ndarray, total_words: int, n: int) -> np.ndarray:
    """Prefix sums (length total_words + 1) of "this word lies in a boilerplate n-gram"."""
    diff = np.zeros(total_words + 1, dtype=np.int64)
    np.add.at(diff, starts, 1)
    np.add.at(diff, starts + n, -1)
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
    suite: prompt and response apart (n-grams never span the two), in row order, each
    field's own n-grams in text order."""

    hashes: np.ndarray  # uint64
    rows: np.ndarray  # batch row of each hash
    fields: np.ndarray  # 0: the prompt's n-gram, 1: the response's
    starts: np.ndarray  # its first word in that field's normalised words

    @classmethod
    def of(cls, batch: pa.Table, n: int) -> RowNgrams:
        texts, owner = _field_docs(batch)
        sh = word_shingles(texts, n, full_hash=True, keep_symbols=False)
        doc_of = np.repeat(np.arange(len(sh.lengths)), np.diff(sh.offsets))
        full = sh.lengths[doc_of] >= n  # a shorter field's one shingle is no n-gram
        within = np.arange(len(doc_of)) - sh.offsets[doc_of]  # shingle k starts at word k
        field = (doc_of >= batch.num_rows).astype(np.int8)
        return cls(sh.hashes[full], owner[doc_of[full]], field[full], within[full])


def _ngram_hits(ngrams: RowNgrams, index: SuiteIndex) -> dict[int, tuple[int, int, int]]:
    """Row -> (eval item, field, first word) for rows sharing a content n-gram with the
    suite: the row's first such n-gram, prompt before response, names the item."""
    if len(index.ngram_hashes) == 0 or len(ngrams.hashes) == 0:
        return {}
    pos = np.searchsorted(index.ngram_hashes, ngrams.hashes)
    pos = np.minimum(pos, len(index.ngram_hashes) - 1)
    hit = np.flatnonzero(index.ngram_hashes[pos] == ngrams.hashes)
    out: dict[int, tuple[int, int, int]] = {}
    items = index.ngram_item[pos[hit]].tolist()
    for k, row, item in zip(hit.tolist(), ngrams.rows[hit].tolist(), items, strict=True):
        out.setdefault(row, (item, int(ngrams.fields[k]), int(ngrams.starts[k])))
    return out


def _short_prompt_hit(words: list[str], index: StemIndex, threshold: float):
    """(kind, item, similarity) for a short prompt that equals or nearly equals an eval prompt."""
    key = " ".join(words)
    if key and key in index.prompts:
        return "exact", index.prompts[key], 1.0
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

Hit = tuple[str, str, float, str, int | None, str | None]
"""(suite, kind, similarity, eval id, eval file row, evidence)."""


def decontaminate(
    train: pa.Table, suites: dict[str, pa.Table], config: DecontaminationSpec
) -> DecontaminationResult:
    """Remove training rows that overlap any eval suite (dict in spec order).

    The suites are indexed once; the training rows stream past the indexes BATCH_ROWS at a
    time. A row is reported against the first suite it matches, n-gram before exact/near.
    """
    train = train.select(RECORD_SCHEMA.names)
    n = train.num_rows
    hits: dict[int, Hit] = {}  # training row -> its match
    if config.enabled and n:
        indexes = [
            build_suite_index(name, items.select(RECORD_SCHEMA.names), config)
            for name, items in suites.items()
        ]
        for start in range(0, n, BATCH_ROWS):
            found = _batch_hits(train.slice(start, BATCH_ROWS), indexes, config)
            hits.update((start + row, hit) for row, hit in found.items())
    keep = np.ones(n, dtype=bool)
    keep[list(hits)] = False
    return DecontaminationResult(train.filter(pa.array(keep)), _drops_table(train, hits))


def _batch_hits(
    batch: pa.Table, indexes: list[SuiteIndex], config: DecontaminationSpec
) -> dict[int, Hit]:
    """Batch row -> match, suites in spec order: n-gram overlap first, then (prompts shorter
    than n words) an exact or near-identical eval prompt."""
    ngrams = RowNgrams.of(batch, config.ngram)
    prompt_words = normalised_words(content(batch, "prompt"))
    short = np.flatnonzero(pc.list_value_length(prompt_words).to_numpy() < config.ngram)
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
    field_words: dict[tuple[int, int], list[str]] = {}  # only rows that hit reach Python

    def words_of(row: int, field: int) -> list[str]:
        if (row, field) not in field_words:
            one = batch.slice(row, 1)
            text = content(one, "prompt" if field == 0 else "response")
            field_words[row, field] = normalised_words(text).to_pylist()[0]
        return field_words[row, field]

    for index in indexes:
        for row, (item, field, start) in _ngram_hits(ngrams, index).items():
            if row in hits:
                continue
            prompt = words_of(row, 0)
            if index.plain.prompts.get(" ".join(prompt)) == item:  # the item's prompt itself
                hits[row] = _hit(index, item, "exact", 1.0)
                continue
            mine = frozenset(prompt) | frozenset(words_of(row, 1))
            other = index.item_words[item]
            similarity = len(mine & other) / max(len(mine | other), 1)
            gram = " ".join(words_of(row, field)[start : start + config.ngram])
            hits[row] = _hit(index, item, "ngram", similarity, gram)
        for row, (words, mc) in zip(short.tolist(), short_words, strict=True):
            if row in hits:
                continue
            stems = index.with_choices if mc else index.plain
            found = _short_prompt_hit(words, stems, config.near_threshold)
            if found:
                kind, item, sim = found
                hits[row] = _hit(index, item, kind, sim)
    return hits


def _hit(index: SuiteIndex, item: int, kind: str, similarity: float, evidence=None) -> Hit:
    return (index.name, kind, similarity, index.ids[item], index.rows[item], evidence)


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
                "suite": suite,
                "eval_id": eval_id,
                "kind": kind,
                "similarity": round(sim, 6),
                "eval_row": eval_row,
                "evidence": evidence,
            }
            for i, (suite, kind, sim, eval_id, eval_row, evidence) in enumerate(
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
