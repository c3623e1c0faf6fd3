"""Atomic writes: a write killed with SIGKILL leaves a temporary file that the next write into the folder removes
(one of a live writer stays); outputs get the umask's permissions; a failed write leaves the target as it was."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mrbridge.atomic import STALE_AFTER_S, atomic_path, atomic_write_bytes, atomic_write_text
from tests.helpers import REPO

#: a writer that starts writing ``argv[1]``, says so, and waits (to be killed mid-write)
WRITER = """
import sys, time
from mrbridge.atomic import atomic_path
with atomic_path(sys.argv[1]) as tmp:
    tmp.write_text("half of it")
    tmp.with_name(tmp.name + ".seq").write_text("a library's own temporary name")  # as pypulseq's
    print(tmp, flush=True)
    time.sleep(120)
"""


def _temps(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.name.startswith(".") and ".tmp" in p.name)


def _writer(target: Path) -> tuple[subprocess.Popen[str], Path]:
    """A process inside a write of ``target``, and its temporary file."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()  # bounded: the writer prints at once, or dies (EOF)
    assert line, f"the writer did not start (exit {proc.wait(timeout=30)})"
    return proc, Path(line)


@pytest.fixture
def umask() -> Iterator[None]:
    old = os.umask(0o022)
    os.umask(old)
    yield
    os.umask(old)


def test_a_killed_write_is_cleaned_up_by_the_next_write_to_the_folder(tmp_path: Path) -> None:
    target = tmp_path / "sequence.json"
    target.write_text("the old one")
    killed, left = _writer(target)
    alive, working = _writer(tmp_path / "recon.pt")
    try:
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        assert left.exists() and left.parent == tmp_path and left.name.startswith(".sequence.json.")
        assert len(_temps(tmp_path)) == 4
        assert target.read_text() == "the old one"  # the kill lost the new file, not the old one

        atomic_write_text(tmp_path / "summary.json", "{}")  # another file, same folder
        # the killed writer's files are gone, the live writer's stay
        assert _temps(tmp_path) == [working, working.with_name(working.name + ".seq")]
        assert (tmp_path / "summary.json").read_text() == "{}"
    finally:
        alive.send_signal(signal.SIGKILL)
        alive.wait(timeout=30)
    atomic_write_text(target, "the new one")
    assert _temps(tmp_path) == []
    assert target.read_text() == "the new one"


def test_temporary_files_of_unknown_writers_are_removed_only_when_old(tmp_path: Path) -> None:
    """A ``mkstemp``-named file of the same target (earlier versions) and one from another host: kept while
    recent (their writer may be alive), removed once older than STALE_AFTER_S; other hidden files never."""
    legacy = tmp_path / ".out.h5.k2j_9x0a.tmp"
    foreign = tmp_path / ".out.h5.00000000-1-0123abcd.tmp"
    user = tmp_path / ".notes.tmp"
    for p in (legacy, foreign, user):
        p.write_text("x")
    atomic_write_bytes(tmp_path / "out.h5", b"1")
    assert legacy.exists() and foreign.exists() and user.exists()
    old = time.time() - STALE_AFTER_S - 60
    for p in (legacy, foreign, user):
        os.utime(p, (old, old))
    atomic_write_bytes(tmp_path / "out.h5", b"2")
    assert not legacy.exists() and not foreign.exists() and user.exists()
    assert (tmp_path / "out.h5").read_bytes() == b"2"


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_outputs_respect_the_umask(tmp_path: Path, umask: None, mask: int, mode: int) -> None:
    os.umask(mask)
    atomic_write_text(tmp_path / "a.json", "{}")
    with atomic_path(tmp_path / "b.h5") as tmp:  # a writer that replaces the temporary file (as HDF5 may)
        tmp.unlink()
        tmp.write_bytes(b"data")
    for name in ("a.json", "b.h5"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


def test_a_failed_write_leaves_the_target_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "out.json"
    target.write_text("kept")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("broken")
        raise RuntimeError("the writer failed")
    assert target.read_text() == "kept"
    assert _temps(tmp_path) == []
