"""torchrun with 2 processes (gloo, CPU) gives the result of 1 process, up to float rounding."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO
from tests.optimize.tasks import spin, write

RUNNER = Path(__file__).with_name("runner.py")


def _torchrun(processes: int, task: Path, out: Path) -> dict[str, object]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes),
           "--master_port", str(29500 + os.getpid() % 1000 + processes), str(RUNNER), str(task), str(out)]
    done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-3000:]
    return json.loads((out / "summary.json").read_text())  # type: ignore[no-any-return]


@pytest.mark.slow
def test_two_processes_equal_one(tmp_path: Path) -> None:
    task = spin(batch=4)
    task["optimizer"]["alternating"] = {"pretrain_steps": 2, "rounds": 1, "sequence_steps": 2, "recon_steps": 1}
    path = write(tmp_path / "task.yaml", task)
    one = _torchrun(1, path, tmp_path / "one")
    two = _torchrun(2, path, tmp_path / "two")
    assert one["world"] == 1 and two["world"] == 2
    a, b = one["parameters"]["flip_angle"][0], two["parameters"]["flip_angle"][0]  # type: ignore[index]
    assert a != 30.0 and b == pytest.approx(a, rel=1e-4)
    for key, value in one["final"].items():  # type: ignore[union-attr]
        assert two["final"][key] == pytest.approx(value, rel=1e-3, abs=1e-6), key  # type: ignore[index]
