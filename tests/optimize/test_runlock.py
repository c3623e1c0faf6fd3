"""Run folders are locked, and a killed run is usable as it stands.

Real processes throughout: a second ``optimize`` into a running folder is refused naming the holder; the lock of a
run killed with SIGKILL is stale, refused without ``--resume`` (saying so) and taken over with it; the killed
run's bundle reconstructs (``recon --with``) and exports, and says it is partial until the resumed run ends.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from mrbridge.errors import InputError
from mrbridge.raw.mrd import write_mrd
from mrbridge.recon.pipeline import Recon
from mrbridge.runlock import LOCK_NAME, RunLock
from mrbridge.sequence.builders import build
from mrbridge.sequence.protocol import parse_protocol
from mrbridge.sim.simulate import simulate
from mrbridge.twin.phantoms import open_twin
from tests.helpers import REPO
from tests.optimize.tasks import GRE, gre_from_zero, write

#: holds the lock of argv[1] (and says so) until killed
HOLDER = """
import sys, time
from mrbridge.runlock import RunLock
lock = RunLock(sys.argv[1])
lock.acquire()
print("locked", flush=True)
time.sleep(120)
"""
ENV = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def _cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "mrbridge", *args], cwd=REPO, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(proc: subprocess.Popen[str], timeout: float = 120) -> tuple[int, str, str]:
    stdout, stderr = proc.communicate(timeout=timeout)
    return proc.returncode, stdout, stderr


def _one_line_error(result: tuple[int, str, str], *fragments: str) -> None:
    code, stdout, stderr = result
    assert code == 2, stdout + stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1, stderr
    for fragment in fragments:
        assert fragment in stderr, stderr


def _wait_for(what: str, done: Callable[[], bool], proc: subprocess.Popen[str] | None = None,
              seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while not done():
        assert proc is None or proc.poll() is None, f"the process ended (exit {proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {seconds} s"
        time.sleep(0.05)


def _holder(folder: Path) -> subprocess.Popen[str]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(folder)], stdout=subprocess.PIPE, text=True,
                            env=ENV)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "locked", proc.wait(timeout=30)
    return proc


def _kill(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)


def test_a_held_lock_is_refused_and_a_killed_holders_lock_is_taken_over_with_resume(tmp_path: Path) -> None:
    run = tmp_path / "run"
    holder = _holder(run)
    try:
        for resume in (False, True):  # a live holder is never taken over
            with pytest.raises(InputError, match=f"in use by another optimize run \\(PID {holder.pid} on host "
                                                 f"{socket.gethostname()}, started 20"):
                RunLock(run, resume=resume).acquire()
    finally:
        _kill(holder)
    with pytest.raises(InputError, match=f"killed run left its lock \\(PID {holder.pid} .*--resume"):
        RunLock(run).acquire()
    with RunLock(run, resume=True) as lock:
        assert lock.taken_over is not None and lock.taken_over["pid"] == holder.pid
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()
        with pytest.raises(InputError, match=f"PID {os.getpid()}"):  # one holder, even in one process
            RunLock(run, resume=True).acquire()
    assert (run / LOCK_NAME).read_text() == ""  # released cleanly: free, and not stale
    with RunLock(run) as lock:
        assert lock.taken_over is None


def test_a_task_refused_at_its_start_leaves_no_run_folder(tmp_path: Path) -> None:
    task = gre_from_zero()
    task["data"]["twin"] = str(tmp_path / "missing.h5")
    code, _, stderr = _finish(_cli("optimize", str(write(tmp_path / "task.yaml", task)), "-o",
                                   str(tmp_path / "run")))
    assert code == 2, stderr
    assert not (tmp_path / "run").exists()


def gre_raw(path: Path) -> Path:
    """ISMRMRD raw data of the task's GRE on its twin (to reconstruct with the bundle)."""
    seq = build(parse_protocol(GRE))
    write_mrd(simulate(seq, open_twin("builtin:brain", matrix=8), noise=0.0, seed=0).to("cpu"), path)
    return path


def _summary(run: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((run / "summary.json").read_text())
        return data
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


@pytest.mark.slow
def test_two_runs_into_one_folder_then_sigkill_then_the_partial_bundle_then_resume(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    total = 160
    task = write(tmp_path / "task.yaml", gre_from_zero(iterations=total, checkpoint_every=4, validate_every=8))
    run = tmp_path / "run"
    first, second = _cli("optimize", str(task), "-o", str(run)), _cli("optimize", str(task), "-o", str(run))
    raw = gre_raw(tmp_path / "raw.h5")  # meanwhile

    # started together: one runs, the other is refused naming it
    _wait_for("refusal", lambda: first.poll() is not None or second.poll() is not None)
    loser, winner = (first, second) if first.poll() is not None else (second, first)
    _one_line_error(_finish(loser), str(run), f"PID {winner.pid} on host {socket.gethostname()}")

    # killed after a few checkpoints: the bundle is the last checkpoint's, and says it is partial
    _wait_for("checkpoint", lambda: int(_summary(run).get("steps", 0)) >= 8, winner)
    _kill(winner)
    summary = _summary(run)
    assert summary["partial"] is True and 8 <= summary["steps"] < total
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=False)
    assert state["step"] >= summary["steps"]  # the bundle is never ahead of the checkpoint
    assert Recon.load(run).config.method == "adjoint"  # what compare --with loads
    image, seq = tmp_path / "image.h5", tmp_path / "run.seq"
    jobs = [_cli("recon", str(raw), "--with", str(run), "-o", str(image)),
            _cli("export", str(run), "-o", str(seq), "--force"),
            _cli("optimize", str(task), "-o", str(run))]
    recon, export, again = (_finish(job) for job in jobs)
    assert recon[0] == 0 and image.is_file(), recon[2]
    assert export[0] == 0 and seq.is_file(), export[2]
    _one_line_error(again, str(run), f"PID {winner.pid}", "--resume")

    code, _, stderr = _finish(_cli("optimize", str(task), "-o", str(run), "--resume"), timeout=300)
    assert code == 0, stderr
    summary = _summary(run)
    assert summary["partial"] is False and summary["steps"] == total and summary["final_step"] == total
    assert (run / LOCK_NAME).read_text() == ""
    assert [p.name for p in run.iterdir() if p.name.endswith(".tmp")] == []
