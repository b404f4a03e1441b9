"""Crash-safe file mechanics shared by checkpoints, training logs and score caches."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable
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


def write_atomic(path: Path, data: bytes | Callable[[Path], None]) -> None:
    """Write ``data`` to a temp file beside ``path``, fsync it, then rename over ``path``.

    ``data`` is the bytes, or a function that writes the file at the path it is given
    (e.g. a netCDF written block by block, never held in memory whole).

    A crash at any point leaves either the previous file or the new one, never a mix; a
    kill can also leave the hidden temp file (``.<name>.<pid>.<8 random chars>.tmp``)
    behind. Each successful write removes such orphans of the same target whose writer is
    gone (:func:`_remove_orphans`). A failed write (a full disk: ``OSError(ENOSPC)``)
    removes its temp file and leaves the previous ``path`` as it was.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.",
                               suffix=_TEMP_SUFFIX)
    started_ns = os.fstat(fd).st_mtime_ns
    try:
        if callable(data):
            os.close(fd)
            data(Path(tmp))
            fd = os.open(tmp, os.O_RDWR)
        with os.fdopen(fd, "r+b" if callable(data) else "wb") as file:
            if not callable(data):
                file.write(data)
                file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; these are ordinary files
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, OSError) and err.filename is None:  # say which file it was
            kept = "the previous file is kept" if path.exists() else "nothing was written"
            raise OSError(err.errno, f"cannot write {path} ({err.strerror or err}); "
                          f"{kept}") from err
        raise
    _fsync_dir(path.parent)
    _remove_orphans(path, started_ns)


def _remove_orphans(path: Path, before_ns: int) -> None:
    """Delete the temp files that killed writes of ``path`` left behind.

    Only names of exactly :func:`write_atomic`'s pattern for this target qualify, and only
    those of a writer that is gone: a process id that no longer runs on this machine, or
    this process's own earlier writes (modified before ``before_ns``, the creation of the
    current write's temp file). Another live process's temp file is never touched.
    """
    pattern = re.compile(
        rf"\.{re.escape(path.name)}\.(\d+)\.{_TEMP_RANDOM}{re.escape(_TEMP_SUFFIX)}")
    try:
        names = os.listdir(path.parent)
    except OSError:
        return
    for name in names:
        match = pattern.fullmatch(name)
        if match is None:
            continue
        pid = int(match.group(1))
        if pid != os.getpid() and process_alive(pid):
            continue
        orphan = path.parent / name
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to delete
            if orphan.is_file() and (pid != os.getpid() or orphan.stat().st_mtime_ns < before_ns):
                orphan.unlink()


def process_alive(pid: int) -> bool:
    """Whether a process with id ``pid`` runs on this machine (one we may not signal counts)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def existing_file(path: str | os.PathLike[str], what: str = "") -> Path:
    """``path`` as a path, after checking that it is a file to read.

    Args:
        path: The file.
        what: What it is, for messages (``"checkpoint"``, ``"--observations"``).

    Raises:
        IsADirectoryError: If it is a directory (said so, not reported as missing).
        FileNotFoundError: If nothing is there, or something that is not a regular file.
    """
    path = Path(path)
    name = f"{what} {path}" if what else str(path)
    if path.is_dir():
        raise IsADirectoryError(f"{name} is a directory, not a file: give a file in it")
    if not path.is_file():
        raise FileNotFoundError(f"{name} is not a regular file" if path.exists()
                                else f"{name} does not exist")
    return path


def refuse_overwriting_inputs(output: str | os.PathLike[str],
                              inputs: dict[str, str | os.PathLike[str] | None]) -> Path:
    """``output`` as a path, after checking that writing it cannot destroy an input.

    Args:
        output: The file about to be written.
        inputs: The files read, by the option that named them (``{"--observations": ...}``).

    Raises:
        ValueError: If ``output`` is an existing directory, or names one of the inputs (the
            same path, or the same file through a link or another spelling).
    """
    out = Path(output)
    if out.is_dir():
        raise ValueError(f"--output {out} is a directory; give a file name such as "
                         f"{out / 'predictions.csv'}")
    for option, given in inputs.items():
        if given is None:
            continue
        source = Path(given)
        same = out.resolve() == source.resolve()
        if not same and out.exists() and source.exists():
            with contextlib.suppress(OSError):
                same = os.path.samefile(out, source)
        if same:
            raise ValueError(f"--output {out} is the {option} file {source}; writing it would "
                             "destroy your input: choose another output name")
    return out


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
