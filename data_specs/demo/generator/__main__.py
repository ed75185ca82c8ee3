"""Write the bundled demo data (deterministic: same seed, same bytes).

    .venv/bin/python data_specs/demo/generator             # rewrites the files in data_specs/demo
    .venv/bin/python data_specs/demo/generator --out DIR   # writes them to DIR instead

A folder of plain modules run as a script, not an installed package: it makes the data and
stays out of the wheel, which ships only the data (tests/data_specs/test_demo_data.py
checks both: regenerating gives the committed bytes, and no generator file is packaged).

Four training sources in the formats real datasets use, three evaluation
files, and PLANTED.json: the rows planted for dedup and decontamination to
find. Row numbers there are file rows as fetch counts them (jsonl: line,
json: element, headerless csv: record), all 1-based.

- instructions.json  Alpaca JSON list (instruction / input / output)
- boolq_train.jsonl  SuperGLUE BoolQ (question / passage / idx / label as bool),
                     reading comprehension over invented towns, people and firms
- knowledge_train.csv  MMLU CSV without header (question, A, B, C, D, answer)
- math_train.jsonl   GSM8K (question / answer with <<calc>> steps and "#### N")
- knowledge_eval.csv, boolq_eval.jsonl, math_eval.jsonl: the evaluation suites

Planted: exact duplicates, duplicates differing only in case/spacing/punctuation,
near duplicates (word 5-gram Jaccard 0.80-0.95 on prompt + response) within a
source and across sources (instruction rows that restate math rows), and
training rows that copy evaluation items. `check()` verifies that nothing
else overlaps, so the planted list is the whole truth.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from pathlib import Path

from assemble import build
from checks import check
from settings import SEED

DEMO = Path(__file__).resolve().parents[1]


def dump_jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def dump_csv(rows: list[list]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def main(out: Path) -> None:
    files, planted = build()
    stats, incidental = check(files, planted)
    outputs = {
        "instructions.json": json.dumps(files["instructions"], indent=1, ensure_ascii=False) + "\n",
        "boolq_train.jsonl": dump_jsonl(files["boolq"]),
        "knowledge_train.csv": dump_csv(files["knowledge"]),
        "math_train.jsonl": dump_jsonl(files["math"]),
        "knowledge_eval.csv": dump_csv(files["knowledge_eval"]),
        "boolq_eval.jsonl": dump_jsonl(files["boolq_eval"]),
        "math_eval.jsonl": dump_jsonl(files["math_eval"]),
    }
    file_of = {
        "instructions": "instructions.json",
        "boolq": "boolq_train.jsonl",
        "knowledge": "knowledge_train.csv",
        "math": "math_train.jsonl",
        "knowledge_eval": "knowledge_eval.csv",
        "boolq_eval": "boolq_eval.jsonl",
        "math_eval": "math_eval.jsonl",
    }
    for p in [*planted, *incidental]:
        p["file"] = file_of[p["source"]]
        p["of"]["file"] = file_of[p["of"]["file"]]
    record = {
        "seed": SEED,
        "generator": "generator/",
        "rows": {file_of[k]: len(v) for k, v in files.items()},
        "checks": stats,
        "planted": planted,
        "incidental_leaks_about": "not planted: training rows whose templated rationale shares "
        "a 13-gram with an eval item's gold answer (same numbers); decontamination removes them "
        "too, because it matches the eval item's full text",
        "incidental_leaks": incidental,
    }
    outputs["PLANTED.json"] = json.dumps(record, indent=1) + "\n"
    for name, text in outputs.items():
        tmp = out / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(out / name)
    total = sum(len(t.encode()) for t in outputs.values())
    print(json.dumps({"bytes": total, **record["rows"], **stats, "planted": len(planted)}))


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Write the bundled demo data.")
    parser.add_argument(
        "--out", type=Path, default=DEMO, help="folder to write (default: %(default)s)"
    )
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    main(args.out)
