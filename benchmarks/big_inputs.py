"""Peak memory of `mlora data` on three hostile 50 MB inputs (issue: at most 1.5 GB each).

    .venv/bin/python benchmarks/big_inputs.py                 # all three cases
    .venv/bin/python benchmarks/big_inputs.py --case one_record --mb 10
    .venv/bin/python benchmarks/big_inputs.py --case json_array --mb 800 --read-only

Cases, each one source (alpaca template) plus a 20-item evaluation suite:
- `json_array`: one JSON document, a single-line array of ~108k distinct records (50 MB).
- `near_identical`: the same layout with ~147k records that differ in one word each, so
  every row is a near-duplicate candidate of every other (MinHash LSH buckets of 147k).
- `one_record`: a JSON lines file holding one 50 MB record.

Each case runs the real command line (`mlora data SPEC --workspace W`) in a fresh process
and a fresh workspace; peak memory is the largest max RSS among its processes (getrusage of
children: the CLI, and Prefect's temporary server). `--read-only`: only the source file read
(tasks/data/files/read.py's read_batches, every table consumed) in a fresh process, its max
RSS: the reader's own memory, apart from the stages after it. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
WORDS = [f"w{i}" for i in range(30_000)]
TARGET_MB = 1536  # the ceiling
# Runs the command, passes its exit code on in the last line's place: prints the largest max
# RSS (KiB) among the command's processes last.
MEASURE = (
    "import resource, subprocess, sys; done = subprocess.run(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(done.returncode)"
)


def _record(rng: random.Random, words: int) -> dict:
    text = lambda n: " ".join(rng.choices(WORDS, k=n))  # noqa: E731
    return {"instruction": text(12), "input": text(words // 4), "output": text(words)}


def json_array(path: Path, mb: int, rng: random.Random) -> int:
    rows, size = [], 0
    while size < mb << 20:
        rows.append(_record(rng, 50))
        size += len(json.dumps(rows[-1])) + 2
    path.write_text(json.dumps(rows))  # one line
    return len(rows)


def near_identical(path: Path, mb: int, rng: random.Random) -> int:
    base = _record(rng, 40)
    rows, size = [], 0
    while size < mb << 20:
        words = base["output"].split()
        words[rng.randrange(len(words))] = rng.choice(WORDS)  # one word changed per row
        rows.append({**base, "output": " ".join(words)})
        size += len(json.dumps(rows[-1])) + 2
    path.write_text(json.dumps(rows))
    return len(rows)


def one_record(path: Path, mb: int, rng: random.Random) -> int:
    words = (mb << 20) // 7
    # Half in the prompt (instruction), half in the response: every stage sees a huge text.
    half = lambda: " ".join(rng.choices(WORDS, k=words // 2))  # noqa: E731
    record = {"instruction": half(), "input": "", "output": half()}
    path.write_text(json.dumps(record) + "\n")
    return 1


CASES = {"json_array": (json_array, "json"), "near_identical": (near_identical, "json")}
CASES["one_record"] = (one_record, "jsonl")


# Reads a file as fetch does and prints rows, seconds and the process's peak RSS (KiB): the
# kernel's VmHWM, which starts afresh at exec (ru_maxrss would carry this parent's, whose
# corpus was just written, across the fork).
READ = (
    "import re, sys, time; from pathlib import Path; "
    "from multilora_pipeline.tasks.data.files.read import read_batches; "
    "t = time.perf_counter(); tables = read_batches(Path(sys.argv[1]), sys.argv[2]).tables; "
    "rows = sum(t.num_rows for t in tables); seconds = time.perf_counter() - t; "
    "hwm = re.search(r'VmHWM:\\s+(\\d+)', Path('/proc/self/status').read_text()).group(1); "
    "print(rows, seconds, hwm)"
)


def read_case(name: str, data: Path, fmt: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", READ, str(data), fmt], capture_output=True, text=True, check=True
    )
    rows, seconds, peak_kb = done.stdout.split()
    return {
        "case": name,
        "input_mb": round(data.stat().st_size / 2**20, 1),
        "rows": int(rows),
        "read_seconds": round(float(seconds), 1),
        "read_peak_rss_mb": round(int(peak_kb) / 1024),
    }


def run_case(name: str, mb: int, root: Path, read_only: bool = False) -> dict:
    make, suffix = CASES[name]
    folder = root / name
    folder.mkdir()
    data = folder / f"source.{suffix}"
    rows = make(data, mb, random.Random(0))
    if read_only:
        return read_case(name, data, suffix)
    suite = folder / "suite.jsonl"
    rng = random.Random(1)
    suite.write_text(
        "".join(
            json.dumps({"question": _record(rng, 20)["output"], "answer": "x\n#### 1"}) + "\n"
            for _ in range(20)
        )
    )
    demo = yaml.safe_load((REPO / "data_specs" / "demo_tiny.yaml").read_text())
    demo["sources"] = [
        {"name": "big", "path": str(data), "template": "alpaca", "category": "general"}
    ]
    demo["mixture"] = {
        "weights": {"big": 1.0},
        **{k: v for k, v in demo["mixture"].items() if k != "weights"},
    }
    demo["eval_suites"] = [
        {
            "name": "probe",
            "path": str(suite),
            "template": "gsm8k",
            "kind": "generation",
            "category": "math",
        }
    ]
    spec = folder / "spec.yaml"
    spec.write_text(yaml.safe_dump(demo, sort_keys=False))
    # A fresh measuring process per case: ru_maxrss of children only ever grows.
    command = [
        str(REPO / ".venv" / "bin" / "mlora"),
        "data",
        str(spec),
        "--workspace",
        str(folder / "ws"),
    ]
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", MEASURE, *command], capture_output=True, text=True)
    seconds = time.perf_counter() - started
    *output, peak_kb = done.stdout.rstrip().rsplit("\n", 1)
    peak_mb = int(peak_kb) / 1024
    tail = ("\n".join(output) + done.stderr).strip().splitlines()[-3:]
    return {
        "case": name,
        "input_mb": round(data.stat().st_size / 2**20, 1),
        "rows": rows,
        "exit_code": done.returncode,
        "seconds": round(seconds, 1),
        # ru_maxrss of children only grows: a case below an earlier one's peak reads as that.
        "peak_rss_mb": round(peak_mb),
        "under_target": peak_mb <= TARGET_MB,
        "output_tail": tail,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=sorted(CASES), action="append")
    parser.add_argument("--mb", type=int, default=50)
    parser.add_argument("--read-only", action="store_true", help="time and measure the read only")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mlora-big-") as tmp:
        cases = args.case or list(CASES)
        results = [run_case(c, args.mb, Path(tmp), args.read_only) for c in cases]
    json.dump({"target_peak_mb": TARGET_MB, "cases": results}, sys.stdout, indent=2)
    print()


if __name__ == "__main__":
    main()
