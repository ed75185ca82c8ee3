"""Data stages at scale: a 2-million-row synthetic Alpaca-style source through fetch, normalise,
exact dedup (within the source) and mixing, with peak memory measured in this process.

    .venv/bin/python benchmarks/data_scale.py                 # 2M rows (issue 4: peak < 3 GB)
    .venv/bin/python benchmarks/data_scale.py --rows 200000   # quick look

The source: instruction (6-20 words), input (empty for 60% of rows, else 5-40 words) and
output (10-80 words) over a 30k-word Zipf vocabulary, about the size of real Alpaca rows;
5% of the rows repeat an earlier row with changed case and punctuation (exact duplicates
after normalisation). It is written as Parquet in 100k-row batches before anything is
measured. The stages are the pipeline's own plain functions (tasks/data_stages.py), so the figures
include their Parquet writes. Near dedup and decontamination are off: they are measured by
benchmarks/dedup.py. Peak memory: the process's max RSS (getrusage) and, per stage, the
highest RSS a 20 ms sampler saw. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from data_specs.schema import parse_spec  # noqa: E402
from tasks.data_stages import dedup_stage, mixture_stage, normalise_stage  # noqa: E402
from tasks.fetch import fetch  # noqa: E402
from tasks.workspace import Workspace  # noqa: E402

BATCH = 100_000  # rows generated and written at a time: generation stays small in memory
VOCAB = 30_000
DUPLICATE_SHARE = 0.05


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


def words_column(rng, vocab: pa.Array, n: int, lo: int, hi: int) -> pa.Array:
    """n texts of lo..hi Zipf-distributed words, built without per-row Python."""
    lengths = rng.integers(lo, hi + 1, n)
    ranks = np.minimum(rng.zipf(1.2, int(lengths.sum())), VOCAB) - 1
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    lists = pa.ListArray.from_arrays(pa.array(offsets), vocab.take(pa.array(ranks)))
    return pc.binary_join(lists, " ")


def write_source(path: Path, rows: int, seed: int = 0) -> dict:
    """The synthetic source as Parquet, in batches; returns what was planted."""
    rng = np.random.default_rng(seed)
    vocab = pa.array([f"w{i}" for i in range(VOCAB)])
    schema = pa.schema(
        [("instruction", pa.string()), ("input", pa.string()), ("output", pa.string())]
    )
    planted = 0
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
            if kept is not None:
                k = int(n * DUPLICATE_SHARE)
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
                batch = pa.concat_tables([batch.slice(0, n - k), dup])
                planted += k
            writer.write_table(batch)
            kept = batch.slice(0, 5_000)
    return {"rows": rows, "planted_duplicates": planted, "bytes": path.stat().st_size}


def spec_for(source: Path, suite: Path):
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
                "name": "tiny",
                "path": str(suite),
                "template": "gsm8k",
                "kind": "generation",
                "category": "math",
            }
        ],
        # prompt + response key only: this measures one exact pass over 2M rows
        "dedup": {"exact": True, "key_by_category": {}, "near": {"enabled": False}},
        "decontamination": {"enabled": False},
        "mixture": {"strategy": "proportional", "validation_fraction": 0.01},
        "base_model": {"tiny": {}},
        "arms": [{"name": "lora", "kind": "lora"}],
    }
    return parse_spec(data, source.with_name("spec.yaml"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--dir", help="working folder (default: a temp folder)")
    args = parser.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="mlora-scale-"))
    root.mkdir(parents=True, exist_ok=True)
    source, suite = root / "synthetic.parquet", root / "suite.jsonl"
    suite.write_text('{"question": "What is 2 + 2?", "answer": "2 + 2 = 4\\n#### 4"}\n')

    t0 = time.perf_counter()
    made = write_source(source, args.rows)
    generate_s = time.perf_counter() - t0
    spec = spec_for(source, suite)
    item = spec.sources[0]
    ws = Workspace.resolve(root / "workspace").ensure()
    sampler = Sampler()
    baseline_mb = rss_mb()
    times = {}

    def timed(stage, fn):
        sampler.enter(stage)
        start = time.perf_counter()
        out = fn()
        times[stage] = round(time.perf_counter() - start, 2)
        print(
            f"{stage}: {times[stage]:.1f}s, peak so far {sampler.peaks[stage]:.0f} MB",
            file=sys.stderr,
        )
        return out

    snap = timed("fetch", lambda: fetch(item, item.name, root, ws))
    normalised = timed("normalise", lambda: normalise_stage(ws, snap, item))
    deduped = timed(
        "exact_dedup",
        lambda: dedup_stage(ws, "dedup_source", [normalised], spec.dedup, {}, [item.name]),
    )
    mixed = timed("mix", lambda: mixture_stage(ws, deduped, spec))
    sampler.stop()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    drops = pq.read_metadata(Path(deduped.path).with_name("drops.parquet")).num_rows
    total_s = sum(times.values())
    print(
        json.dumps(
            {
                "rows": args.rows,
                "source_mb": round(made["bytes"] / 2**20),
                "planted_duplicates": made["planted_duplicates"],
                "exact_drops": drops,
                "rows_in_mixture": mixed.rows,
                "seconds": {
                    "generate_source": round(generate_s, 1),
                    **times,
                    "stages_total": round(total_s, 1),
                },
                "rows_per_s": round(args.rows / total_s),
                "rss_mb_before_stages": round(baseline_mb),
                "peak_rss_mb_by_stage": {k: round(v) for k, v in sampler.peaks.items()},
                "peak_rss_mb": round(peak_mb),
                "target_peak_mb": 3072,
                "met": peak_mb < 3072,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
