"""The lock of a run folder: one ``optimize`` at a time writes into a bundle.

The lock is an OS lock (``fcntl.flock``) on ``RUN/.lock``, which also holds its holder (PID, host, start time)
as JSON. The OS releases the lock when its process ends, however it ends; the holder info is erased only by a
clean release. So:

- lock taken by another process → that run is alive: refused, naming the holder;
- lock free but holder info left in the file → a run was killed there (stale): taken over only when the caller
  resumes (``--resume``), since the folder holds that run's partial results;
- lock free and no holder info → free.

Where the file system has no ``flock`` the holder's PID is checked instead (alive on this host: held).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from mrbridge.atomic import pid_alive
from mrbridge.errors import InputError

LOCK_NAME = ".lock"


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "holder unknown"
    return f"PID {holder.get('pid', '?')} on host {holder.get('host', '?')}, started {holder.get('started', '?')}"


class RunLock:
    """The lock of run folder ``folder`` (created if needed); ``acquire`` it, ``release`` it (or use ``with``).

    >>> import tempfile
    >>> run = Path(tempfile.mkdtemp()) / "gre0"
    >>> with RunLock(run):
    ...     RunLock(run).acquire()  # a second run into the same folder is refused
    Traceback (most recent call last):
    ...
    mrbridge.errors.InputError: ...
    """

    def __init__(self, folder: str | Path, *, resume: bool = False) -> None:
        self.folder, self.resume = Path(folder), resume
        self.path = self.folder / LOCK_NAME
        self.fd: int | None = None
        #: the holder info found in a stale lock that was taken over (None when the lock was free)
        self.taken_over: dict[str, Any] | None = None

    def __enter__(self) -> RunLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def acquire(self) -> None:
        """Take the lock or raise InputError naming the live holder (or, without resume, the killed one)."""
        if self.fd is not None:
            return
        for _ in range(20):  # retried only when the file is replaced while we lock it
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise InputError(f"{self.folder}: cannot create the run folder ({e.strerror or e})") from e
            fd = self._open()
            try:
                held = self._flock(fd)
                if held:
                    holder = self._read(fd)
                    for _ in range(25):  # the holder writes its info right after locking
                        if holder:
                            break
                        time.sleep(0.02)
                        holder = self._read(fd)
                    raise InputError(f"{self.folder}: in use by another optimize run ({_describe(holder)}); "
                                     "wait for it to end or choose another output folder")
                if self._replaced(fd):
                    os.close(fd)
                    continue
                left = self._read(fd)
                if left and not self.resume:
                    raise InputError(f"{self.folder}: a killed run left its lock ({_describe(left)}, no longer "
                                     "running); continue it with --resume or choose another output folder")
                self.taken_over = left or None
                self._write(fd)
            except BaseException:
                os.close(fd)
                raise
            self.fd = fd
            return
        raise InputError(f"{self.path}: keeps being replaced; expected one lock file")

    def release(self) -> None:
        """Erase the holder info and free the lock (the file stays: removing it would race new holders)."""
        if self.fd is None:
            return
        fd, self.fd = self.fd, None
        try:
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
        except OSError:
            pass
        finally:
            os.close(fd)

    # ---------------------------------------------------------------------------------------------------
    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as e:
            raise InputError(f"{self.path}: cannot open the run lock ({e.strerror or e}); expected a writable "
                             "output folder") from e

    def _flock(self, fd: int) -> bool:
        """Lock ``fd``; True when another process holds it (alive)."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES):
                return True
            # no flock here (some network or FUSE file systems): a holder alive on this host holds it
            holder = self._read(fd)
            return bool(holder) and holder.get("host") == socket.gethostname() and \
                isinstance(holder.get("pid"), int) and holder["pid"] != os.getpid() and pid_alive(holder["pid"])

    def _replaced(self, fd: int) -> bool:
        """Whether the path no longer names the file ``fd`` locks (removed or replaced meanwhile)."""
        try:
            return os.stat(self.path).st_ino != os.fstat(fd).st_ino
        except FileNotFoundError:
            return True

    @staticmethod
    def _read(fd: int) -> dict[str, Any]:
        """The holder info in the lock file ({} when none; a holder writing it right now is waited for)."""
        text = b""
        for _ in range(10):
            text = os.pread(fd, 65536, 0)
            try:
                info = json.loads(text) if text.strip() else {}
                return info if isinstance(info, dict) else {"host": "?", "pid": "?"}
            except (json.JSONDecodeError, UnicodeDecodeError):
                time.sleep(0.02)
        return {"pid": "?", "host": "?", "started": "?"} if text.strip() else {}

    @staticmethod
    def _write(fd: int) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")}
        data = (json.dumps(info) + "\n").encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        try:
            os.fsync(fd)
        except OSError:
            pass
