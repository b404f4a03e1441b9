"""A run directory: one process at a time, and a fresh run never replaces a finished one.

A training or fine-tuning run writes ``log.jsonl``, ``last.safetensors`` and
``best.safetensors`` into its directory. :func:`claim` takes the directory for this
process with a lock file (``run.lock``: the holder's pid, host and start time, created
with ``O_EXCL``), so a second process refuses with one line instead of interleaving
logs or deleting the first one's files; :func:`release` gives it back. A lock whose
holder no longer runs on this machine is stale: it is reported (a warning naming the
dead pid) and taken over. :func:`refuse_existing_run` keeps a fresh run from writing over
a run that is already there.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import socket
import time
import warnings
from pathlib import Path

from bsatnp.io.files import process_alive

RUN_FILES = ("log.jsonl", "last.safetensors", "best.safetensors")
LOCK_NAME = "run.lock"

_held: dict[Path, int] = {}
"""Directories this process holds, with how many claims (claims nest)."""


def claim(out_dir: str | os.PathLike[str]) -> Path:
    """Take ``out_dir`` for this process (created if missing); claims by one process nest.

    Returns:
        The resolved directory.

    Raises:
        ValueError: If another live process holds it (the message names its pid, host and
            start time, and the lock file to delete if that process is known to be gone).
    """
    directory = Path(out_dir).resolve()
    if directory in _held:
        _held[directory] += 1
        return directory
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / LOCK_NAME
    holder = {"pid": os.getpid(), "host": socket.gethostname(),
              "since": time.strftime("%Y-%m-%d %H:%M:%S")}
    for _ in range(2):  # a second try after removing a stale lock
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            _refuse_or_clear(lock, directory)
            continue
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            json.dump(holder, file)
        _held[directory] = 1
        return directory
    raise ValueError(f"{directory} is being claimed by another process at this moment; "
                     "choose another --out directory")


def release(out_dir: str | os.PathLike[str], every_claim: bool = False) -> None:
    """Undo one :func:`claim` (or all of them); the last removes the lock file.

    A no-op for a directory this process does not hold.
    """
    directory = Path(out_dir).resolve()
    if directory not in _held:
        return
    _held[directory] = 0 if every_claim else _held[directory] - 1
    if _held[directory] == 0:
        del _held[directory]
        with contextlib.suppress(FileNotFoundError):
            (directory / LOCK_NAME).unlink()


@contextlib.contextmanager
def claimed(out_dir: str | os.PathLike[str]):  # noqa: ANN201 (a context manager)
    """Hold the directory for a ``with`` block (:func:`claim`, then :func:`release`)."""
    claim(out_dir)
    try:
        yield
    finally:
        release(out_dir)


def refuse_existing_run(out_dir: Path, resume: Path | None, resume_hint: str) -> None:
    """Raise if ``out_dir`` holds run files that a run not resumed from there would replace.

    Resuming a checkpoint that lives in ``out_dir`` continues that run: allowed (and a
    missing checkpoint is left for the loader to report).

    Args:
        out_dir: The run directory.
        resume: The checkpoint a resumed run continues, or ``None`` for a fresh run.
        resume_hint: How the user continues the run there; ``{last}`` stands for its
            ``last.safetensors`` (e.g. ``"--resume {last}"``).
    """
    if resume is not None and (not resume.is_file() or (
            out_dir.exists() and resume.resolve().parent == out_dir.resolve())):
        return
    found = [name for name in RUN_FILES if (out_dir / name).exists()]
    if not found:
        return
    what = "a fresh run" if resume is None else f"resuming {resume} there"
    raise ValueError(
        f"{out_dir} already holds a training run ({', '.join(found)}), which {what} would "
        f"overwrite; to continue it pass {resume_hint.format(last=out_dir / RUN_FILES[1])}, "
        "or choose another --out directory "
        "(--overwrite, or overwrite=True in Python, writes over it)"
    )


def _refuse_or_clear(lock: Path, directory: Path) -> None:
    """Raise if ``lock`` names a live holder; remove it (with a warning) if stale."""
    try:
        holder = json.loads(lock.read_text(encoding="utf-8"))
        pid, host, since = int(holder["pid"]), str(holder["host"]), str(holder["since"])
    except FileNotFoundError:
        return  # released meanwhile
    except (OSError, ValueError, KeyError, TypeError):
        if time.time() - _mtime(lock) < 5:  # being written right now
            raise ValueError(f"{directory} is being claimed by another process; choose "
                             "another --out directory") from None
        pid, host, since = -1, socket.gethostname(), "unknown"  # a torn lock: stale
    here = socket.gethostname()
    if host != here:
        raise ValueError(f"{directory} is in use by process {pid} on host {host} (since "
                         f"{since}); if that run is gone, delete {lock}")
    if process_alive(pid):
        raise ValueError(f"{directory} is in use by another run (process {pid}, since "
                         f"{since}); wait for it to finish or choose another --out directory")
    warnings.warn(f"{lock}: a stale lock of process {pid} (since {since}), which no longer "
                  "runs; taking the directory over", stacklevel=3)
    with contextlib.suppress(FileNotFoundError):
        lock.unlink()


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


@atexit.register
def _release_all() -> None:
    for directory in list(_held):
        release(directory, every_claim=True)
