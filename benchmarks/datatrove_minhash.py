"""datatrove's MinHash stages 1-3 over JSONL shards; run by benchmarks/dedup.py in its own venv.

datatrove is not a dependency of this project (it pulls huggingface-hub 2, spaCy and a web
toolkit), so it lives in a venv of its own:

    python3.11 -m venv /tmp/dt && /tmp/dt/bin/pip install 'datatrove[processing]==0.10.1' spacy
    .venv/bin/python benchmarks/dedup.py --docs 1000000 --datatrove /tmp/dt/bin/python

It runs as a datatrove user would: JsonlReader -> MinhashDedupSignature (one task per shard),
MinhashDedupBuckets (one task per band), MinhashDedupCluster (one task), on the default English
word tokenizer (spaCy's blank "en") and text normalisation, except that digits are kept
(`norm_numbers=False`: the synthetic vocabulary is w0..w29999, which number normalisation
would fold into a handful of words). Stage 4 (filter, writing the kept documents) is left out,
as benchmarks/dedup.py's own method stops at the pairs too.

Prints one JSON object: seconds per stage and `pairs`, (removed document, the document its
cluster keeps) in global ids, the ids being the row numbers of the shards read in name order.
"""

from __future__ import annotations

import argparse
import json
import struct
import time
from pathlib import Path

from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupSignature,
)
from datatrove.pipeline.readers import JsonlReader
from datatrove.utils.text import TextNormConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("shards", type=Path, help="folder of shard_XXXX.jsonl files")
    parser.add_argument("work", type=Path, help="empty folder for datatrove's files")
    parser.add_argument("--bands", type=int, required=True)
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    shard_files = sorted(args.shards.glob("shard_*.jsonl"))
    offsets, total = [], 0
    for f in shard_files:
        offsets.append(total)
        with f.open("rb") as fh:
            total += sum(1 for _ in fh)
    config = MinhashConfig(
        n_grams=5,
        num_buckets=args.bands,
        hashes_per_bucket=args.rows,
        norm_config=TextNormConfig(norm_numbers=False),
    )
    sigs, buckets, clusters = (args.work / n for n in ("signatures", "buckets", "clusters"))
    stages = {
        "signatures": LocalPipelineExecutor(
            [JsonlReader(str(args.shards)), MinhashDedupSignature(str(sigs), config=config)],
            tasks=len(shard_files),
            workers=args.workers,
            logging_dir=str(args.work / "logs/signatures"),
        ),
        "buckets": LocalPipelineExecutor(
            [MinhashDedupBuckets(str(sigs), str(buckets), config=config)],
            tasks=args.bands,
            workers=args.workers,
            logging_dir=str(args.work / "logs/buckets"),
        ),
        "cluster": LocalPipelineExecutor(
            [MinhashDedupCluster(str(buckets), str(clusters), config=config, save_cluster_id=True)],
            tasks=1,
            logging_dir=str(args.work / "logs/cluster"),
        ),
    }
    seconds = {}
    for name, executor in stages.items():
        t0 = time.perf_counter()
        executor.run()
        seconds[name] = round(time.perf_counter() - t0, 2)

    # Each cluster keeps the one member without a .remove entry; every other member is a pair
    # (removed, kept), which is what benchmarks/dedup.py scores.
    removed, cluster_of = set(), {}
    for file_no, offset in enumerate(offsets):
        remove = clusters / f"{file_no:06d}.remove"
        if remove.exists():
            removed.update(offset + d for (d,) in struct.iter_unpack("<I", remove.read_bytes()))
        members = clusters / f"{file_no:06d}.clusters"
        if members.exists():
            pairs = struct.iter_unpack("<II", members.read_bytes())
            cluster_of.update((offset + d, c) for d, c in pairs)
    kept = {c: doc for doc, c in cluster_of.items() if doc not in removed}
    pairs = sorted((doc, kept[c]) for doc, c in cluster_of.items() if doc in removed)
    print(json.dumps({"seconds": seconds, "docs": total, "pairs": pairs}))


if __name__ == "__main__":
    main()
