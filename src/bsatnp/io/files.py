"""Crash-safe file mechanics shared by checkpoints, training logs and score caches."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from pathlib import Path

_TEMP_SUFFIX = ".tmp"
_TEMP_RANDOM = "[a-z0-9_]{8}"  # the random part of a ``tempfile.mkstemp`` name


def complete_lines(path: Path) -> str:
    """The text of ``path`` up to its last newline, cutting a torn last line from the file.

    A process killed in the middle of appending a line leaves a partial last line; it is
    removed (atomically) so that the next append starts on a fresh line. A missing file
    reads as ``""``.
    """
    if not path.exists():
        return ""
    text = path.read_text(encoding="utf-8")
    complete = text[: text.rfind("\n") + 1]
    if complete != text:
        write_atomic(path, complete.encode("utf-8"))
    return complete


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync it, then rename over ``path``.

    A crash at any point leaves either the previous file or the new one, never a mix; a
    kill can also leave the hidden temp file (``.<name>.<8 random chars>.tmp``) behind.
    Each successful write removes such orphans of the same target that are older than its
    own temp file (:func:`_remove_orphans`).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=_TEMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as file:
            started_ns = os.fstat(file.fileno()).st_mtime_ns
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; these are ordinary files
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    _remove_orphans(path, started_ns)


def _remove_orphans(path: Path, before_ns: int) -> None:
    """Delete the temp files that killed writes of ``path`` left behind.

    Only names of exactly :func:`write_atomic`'s pattern for this target qualify, and only
    files last modified before ``before_ns`` (the creation of the current write's temp file):
    temp files of other targets, and any created or written to since the current write
    began, are left alone.
    """
    pattern = re.compile(rf"\.{re.escape(path.name)}\.{_TEMP_RANDOM}{re.escape(_TEMP_SUFFIX)}")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        if not pattern.fullmatch(name):
            continue
        orphan = path.parent / name
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to delete
            if orphan.is_file() and orphan.stat().st_mtime_ns < before_ns:
                orphan.unlink()


def _fsync_dir(directory: Path) -> None:
    """Persist the rename itself (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
