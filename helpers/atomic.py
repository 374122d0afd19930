"""Writes that never leave half a file or half a folder behind, and file checksums.

Used by every notebook that saves something (02 data, 04 checkpoints and models, 06 the
evaluation report, 07 releases, 08 the registry): write into a temporary name in the same
folder, then one ``os.replace`` / rename, which the operating system performs atomically.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path


def sha256_file(path: Path | str) -> str:
    """The SHA-256 of a file's bytes, read in 1 MiB blocks (checkpoints, releases, registry entries)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fsync_dir(folder: Path | str) -> None:
    """Make a rename inside ``folder`` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_text_atomic(path: Path | str, text: str) -> Path:
    """Write ``text`` to ``path`` so readers see the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def temporary_folder_beside(target: Path | str) -> Path:
    """A fresh hidden folder next to ``target`` (same file system, so the final rename is atomic)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}-building-", dir=target.parent))
    folder.chmod(0o755)  # mkdtemp makes it private; the finished folder should read like any other
    return folder


def replace_folder(new: Path | str, target: Path | str) -> Path:
    """Move the finished folder ``new`` to ``target``.

    An existing ``target`` is moved aside first, put back if the rename fails, and deleted
    only once ``new`` is in place: readers see the old folder or the new one, never half of
    one. When another process (a second rank) put its complete folder there first, ``new``
    is discarded and theirs kept.
    """
    new, target = Path(new), Path(target)
    old = target.with_name(f".{target.name}-old-{uuid.uuid4().hex[:8]}")
    moved_aside = False
    if target.exists():
        target.rename(old)
        moved_aside = True
    try:
        new.rename(target)
    except OSError:
        if moved_aside and not target.exists():
            old.rename(target)  # put the previous folder back
            raise
        shutil.rmtree(new, ignore_errors=True)  # someone else's complete folder is already there
    if moved_aside:
        shutil.rmtree(old, ignore_errors=True)
    return target
