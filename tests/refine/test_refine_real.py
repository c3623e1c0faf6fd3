"""Real scanner data (session P, Prisma): a twin refined from the 3-echo GRE predicts the single-echo GRE it never
saw, better than the built-in twin; the measured image it is judged against matches an independent reference
(twixtools + pypulseq ``calculate_kspace`` + numpy) band-limited to the twin's k-space."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mrbridge.raw.mrd import write_mrd
from mrbridge.refinement.fit import RefineConfig
from mrbridge.refinement.run import refine
from mrbridge.report.compare import compare
from mrbridge.sim.seqfile import simulate_seq_file
from mrbridge.twin.phantoms import open_twin
from tests.helpers import shared_data
from tests.raw.twix_reference import adjoint_image, correlation, seq_kspace, twix_scans

FIT, HELD_OUT = "11_from_GRE_to_EPI__02_GRE_3echoes", "11_from_GRE_to_EPI__01_GRE"
MATRIX = 32


def _band_limited_reference(dat: Path, seq_path: Path, matrix: int) -> np.ndarray:
    """(256, 256) RSS image of the samples with |k_x|, |k_y| < matrix/(2·FOV), the others zero (numpy only)."""
    data = twix_scans(dat)
    k, _, _, seq = seq_kspace(seq_path)
    k = k[:2].T.reshape(-1, data.shape[2], 2)
    fov = tuple(float(v) for v in np.atleast_1d(seq.definitions["FOV"])[:2])
    steps = k * np.asarray(fov)
    inside = ((steps >= -matrix / 2 - 1e-3) & (steps < matrix / 2 - 1e-3)).all(-1)
    return adjoint_image(data * inside, k, fov, (256, 256))  # type: ignore[arg-type]


@pytest.mark.slow
def test_refined_twin_predicts_the_held_out_scan(tmp_path: Path) -> None:
    fit_dat, fit_seq = shared_data(FIT + ".dat"), shared_data(FIT + ".seq")
    dat, seq = shared_data(HELD_OUT + ".dat"), shared_data(HELD_OUT + ".seq")
    refine([fit_dat], [fit_seq], tmp_path / "refined", RefineConfig(fit=["pd", "b0", "t2dash", "coils"],
                                                                    iterations=15), matrix=MATRIX, progress=False)
    results = {}
    for name, twin in (("refined", str(tmp_path / "refined" / "twin.h5")), ("builtin", "builtin:brain")):
        write_mrd(simulate_seq_file(seq, open_twin(twin, matrix=MATRIX)), tmp_path / f"{name}.h5")
        results[name] = compare(tmp_path / f"{name}.h5", dat, tmp_path / name, seq_path=seq, matrix=MATRIX)
    predicted, builtin_twin = results["refined"], results["builtin"]
    assert predicted.role == "prediction" and builtin_twin.role == "simulation"
    assert (predicted.metrics.correlation or 0) >= 0.95
    assert predicted.metrics.nrmse < 0.5 * builtin_twin.metrics.nrmse
    measured = predicted.meas_image.data.abs().numpy()[0, 0, 0]
    assert correlation(measured, _band_limited_reference(dat, seq, MATRIX)) >= 0.99
