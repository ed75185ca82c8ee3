"""Data stages at scale: a synthetic Alpaca-style source of N rows through fetch, normalise,
exact dedup (within the source), decontamination and mixing, with peak memory measured in this
process and the drops matched against what was planted.

    .venv/bin/python benchmarks/data_scale.py --rows 10000000        # issue 28: peak < 2 GB
    .venv/bin/python benchmarks/data_scale.py --rows 10000000 --near # and near dedup
    .venv/bin/python benchmarks/data_scale.py --rows 200000           # quick look
    .venv/bin/python benchmarks/data_scale.py --source-format jsonl   # fetch parses JSON lines

The source: instruction (6-20 words), input (empty for 60% of rows, else 5-40 words) and
output (10-80 words) over a 30k-word Zipf vocabulary, about the size of real Alpaca rows;
5% of the rows repeat an earlier row with changed case and punctuation (exact duplicates
after normalisation). Two evaluation suites of 1,000 items draw their words uniformly from the
same vocabulary: "math" (gsm8k template, 20-40-word questions) and "instructions" (alpaca
template, 6-9-word instructions). Each 100k-row batch plants 50 leaks of each kind, each from
its own eval item, until the items run out: a math question copied into an instruction
(13-gram), an eval instruction in upper case with a "?" (exact), and one with an extra word
(near, Jaccard >= 0.8). The source is written as Parquet (or JSON lines) in 100k-row batches
before anything is measured. The stages are the pipeline's own plain functions
(tasks/data/stages.py), so the figures include their Parquet writes. With --near, 1% of the
rows also repeat an earlier row of 30+ words with its first word replaced and a word
appended (near copies, word 5-gram Jaccard >= 0.89) and the dedup stage runs near dedup
after the exact pass; without, the source is the same as in earlier runs. Peak memory: the
process's max RSS (getrusage) and, per stage, the highest RSS a 20 ms sampler saw. Recall and precision: the exact- (and near-) dedup drops
against the planted copies, the decontamination drops against the planted leaks, by source
row. Prints one JSON object; `decon_drops_sha256` identifies the removed rows, so two runs
(before and after a change) can be checked for the same result.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from multilora_pipeline.data_specs.schema import parse_spec
from multilora_pipeline.tasks.data.fetch import fetch
from multilora_pipeline.tasks.data.stages import (
    decontaminate_stage,
    dedup_stage,
    mixture_stage,
    normalise_stage,
    read_drops,
)
from multilora_pipeline.tasks.workspace import Workspace

BATCH = 100_000  # rows generated and written at a time: generation stays small in memory
VOCAB = 30_000
DUPLICATE_SHARE = 0.05
NEAR_SHARE = 0.01  # with --near: rows that repeat an earlier row, two words changed
NEAR_MIN_WORDS = 30  # near copies are made of rows this long (instruction + output)
POOL = 5_000  # the first rows of a batch: later batches duplicate from them, leaks never land here
EVAL_ITEMS = 1_000  # per suite: about the size of a real test split (GSM8K has 1,319)
TARGET_PEAK_MB = 2048  # issue 28, at 10M rows
LEAKS_PER_BATCH = 50  # of each kind; every leak uses its own eval item (no leak is a duplicate)


def rss_mb() -> float:
    """Current resident set size (Linux /proc)."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize() / 2**20


class Sampler:
    """Highest RSS seen per named stage (a background thread polls every 20 ms)."""

    def __init__(self):
        self.stage, self.peaks, self._stop = "start", {}, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.02):
            self.note()

    def note(self):
        self.peaks[self.stage] = max(self.peaks.get(self.stage, 0.0), rss_mb())

    def enter(self, stage: str):
        self.note()
        self.stage = stage
        self.note()

    def stop(self):
        self._stop.set()
        self._thread.join()
        self.note()


def words_column(
    rng, vocab: pa.Array, n: int, lo: int, hi: int, *, uniform: bool = False
) -> pa.Array:
    """n texts of lo..hi words, built without per-row Python: Zipf-distributed like real text,
    or uniform (eval items: their 13-grams then never occur in the source by chance)."""
    lengths = rng.integers(lo, hi + 1, n)
    total = int(lengths.sum())
    ranks = (
        rng.integers(0, VOCAB, total) if uniform else np.minimum(rng.zipf(1.2, total), VOCAB) - 1
    )
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    lists = pa.ListArray.from_arrays(pa.array(offsets), vocab.take(pa.array(ranks)))
    return pc.binary_join(lists, " ")


def make_suites(vocab: pa.Array, seed: int) -> dict[str, pa.Table]:
    """The two eval suites' raw rows (their own random stream: the source stays as it was)."""
    rng = np.random.default_rng(seed + 1)
    answers = pc.binary_join_element_wise(
        words_column(rng, vocab, EVAL_ITEMS, 10, 30, uniform=True),
        pa.array([f"#### {i}" for i in range(EVAL_ITEMS)]),
        "\n",
    )
    return {
        "math": pa.table(
            {
                "question": words_column(rng, vocab, EVAL_ITEMS, 20, 40, uniform=True),
                "answer": answers,
            }
        ),
        "instructions": pa.table(
            {
                "instruction": words_column(rng, vocab, EVAL_ITEMS, 6, 9, uniform=True),
                "input": pa.array([""] * EVAL_ITEMS),
                "output": words_column(rng, vocab, EVAL_ITEMS, 15, 30, uniform=True),
            }
        ),
    }


def plant_leaks(batch: pa.Table, suites: dict[str, pa.Table], first_item: int) -> pa.Table:
    """Rows POOL.. of the batch become leaks of the eval items first_item..: a math question
    in capitals (13-gram), an eval instruction in capitals with "?" (exact), the same with an
    extra word (near: Jaccard (k + 2) / (k + 3) >= 0.8 for k >= 2 instruction words)."""
    items = pa.array(range(first_item, first_item + LEAKS_PER_BATCH))
    question = suites["math"]["question"].take(items)
    instruction = suites["instructions"]["instruction"].take(items)
    leaked = pa.concat_arrays(
        [
            pc.utf8_upper(question).combine_chunks(),
            pc.binary_join_element_wise(pc.utf8_upper(instruction), "?", "").combine_chunks(),
            pc.binary_join_element_wise(instruction, "extra", " ").combine_chunks(),
        ]
    )
    m = len(leaked)
    leaks = pa.table(
        {
            "instruction": leaked,
            "input": pa.array([""] * m),
            "output": batch["output"].slice(POOL, m),
        },
        schema=batch.schema,
    )
    return pa.concat_tables([batch.slice(0, POOL), leaks, batch.slice(POOL + m)])


def word_count(texts: pa.ChunkedArray) -> pa.Array:
    return pc.list_value_length(pc.utf8_split_whitespace(texts))


def near_copies(rows: pa.Table) -> pa.Table:
    """Each row with its instruction's first word replaced and a word appended to its output:
    of its S word 5-grams one changes and one is added, Jaccard (S - 1) / (S + 2); rows of
    NEAR_MIN_WORDS+ words (S >= 26) give >= 0.89, over the 0.8 threshold (a 16-word row
    would give 11/14 = 0.79, under it); not an exact duplicate."""
    instruction = pc.replace_substring_regex(rows["instruction"], r"^\S+", "altered")
    output = pc.binary_join_element_wise(rows["output"], "again", " ")
    return pa.table(
        {"instruction": instruction, "input": rows["input"], "output": output},
        schema=rows.schema,
    )


def write_source(
    path: Path, rows: int, suites: dict[str, pa.Table], seed: int = 0, near: bool = False
) -> dict:
    """The synthetic source as Parquet, in batches; returns what was planted (`near`: near
    copies too, NEAR_SHARE of each batch; without, the rows are those of earlier runs)."""
    rng = np.random.default_rng(seed)
    vocab = pa.array([f"w{i}" for i in range(VOCAB)])
    schema = pa.schema(
        [("instruction", pa.string()), ("input", pa.string()), ("output", pa.string())]
    )
    planted, leaks = 0, 0
    duplicate_rows, leak_rows, near_rows = [], [], []  # 0-based source rows of what was planted
    with pq.ParquetWriter(path, schema) as writer:
        kept: pa.Table | None = None  # a small pool of earlier rows to duplicate from
        for start in range(0, rows, BATCH):
            n = min(BATCH, rows - start)
            given = words_column(rng, vocab, n, 5, 40)
            empty = pa.array(rng.random(n) < 0.6)
            batch = pa.table(
                {
                    "instruction": words_column(rng, vocab, n, 6, 20),
                    "input": pc.if_else(empty, "", given),
                    "output": words_column(rng, vocab, n, 10, 80),
                },
                schema=schema,
            )
            k = int(n * DUPLICATE_SHARE) if kept is not None else 0
            k_near = int(n * NEAR_SHARE) if kept is not None and near else 0
            room = n - k - k_near
            if leaks + LEAKS_PER_BATCH <= EVAL_ITEMS and POOL + 3 * LEAKS_PER_BATCH <= room:
                batch = plant_leaks(batch, suites, leaks)
                leaks += LEAKS_PER_BATCH
                leak_rows.append(start + POOL + np.arange(3 * LEAKS_PER_BATCH))
            if kept is not None:
                dup = kept.take(pa.array(rng.integers(0, kept.num_rows, k)))
                dup = pa.table(  # same words, different case and punctuation
                    {
                        "instruction": pc.binary_join_element_wise(
                            pc.utf8_upper(dup["instruction"]), "?", ""
                        ),
                        "input": dup["input"],
                        "output": pc.binary_join_element_wise(dup["output"], " !", ""),
                    },
                    schema=schema,
                )
                # distinct rows: two near copies of one row would be exact copies of each other
                # and long enough rows that the copy's Jaccard is over the threshold
                words = pc.add(word_count(kept["instruction"]), word_count(kept["output"]))
                long_rows = np.flatnonzero(words.to_numpy() >= NEAR_MIN_WORDS)
                picked = long_rows[rng.choice(len(long_rows), k_near, replace=False)]
                similar = near_copies(kept.take(pa.array(picked)))
                batch = pa.concat_tables([batch.slice(0, room), similar, dup])
                planted += k
                duplicate_rows.append(start + n - k + np.arange(k))
                near_rows.append(start + room + np.arange(k_near))
            writer.write_table(batch)
            kept = batch.slice(0, POOL)
    return {
        "rows": rows,
        "planted_duplicates": planted,
        "planted_leaks": {"ngram": leaks, "exact": leaks, "near": leaks},
        "duplicate_rows": np.concatenate(duplicate_rows or [np.zeros(0, np.int64)]),
        "leak_rows": np.concatenate(leak_rows or [np.zeros(0, np.int64)]),
        "near_rows": np.concatenate(near_rows or [np.zeros(0, np.int64)]),
        "bytes": path.stat().st_size,
    }


def recall_precision(drops: pa.Table, planted_rows: np.ndarray) -> dict:
    """How many planted rows were dropped (recall) and how many drops were planted
    (precision), matched by source row (normalise numbers rows from 1)."""
    dropped = drops.column("row").to_numpy(zero_copy_only=False) - 1
    hit = np.intersect1d(dropped, planted_rows).size
    return {
        "recall": round(hit / max(len(planted_rows), 1), 6),
        "precision": round(hit / max(len(dropped), 1), 6),
    }


def as_jsonl(source: Path) -> Path:
    """The same rows as JSON lines (one object per line), converted batch by batch."""
    out = source.with_suffix(".jsonl")
    with out.open("w", encoding="utf-8") as fh:
        for batch in pq.ParquetFile(source).iter_batches(batch_size=BATCH):
            # pandas ends every batch with a line break: no blank lines between batches
            batch.to_pandas().to_json(fh, orient="records", lines=True, force_ascii=False)
    return out


def write_suites(root: Path, suites: dict[str, pa.Table]) -> dict[str, Path]:
    """Each suite as a JSON lines file next to the source."""
    paths = {}
    for name, table in suites.items():
        paths[name] = root / f"{name}.jsonl"
        lines = (json.dumps(row) for row in table.to_pylist())
        paths[name].write_text("\n".join(lines) + "\n", encoding="utf-8")
    return paths


def spec_for(source: Path, suites: dict[str, Path], near: bool = False):
    data = {
        "name": "scale",
        "sources": [
            {
                "name": "synthetic",
                "path": str(source),
                "template": "alpaca",
                "category": "instruction",
            }
        ],
        "eval_suites": [
            {
                "name": "math",
                "path": str(suites["math"]),
                "template": "gsm8k",
                "kind": "generation",
                "category": "math",
            },
            {
                "name": "instructions",
                "path": str(suites["instructions"]),
                "template": "alpaca",
                "kind": "generation",
                "category": "instruction",
            },
        ],
        # prompt + response key only: one exact pass (and with --near one near pass)
        "dedup": {"exact": True, "key_by_category": {}, "near": {"enabled": near}},
        "decontamination": {"enabled": True},
        "mixture": {"strategy": "proportional", "validation_fraction": 0.01},
        "base_model": {"tiny": {}},
        "arms": [{"name": "lora", "kind": "lora"}],
    }
    return parse_spec(data, source.with_name("spec.yaml"))


def drops_digest(drops: pa.Table) -> str:
    """sha256 of the removed rows (id, suite, eval item, kind, similarity), order-independent."""
    rows = sorted(json.dumps(r, sort_keys=True) for r in drops.to_pylist())
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--source-format", choices=("parquet", "jsonl"), default="parquet")
    parser.add_argument("--dir", help="working folder (default: a temp folder)")
    parser.add_argument(
        "--near", action="store_true", help="plant near copies and run near dedup as well"
    )
    args = parser.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="mlora-scale-"))
    root.mkdir(parents=True, exist_ok=True)

    t0 = time.perf_counter()
    suites = make_suites(pa.array([f"w{i}" for i in range(VOCAB)]), seed=0)
    made = write_source(root / "synthetic.parquet", args.rows, suites, near=args.near)
    source = root / "synthetic.parquet"
    if args.source_format == "jsonl":
        source = as_jsonl(source)
    generate_s = time.perf_counter() - t0
    spec = spec_for(source, write_suites(root, suites), near=args.near)
    item = spec.sources[0]
    ws = Workspace.resolve(root / "workspace").ensure()
    sampler = Sampler()
    baseline_mb = rss_mb()
    times, cpu = {}, {}

    def timed(stage, fn):
        sampler.enter(stage)
        start, cpu_start = time.perf_counter(), time.process_time()
        out = fn()
        times[stage] = round(time.perf_counter() - start, 2)
        cpu[stage] = round(time.process_time() - cpu_start, 2)
        print(
            f"{stage}: {times[stage]:.1f}s, peak so far {sampler.peaks[stage]:.0f} MB",
            file=sys.stderr,
        )
        return out

    def prepare_suites():
        out = {}
        for suite in spec.eval_suites:
            out[suite.name] = normalise_stage(ws, fetch(suite, suite.name, root, ws), suite)
        return out

    snap = timed("fetch", lambda: fetch(item, item.name, root, ws))
    normalised = timed("normalise", lambda: normalise_stage(ws, snap, item))
    deduped = timed(
        "exact_and_near_dedup" if args.near else "exact_dedup",
        lambda: dedup_stage(ws, "dedup_source", [normalised], spec.dedup, {}, [item.name]),
    )
    suite_outputs = timed("suites", prepare_suites)
    clean = timed("decontaminate", lambda: decontaminate_stage(ws, deduped, suite_outputs, spec))
    mixed = timed("mix", lambda: mixture_stage(ws, clean, spec))
    sampler.stop()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    dedup_drops = read_drops(deduped)
    exact_drops = dedup_drops.filter(pc.equal(dedup_drops["kind"], "exact"))
    near_drops = dedup_drops.filter(pc.equal(dedup_drops["kind"], "near"))
    drops = exact_drops.num_rows
    decon = read_drops(clean)
    total_s = sum(times.values())
    print(
        json.dumps(
            {
                "rows": args.rows,
                "source_format": args.source_format,
                "source_mb": round(source.stat().st_size / 2**20),
                "planted_duplicates": made["planted_duplicates"],
                "exact_drops": drops,
                "planted_leaks": made["planted_leaks"],
                "decon_drops": dict(sorted(Counter(decon["kind"].to_pylist()).items())),
                "decon_drops_sha256": drops_digest(decon),
                "exact_dedup_vs_planted": recall_precision(exact_drops, made["duplicate_rows"]),
                **(
                    {
                        "planted_near_copies": len(made["near_rows"]),
                        "near_drops": near_drops.num_rows,
                        "near_dedup_vs_planted": recall_precision(near_drops, made["near_rows"]),
                    }
                    if args.near
                    else {}
                ),
                "decontamination_vs_planted": recall_precision(decon, made["leak_rows"]),
                "rows_in_mixture": mixed.rows,
                "seconds": {
                    "generate_source": round(generate_s, 1),
                    **times,
                    "stages_total": round(total_s, 1),
                },
                # CPU seconds of all threads: steadier than wall time when others share the cores
                "cpu_seconds": cpu,
                "rows_per_s": round(args.rows / total_s),
                "load_average_1min": round(os.getloadavg()[0], 1),
                "rss_mb_before_stages": round(baseline_mb),
                "peak_rss_mb_by_stage": {k: round(v) for k, v in sampler.peaks.items()},
                "peak_rss_mb": round(peak_mb),
                "target_peak_mb": TARGET_PEAK_MB,
                "met": peak_mb < TARGET_PEAK_MB,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
