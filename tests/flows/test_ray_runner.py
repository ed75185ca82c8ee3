"""`mlora data --task-runner ray` on a real local Ray cluster of two nodes (issue 28): a head
(`ray start --head`) and one worker (`ray start --address`), each with one CPU, on 127.0.0.1.
The per-source and per-suite tasks run as Ray tasks in the nodes' worker processes, and
inside them near dedup's signature shards and bands as Ray tasks of their own; the mixture
must be the same bytes as the threads runner's for the same spec."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from multilora_pipeline.tasks.data.near_dedup import near_duplicates, near_duplicates_in_slices

# a Ray cluster and the CLI in a subprocess: left out by -m "not slow"
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "data_specs" / "demo_tiny.yaml"
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _ray(*args: str, env: dict) -> None:
    done = subprocess.run(
        [RAY, *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


@pytest.fixture(scope="module")
def ray_cluster():
    """HOST:PORT of a head and one worker node, stopped afterwards."""
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    address = f"127.0.0.1:{_free_port()}"
    node = ["--node-ip-address", "127.0.0.1", "--num-cpus", "1"]
    try:
        _ray("start", "--head", "--port", address.split(":")[1], "--include-dashboard=false",
             "--disable-usage-stats", *node, env=env)  # fmt: skip
        _ray("start", "--address", address, *node, env=env)
        yield address, env
    finally:
        subprocess.run([RAY, "stop", "--force"], capture_output=True, env=env, timeout=120)


def _mlora_data(workspace: Path, env: dict, *extra: str) -> str:
    done = subprocess.run(
        [
            str(Path(sys.executable).with_name("mlora")),
            "--workspace",
            str(workspace),
            "data",
            str(DEMO),
            *extra,
        ],  # fmt: skip
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout + done.stderr


def _catalog_rows(workspace: Path) -> dict[str, list[tuple]]:
    """Every catalog table's rows but their timestamps, sorted (the runs' order may differ)."""
    import duckdb

    con = duckdb.connect(str(workspace / "catalog.duckdb"), read_only=True)
    try:
        out = {}
        for (table,) in con.execute("SHOW TABLES").fetchall():
            columns = [c for c, kind, *_ in con.execute(f"DESCRIBE {table}").fetchall()]
            kept = [c for c in columns if not c.endswith("_at")]
            out[table] = sorted(
                con.execute(f"SELECT {', '.join(kept)} FROM {table}").fetchall(), key=repr
            )
        return out
    finally:
        con.close()


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_the_data_stages_on_a_two_node_ray_cluster_give_the_threads_mixture(ray_cluster, tmp_path):
    address, env = ray_cluster
    on_ray = _mlora_data(tmp_path / "ray", env, "--task-runner", "ray", "--ray-address", address)
    on_threads = _mlora_data(tmp_path / "threads", env)
    mixture = re.search(r"mixture (\w{16}): ", on_ray).group(1)
    assert f"mixture {mixture}: " in on_threads
    # Prefect task runs inside Ray workers log with Ray's "(task-name pid=N)" prefix.
    assert re.search(r"\(prepare-source pid=\d+\)", on_ray)
    assert "prepare-source pid=" not in on_threads
    # Inside those stages near dedup's signatures and buckets were Ray tasks of their own.
    assert re.search(r"\(dedup-across-sources pid=\d+\).*near-dup-signatures: \d+ Ray task", on_ray)
    assert re.search(r"near-dup-buckets: \d+ Ray task", on_ray)
    assert "Ray task" not in on_threads
    folder = Path("data") / "mixture" / mixture
    ray_files = _files(tmp_path / "ray" / folder)
    assert ray_files and ray_files == _files(tmp_path / "threads" / folder)
    catalog = _catalog_rows(tmp_path / "ray")
    assert catalog["dedup_drops"] and catalog["mixtures"]
    assert catalog == _catalog_rows(tmp_path / "threads")  # the same rows, paths included


def _texts_with_near_copies() -> list[str]:
    rng = np.random.default_rng(7)
    words = [f"w{i}" for i in range(500)]
    bases = [" ".join(rng.choice(words, 60)) for _ in range(40)]
    copies = [b.replace(b.split()[30], "changed", 1) for b in bases[:8]]  # Jaccard ~0.9
    return bases + copies


def test_near_dedup_signatures_and_buckets_as_ray_tasks_match_one_process(
    ray_cluster, tmp_path, caplog
):
    """The signature pass as Ray tasks over shards and the bucket pass as a task per band
    (a stage in a Ray worker does this): the same pairs as in one process, nothing left."""
    import ray

    address, _ = ray_cluster
    texts = pa.array(_texts_with_near_copies())
    alone = near_duplicates(texts)
    assert len(alone.pairs) == 8

    def rows_at(positions):
        return texts.take(pa.array(positions)), None

    ray.init(address=address, log_to_driver=False, logging_level="ERROR")
    try:
        with caplog.at_level(logging.INFO, logger="mlora.fan_out"):
            found = near_duplicates_in_slices(
                [texts.slice(0, 25), texts.slice(25)],
                rows_at,
                folder=tmp_path / "keys",
                shard_rows=10,
            )
    finally:
        ray.shutdown()
    assert found.pairs.tolist() == alone.pairs.tolist()
    assert found.similarity.tolist() == alone.similarity.tolist()
    assert re.search(r"near-dup-signatures: 5 Ray task\(s\) on [12] node", caplog.text)
    assert f"near-dup-buckets: {found.bands} Ray task(s)" in caplog.text
    assert not (tmp_path / "keys").exists()


def test_a_ray_address_without_the_ray_runner_is_a_usage_error(capsys):
    from multilora_pipeline.flows.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["data", str(DEMO), "--ray-address", "127.0.0.1:6379"])
    assert exit_.value.code == 2
    assert "add --task-runner ray" in capsys.readouterr().err
