"""The data stages on real public data and on datasets in the layouts their authors
publish (../shared/data/real and ../shared/data/formats), and what they loaded, dropped and
why, shown so a person can check every decision.

    .venv/bin/python benchmarks/real_data_report.py                     # default data folders
    .venv/bin/python benchmarks/real_data_report.py --data DIR --formats DIR --examples 5

A spec is written to a temp folder; every file is read where it is and as it is published
(no conversion):

    training   alpaca_en_demo (999, priority 1) · alpaca_200 (first 200 of the original Alpaca)
               rte_train (2,490) · boolq (BoolQ val, 3,270: the only BoolQ split here)
               mmlu_dev (57 headerless per-subject CSVs: a glob, the subject from each name)
               flan_cot_gsm8k (headerless TSV, declared columns, answer from the rationale)
               self_instruct (nested: instances exploded) · dolly_alpaca (pre-templated,
               a literal end marker) · codealpaca (C / C++ / C# versions of one task)
               wic (labels as strings) · arc_challenge (nested question and choices)
    evaluation rte_val (277) · mmlu_val (1,531, a glob) · gsm8k_test (1,319, generation)
               multirc (SuperGLUE's nested passage > questions > answers)

It runs the data flow (Prefect, threads), then prints the per-source table (with the rows
skipped as bad and each suite's repeated items), drop counts per source pair and per suite,
and for each kind of drop a few examples: the dropped row next to the row it duplicates (or
the eval item it leaks, with the matched n-gram), with the similarity. Then the held-out
checks (write_heldout_spec): every decontamination drop between disjoint halves of GSM8K
and of MMLU, with its evidence and its hand label (decontamination_labels.json), and the
precision. The last line is a JSON summary. Nothing is written outside the temp folder.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import tempfile
import textwrap
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "real"
DEFAULT_FORMATS = REPO.parent / "shared" / "data" / "formats"
WIDTH = 100


def write_spec(data: Path, formats: Path, work: Path) -> Path:
    spec = {
        "name": "real-data-report",
        "sources": [
            {
                "name": "alpaca_en_demo",
                "path": str(data / "alpaca_en_demo/alpaca_en_demo.json"),
                "template": "alpaca",
                "category": "instruction",
                "priority": 1,
            },
            {
                "name": "alpaca_200",
                "path": str(data / "alpaca_original_first200/alpaca_200.json"),
                "template": "alpaca",
                "category": "instruction",
            },
            {
                "name": "rte_train",
                "path": str(data / "superglue_rte/train.jsonl"),
                "template": "superglue_rte",
                "category": "nlu",
            },
            {
                "name": "boolq",
                "path": str(data / "superglue_boolq/val.jsonl"),
                "template": "superglue_boolq",
                "category": "nlu",
            },
            {
                "name": "mmlu_dev",
                "path": str(data / "mmlu/dev/*_dev.csv"),
                "file_fields": "(?P<subject>.+)_dev",
                "template": "mmlu",
                "category": "knowledge",
            },
            {
                "name": "flan_cot_gsm8k",
                "path": str(formats / "flan_cot_gsm8k_sample.tsv"),
                "columns": ["question", "final_answer", "rationale"],
                "template": "gsm8k",
                "category": "math",
            },
            {
                "name": "self_instruct",
                "path": str(formats / "self_instruct_seed_tasks_sample.jsonl"),
                "explode": ["instances"],
                "fields": {"input": "instances.input", "output": "instances.output"},
                "template": "alpaca",
                "category": "instruction",
            },
            {
                "name": "dolly_alpaca",
                "path": str(formats / "dolly_alpaca_prompt_sample.jsonl"),
                "template": "pretemplated",
                "fields": {"response": "answer"},
                "end_marker": "###eos_token###",
                "category": "instruction",
            },
            {
                "name": "codealpaca",
                "path": str(formats / "code_instructions_sample.json"),
                "template": "alpaca",
                "category": "instruction",
            },
            {
                "name": "wic",
                "path": str(formats / "superglue_wic_sample.jsonl"),
                "template": "superglue_wic",
                "category": "nlu",
            },
            {
                "name": "arc_challenge",
                "path": str(formats / "arc_challenge_sample.jsonl"),
                "template": "arc",
                "category": "knowledge",
            },
        ],
        "eval_suites": [
            {
                "name": "rte_val",
                "path": str(data / "superglue_rte/val.jsonl"),
                "template": "superglue_rte",
                "category": "nlu",
            },
            {
                "name": "mmlu_val",
                "path": str(data / "mmlu/val/*_val.csv"),
                "file_fields": "(?P<subject>.+)_val",
                "template": "mmlu",
                "category": "knowledge",
            },
            {
                "name": "multirc",
                "path": str(formats / "superglue_multirc_sample.jsonl"),
                "template": "superglue_multirc",
                "category": "nlu",
            },
            {
                "name": "gsm8k_test",
                "path": str(data / "gsm8k/test.jsonl"),
                "template": "gsm8k",
                "kind": "generation",
                "category": "math",
            },
        ],
        "mixture": {"strategy": "proportional", "validation_fraction": 0.05},
    }
    path = work / "spec.yaml"
    path.write_text(json.dumps(spec, indent=1))  # JSON is YAML
    return path


def write_heldout_spec(data: Path, work: Path) -> Path:
    """The held-out style checks: one published split cut into disjoint halves, one half
    trained on and the other evaluated. Every drop there is a claim that two different
    published items overlap, which a person can check (HELDOUT_LABELS):

        gsm8k   test rows 0-659 (training)  vs rows 660-1318 (suite, generation)
        mmlu    per subject, dev and the first half of val (training) vs the second half
    """
    folder = work / "heldout"
    (folder / "mmlu_train").mkdir(parents=True)
    (folder / "mmlu_eval").mkdir()
    lines = (data / "gsm8k/test.jsonl").read_bytes().splitlines(keepends=True)
    half = len(lines) // 2
    (folder / "gsm8k_a.jsonl").write_bytes(b"".join(lines[:half]))
    (folder / "gsm8k_b.jsonl").write_bytes(b"".join(lines[half:]))
    for val in sorted((data / "mmlu/val").glob("*_val.csv")):
        subject = val.name.removesuffix("_val.csv")
        dev = read_csv_rows(data / "mmlu/dev" / f"{subject}_dev.csv")
        rows = read_csv_rows(val)
        cut = len(rows) // 2
        write_csv_rows(folder / "mmlu_train" / f"{subject}_x.csv", dev + rows[:cut])
        write_csv_rows(folder / "mmlu_eval" / f"{subject}_x.csv", rows[cut:])
    spec = {
        "name": "real-data-heldout",
        "sources": [
            {"name": "gsm8k_a", "path": str(folder / "gsm8k_a.jsonl"), "template": "gsm8k"},
            {
                "name": "mmlu_a",
                "path": str(folder / "mmlu_train/*_x.csv"),
                "file_fields": "(?P<subject>.+)_x",
                "template": "mmlu",
            },
        ],
        "eval_suites": [
            {
                "name": "gsm8k_b",
                "path": str(folder / "gsm8k_b.jsonl"),
                "template": "gsm8k",
                "kind": "generation",
            },
            {
                "name": "mmlu_b",
                "path": str(folder / "mmlu_eval/*_x.csv"),
                "file_fields": "(?P<subject>.+)_x",
                "template": "mmlu",
            },
        ],
        "dedup": {"exact": False, "key_by_category": {}, "near": {"enabled": False}},
        "mixture": {"strategy": "proportional", "validation_fraction": 0.0},
    }
    path = work / "heldout.yaml"
    path.write_text(json.dumps(spec, indent=1))
    return path


LABELS = Path(__file__).with_name("decontamination_labels.json")


def drop_key(d: dict, records: dict[str, dict]) -> str:
    """'source:subject:row>suite:subject:row', the key of a drop in LABELS."""

    def where(record: dict, name: str, row) -> str:
        return f"{name}:{json.loads(record['meta']).get('subject') or ''}:{row}"

    return (
        where(records[d["id"]], d["source"], d["row"])
        + ">"
        + where(records[d["eval_id"]], d["suite"], d["eval_row"])
    )


def heldout_report(data: Path, work: Path) -> dict:
    """Run the held-out checks, print every drop with its evidence and label, and return
    the counts and the precision (drops labelled leak or passage, over all drops)."""
    from multilora_pipeline.flows.data import data_flow
    from multilora_pipeline.tasks.catalog import Catalog
    from multilora_pipeline.tasks.workspace import Workspace

    ws = Workspace.resolve(work / "heldout_workspace")
    data_flow(str(write_heldout_spec(data, work)), str(ws.root))
    records = records_by_id(ws.root)
    drops = Catalog(ws.catalog_path).query("SELECT * FROM decontamination_drops ORDER BY id")
    labels = json.loads(LABELS.read_text())["labels"]
    print("=" * WIDTH)
    print(f"held-out checks (write_heldout_spec): {len(drops)} decontamination drops")
    verdicts = Counter()
    for d in sorted(drops, key=lambda d: drop_key(d, records)):
        key = drop_key(d, records)
        verdict, why = labels.get(key, ("unlabelled", "not yet checked by a person"))
        verdicts[verdict] += 1
        print("-" * WIDTH)
        print(f"{key}  {d['kind']}, similarity {d['similarity']:.3f}: {verdict.upper()} ({why})")
        if d.get("evidence"):
            print(f"n-gram: {d['evidence']!r}")
        print(show(records[d["id"]], "DROPPED", d["row"]))
        print(show(records[d["eval_id"]], "EVAL", d["eval_row"]))
    right = verdicts["leak"] + verdicts["passage"]
    return {
        "drops": len(drops),
        **{k: verdicts[k] for k in ("leak", "passage", "not", "unlabelled")},
        "precision": round(right / len(drops), 3) if drops else None,
    }


def read_csv_rows(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def write_csv_rows(path: Path, rows: list[list[str]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        csv.writer(f).writerows(rows)


def records_by_id(workspace: Path) -> dict[str, dict]:
    """Every normalised record of this run (training rows and eval items) by id."""
    import pyarrow.parquet as pq

    out = {}
    for path in sorted((workspace / "data" / "normalise").glob("*/records.parquet")):
        for r in pq.read_table(path).to_pylist():
            out[r["id"]] = r
    return out


def show(record: dict, label: str, row: int | None) -> str:
    """One record as a labelled, wrapped block (prompt ||| response)."""
    subject = json.loads(record["meta"]).get("subject")
    where = f"{record['source']} row {row}" + (f" [{subject}]" if subject else "")
    text = " ".join((record["prompt"].strip() + " ||| " + record["response"].strip()).split())
    body = textwrap.shorten(text, 420, placeholder=" ...")
    return f"{label}: {where}\n" + textwrap.indent(textwrap.fill(body, WIDTH - 6), "      ")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(DEFAULT_DATA))
    parser.add_argument("--formats", default=str(DEFAULT_FORMATS))
    parser.add_argument("--examples", type=int, default=4, help="examples per kind of drop")
    args = parser.parse_args()
    for key, value in {
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    }.items():
        os.environ.setdefault(key, value)
    work = Path(tempfile.mkdtemp(prefix="mlora-real-"))
    from multilora_pipeline.tasks.workspace import Workspace

    ws = Workspace.resolve(work / "workspace").activate()  # before Prefect is imported
    spec_path = write_spec(Path(args.data), Path(args.formats), work)

    from multilora_pipeline.flows.data import data_flow, format_source_table
    from multilora_pipeline.tasks.catalog import Catalog

    outputs = data_flow(str(spec_path), str(ws.root))
    records = records_by_id(ws.root)
    catalog = Catalog(ws.catalog_path)
    dedup_drops = catalog.query("SELECT * FROM dedup_drops ORDER BY source, row")
    decon_drops = catalog.query("SELECT * FROM decontamination_drops ORDER BY source, row")

    print("=" * WIDTH)
    print(format_source_table(outputs))
    print("=" * WIDTH)
    pairs = Counter((d["source"], d["duplicate_source"], d["kind"]) for d in dedup_drops)
    print("dedup drops per (dropped from, copy kept in, kind):")
    for (a, b, kind), n in sorted(pairs.items()):
        print(f"  {a:>15} -> {b:<15} {kind:<6} {n}")
    suites = Counter((d["source"], d["suite"], d["kind"]) for d in decon_drops)
    print("decontamination drops per (source, suite, kind):")
    for (a, b, kind), n in sorted(suites.items()):
        print(f"  {a:>15} ~ {b:<15} {kind:<6} {n}")

    def group(d: dict, across_key: str) -> str:
        where = "within" if d["source"] == d[across_key] else "across"
        return f"{d['kind']} duplicate, {where} sources"

    by_kind: dict[str, list] = {}
    for d in dedup_drops:
        by_kind.setdefault(group(d, "duplicate_source"), []).append(
            (d, records[d["duplicate_of"]], "KEPT", d["duplicate_row"])
        )
    for d in decon_drops:
        item = records[d["eval_id"]]
        queries = [json.loads(r["meta"]).get("query") for r in (records[d["id"]], item)]
        share = ""
        if None not in queries:  # passage tasks: is it the same question, or only the passage?
            same = " ".join(queries[0].lower().split()) == " ".join(queries[1].lower().split())
            share = ", same question" if same else ", shared passage only"
        by_kind.setdefault(f"contamination ({d['kind']}{share}) vs {d['suite']}", []).append(
            (d, item, "EVAL", json.loads(item["meta"]).get("row"))
        )
    for kind, items in sorted(by_kind.items()):
        print("=" * WIDTH)
        print(f"{kind}: {len(items)} rows; {min(args.examples, len(items))} shown")
        step = max(1, len(items) // max(args.examples, 1))  # spread over the sources
        for d, other, label, other_row in items[::step][: args.examples]:
            print("-" * WIDTH)
            print(
                f"similarity {d['similarity']:.3f}"
                + (f"; n-gram: {d['evidence']!r}" if d.get("evidence") else "")
            )
            print(show(records[d["id"]], "DROPPED", d["row"]))
            print(show(other, label, other_row))
    invalid = catalog.query("SELECT * FROM invalid_drops ORDER BY source, row")
    for d in invalid[: args.examples]:
        print(f"skipped as bad: {d['source']} row {d['row']}, field {d['field']}: {d['reason']}")
    summary = {
        "mixture_id": outputs.mixture_id,
        "suites": outputs.suite_table,
        "rows_skipped_as_bad": len(invalid),
        "rows_in": sum(r["rows_in"] for r in outputs.source_table),
        "exact_drops": sum(r["exact_drops"] for r in outputs.source_table),
        "near_drops": sum(r["near_drops"] for r in outputs.source_table),
        "contamination_drops": sum(r["contamination_drops"] for r in outputs.source_table),
        "rows_in_mixture": sum(r["rows_in_mixture"] for r in outputs.source_table),
        "drops_by_kind": {k: len(v) for k, v in sorted(by_kind.items())},
        "workspace": str(ws.root),
    }
    summary["heldout"] = heldout_report(Path(args.data), work)
    print("=" * WIDTH)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
