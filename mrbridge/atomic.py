"""Atomic file writes: a reader (or a kill) never sees half a file.

A write goes to a hidden temporary file beside the target, ``.NAME.HOST-PID-RANDOM.tmp``, which is renamed onto
the target when complete. The temporary name carries its writer (a hash of the host name and the PID), so a
write killed before its rename (SIGKILL, power loss) is cleaned up by the next write into the same folder: a
temporary file whose writer is no longer alive on this host is removed (one from another host, or of an older
naming, once it is an hour old). Outputs get the usual permissions: the temporary file is created with mode
0o666 less the umask, as ``open`` would, not 0o600 as ``tempfile.mkstemp`` would.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

#: the host part of temporary names: 8 hex digits, the same for every process on this machine
HOST = hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]
#: age after which a temporary file whose writer cannot be checked (another host, older naming) counts as stale
STALE_AFTER_S = 3600.0
#: a temporary name ``.NAME.HOST-PID-RANDOM.tmp``; a writer may add a suffix to it (``.tmp.seq``)
_MINE = re.compile(r"\..+\.(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]+)-[0-9a-f]{8}\.tmp(?:\..+)?")
#: temporary names of ``tempfile.mkstemp`` (before the writer was named): ``.NAME.XXXXXXXX.tmp``
_OLD = re.compile(r"[a-z0-9_]{8}\.tmp")


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this host (a process of another user counts as alive)."""
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


def temp_name(name: str) -> str:
    """The hidden temporary name for a target file called ``name``, naming this process as its writer."""
    return f".{name}.{HOST}-{os.getpid()}-{secrets.token_hex(4)}.tmp"


def _stale(entry: os.DirEntry[str], owner: re.Match[str] | None, now: float) -> bool:
    if owner is not None and owner["host"] == HOST:
        return not pid_alive(int(owner["pid"]))
    try:
        return now - entry.stat(follow_symlinks=False).st_mtime > STALE_AFTER_S
    except OSError:
        return False


def remove_stale_temps(folder: str | Path, name: str | None = None) -> list[Path]:
    """Remove temporary files in ``folder`` left by killed writes; returns what was removed.

    Every temporary file of this module whose writer is gone is removed; files of the older ``mkstemp`` naming
    only for the target ``name`` (and only when an hour old). Files of live writers are left alone.
    """
    removed: list[Path] = []
    now = time.time()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if not entry.name.startswith(".") or ".tmp" not in entry.name:
            continue
        owner = _MINE.fullmatch(entry.name)
        legacy = name is not None and entry.name.startswith(f".{name}.") and \
            _OLD.fullmatch(entry.name, len(name) + 2) is not None
        if (owner is None and not legacy) or not _stale(entry, owner, now):
            continue
        try:
            if entry.is_file(follow_symlinks=False):
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            pass  # gone already, or not ours to remove
    return removed


def _fsync(path: Path) -> None:
    """Flush ``path``'s data to the disk (best effort: some file systems cannot)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` (an empty file); on success rename it onto ``path``, on error
    remove it. Temporary files of killed writes in the folder are removed first.

    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "out.txt"
    >>> with atomic_path(target) as tmp:
    ...     _ = tmp.write_text("all or nothing")
    >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
    ('all or nothing', ['out.txt'])
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    tmp = path.with_name(temp_name(path.name))
    # created as open() creates files (0o666 less the umask); O_EXCL: never someone else's file
    os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_CLOEXEC", 0), 0o666))
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
