"""One run per run folder: an exclusive lock, and who holds it.

Two processes training into one folder interleave their metrics, overwrite each other's ``recipe.toml``
and delete each other's half-written checkpoints. So the engine holds an exclusive lock on
``<run folder>/run.lock`` from set-up until :meth:`Engine.fit` returns (or :meth:`Engine.close`); a second
start is refused with a message naming the holder (pid, host, command line, start time), read from the
lock file.

The lock is ``flock`` on that file, which the kernel drops when its process dies, however it dies: a
kill -9 can leave the file behind but never a held lock. A leftover file therefore means its writer
ended without cleaning up; the next start takes it over and says whose it was. The file is removed on
release while the lock is still held; a process that opened it just before checks after locking that
the path still names the file it locked, and retries otherwise, so two holders are impossible. Where
the file system cannot lock (some network mounts) the holder's pid is checked instead, on this host.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import logging
import os
import shlex
import socket
import sys
from pathlib import Path
from typing import Optional

from distillkit.errors import RunFolderError
from distillkit.files import writing

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: pid-based check only
    fcntl = None

log = logging.getLogger("distillkit")

LOCK_NAME = "run.lock"


def holder_info() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "command": shlex.join(sys.argv),
            "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds")}


def describe_holder(info: dict) -> str:
    return (f"process {info.get('pid', '?')} on {info.get('host', '?')} (started {info.get('started', '?')}, "
            f"command: {info.get('command', '?')})")


def _read(fd: int) -> Optional[dict]:
    os.lseek(fd, 0, os.SEEK_SET)
    raw = b""
    while chunk := os.read(fd, 65536):
        raw += chunk
    try:
        info = json.loads(raw.decode("utf-8", "replace"))
    except ValueError:
        return None
    return info if isinstance(info, dict) else None


def _alive(info: dict) -> bool:
    """Whether the holder may still run: on this host, whether its pid exists; elsewhere we cannot tell."""
    if info.get("host") != socket.gethostname():
        return True
    try:
        os.kill(int(info.get("pid", -1)), 0)
    except (ProcessLookupError, ValueError, OverflowError):
        return False
    except PermissionError:
        return True
    return True


class RunLock:
    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self._fd: Optional[int] = None
        self._created_folder = False
        #: the holder whose leftover lock was taken over at the last acquire (None if there was none)
        self.took_over: Optional[dict] = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock (a no-op if held); :class:`RunFolderError` naming the holder if another has it."""
        if self.held:
            return
        advice = "choose another run.output_dir"
        with writing("the run folder", self.folder, advice):
            if not self.folder.exists():
                self.folder.mkdir(parents=True)
                self._created_folder = True
            elif not self.folder.is_dir():
                raise RunFolderError(f"run folder {self.folder} is an existing file, not a folder; {advice}")
            while True:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
                if self._lock(fd) and self._still_linked(fd):
                    break
                os.close(fd)
            previous = _read(fd)
            os.ftruncate(fd, 0)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, json.dumps(holder_info()).encode())
        self._fd = fd
        self.took_over = previous
        if previous:
            log.warning("run folder %s: taking over the lock left by %s, which ended without releasing it "
                        "(killed?)", self.folder, describe_holder(previous))

    def _lock(self, fd: int) -> bool:
        """True when locked; raises the 'in use' error when another process holds the lock."""
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                self._refuse(fd)
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
        info = _read(fd)  # no file locks here: trust the holder's pid where it can be checked
        if info and _alive(info):
            self._refuse(fd)
        return True

    def _refuse(self, fd: int) -> None:
        info = _read(fd)
        os.close(fd)
        who = describe_holder(info) if info else "another process (it has not written its name yet)"
        raise RunFolderError(
            f"run folder {self.folder} is in use by {who}; two runs in one folder would overwrite each other's "
            f"checkpoints and metrics. Wait for it to finish, stop it, or choose another run.output_dir.")

    def _still_linked(self, fd: int) -> bool:
        try:
            return os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:  # released (and removed) between our open and our lock
            return False

    def release(self) -> None:
        """Drop the lock and remove the file; remove the folder too if this lock created it and it is empty."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        with contextlib.suppress(OSError):
            self.path.unlink()
        os.close(fd)  # closing drops the flock
        if self._created_folder:
            with contextlib.suppress(OSError):
                self.folder.rmdir()  # only if nothing else was written
            self._created_folder = False

    def __del__(self):  # an engine that is dropped without close() leaves no lock behind
        with contextlib.suppress(Exception):
            self.release()
