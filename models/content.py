"""Content keys and atomic publishing: how every output of the pipeline is named and appears.

Every stage output, converted or built base model, cached evaluation, trained arm and saved
adapter is

- named by a **content key**: the hash of what decides its content (`content_key`), so the
  same inputs find the same output and changed inputs never find a stale one;
- **published atomically**: written under a temporary name beside its final place, and
  renamed into place only once complete (`atomic_file`, `atomic_folder`). A crash leaves at
  most a temporary, never a half-written output a reader would take for finished.
  Temporaries are named `.{final name}.tmp-{8 hex}` (`temporary_name`).

Looking an output up again is the caller's part: a file or folder that exists is whole, and
the data stages also ask the catalog (tasks/data/outputs.py). This module sits in
models/, the lowest layer that needs it, because a registered version ships models/ alone
as its code (tasks/registry/pyfunc_model.py): tasks/ and flows/ import it from here.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

KEY_LENGTH = 16
"""Hex digits of a content key: 64 bits, no collision among a workspace's outputs."""
TEMPORARY_MARK = ".tmp-"
HASH_BLOCK = 1 << 20


def content_key(value, length: int = KEY_LENGTH) -> str:
    """The sha256 of `value` as canonical JSON (sorted keys, no spaces), cut to `length`."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:length]


def file_sha256(path: str | os.PathLike, *, progress: bool = False) -> str:
    """sha256 hex of a file's bytes, read a block at a time; `progress` shows a bar for files
    of a gigabyte or more (hashing those takes seconds)."""
    path = Path(path)
    digest = hashlib.sha256()
    size = path.stat().st_size
    bar = None
    if progress and size >= 1 << 30:
        from tqdm.auto import tqdm

        bar = tqdm(total=size, unit="B", unit_scale=True, desc=f"hash {path.name}", mininterval=2)
    with path.open("rb") as handle:
        while block := handle.read(HASH_BLOCK):
            digest.update(block)
            if bar is not None:
                bar.update(len(block))
    if bar is not None:
        bar.close()
    return digest.hexdigest()


def _host() -> str:
    """This machine, as 6 hex digits: a pid means something only on the host that made it."""
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def temporary_name(final: Path) -> Path:
    """Where `final` is written before it is renamed into place (same folder, hidden). The
    writer's host and pid are in the name, so what a killed writer left is known as
    abandoned (a workspace on shared storage has writers on other hosts)."""
    writer = f"{_host()}.{os.getpid()}"
    return final.with_name(f".{final.name}{TEMPORARY_MARK}{writer}-{uuid.uuid4().hex[:8]}")


_TEMPORARY = re.compile(
    r"^\..+" + re.escape(TEMPORARY_MARK) + r"(?:([0-9a-f]{6})\.(\d+)-)?[0-9a-f]{8}$"
)
_OLD_TEMPORARY_S = 24 * 3600  # a name without a pid (older code): abandoned after a day


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_abandoned_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files and folders under `folder` whose writer is gone (a
    killed run's half-written mixture, conversion or download); live writers' are kept.
    Returns what was removed."""
    removed = []
    for path in sorted(Path(folder).rglob(f".*{TEMPORARY_MARK}*")):
        match = _TEMPORARY.match(path.name)
        if match is None or not path.exists():
            continue
        host, pid = match.groups()
        if host is not None and host != _host():
            continue  # another machine's writer: its pid cannot be checked from here
        if pid is not None and _alive(int(pid)):
            continue
        if pid is None and time.time() - path.lstat().st_mtime < _OLD_TEMPORARY_S:
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


@contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; it becomes `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` atomically; returns the path."""
    with atomic_file(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


@contextmanager
def atomic_folder(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder to fill; it becomes `final` if the block succeeds.

    The one write policy for content-keyed folders: outputs are content-keyed and published
    whole, so a `final` that exists already holds the same content, and it is kept; the new
    copy is dropped. The first writer of a key wins, a leftover of a run that failed before
    its catalog commit is as good as a new copy, and a pipeline reading a folder never sees
    it deleted or replaced by another run that shares the data (an empty `final` is filled).
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(final)
    tmp.mkdir()
    try:
        yield tmp
        try:
            os.replace(tmp, final)  # onto nothing or an empty folder
        except OSError:  # a whole copy is there: another writer renamed its copy in first
            if not final.exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
