"""Writes that never leave half a file or half a folder behind.

Used by every notebook that saves something (02 data, 03 checkpoints and models, 04 the
evaluation report, 05 releases, 06 the registry): write into a temporary name in the same
folder, then one ``os.replace`` / rename, which the operating system performs atomically.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path


def write_text_atomic(path: Path | str, text: str) -> Path:
    """Write ``text`` to ``path`` so readers see the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def temporary_folder_beside(target: Path | str) -> Path:
    """A fresh hidden folder next to ``target`` (same file system, so the final rename is atomic)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{target.name}-building-", dir=target.parent))
    folder.chmod(0o755)  # mkdtemp makes it private; the finished folder should read like any other
    return folder


def replace_folder(new: Path | str, target: Path | str) -> Path:
    """Move the finished folder ``new`` to ``target``; an older ``target`` is removed only once ``new`` is in place."""
    new, target = Path(new), Path(target)
    if target.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{target.name}-old-", dir=target.parent))
        old.rmdir()
        target.rename(old)
        new.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        new.rename(target)
    return target
