"""mrbridge refine: a twin perturbed in B0 and PD is recovered from a simulated multi-echo scan with noise, and
what the data cannot determine is refused before fitting."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mrbridge.errors import InputError
from mrbridge.raw.mrd import write_mrd
from mrbridge.refine.fit import RefineConfig
from mrbridge.refine.run import refine
from mrbridge.sim.seqfile import simulate_seq_file
from mrbridge.twin.phantoms import builtin
from tests.pulseq_classes import multi_echo_gre

N = 16


def _truth() -> tuple:
    twin = builtin("brain", matrix=N)
    y, x = torch.meshgrid(torch.linspace(-1, 1, N), torch.linspace(-1, 1, N), indexing="ij")
    inside = twin.pd > 0
    b0 = torch.where(inside, 30.0 * x + 15.0 * y, torch.zeros_like(twin.b0))  # smooth, ±45 Hz
    return replace(twin, b0=b0, pd=twin.pd * (1 + 0.2 * y)), inside


@pytest.mark.slow
def test_b0_and_pd_recovered_from_a_multi_echo_scan(tmp_path: Path) -> None:
    truth, inside = _truth()
    seq = multi_echo_gre(tmp_path / "me.seq", echoes=3, n=N, dummies=20).path
    raw = simulate_seq_file(seq, truth, noise=1e-3, seed=1)
    write_mrd(raw, tmp_path / "me.h5")
    start = replace(truth, b0=torch.zeros_like(truth.b0), pd=torch.where(inside, 0.5, 0.0))
    start.save(tmp_path / "start.h5")
    done = refine([tmp_path / "me.h5"], [seq], tmp_path / "out", RefineConfig(fit=["pd", "b0"], iterations=60),
                  twin=str(tmp_path / "start.h5"), progress=False)
    fitted = done.result.twin
    core = inside & (truth.pd > 0.3 * truth.pd.max())
    assert float((fitted.b0 - truth.b0)[core].abs().median()) < 2.0  # Hz
    ratio = fitted.pd[core] / truth.pd[core]
    assert float((ratio / ratio.median() - 1).abs().median()) < 0.03  # PD up to one global scale
    assert math.isfinite(done.result.residuals["me.h5"]) and done.result.residuals["me.h5"] < 0.05
    assert (tmp_path / "out" / "twin.h5").is_file() and done.report.is_file()
    assert "me.h5" in fitted.provenance["refined_from"]


def test_b1_from_one_flip_angle_is_refused(tmp_path: Path) -> None:
    truth, _ = _truth()
    seq = multi_echo_gre(tmp_path / "me.seq", echoes=1, n=N, dummies=2).path
    write_mrd(simulate_seq_file(seq, truth), tmp_path / "me.h5")
    for fit, words in ((["pd", "b1"], "B1 needs two or more flip angles"), (["b0"], "B0 needs two or more echo")):
        with pytest.raises(InputError, match=words):
            refine([tmp_path / "me.h5"], [seq], tmp_path / "out", RefineConfig(fit=fit), progress=False)
    assert not (tmp_path / "out").exists()
