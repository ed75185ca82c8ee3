"""Near-dedup benchmark: ours against datasketch and datatrove's MinHash stages, same corpus and run.

    .venv/bin/python benchmarks/dedup.py                # 200k documents (issue 4 target)
    .venv/bin/python benchmarks/dedup.py --docs 20000   # quick look
    .venv/bin/python benchmarks/dedup.py --docs 1000000 --no-datasketch \
        --datatrove /tmp/dt/bin/python                   # issue 28: 1M, against datatrove
    .venv/bin/python benchmarks/dedup.py --docs 1000000 --no-datasketch --ray-nodes 2
                                                         # issue 28: ours on a 2-node Ray

datatrove runs in a venv of its own (benchmarks/datatrove_minhash.py says how to make it) over
the corpus written as two JSONL shards, with two workers; the others run in one process on the
texts in memory. `--ray-nodes N` also runs ours on a local Ray cluster of N one-CPU nodes:
signatures as Ray tasks over shards of 200k texts, a task per band (tasks/data/fan_out.py),
band keys on disk as in a pipeline stage. datasketch holds every signature as Python objects
(4.2 GB at 200k), so at 1M it does not fit beside the corpus on a 24 GB machine:
`--no-datasketch`.

The corpus: instruction-like documents of 20-120 Zipf-distributed words, with planted
near-duplicate pairs (true word 5-gram Jaccard 0.80-0.95), hard negatives (0.50-0.75) and
exact duplicates that differ only in case, spacing or punctuation. Both methods use the same
permutation count, bands and rows and verify candidates against the same threshold (ours with
the exact shingle Jaccard, datasketch with its estimated Jaccard, as a datasketch user would).
Each method runs in its own forked process so its peak memory (max RSS) is its own.
A planted pair counts as found when both documents end in one cluster (the union of the
reported pairs), so that one of them is dropped; precision is the share of reported pairs
(dropped document, the one it was dropped for) whose true Jaccard reaches the threshold.
Prints one JSON object: recall per true-Jaccard bin, precision, docs/s, peak memory, speed-ups.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import multiprocessing as mp
import random
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import psutil

from multilora_pipeline.tasks.data.minhash import (
    lsh_params,
    normalised_text,
    normalised_words,
)
from multilora_pipeline.tasks.data.near_dedup import near_duplicates

SHINGLE, NUM_PERM, THRESHOLD = 5, 128, 0.8
BINS = [(0.5, 0.6), (0.6, 0.7), (0.7, 0.8), (0.8, 0.85), (0.85, 0.9), (0.9, 0.95), (0.95, 1.0001)]


def shingle_set(words: list[str]) -> set[tuple[str, ...]]:
    if len(words) < SHINGLE:
        return {tuple(words)} if words else set()
    return {tuple(words[i : i + SHINGLE]) for i in range(len(words) - SHINGLE + 1)}


def jaccard(a: list[str], b: list[str]) -> float:
    sa, sb = shingle_set(a), shingle_set(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def edit_to(words, lo, hi, vocab, rng):
    """Substitute random words until the 5-gram Jaccard with the original falls in [lo, hi]."""
    target = rng.uniform(lo, hi)
    out = list(words)
    for _ in range(len(words)):
        trial = list(out)
        trial[rng.randrange(len(trial))] = rng.choice(vocab)
        j = jaccard(words, trial)
        if j < lo:
            break
        out = trial
        if j <= target:
            break
    j = jaccard(words, out)
    return (out, j) if lo <= j <= hi else (None, j)


def make_corpus(n_docs: int, seed: int = 0):
    """Documents plus the planted pairs: (i, j, kind) with kind near / hard / exact."""
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    vocab = [f"w{i}" for i in range(30_000)]
    zipf = np.minimum(nrng.zipf(1.2, size=n_docs * 130), len(vocab)) - 1
    n_near = n_hard = n_exact = n_docs // 20
    n_base = n_docs - n_near - n_hard - n_exact
    docs, pos = [], 0
    for _ in range(n_base):
        length = rng.randint(20, 120)
        docs.append([vocab[k] for k in zipf[pos : pos + length]])
        pos += length
    planted = []
    long_ids = [i for i, d in enumerate(docs) if len(d) >= 60]
    for kind, count, lo, hi in (("near", n_near, 0.80, 0.95), ("hard", n_hard, 0.50, 0.75)):
        made = 0
        while made < count:
            src = rng.choice(long_ids)
            edited, _ = edit_to(docs[src], lo, hi, vocab, rng)
            if edited is not None:
                planted.append((src, len(docs), kind))
                docs.append(edited)
                made += 1
    texts = [" ".join(d).capitalize() + "." for d in docs]
    for _ in range(n_exact):
        src = rng.randrange(n_base)
        words = docs[src]
        variant = "  ".join(w.upper() if rng.random() < 0.3 else w for w in words)
        texts.append(variant + rng.choice(["!", "?", " ...", ""]))
        planted.append((src, len(texts) - 1, "exact"))
    return texts, planted


def ours(texts):
    t0 = time.perf_counter()
    result = near_duplicates(texts, threshold=THRESHOLD, num_perm=NUM_PERM, shingle=SHINGLE)
    secs = time.perf_counter() - t0
    return {
        "pairs": result.pairs.tolist(),
        "seconds": secs,
        "candidates": result.candidates,
        "bands": result.bands,
        "rows": result.rows,
    }


@contextlib.contextmanager
def local_ray_cluster(nodes: int, cpus: int):
    """HOST:PORT of a Ray head and nodes-1 more nodes on 127.0.0.1, `cpus` CPUs each."""
    ray_cli = str(Path(sys.executable).with_name("ray"))
    with socket.socket() as probe:  # a free port: a user's own cluster may hold 6379
        probe.bind(("127.0.0.1", 0))
        port = str(probe.getsockname()[1])
    address = f"127.0.0.1:{port}"
    node = ["--node-ip-address", "127.0.0.1", "--num-cpus", str(cpus)]
    start = [[ray_cli, "start", "--head", "--port", port, "--include-dashboard=false", *node]]
    start += [[ray_cli, "start", "--address", address, *node]] * (nodes - 1)
    try:
        for cmd in start:
            subprocess.run(cmd, check=True, capture_output=True, timeout=120)
        yield address
    finally:
        subprocess.run([ray_cli, "stop", "--force"], capture_output=True, timeout=120)


def ray_workers_rss_mb() -> float:
    """Summed RSS of the Ray worker processes (named ray::...) now, in MB."""
    total = 0
    for proc in psutil.process_iter(["name"]):
        if (proc.info["name"] or "").startswith("ray::"):
            with contextlib.suppress(psutil.Error):
                total += proc.memory_info().rss
    return total / 2**20


def ours_on_ray(texts, address):
    """Ours with the signatures as Ray tasks over shards and a task per band (fan_out.py),
    band keys on disk as in a stage; the walk in this process."""
    import pyarrow as pa
    import ray

    from multilora_pipeline.tasks.data.near_dedup import near_duplicates_in_slices

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    arr = pa.array(texts, type=pa.string())
    peak, stop = [0.0], threading.Event()

    def sample():
        while not stop.wait(0.2):
            peak[0] = max(peak[0], ray_workers_rss_mb())

    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            result = near_duplicates_in_slices(
                (arr.slice(s, 200_000) for s in range(0, len(arr), 200_000)),
                lambda positions: (arr.take(pa.array(positions)), None),
                threshold=THRESHOLD,
                num_perm=NUM_PERM,
                shingle=SHINGLE,
                folder=Path(tmp) / "band-keys",
            )
            secs = time.perf_counter() - t0
    finally:
        stop.set()
        ray.shutdown()
    return {"pairs": result.pairs.tolist(), "seconds": secs, "ray_workers_peak_mb": peak[0]}


def baseline(texts, bands, rows):
    from datasketch import MinHash, MinHashLSH

    t0 = time.perf_counter()
    words = normalised_words(texts).to_pylist()
    shingles = []
    for w in words:
        if len(w) < SHINGLE:
            shingles.append([" ".join(w).encode()] if w else [])
        else:
            shingles.append(
                [" ".join(w[i : i + SHINGLE]).encode() for i in range(len(w) - SHINGLE + 1)]
            )
    sigs = MinHash.bulk(shingles, num_perm=NUM_PERM)
    lsh = MinHashLSH(num_perm=NUM_PERM, params=(bands, rows))
    with lsh.insertion_session() as session:
        for i, m in enumerate(sigs):
            if shingles[i]:
                session.insert(i, m, check_duplication=False)
    pairs = []
    for i, m in enumerate(sigs):
        if not shingles[i]:
            continue
        for j in lsh.query(m):
            if j > i and m.jaccard(sigs[j]) >= THRESHOLD:
                pairs.append([i, j])
    return {"pairs": pairs, "seconds": time.perf_counter() - t0}


def tree_peak_rss_mb(proc: subprocess.Popen) -> float:
    """Wait for proc, sampling the summed RSS of it and its children every 0.2 s; the peak in MB."""
    peak = 0.0
    root = psutil.Process(proc.pid)
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in procs) / 2**20)
        except psutil.Error:
            pass
        time.sleep(0.2)
    return peak


def with_datatrove(texts, bands, rows, python: str, workers: int):
    """datatrove's MinHash stages 1-3 (benchmarks/datatrove_minhash.py) in python's venv."""
    with tempfile.TemporaryDirectory(prefix="dedup-datatrove-") as tmp:
        shards = Path(tmp) / "shards"
        shards.mkdir()
        half = (len(texts) + 1) // 2
        for n, start in enumerate((0, half)):
            with (shards / f"shard_{n:04d}.jsonl").open("w") as f:
                for i in range(start, min(start + half, len(texts))):
                    f.write(json.dumps({"id": str(i), "text": texts[i]}) + "\n")
        runner = Path(__file__).with_name("datatrove_minhash.py")
        cmd = [python, str(runner), str(shards), str(Path(tmp) / "work")]
        cmd += ["--bands", str(bands), "--rows", str(rows), "--workers", str(workers)]
        out_file, log = Path(tmp) / "datatrove.json", Path(tmp) / "datatrove.log"
        t0 = time.perf_counter()
        with out_file.open("w") as out, log.open("w") as err:
            proc = subprocess.Popen(cmd, stdout=out, stderr=err)
            peak = tree_peak_rss_mb(proc)
        secs = time.perf_counter() - t0
        if proc.returncode:
            tail = "\n".join(log.read_text().splitlines()[-20:])
            raise SystemExit(f"datatrove runner failed (exit {proc.returncode}):\n{tail}")
        result = json.loads(out_file.read_text().strip().splitlines()[-1])
    return {
        "pairs": result["pairs"],
        "seconds": secs,
        "stage_seconds": result["seconds"],
        "peak_rss_mb": peak,
        "workers": workers,
    }


def _child(fn, args, queue):
    out = fn(*args)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    queue.put(out)


def in_child(fn, *args):
    """Run fn in a forked process (inputs shared copy-on-write) and return its result + max RSS."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(fn, args, queue))
    proc.start()
    out = queue.get()
    proc.join()
    return out


def clusters_of(pairs) -> dict[int, int]:
    """Document -> cluster root, the union of the reported pairs (documents in no pair: absent)."""
    parent: dict[int, int] = {}

    def root(x):
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return {x: root(x) for x in parent}


def score(pairs, planted, words, exact_keys):
    cluster = clusters_of(pairs)

    def together(i, j):
        return i in cluster and cluster.get(j) == cluster[i]

    bins = {f"{lo:.2f}-{min(hi, 1):.2f}": [0, 0] for lo, hi in BINS}
    for i, j, _ in planted:
        true_j = jaccard(words[i], words[j])
        for lo, hi in BINS:
            if lo <= true_j < hi:
                cell = bins[f"{lo:.2f}-{min(hi, 1):.2f}"]
                cell[0] += 1
                cell[1] += together(i, j)
    recall = {k: round(v[1] / v[0], 4) if v[0] else None for k, v in bins.items()}
    found = {(min(i, j), max(i, j)) for i, j in pairs}
    true_pos = sum(jaccard(words[i], words[j]) >= THRESHOLD for i, j in found)
    exact = [(i, j) for i, j, kind in planted if kind == "exact"]
    return {
        "recall_by_true_jaccard": recall,
        "pairs_by_true_jaccard": {k: v[0] for k, v in bins.items()},
        "precision": round(true_pos / len(found), 5) if found else None,
        "reported_pairs": len(found),
        "exact_duplicates_found_by_near": sum(together(i, j) for i, j in exact) / len(exact),
        "exact_duplicates_found_by_key": sum(exact_keys[i] == exact_keys[j] for i, j in exact)
        / len(exact),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--no-datasketch", action="store_true", help="skip datasketch (it needs ~21 GB at 1M)"
    )
    parser.add_argument(
        "--datatrove",
        metavar="PYTHON",
        help="the python of a venv with datatrove (see benchmarks/datatrove_minhash.py)",
    )
    parser.add_argument("--datatrove-workers", type=int, default=2)
    parser.add_argument(
        "--ray-nodes",
        type=int,
        default=0,
        help="also run ours on a local Ray cluster of this many nodes (one CPU each)",
    )
    args = parser.parse_args()
    t0 = time.perf_counter()
    texts, planted = make_corpus(args.docs, args.seed)
    gen_s = time.perf_counter() - t0
    bands, rows = lsh_params(THRESHOLD, NUM_PERM)
    # Each child starts as a fork of this process: its peak includes this much (the corpus).
    parent_rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    results = {"ours": in_child(ours, texts)}
    if not args.no_datasketch:
        results["datasketch"] = in_child(baseline, texts, bands, rows)
    if args.datatrove:
        results["datatrove"] = with_datatrove(
            texts, bands, rows, args.datatrove, args.datatrove_workers
        )
    if args.ray_nodes:
        with local_ray_cluster(args.ray_nodes, cpus=1) as address:
            results["ours_on_ray"] = in_child(ours_on_ray, texts, address)
        results["ours_on_ray"]["nodes"] = args.ray_nodes
    words = normalised_words(texts).to_pylist()
    keys = normalised_text(texts).to_pylist()
    report = {
        "docs": len(texts),
        "planted": {k: sum(p[2] == k for p in planted) for k in ("near", "hard", "exact")},
        "corpus_seconds": round(gen_s, 1),
        "num_perm": NUM_PERM,
        "bands": bands,
        "rows": rows,
        "threshold": THRESHOLD,
        "shingle": SHINGLE,
        "parent_rss_mb_before_fork": round(parent_rss_mb),
    }
    for name, res in results.items():
        report[name] = {
            "seconds": round(res["seconds"], 2),
            "docs_per_s": round(len(texts) / res["seconds"]),
            "peak_rss_mb": round(res["peak_rss_mb"]),
            **{k: res[k] for k in ("stage_seconds", "workers", "nodes") if k in res},
            **{k: round(res[k]) for k in ("ray_workers_peak_mb",) if k in res},
            **score(res["pairs"], planted, words, keys),
        }
    report["ours"]["lsh_candidates"] = results["ours"]["candidates"]
    if "ours_on_ray" in results:  # the same keys, so the same pairs, wherever they are made
        report["ours_on_ray"]["same_pairs_as_ours"] = (
            results["ours_on_ray"]["pairs"] == results["ours"]["pairs"]
        )
    for name in results.keys() - {"ours"}:
        speedup = results[name]["seconds"] / results["ours"]["seconds"]
        report[f"speedup_vs_{name}"] = round(speedup, 1)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
