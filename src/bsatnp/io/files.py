"""Crash-safe file mechanics shared by checkpoints, training logs and score caches."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path


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

    A crash at any point leaves either the previous file or the new one, never a mix.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
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
