"""A run killed with SIGKILL and resumed ends exactly where an uninterrupted run ends."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mrbridge.errors import InputError
from mrbridge.optimize.trainer import optimize
from tests.helpers import REPO
from tests.optimize.tasks import GRE, gre_from_zero, write

RUNNER = Path(__file__).with_name("runner.py")


def _run(task: Path, out: Path) -> subprocess.Popen[bytes]:
    # bit-exact across processes: one thread, and MKL results independent of memory alignment
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_CBWR": "AUTO,STRICT"}
    return subprocess.Popen([sys.executable, str(RUNNER), str(task), str(out)], env=env, cwd=REPO)


def _rows(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "history.csv").read_text().splitlines()))


@pytest.mark.slow
def test_sigkill_and_resume_equals_an_uninterrupted_run(tmp_path: Path) -> None:
    task = write(tmp_path / "task.yaml", gre_from_zero(iterations=24, checkpoint_every=3, validate_every=8))
    whole = tmp_path / "uninterrupted"  # another name length: another heap layout
    assert _run(task, whole).wait(timeout=300) == 0

    killed = tmp_path / "killed"
    proc = _run(task, killed)
    deadline = time.monotonic() + 300
    rows, grew = 0, list[float]()  # when history.csv grew (each checkpoint writes it)
    while rows < 7 or len(grew) < 2:  # past two checkpoints, and one interval timed
        assert proc.poll() is None, "the run finished before it could be killed"
        assert time.monotonic() < deadline
        now = len(_rows(killed)) if (killed / "history.csv").exists() else 0
        if now != rows:
            rows = now
            grew.append(time.monotonic())
        time.sleep(0.002)
    time.sleep((grew[-1] - grew[-2]) / 2)  # half-way into the next interval, however fast this machine steps
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = len(_rows(killed))
    assert done < 24, "killed too late to test anything"
    assert _run(task, killed).wait(timeout=300) == 0

    assert _rows(killed) == _rows(whole)  # every step's loss, angles and validation, exactly
    a = torch.load(whole / "checkpoints" / "last.pt", weights_only=False)["model"]
    b = torch.load(killed / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert (whole / "sequence.json").read_text() == (killed / "sequence.json").read_text()


def test_resuming_another_task_is_a_clear_error(tmp_path: Path) -> None:
    out = tmp_path / "run"
    optimize(write(tmp_path / "a.yaml", gre_from_zero(iterations=2, checkpoint_every=1, validate_every=2)), out,
             progress=False)
    before = (out / "checkpoints" / "last.pt").read_bytes()
    other = gre_from_zero(iterations=4, checkpoint_every=1, validate_every=2)
    other["sequence"]["protocol"] = other["target"]["protocol"] = {**GRE, "matrix": 16}  # twice the excitations
    with pytest.raises(InputError, match=r"last.pt: a checkpoint of another task \(size mismatch.*b.yaml"):
        optimize(write(tmp_path / "b.yaml", other), out, resume=True, progress=False)
    assert (out / "checkpoints" / "last.pt").read_bytes() == before  # the earlier run is left as it was
