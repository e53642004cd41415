"""Writing into a run folder: every failure is one message, text files are replaced atomically, and every
file gets the mode an ordinary file gets.

A training run writes for hours into a folder that can fill up, be remounted read-only or be replaced by
a file; an ``OSError`` from deep inside safetensors or json would reach the user as a traceback. Each
write goes through :func:`writing`, which turns it into a :class:`~distillkit.errors.RunFolderError`
naming what was being written, where, why (in words: "the disk is full") and what to do.

Modes: safetensors writes through a temporary file created with mode 0600 and renamed into place, so
weight files came out unreadable to a group that could read every other file of the run. Weight files
are given the mode this process gives any new file (``0666 & ~umask``: 0644 under the usual umask 022).
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Iterable, Iterator

from distillkit.errors import RunFolderError

_REASONS = {
    errno.ENOSPC: "the disk is full",
    errno.EDQUOT: "the disk quota is exhausted",
    errno.EACCES: "permission denied (the folder is not writable by this user)",
    errno.EPERM: "permission denied",
    errno.EROFS: "the file system is read-only",
    errno.ENOTDIR: "a part of the path is a file, not a folder",
    errno.EISDIR: "a folder is in the way",
    errno.EEXIST: "a file is in the way",
    errno.ENAMETOOLONG: "the path is too long",
}


def describe_os_error(exc: OSError) -> str:
    return _REASONS.get(exc.errno, exc.strerror or str(exc))


def folder_error(exc: OSError, what: str, path, advice: str = "") -> RunFolderError:
    where = getattr(exc, "filename", None) or path
    msg = f"cannot write {what} ({where}): {describe_os_error(exc)}"
    if exc.errno in (errno.ENOSPC, errno.EDQUOT) and not advice:
        advice = "free some space and run the same command to resume"
    return RunFolderError(msg + (f"; {advice}" if advice else ""))


@contextlib.contextmanager
def writing(what: str, path, advice: str = "") -> Iterator[None]:
    """Turn an ``OSError`` inside the block into one :class:`RunFolderError` message."""
    try:
        yield
    except OSError as exc:
        raise folder_error(exc, what, path, advice) from exc


def write_text_atomic(path: Path, text: str) -> None:
    """Write ``path`` through a temporary sibling and a rename: a reader (or a kill) never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def ordinary_mode(folder: Path) -> int:
    """The permission bits a new file in ``folder`` gets from ``open()`` under this process's umask.

    Measured with a probe file rather than with ``os.umask``, which would briefly change the umask of
    every thread of the process."""
    probe = Path(folder) / f".mode-probe-{os.getpid()}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        return os.fstat(fd).st_mode & 0o777
    finally:
        os.close(fd)
        probe.unlink()


def give_ordinary_mode(files: Iterable[Path], folder: Path) -> None:
    """Give ``files`` (weights written 0600 by safetensors) the mode of any other new file in ``folder``."""
    mode = ordinary_mode(folder)
    for f in files:
        os.chmod(f, mode)
