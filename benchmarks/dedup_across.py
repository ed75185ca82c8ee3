"""The pass across sources compares only rows of different sources (issue 26): before, it
compared every candidate pair again, each source's own pairs included, which the pass
within that source had already decided.

    .venv/bin/python benchmarks/dedup_across.py             # 2 sources x 600 passages x 8 questions
    .venv/bin/python benchmarks/dedup_across.py --passages 100

The corpus is MultiRC-shaped: each source puts several questions on one passage (rows that
share most of their shingles, so LSH makes them candidates, but that differ in the question),
and the second source copies a few of the first's rows. Both passes run dedup() on the same
within-deduplicated rows; prints one JSON object: candidate comparisons, seconds, and whether
the drops are the same.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import time

import numpy as np
import pyarrow as pa

from multilora_pipeline.data_specs.record import make_record, records_to_table
from multilora_pipeline.data_specs.schema import DedupSpec
from multilora_pipeline.tasks.data.dedup import dedup

WORDS = [f"w{i}" for i in range(3000)]


def source(name: str, passages: int, questions: int, seed: int, copy_of: list | None = None):
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(passages):
        passage = " ".join(rng.choice(WORDS, 120))
        for _ in range(questions):
            question = " ".join(rng.choice(WORDS, 9))
            rows.append(
                make_record(
                    source=name,
                    task="superglue_multirc",
                    category="nlu",
                    prompt=f"{passage}\nQuestion: {question}\nAnswer:",
                    response=" yes",
                    choices=["no", "yes"],
                    label=1,
                    meta={"row": len(rows) + 1, "query": question},
                )
            )
    return rows + (copy_of or [])


class Comparisons(logging.Handler):
    """Sums the comparisons near dedup logs."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def emit(self, record):
        found = re.search(r"(\d+) comparisons", record.getMessage())
        self.count += int(found.group(1)) if found else 0


def run(table: pa.Table, across: bool) -> dict:
    counter = Comparisons()
    log = logging.getLogger("mlora.near_dedup")
    log.addHandler(counter)
    log.setLevel(logging.INFO)
    started = time.perf_counter()
    result = dedup(table, DedupSpec(), across=across)
    seconds = time.perf_counter() - started
    log.removeHandler(counter)
    drops = sorted(
        zip(*(result.drops.column(c).to_pylist() for c in ("id", "duplicate_of")), strict=True)
    )
    return {"comparisons": counter.count, "seconds": round(seconds, 2), "drops": drops}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passages", type=int, default=600)
    parser.add_argument("--questions", type=int, default=8)
    args = parser.parse_args()
    a = source("a", args.passages, args.questions, seed=1)
    # Near copies of every 20th row of "a" in "b": one word of the passage changed.
    copies = [
        make_record(
            source="b",
            task=r["task"],
            category=r["category"],
            prompt=r["prompt"].replace(r["prompt"].split()[5], "CHANGED", 1),
            response=r["response"],
            choices=r["choices"],
            label=r["label"],
            meta={"row": i, "query": json.loads(r["meta"])["query"]},
        )
        for i, r in enumerate(a[:: max(1, len(a) // 20)])
    ]
    b = source("b", args.passages, args.questions, seed=2, copy_of=copies)
    # What the pass across sources sees: each source deduplicated within itself.
    within = [dedup(records_to_table(rows), DedupSpec()) for rows in (a, b)]
    table = pa.concat_tables([w.kept for w in within])
    before, after = run(table, across=False), run(table, across=True)
    print(
        json.dumps(
            {
                "rows": table.num_rows,
                "before": {k: v for k, v in before.items() if k != "drops"},
                "after": {k: v for k, v in after.items() if k != "drops"},
                "comparisons_ratio": round(before["comparisons"] / max(after["comparisons"], 1), 1),
                "speedup": round(before["seconds"] / max(after["seconds"], 1e-9), 2),
                "same_drops": before["drops"] == after["drops"],
                "drops": len(after["drops"]),
            }
        )
    )


if __name__ == "__main__":
    main()
