"""A learned radial readout waveform (protocols/mrzero_radial_waveform.yaml): a few steps lower the loss, the
waveform changes from sample to sample, and the bundle exports for Prisma and passes ``mrbridge check``; the 64²
GRE-from-zero task loads."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mrbridge.optimize.task import load_task
from mrbridge.optimize.trainer import optimize
from mrbridge.sequence.model import Sequence
from tests.export.common import kspace_error_in_steps, read_back
from tests.helpers import REPO
from tests.optimize.tasks import write

TASK = REPO / "protocols" / "mrzero_radial_waveform.yaml"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mrbridge", *args], capture_output=True, text=True, cwd=REPO)


def test_the_shipped_tasks_load() -> None:
    radial = load_task(TASK)
    template = radial.template()
    assert radial.protocol.kind == "radial" and sum(int(rep.adc_usage.sum()) for rep in template) == 16 * 64
    big = load_task(REPO / "protocols" / "mrzero_gre_from_zero_64.yaml")
    assert big.protocol.matrix == 64 and big.reference is not None and big.reference.matrix == 64


@pytest.mark.slow
def test_a_few_steps_lower_the_loss_and_the_learned_readout_exports_and_passes_check(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    task = yaml.safe_load(TASK.read_text())
    task["optimizer"].update(iterations=20, validate_every=20, checkpoint_every=20)
    summary = optimize(write(tmp_path / "task.yaml", task), tmp_path / "run", progress=False)
    rows = list(csv.DictReader((tmp_path / "run" / "history.csv").read_text().splitlines()))
    assert float(rows[-1]["mse"]) < float(rows[0]["mse"])
    assert summary["final"]["val_nrmse"] < summary["initial"]["val_nrmse"]
    learned = Sequence.load(tmp_path / "run" / "sequence.json")
    start = load_task(TASK).template()
    changed = [(a.gradm[a.adc_usage] - b.gradm[b.adc_usage]) for a, b in zip(learned, start, strict=True)]
    steps = torch.cat([c.diff(dim=0) for c in changed])
    assert float(steps.abs().max()) > 0  # not a rescaled or rotated spoke: the waveform itself changed
    seq_file = tmp_path / "learned.seq"
    exported = _cli("export", str(tmp_path / "run"), "--system", "prisma", "-o", str(seq_file))
    assert exported.returncode == 0, exported.stderr + exported.stdout
    checked = _cli("check", str(seq_file), "--system", "prisma")
    assert checked.returncode == 0, checked.stderr + checked.stdout
    played = Sequence.load(seq_file.with_suffix(".exported.json"))
    assert kspace_error_in_steps(read_back(seq_file), played).max() < 1e-3
