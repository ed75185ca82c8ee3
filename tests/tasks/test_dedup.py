"""Dedup and the MinHash LSH under it: exact keys, near pairs, priority, the demo's planted rows."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from multilora_pipeline.data_specs.record import make_record, records_to_table
from multilora_pipeline.data_specs.schema import DedupSpec, NearDedupSpec, load_spec
from multilora_pipeline.tasks.data import near_dedup
from multilora_pipeline.tasks.data.dedup import dedup, drops_per_source_pair, exact_keys
from multilora_pipeline.tasks.data.exact_repeats import first_of_repeats
from multilora_pipeline.tasks.data.minhash import (
    MinHasher,
    band_keys,
    exact_jaccard,
    lsh_params,
    word_shingles,
)
from multilora_pipeline.tasks.data.near_dedup import BandKeys, near_duplicates, shared_buckets

WORDS = [f"word{i}" for i in range(400)]


def text(seed: int, n: int = 60) -> str:
    rng = np.random.default_rng(seed)
    return " ".join(rng.choice(WORDS, n))


def edit(base: str, positions: list[int]) -> str:
    words = base.split()
    for p in positions:
        words[p] = "CHANGED"
    return " ".join(words)


def rec(source: str, prompt: str, response: str = "ok", row: int = 0) -> dict:
    return make_record(
        source=source,
        task="t",
        category="instruction",
        prompt=prompt,
        response=response,
        meta={"row": row},
    )


def test_exact_key_folds_case_spacing_punctuation():
    table = records_to_table([rec("a", "Hello,   World!", "Yes."), rec("a", "hello world", "yes")])
    keys = exact_keys(table, ["prompt", "response"]).to_pylist()
    assert keys[0] == keys[1]
    assert exact_keys(table, ["prompt"]).to_pylist()[0] == "hello world"


def test_punctuation_that_carries_meaning_never_merges_rows():
    # codealpaca's layout: the same task in C, C++ and C#; math that differs in an operator.
    task = "Implement a {} function that calculates the factorial of a given number."
    rows = [rec("code", task.format(lang), "5") for lang in ("C", "C++", "C#")]
    rows += [rec("math", "What is 3 + 4?", "7"), rec("math", "What is 3 - 4?", "7")]
    rows += [rec("math", "what is 3 + 4", "7.")]  # the first math row again: case, "?" and "."
    kept = dedup(records_to_table(rows), DedupSpec(key=["prompt", "response"])).kept
    assert kept.column("prompt").to_pylist() == [r["prompt"] for r in rows[:5]]
    keys = exact_keys(records_to_table(rows), ["prompt"]).to_pylist()
    assert keys[:3] == [task.format(x).lower()[:-1] for x in ("c", "c++", "c#")]
    # Near-dup shingles keep symbols too; decontamination's word n-grams drop symbol-only
    # tokens, never symbols inside a word.
    texts = ["3 + 4 = 7 #### 7", "3 4 7 7", "C++ rocks", "C rocks"]
    near = word_shingles(texts, 5)
    assert near.doc(0).tolist() != near.doc(1).tolist()
    words = word_shingles(texts, 5, keep_symbols=False)
    assert words.doc(0).tolist() == words.doc(1).tolist()
    assert words.doc(2).tolist() != words.doc(3).tolist()


def _record(source, task, category, prompt, response, choices=None, label=None, row=0):
    return make_record(
        source=source,
        task=task,
        category=category,
        prompt=prompt,
        response=response,
        choices=choices,
        label=label,
        meta={"row": row},
    )


def test_one_question_rendered_by_two_templates_is_one_question():
    question = "Tom has 3 apples and buys 4 more. How many apples does he have now?"
    rows = [
        _record("gsm8k", "gsm8k", "math", f"Question: {question}\nAnswer:", " 3 + 4 = 7\n#### 7"),
        _record("mine", "generic", "math", question, "3 + 4 = 7\n#### 7", row=5),
    ]
    result = dedup(records_to_table(rows), DedupSpec())
    (drop,) = result.drops.to_pylist()
    assert (drop["source"], drop["row"], drop["kind"]) == ("mine", 5, "exact")


def test_a_repeated_question_with_another_answer_is_a_duplicate_by_default():
    q = "Question: A shop sells 5 pens a day. How many in a week?\nAnswer:"
    passage = "The lake froze early that year.\nQuestion: did the lake freeze?\nAnswer:"
    multirc = "The ship left at dawn.\nQuestion: When did the ship leave?\nAnswer:"
    rows = [
        # GSM8K's question again with FLAN's rationale: one example.
        _record("gsm8k", "gsm8k", "math", q, " 5 * 7 = 35\n#### 35", row=1),
        _record("flan", "gsm8k", "math", q, " A week has 7 days, so 35.\n#### 35", row=2),
        # One BoolQ item with contradicting labels: one item.
        _record("boolq", "superglue_boolq", "nlu", passage, " yes", ["no", "yes"], 1, row=3),
        _record("boolq", "superglue_boolq", "nlu", passage, " no", ["no", "yes"], 0, row=4),
        # MultiRC's answers to one question differ in their choices: different items.
        *[
            _record(
                "multirc",
                "superglue_multirc",
                "nlu",
                multirc,
                f" {a}\nIs the answer correct? yes",
                [f"{a}\nIs the answer correct? no", f"{a}\nIs the answer correct? yes"],
                1,
                row=5 + k,
            )
            for k, a in enumerate(["At dawn", "At noon"])
        ],
    ]
    result = dedup(records_to_table(rows), DedupSpec())
    assert sorted((d["source"], d["row"]) for d in result.drops.to_pylist()) == [
        ("boolq", 4),
        ("flan", 2),
    ]
    # The old default (instruction keyed on its prompt only) kept both repeats.
    old = DedupSpec(key_by_category={"instruction": ["prompt"]})
    assert dedup(records_to_table(rows), old).drops.num_rows == 0


def test_template_words_do_not_dilute_near_duplicate_shingles():
    words = text(31, 40)
    rows = [
        _record(
            "a", "alpaca", "instruction", f"### Instruction:\n{words}\n\n### Response:\n", "ok"
        ),
        _record(
            "b",
            "alpaca",
            "instruction",
            f"### Instruction:\n{words} now\n\n### Input:\n6\n\n### Response:\n",
            "ok",
            row=9,
        ),
    ]
    config = DedupSpec(key_by_category={})
    (drop,) = dedup(records_to_table(rows), config).drops.to_pylist()
    assert (drop["row"], drop["kind"]) == (9, "near")


def test_exact_duplicate_keeps_higher_priority_copy_and_reports_it():
    rows = [
        rec("low", "What is two plus two?", "Four", row=1),
        rec("high", "what is TWO plus two", "four.", row=7),
        rec("low", "Something else entirely", "x", row=2),
    ]
    result = dedup(records_to_table(rows), DedupSpec(), {"high": 1, "low": 0}, ["low", "high"])
    assert result.kept.column("source").to_pylist() == ["high", "low"]
    drop = result.drops.to_pylist()
    assert len(drop) == 1
    assert drop[0]["source"] == "low" and drop[0]["row"] == 1
    assert drop[0]["duplicate_of"] == rows[1]["id"] and drop[0]["kind"] == "exact"
    assert drop[0]["similarity"] == 1.0


def test_ties_go_to_spec_order_then_row_order():
    rows = [
        rec("b", "same prompt here", row=1),
        rec("a", "same prompt here", row=1),
        rec("a", "same prompt here!", row=2),
    ]
    result = dedup(records_to_table(rows), DedupSpec(), {}, ["a", "b"])
    kept = result.kept.to_pylist()
    assert [(r["source"], json.loads(r["meta"])["row"]) for r in kept] == [("a", 1)]


def test_near_duplicate_found_and_hard_negative_kept():
    base = text(1)
    near = edit(base, [30])  # one word changed: 5-gram Jaccard (56-5)/(56+5) = 0.84
    hard = edit(base, [5, 15, 25, 35, 45])  # five changes: Jaccard about 0.4
    rows = [rec("a", base), rec("b", near), rec("c", hard), rec("d", text(2))]
    result = dedup(
        records_to_table(rows), DedupSpec(key=["prompt"]), {"b": 5}, ["a", "b", "c", "d"]
    )
    drops = result.drops.to_pylist()
    assert [d["source"] for d in drops] == ["a"]  # b has the higher priority: a's copy goes
    assert drops[0]["kind"] == "near" and drops[0]["duplicate_source"] == "b"
    assert 0.8 <= drops[0]["similarity"] < 1.0
    assert sorted(result.kept.column("source").to_pylist()) == ["b", "c", "d"]
    assert drops_per_source_pair(result.drops) == [
        {"dropped_from": "a", "duplicate_of": "b", "kind": "near", "rows": 1}
    ]


def test_near_dedup_can_be_switched_off():
    base = text(3)
    rows = [rec("a", base), rec("a", edit(base, [30]))]
    config = DedupSpec(key=["prompt"], near=NearDedupSpec(enabled=False))
    assert dedup(records_to_table(rows), config).kept.num_rows == 2


def test_short_texts_fall_back_to_one_shingle_of_all_words():
    sh = word_shingles(["Hi there!", "hi THERE", "hi", "", "a b c d e f"], 5)
    assert list(np.diff(sh.offsets)) == [1, 1, 1, 0, 2]
    assert sh.doc(0)[0] == sh.doc(1)[0] != sh.doc(2)[0]


def test_signature_estimate_tracks_exact_jaccard():
    texts = [text(10, 100)] + [
        edit(text(10, 100), list(range(0, 100, step))) for step in (50, 20, 10)
    ]
    sh = word_shingles(texts, 5)
    sig = MinHasher(256).signatures(sh)
    pairs = np.array([[0, 1], [0, 2], [0, 3]])
    exact = exact_jaccard(sh, pairs)
    estimate = (sig[pairs[:, 0]] == sig[pairs[:, 1]]).mean(axis=1)
    assert np.all(np.abs(exact - estimate) < 0.1)
    assert np.array_equal(MinHasher(256).signatures(sh), sig)  # deterministic


def test_lsh_params_keep_recall_at_the_threshold():
    bands, rows = lsh_params(0.8, 128)
    assert bands * rows <= 128
    assert 1 - (1 - 0.8**rows) ** bands >= 0.99
    assert lsh_params(0.9, 128)[1] > rows  # a higher threshold affords longer bands


def test_shared_buckets_name_only_buckets_two_rows_share():
    sig = np.array([[1, 2, 3, 4], [1, 2, 9, 9], [1, 2, 3, 4], [7, 7, 7, 7]], dtype=np.uint32)

    def buckets(active):
        keys = BandKeys(bands=2)
        keys.add(band_keys(sig, bands=2, rows=2), active)
        rows, ids = shared_buckets(keys)
        return list(zip(rows.tolist(), ids.tolist(), strict=True))

    found = buckets(np.ones(4, dtype=bool))
    band0 = {b for r, b in found if r == 1}  # row 1 shares band 0's (1, 2) with rows 0 and 2
    assert len(band0) == 1
    (b0,) = band0
    b1 = {b for r, b in found if r == 0} - band0  # band 1: rows 0 and 2 share (3, 4)
    assert len(b1) == 1 and b1 != band0  # one id space over the bands
    (b1,) = b1
    assert found == [(0, b0), (0, b1), (1, b0), (2, b0), (2, b1)]  # row 3 shares nothing
    inactive = buckets(np.array([True, True, False, True]))  # row 2 has no shingles
    assert [r for r, _ in inactive] == [0, 1]  # rows 0, 1 still share band 0; band 1 alone


def test_exact_repeats_point_each_repeat_at_its_smallest_position_on_disk_or_in_memory(
    tmp_path,
):
    rng = np.random.default_rng(5)
    digests = rng.integers(0, 2**63, (5_000, 2), dtype=np.uint64)
    digests[rng.choice(5_000, 400)] = digests[rng.choice(5_000, 400)]  # repeats, some chained
    digests[10:13] = [[7, 1], [7, 2], [7, 1]]  # one half of the digest equal is no repeat
    positions = rng.permutation(5_000)  # rows arrive in file order, ranked elsewhere
    by_rank = np.empty_like(digests)
    by_rank[positions] = digests
    _, first, inverse = np.unique(by_rank, axis=0, return_index=True, return_inverse=True)
    firsts = first[inverse.reshape(-1)]
    expected = (np.flatnonzero(firsts != np.arange(5_000)), firsts[firsts != np.arange(5_000)])

    def pieces():
        for start in range(0, 5_000, 700):
            yield digests[start : start + 700], positions[start : start + 700]

    for folder in (None, tmp_path / "scratch"):
        repeats, to = first_of_repeats(pieces(), folder)
        assert len(repeats) > 300
        assert (repeats == expected[0]).all() and (to == expected[1]).all()
    assert not (tmp_path / "scratch").exists()
    empty = first_of_repeats(iter([]), tmp_path / "none")
    assert [len(a) for a in empty] == [0, 0] and not (tmp_path / "none").exists()


def test_band_buckets_number_buckets_as_np_unique_does(tmp_path):
    rng = np.random.default_rng(11)
    key = rng.integers(0, 50, 2_000).astype(np.uint64)  # many shared keys
    key[:500] = rng.integers(0, 2**63, 500, dtype=np.uint64)  # and many alone
    active = rng.random(2_000) > 0.1
    ids = np.flatnonzero(active)
    unique, inverse, counts = np.unique(key[ids], return_inverse=True, return_counts=True)
    shared = counts[inverse] > 1
    rows, buckets, distinct = near_dedup.band_buckets(key, active)
    assert rows.tolist() == ids[shared].tolist()
    assert buckets.tolist() == inverse[shared].tolist() and distinct == len(unique)
    assert [len(a) for a in near_dedup.band_buckets(key, np.zeros(2_000, bool))[:2]] == [0, 0]


def test_band_keys_written_by_shards_read_back_as_one_band_in_row_order(tmp_path):
    # What the Ray fan-out does: each shard writes its rows of every band, a band reads all.
    sig = np.random.default_rng(3).integers(0, 4, (30, 12), dtype=np.uint32)  # many shared
    keys, active = band_keys(sig, bands=4, rows=3), np.arange(30) % 7 != 0
    whole = BandKeys(bands=4)
    whole.add(keys, active)
    for shard, (lo, hi) in reversed(list(enumerate([(0, 7), (7, 19), (19, 30)]))):
        part = BandKeys(4, tmp_path / "keys", shard)  # written out of order, read in order
        part.add(keys[lo:hi], active[lo:hi])
        part.close()
    sharded = BandKeys(4, tmp_path / "keys", shard=None)
    for band in range(4):
        for got, want in zip(sharded.band(band), whole.band(band), strict=True):
            assert (got == want).all()
    for got, want in zip(shared_buckets(sharded), shared_buckets(whole), strict=True):
        assert len(got) > 0 and (got == want).all()


def _shards(paths) -> list[list[str]]:
    return [
        pa.ipc.open_file(pa.OSFile(str(p))).read_all().column("text").to_pylist() for p in paths
    ]


def test_texts_are_cut_into_shards_of_at_most_the_asked_rows(tmp_path):
    texts = [f"text {i}" for i in range(14)]
    slices = [pa.array(texts[:5]), pa.array(texts[5:])]
    shards = _shards(near_dedup._text_shards(slices, tmp_path, shard_rows=4))
    assert [len(shard) for shard in shards] == [4, 4, 4, 2]
    assert [t for shard in shards for t in shard] == texts


def test_long_texts_make_shards_of_fewer_rows(tmp_path, monkeypatch):
    monkeypatch.setattr(near_dedup, "SHARD_BYTES", 1000)
    short, long = [f"s{i}" for i in range(30)], [f"{i} " + "long " * 49 for i in range(9)]
    slices = [pa.array(short), pa.array(long)]  # ~7 and ~254 bytes a row (offsets included)
    shards = _shards(near_dedup._text_shards(slices, tmp_path, shard_rows=25))
    assert [len(shard) for shard in shards] == [25, 5, 3, 3, 3]  # 25 short, then 3 long a shard
    assert [t for shard in shards for t in shard] == short + long


def test_a_huge_cluster_of_near_identical_rows_costs_comparisons_with_its_survivors_only():
    base = text(7, 100).split()  # one change alters 5 of 96 shingles: any two rows J >= 0.81
    rows = []
    for k in range(3000):  # one word changed per row: every pair is a near-duplicate candidate
        words = list(base)
        words[k % 100] = f"changed{k}"
        rows.append(" ".join(words))
    found = near_duplicates(rows, threshold=0.8)
    dropped = set(found.pairs[:, 1].tolist())
    kept = [j for j in range(len(rows)) if j not in dropped]
    assert len(kept) < 60  # the cluster collapses to a handful of survivors
    assert found.candidates < 60 * len(rows)  # against survivors only, never all pairs
    assert np.all(found.pairs[:, 0] < found.pairs[:, 1]) and not set(found.pairs[:, 0]) & dropped
    assert np.all(found.similarity >= 0.8)


def test_near_duplicates_recall_on_a_synthetic_set():
    bases = [text(100 + i, 80) for i in range(200)]
    copies = [edit(b, [40]) for b in bases[:50]]  # Jaccard (76-5)/(76+5) = 0.88
    found = near_duplicates(bases + copies, threshold=0.8)
    got = {tuple(p) for p in found.pairs.tolist()}
    assert all((i, 200 + i) in got for i in range(50))
    assert len(got) == 50


# ---------------------------------------------------------------- the demo's planted rows

SOURCE_FILES = {
    "instructions.json": "instructions",
    "boolq_train.jsonl": "boolq",
    "knowledge_train.csv": "knowledge",
    "math_train.jsonl": "math",
}


@pytest.fixture(scope="module")
def demo_tables(tmp_path_factory):
    """The demo's training sources, fetched and normalised (B1's stages)."""
    from multilora_pipeline.tasks.data.fetch import fetch
    from multilora_pipeline.tasks.data.normalise import normalise
    from multilora_pipeline.tasks.workspace import Workspace

    spec, spec_dir = load_spec(Path(__file__).resolve().parents[2] / "data_specs/demo_tiny.yaml")
    ws = Workspace.resolve(tmp_path_factory.mktemp("dedup_demo")).ensure()
    tables = {}
    for item in [*spec.sources, *spec.eval_suites]:
        snap = fetch(item, item.name, spec_dir, ws)
        tables[item.name] = normalise(
            snap,
            source=item.name,
            template=item.template,
            category=item.category,
            fields=getattr(item, "fields", None),
        )
    planted = json.loads((spec_dir / "demo/PLANTED.json").read_text())["planted"]
    return spec, tables, planted


@pytest.mark.parametrize("across", [False, True])
def test_dedup_of_parquet_files_read_in_slices_is_dedup_of_the_table(
    demo_tables, tmp_path, monkeypatch, across
):
    """The stage's path (its inputs as files, 97 rows a slice, keys 31 at a time, rows
    gathered through disk, near dedup's band keys on disk, signed 13 rows at a time) drops
    the same rows with the same copies kept as dedup of the whole table, and leaves no
    scratch files."""
    import pyarrow as pa

    from multilora_pipeline.tasks.data import dedup as dedup_module
    from multilora_pipeline.tasks.data.files import parquet_io, records
    from multilora_pipeline.tasks.data.files.parquet_io import write_parquet

    spec, tables, _ = demo_tables
    names = [s.name for s in spec.sources]
    paths = []
    for name in names:
        paths.append(tmp_path / f"{name}.parquet")
        write_parquet(tables[name], paths[-1])
    category = tables[names[0]].column("category")[0].as_py()  # and a pass by category
    config = spec.dedup.model_copy(update={"key_by_category": {category: ["prompt"]}})
    args = (config, {s.name: s.priority for s in spec.sources}, names)
    whole = dedup(pa.concat_tables([tables[n] for n in names]), *args, across=across)
    for module in (parquet_io, records):
        monkeypatch.setattr(module, "SLICE_ROWS", 97)
    monkeypatch.setattr(dedup_module, "KEY_ROWS", 31)  # keys of one slice in several pieces
    monkeypatch.setattr(near_dedup, "SIGNATURE_ROWS", 13)  # signatures in several pieces too
    bands_read = []
    read_band = near_dedup.BandKeys.band

    def band_from_disk(self, band):
        bands_read.append(self._path(band).stat().st_size > 0)  # a file, not memory
        return read_band(self, band)

    monkeypatch.setattr(near_dedup.BandKeys, "band", band_from_disk)
    files = records.ParquetRecords(paths, spill_dir=tmp_path / "spill")
    sliced = dedup(files, *args, across=across)
    assert across or "near" in whole.drops.column("kind").to_pylist()  # the planted near row
    assert whole.drops.num_rows > 0 and sliced.drops.equals(whole.drops)
    assert (sliced.keep == whole.keep).all() and sliced.kept.equals(whole.kept)
    assert bands_read and all(bands_read)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)


def test_demo_planted_duplicates_found_with_the_right_copy_kept(demo_tables):
    import pyarrow as pa

    spec, tables, planted = demo_tables
    table = pa.concat_tables([tables[s.name] for s in spec.sources])
    result = dedup(
        table,
        spec.dedup,
        {s.name: s.priority for s in spec.sources},
        [s.name for s in spec.sources],
    )
    dropped = {(d["source"], d["row"]) for d in result.drops.to_pylist()}
    dups = [p for p in planted if not p["kind"].startswith("leak")]
    assert dups
    # The generator measured Jaccard on rendered text, template words included; dedup
    # measures content. One pair planted at 0.808 is exactly 0.800 on content by the
    # generator's [a-z0-9]+ words and just under it by ours (a hyphenated word stays one
    # token): it is kept. Every other planted pair is >= 0.826.
    edge = [p for p in dups if p.get("jaccard", 1.0) < 0.81]
    assert [(p["source"], p["row"]) for p in edge] == [("boolq", 248)]
    assert not {(p["source"], p["row"]) for p in edge} & dropped
    dups = [p for p in dups if p not in edge]
    for p in dups:
        pair = {(p["source"], p["row"]), (SOURCE_FILES[p["of"]["file"]], p["of"]["row"])}
        assert len(pair & dropped) == 1, p  # exactly one copy of every planted pair goes
        if p["kind"] == "near_cross":  # instructions has priority 1: the math copy goes
            assert (SOURCE_FILES[p["of"]["file"]], p["of"]["row"]) in dropped, p
    assert len(dropped) == len(dups)  # and nothing that was not planted


def test_items_sharing_a_passage_are_near_duplicates_only_if_they_ask_the_same():
    passage = text(21, 120)

    def boolq(question: str, passage_text: str = passage, row: int = 0) -> dict:
        return make_record(
            source="boolq",
            task="superglue_boolq",
            category="nlu",
            prompt=f"{passage_text}\nQuestion: {question}?\nAnswer:",
            response=" yes",
            choices=["no", "yes"],
            label=1,
            meta={"row": row, "query": question},
        )

    rows = [
        boolq("is the river longer than the canal", row=1),
        boolq("was the bridge built before the war", row=2),  # same passage, other question
        boolq("is the river longer than the canal", edit(passage, [60]), row=3),  # near copy
    ]
    result = dedup(records_to_table(rows), DedupSpec())
    assert [(d["row"], d["duplicate_row"], d["kind"]) for d in result.drops.to_pylist()] == [
        (3, 1, "near")
    ]


# ---------------------------------------------------------------- a suite's own repeats


def test_a_suites_repeated_items_are_reported_and_dropped_on_request(tmp_path):
    from multilora_pipeline.data_specs.schema import EvalSuiteSpec
    from multilora_pipeline.tasks.data.fetch import fetch
    from multilora_pipeline.tasks.data.stages import normalise_stage, read_repeats
    from multilora_pipeline.tasks.workspace import Workspace

    ws = Workspace.resolve(tmp_path / "ws").ensure()
    items = [
        {"passage": f"Passage {i}.", "question": f"is it {i}", "label": True} for i in range(5)
    ]
    items.insert(3, {**items[1], "question": "IS IT 1"})  # row 4 repeats row 2 (case folded)
    items.append({**items[0], "label": False})  # row 7 repeats row 1's question and choices
    (tmp_path / "suite.jsonl").write_text("".join(json.dumps(r) + "\n" for r in items))
    kept = EvalSuiteSpec(name="boolq", path="suite.jsonl", template="superglue_boolq")
    out = normalise_stage(ws, fetch(kept, "boolq", tmp_path, ws), kept)
    assert out.rows == 7  # reported, not removed, by default
    repeats = read_repeats(out).to_pylist()
    assert [(r["row"], r["duplicate_of_row"], r["dropped"]) for r in repeats] == [
        (4, 2, False),
        (7, 1, False),
    ]
    dropping = kept.model_copy(update={"drop_duplicates": True})
    out = normalise_stage(ws, fetch(dropping, "boolq", tmp_path, ws), dropping)
    assert out.rows == 5 and all(r["dropped"] for r in read_repeats(out).to_pylist())


def test_rows_of_a_source_of_several_files_are_named_with_their_file(tmp_path):
    # MMLU publishes one headerless CSV per subject, rows numbered per file: "row 1 repeats
    # row 2" names nothing until it says which files.
    from multilora_pipeline.data_specs.schema import EvalSuiteSpec, SourceSpec
    from multilora_pipeline.tasks.data.fetch import fetch
    from multilora_pipeline.tasks.data.stages import normalise_stage, read_repeats
    from multilora_pipeline.tasks.workspace import Workspace

    ws = Workspace.resolve(tmp_path / "ws").ensure()
    shared = "What is the dose of creatine for a 70 kg man?,2 g,5 g,10 g,20 g,D\n"
    (tmp_path / "clinical_knowledge_val.csv").write_text(
        f"Which organ filters blood?,a,b,c,d,A\n{shared}"
    )
    (tmp_path / "college_medicine_val.csv").write_text(shared)
    suite = EvalSuiteSpec(
        name="mmlu", path="*_val.csv", file_fields="(?P<subject>.+)_val", template="mmlu"
    )
    out = normalise_stage(ws, fetch(suite, "mmlu", tmp_path, ws), suite)
    (repeat,) = read_repeats(out).to_pylist()
    assert (repeat["file"], repeat["row"]) == ("college_medicine_val.csv", 1)
    assert (repeat["duplicate_of_file"], repeat["duplicate_of_row"]) == (
        "clinical_knowledge_val.csv",
        2,
    )
    source = SourceSpec(
        name="mmlu", path="*_val.csv", file_fields="(?P<subject>.+)_val", template="mmlu"
    )
    records = normalise_stage(ws, fetch(source, "mmlu", tmp_path, ws), source)
    import pyarrow.parquet as pq

    (drop,) = dedup(pq.read_table(records.path), DedupSpec()).drops.to_pylist()
    assert (drop["file"], drop["row"]) == ("college_medicine_val.csv", 1)
    assert (drop["duplicate_file"], drop["duplicate_row"]) == ("clinical_knowledge_val.csv", 2)


def test_two_questions_of_one_multirc_passage_are_not_merged_by_a_shared_answer(tmp_path):
    # MultiRC puts many questions on one passage, and answer options recur across them: a
    # near pair needs the same question (the response, which holds the answer, must match).
    import pyarrow.parquet as pq

    from multilora_pipeline.data_specs.schema import SourceSpec
    from multilora_pipeline.tasks.data.fetch import fetch
    from multilora_pipeline.tasks.data.stages import normalise_stage
    from multilora_pipeline.tasks.workspace import Workspace

    ws = Workspace.resolve(tmp_path / "ws").ensure()
    passage = text(7)
    answer = "three red apples and two green pears from the farm stand"

    def row(paragraph: str, question: str) -> str:
        item = {"paragraph": paragraph, "question": question, "answer": answer, "label": 1}
        return json.dumps(item) + "\n"

    (tmp_path / "multirc.jsonl").write_text(
        row(passage, "What did Sam buy at the market on Monday morning?")
        + row(passage, "What did Ann sell at the market on Monday morning?")  # another question
        + row(edit(passage, [30]), "What did Sam buy at the market on Monday morning?")  # a copy
    )
    source = SourceSpec(name="multirc", path="multirc.jsonl", template="superglue_multirc")
    records = normalise_stage(ws, fetch(source, "multirc", tmp_path, ws), source)
    result = dedup(pq.read_table(records.path), DedupSpec())
    assert [(d["row"], d["duplicate_row"], d["kind"]) for d in result.drops.to_pylist()] == [
        (3, 1, "near")
    ]


def test_a_pass_across_sources_compares_only_rows_of_different_sources():
    base = text(11)
    rows = [
        rec("a", base, row=1),
        rec("a", edit(base, [5]), row=2),  # left by the within pass (as if): not compared again
        rec("b", edit(base, [9]), row=3),
    ]
    across = dedup(records_to_table(rows), DedupSpec(exact=False), across=True)
    assert [(d["row"], d["duplicate_row"]) for d in across.drops.to_pylist()] == [(3, 1)]
    texts = [r["prompt"] for r in rows]
    assert near_duplicates(texts).pairs.tolist() == [[0, 1], [0, 2]]
    assert near_duplicates(texts, groups=np.array([0, 0, 1])).pairs.tolist() == [[0, 2]]


def test_near_dedup_reads_again_only_the_rows_that_share_a_bucket():
    """Memory is bounded by the rows that share an LSH bucket: of 300 distinct texts and 5
    near copies, only the copies and their originals are read again for the walk."""
    texts = [text(1000 + i, 60) for i in range(300)]
    texts += [edit(texts[i], [30]) for i in (3, 50, 120, 200, 299)]
    asked = []
    arr = pa.array(texts)

    def rows_at(positions):
        asked.append(positions.tolist())
        return arr.take(pa.array(positions)), None

    found = near_dedup.near_duplicates_in_slices(
        (arr.slice(start, 40) for start in range(0, len(texts), 40)), rows_at
    )
    assert found.pairs.tolist() == [[3, 300], [50, 301], [120, 302], [200, 303], [299, 304]]
    assert asked == [[3, 50, 120, 200, 299, 300, 301, 302, 303, 304]]
    assert near_dedup.near_duplicates(texts).pairs.tolist() == found.pairs.tolist()
