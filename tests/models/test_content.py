"""The one content-key and atomic-publish mechanism every output goes through (models/content.py)."""

from __future__ import annotations

import hashlib
import json

import pytest

from multilora_pipeline.data_specs.schema import MixtureSpec
from multilora_pipeline.models.content import (
    TEMPORARY_MARK,
    atomic_file,
    atomic_folder,
    content_key,
    file_sha256,
    write_text_atomic,
)
from multilora_pipeline.tasks.identity import mixture_id, stage_id


def test_content_key_is_canonical_json_and_ignores_key_order():
    value = {"b": [1, 2], "a": {"y": None, "x": 1.5}}
    reordered = {"a": {"x": 1.5, "y": None}, "b": [1, 2]}
    blob = '{"a":{"x":1.5,"y":null},"b":[1,2]}'
    assert content_key(value) == content_key(reordered)
    assert content_key(value) == hashlib.sha256(blob.encode()).hexdigest()[:16]
    assert content_key(value, length=8) == content_key(value)[:8]
    assert content_key(value) != content_key({**value, "c": 0})


def test_data_ids_are_the_ones_existing_workspaces_hold():
    # Values computed by the code before the ids moved onto content_key: a changed encoding
    # would silently rebuild (and re-id) every stage output of every workspace. Only a
    # STAGE_CODE_VERSION bump changes a stage or mixture id (3: 1d987cc40e75e957; 2:
    # 8d406745394b3c1c). The mixture id carries it since 12-07 (it was f4e8678d6e8763b4).
    assert stage_id("dedup", ["i1"], {"p": 1}) == "1d987cc40e75e957"
    assert mixture_id({"a": "h1"}, MixtureSpec(), 0) == "c598a0c9147a516d"


def test_atomic_file_appears_only_when_complete(tmp_path):
    target = tmp_path / "sub" / "out.json"
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_text("half")
        assert tmp.parent == target.parent and TEMPORARY_MARK in tmp.name
        raise RuntimeError("killed mid-write")
    assert not target.exists() and list(target.parent.iterdir()) == []
    write_text_atomic(target, json.dumps({"ok": 1}))
    assert json.loads(target.read_text()) == {"ok": 1}
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]


def test_atomic_folder_keeps_the_first_whole_copy_of_a_key(tmp_path):
    final = tmp_path / "stage" / "abc"
    with atomic_folder(final) as tmp:
        (tmp / "a.txt").write_text("first")
    assert (final / "a.txt").read_text() == "first"
    with atomic_folder(final) as tmp:  # the same key again: the whole copy there stays
        (tmp / "b.txt").write_text("second")
    assert sorted(p.name for p in final.iterdir()) == ["a.txt"]
    assert not [p for p in final.parent.iterdir() if TEMPORARY_MARK in p.name]
    with pytest.raises(ValueError), atomic_folder(tmp_path / "stage" / "failed") as tmp:
        (tmp / "x").write_text("x")
        raise ValueError("bad input")
    assert sorted(p.name for p in (tmp_path / "stage").iterdir()) == ["abc"]


def test_file_sha256_is_the_sha256_of_the_bytes(tmp_path):
    data = b"x" * 3_000_001
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


# Another process publishing stage outputs of the same ids (another spec sharing the data,
# whose run does not find them in the catalog yet): the data stages' publish, 25 times.
OTHER_RUN = """
import sys
from pathlib import Path
from multilora_pipeline.tasks.data.outputs import publish
from multilora_pipeline.tasks.workspace import Workspace
ws = Workspace.resolve(sys.argv[1])
for _ in range(25):
    publish(ws, "dedup", "abc", lambda tmp: (tmp / "kept.parquet").write_text("other copy"))
"""


def test_another_run_never_deletes_or_replaces_an_output_a_pipeline_is_reading(tmp_path):
    import subprocess
    import sys

    from multilora_pipeline.tasks.data.outputs import publish
    from multilora_pipeline.tasks.workspace import Workspace

    ws = Workspace.resolve(tmp_path / "ws").ensure()
    folder = publish(ws, "dedup", "abc", lambda tmp: (tmp / "kept.parquet").write_text("mine"))
    other = subprocess.Popen([sys.executable, "-c", OTHER_RUN, str(ws.root)])
    reads = 0
    while other.poll() is None:  # this pipeline reads its input all the while
        assert (folder / "kept.parquet").read_text() == "mine"
        reads += 1
    assert other.returncode == 0 and reads > 0
    assert (folder / "kept.parquet").read_text() == "mine"
    assert [p.name for p in folder.parent.iterdir()] == ["abc"]  # no temporaries left


def test_what_a_killed_writer_left_is_removed_and_a_live_writers_is_kept(tmp_path):
    import os
    import subprocess
    import sys
    import time

    from multilora_pipeline.models.content import remove_abandoned_temporaries, temporary_name
    from multilora_pipeline.tasks.workspace import Workspace

    ws = Workspace.resolve(tmp_path / "ws").ensure()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    dead_pid = int(dead.stdout)
    host = temporary_name(ws.root / "x").name.split(".tmp-")[1].split(".")[0]
    mixture = ws.data_dir / "mixture" / f".abc.tmp-{host}.{dead_pid}-0123abcd"
    elsewhere = ws.data_dir / "mixture" / f".abd.tmp-ffffff.{dead_pid}-0123abcd"
    (mixture / "shards").mkdir(parents=True)
    elsewhere.mkdir()  # another host's writer: its pid means nothing here
    (mixture / "shards" / "part-0.parquet").write_bytes(b"x" * 100)
    live = temporary_name(ws.models_dir / "gguf-1234")  # this process: alive
    live.mkdir()
    old = ws.data_dir / "fetch" / ".download.tmp-89abcdef"  # older code: no pid in the name
    old.parent.mkdir(parents=True)
    old.write_text("partial")
    os.utime(old, (time.time() - 2 * 86400,) * 2)
    fresh_old = ws.data_dir / "fetch" / ".other.tmp-fedcba98"
    fresh_old.write_text("partial")
    kept = ws.data_dir / "mixture" / "abc"  # a finished output is never touched
    kept.mkdir()

    assert sorted(ws.remove_abandoned()) == sorted([mixture, old])
    assert live.exists() and fresh_old.exists() and kept.exists() and elsewhere.exists()
    assert not mixture.exists() and not old.exists()
    assert remove_abandoned_temporaries(ws.data_dir) == []
