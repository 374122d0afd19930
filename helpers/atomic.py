"""Writes that never leave half a file or half a folder behind, a lock between processes, checksums.

Used by every notebook that saves something (02 the data cache, 05 checkpoints and the
fine-tuned model, 07 the evaluation report, 10 releases, 11 the registry):

* :func:`write_text_atomic` writes a file under a temporary name beside it, fsyncs it, then
  renames it over the old one (``os.replace`` is atomic): readers see the old file or the new.
* :func:`build_folder` does the same for a whole folder: the block fills a temporary sibling,
  which is fsynced and swapped in when the block ends; an error removes it.
* :func:`locked` holds an exclusive lock on a folder (``filelock``, on a hidden lock file beside
  it), shared by every process on the machine.

A temporary name carries its writer's host and process id, ``.<name>-<kind>-<host>-<pid>-<random>``
with ``kind`` one of ``building`` (a folder being built), ``old`` (the previous folder, moved
aside during a swap), ``deleting`` (a folder being removed) and ``tmp`` (a file being
written). A writer killed mid-way (``kill -9``, a power cut) leaves its temporary behind; the
next swap into that folder (:func:`clean_leftovers`) removes every leftover whose writer is
gone, and puts an ``old`` folder back when a swap died between its two renames. Where the
writer cannot be checked (another host, Windows), a leftover counts as abandoned after
:data:`STALE_AFTER_S` seconds.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

STALE_AFTER_S = 60.0  # a leftover whose writer cannot be checked is abandoned after a minute
LOCK_TIMEOUT_S = 600.0  # waiting longer than this for a lock means the holder is stuck
_LEFTOVER = re.compile(r"\.(?P<name>.+)-(?P<kind>building|old|deleting|tmp)-(?P<host>[0-9a-f]{8})-(?P<pid>\d+)-[0-9a-f]{8}")


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


def fsync_tree(folder: Path | str) -> None:
    """Flush every file under ``folder`` to disk, then every folder (deepest first), then ``folder``."""
    folders = []
    for parent, _, files in os.walk(folder):
        for name in files:
            with open(os.path.join(parent, name), "rb") as f:
                os.fsync(f.fileno())
        folders.append(parent)
    for parent in reversed(folders):
        fsync_dir(parent)


# --------------------------------------------------------------------------- temporary names and leftovers


def _host_tag() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temporary_name(target: Path | str, kind: str) -> Path:
    """A hidden name beside ``target`` that says who is writing it (see the module docstring)."""
    target = Path(target)
    return target.with_name(f".{target.name}-{kind}-{_host_tag()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _writer_alive(match: re.Match) -> bool | None:
    """Whether the process named in a temporary name still runs; None when it cannot be checked here."""
    if match["host"] != _host_tag() or os.name != "posix":  # os.kill on Windows would terminate it
        return None
    pid = int(match["pid"])
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)  # signal 0: only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def writer_state(path: Path | str) -> str:
    """``"running"`` while the process writing the temporary ``path`` is alive, else ``"orphaned"``.

    A hidden name that names no writer was left by no writer of the course: orphaned. A writer on
    another host (or on Windows) cannot be asked, so its temporary counts as orphaned once it is
    :data:`STALE_AFTER_S` seconds old.
    """
    path = Path(path)
    match = _LEFTOVER.fullmatch(path.name)
    if not match:
        return "orphaned"
    alive = _writer_alive(match)
    if alive is None:
        try:
            age = time.time() - path.lstat().st_mtime
        except FileNotFoundError:
            return "orphaned"
        return "orphaned" if age > STALE_AFTER_S else "running"
    return "running" if alive else "orphaned"


def remove_path(path: Path | str) -> None:
    """Delete a file, a link or a whole folder (nothing happens if it is already gone)."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_leftovers(folder: Path | str) -> list[str]:
    """Tidy what killed writers left in ``folder``; return the names removed or put back.

    An orphaned ``old`` folder whose target is missing (a swap died between its two renames)
    is renamed back to its target; every other orphaned temporary is deleted. Temporaries of
    running writers are left alone. Runs under :func:`locked`, so it never races a swap.
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    tidied = []
    with locked(folder):
        for path in sorted(folder.iterdir()):
            match = _LEFTOVER.fullmatch(path.name)
            if not match or writer_state(path) != "orphaned":
                continue
            target = folder / match["name"]
            if match["kind"] == "old" and not (target.exists() or target.is_symlink()):
                path.rename(target)
                fsync_dir(folder)
            else:
                remove_path(path)
            tidied.append(path.name)
    return tidied


# --------------------------------------------------------------------------- the lock


@contextmanager
def locked(folder: Path | str, timeout: float = LOCK_TIMEOUT_S) -> Iterator[Path]:
    """Hold an exclusive lock on ``folder`` (created if missing) for the block, across processes.

    ``filelock`` on a hidden ``.<folder>.lock`` beside the folder (so the folder's own listing
    stays clean): re-entrant within a thread; other threads and processes wait, up to ``timeout``
    seconds, then a ``TimeoutError`` that says what to do. The kernel releases the lock when its
    holder dies, even by ``kill -9``. Used by the registry (11) and every folder swap.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    real = folder.resolve()
    lock = FileLock(real.with_name(f".{real.name}.lock"), is_singleton=True)  # one object per file: re-entrant
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise TimeoutError(
            f"another process has held the lock on {folder} for over {timeout:.0f} s; if no other "
            "notebook or script is writing there, that process is stuck: stop it and try again"
        ) from None
    try:
        yield folder
    finally:
        lock.release()


# --------------------------------------------------------------------------- files and folders


def write_text_atomic(path: Path | str, text: str) -> Path:
    """Write ``text`` to ``path`` so readers see the old file or the new one, never a torn one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(path, "tmp")
    try:
        with open(tmp, "x", encoding="utf-8") as f:
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
    folder = temporary_name(target, "building")
    folder.parent.mkdir(parents=True, exist_ok=True)
    folder.mkdir()
    return folder


def replace_folder(new: Path | str, target: Path | str, overwrite: bool = True) -> Path:
    """Move the finished folder ``new`` to ``target``, under the lock of their parent folder.

    First :func:`clean_leftovers` tidies the parent. An existing ``target`` is renamed aside,
    ``new`` renamed into place, and only then the old one deleted: a crash between the two
    renames leaves the old folder under an ``old`` name, which the next call puts back, so
    the target is never lost. An error puts the old folder back at once. With
    ``overwrite=False`` an existing ``target`` is a ``FileExistsError`` and ``new`` is kept.
    """
    new, target = Path(new), Path(target)
    with locked(target.parent):
        clean_leftovers(target.parent)
        present = target.exists() or target.is_symlink()
        if present and not overwrite:
            raise FileExistsError(f"{target} already exists")
        old = temporary_name(target, "old") if present else None
        if old is not None:
            target.rename(old)
        try:
            new.rename(target)
        except BaseException:
            if old is not None:
                old.rename(target)
            raise
        fsync_dir(target.parent)
        if old is not None:
            remove_folder(old)
    return target


def remove_folder(folder: Path | str) -> None:
    """Delete ``folder`` so that a crash mid-way leaves a hidden leftover, never a half folder under its name."""
    folder = Path(folder)
    doomed = temporary_name(folder, "deleting")
    try:
        folder.rename(doomed)
    except FileNotFoundError:
        return
    fsync_dir(folder.parent)
    shutil.rmtree(doomed, ignore_errors=True)


@contextmanager
def build_folder(target: Path | str, overwrite: bool = True) -> Iterator[Path]:
    """Fill a temporary folder beside ``target``; when the block ends, fsync it and swap it in.

    ``with build_folder(out) as folder: model.save_pretrained(folder)``: readers of ``out``
    see the previous folder or the complete new one, never half of one. An error (or an
    interrupt) inside the block deletes the temporary folder and leaves ``target`` as it
    was. See :func:`replace_folder` for ``overwrite`` and for what a crash leaves. Used by
    the data cache (02), checkpoints and the fine-tuned model (05), releases (10) and
    registry versions (11), LoRA adapters (06), the student build (``tools.student``).
    """
    building = temporary_folder_beside(target)
    try:
        yield building
        fsync_tree(building)
        replace_folder(building, target, overwrite=overwrite)
    except BaseException:
        remove_path(building)
        raise
