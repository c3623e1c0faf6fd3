"""mrbridge refine: a twin perturbed in B1, B0 and PD is recovered from simulated scans with noise (3 echoes for B0,
a flip-angle pair for B1), the refined twin predicts a third sequence, and what the data cannot determine is refused
before fitting."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from mrbridge.errors import InputError
from mrbridge.raw.mrd import write_mrd
from mrbridge.raw.read import read_raw
from mrbridge.recon.pipeline import Recon
from mrbridge.refinement.fit import RefineConfig
from mrbridge.refinement.run import refine
from mrbridge.refinement.scans import default_grid, load_scan, window_scan
from mrbridge.refinement.start import decay_rate, start_twin
from mrbridge.report.metrics import compare_images
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
def test_b1_b0_pd_recovered_from_a_flip_angle_pair_and_a_third_sequence_predicted(tmp_path: Path) -> None:
    twin = builtin("brain", matrix=N)
    y, x = torch.meshgrid(torch.linspace(-1, 1, N), torch.linspace(-1, 1, N), indexing="ij")
    inside = twin.pd > 0
    truth = replace(twin, b1=0.9 * (1 + 0.1 * x) * torch.ones_like(twin.b1),  # × 0.9 and a smooth ±10 % field
                    b0=torch.where(inside, 35.0 * x + 15.0 * y, torch.zeros_like(twin.b0)),  # smooth, ±50 Hz
                    pd=twin.pd * (1 + 0.2 * y))
    scans = []
    for flip, echoes in ((10.0, 3), (40.0, 1)):  # the pair: B1 from their ratio (T1 known), B0 from the 3 echoes
        seq = multi_echo_gre(tmp_path / f"me{flip:.0f}.seq", echoes=echoes, n=N, flip_deg=flip, dummies=4).path
        write_mrd(simulate_seq_file(seq, truth, noise=1e-3, seed=int(flip)), tmp_path / f"me{flip:.0f}.h5")
        scans.append((tmp_path / f"me{flip:.0f}.h5", seq))
    start = replace(truth, b1=torch.ones_like(truth.b1), b0=torch.zeros_like(truth.b0),
                    pd=torch.where(inside, 0.5, 0.0))
    start.save(tmp_path / "start.h5")
    done = refine([m for m, _ in scans], [s for _, s in scans], tmp_path / "out",
                  RefineConfig(fit=["pd", "b0", "b1"], iterations=60), twin=str(tmp_path / "start.h5"),
                  progress=False)
    fitted = done.result.twin
    core = inside & (truth.pd > 0.3 * truth.pd.max())
    assert float(((fitted.b1 - truth.b1) / truth.b1)[core].abs().median()) < 0.02
    assert float((fitted.b0 - truth.b0)[core].abs().median()) < 2.0  # Hz
    ratio = fitted.pd[core] / truth.pd[core]
    assert float((ratio / ratio.median() - 1).abs().median()) < 0.03  # PD up to one global scale

    third = multi_echo_gre(tmp_path / "third.seq", echoes=1, n=N, te=6e-3, tr=35e-3, flip_deg=30.0,
                           dummies=4).path  # another TE, TR and flip angle
    images = []
    for name, object_ in (("truth", truth), ("predicted", fitted)):
        write_mrd(simulate_seq_file(third, object_), tmp_path / f"{name}.h5")
        images.append(Recon()(read_raw(tmp_path / f"{name}.h5")).data.abs())
    metrics, _ = compare_images(images[1], images[0])
    assert metrics.nrmse <= 0.02


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


def test_the_start_reads_b0_from_the_echoes_with_the_simulators_sign(tmp_path: Path) -> None:
    """B0 from the phase between echoes 1 and 2 has the sign the simulation gives it (a flipped sign makes the
    start's later echoes rotate the wrong way: on the Prisma 3-echo scan its residual was 0.58 instead of 0.10)."""
    truth, inside = _truth()
    seq = multi_echo_gre(tmp_path / "me.seq", echoes=3, n=N, dummies=20).path
    write_mrd(simulate_seq_file(seq, truth, noise=1e-3, seed=2), tmp_path / "me.h5")
    raw, encoding = load_scan(tmp_path / "me.h5", seq)
    grid = default_grid(encoding, None)
    start = start_twin([window_scan(tmp_path / "me.h5", seq, raw, encoding, grid)], grid)
    core = inside & (truth.pd > 0.3 * truth.pd.max())
    assert float((start.b0 - truth.b0)[core].abs().median()) < 5.0  # Hz (smoothed, so not exact at the edges)
    assert bool((start.t2 >= truth.t2.min() - 1e-6)[core].all())  # T2 never below the tissue's


def test_decay_rate_fits_every_echo() -> None:
    """R2* of noiseless mono-exponential echoes is exact; with two echoes it is ln(m₁/m₂)/ΔTE; with three noisy
    echoes it is closer to the truth than the first two alone."""
    te = [4e-3, 9e-3, 14e-3]
    rate = torch.tensor([[2.0, 20.0], [60.0, 0.0]], dtype=torch.float64)
    echoes = torch.stack([3.0 * torch.exp(-rate * t) for t in te])
    assert torch.allclose(decay_rate(echoes, te), rate, atol=1e-9)
    assert torch.allclose(decay_rate(echoes[:2], te[:2]), torch.log(echoes[0] / echoes[1]) / 5e-3, atol=1e-9)
    gen = torch.Generator().manual_seed(0)
    noisy = echoes[:, :1, :1].expand(3, 400, 400) * (1 + 0.01 * torch.randn(3, 400, 400, dtype=torch.float64,
                                                                            generator=gen))
    three, two = decay_rate(noisy, te), decay_rate(noisy[:2], te[:2])
    assert float((three - 2.0).square().mean()) < 0.5 * float((two - 2.0).square().mean())


def test_b1_from_one_flip_angle_is_refused(tmp_path: Path) -> None:
    truth, _ = _truth()
    seq = multi_echo_gre(tmp_path / "me.seq", echoes=1, n=N, dummies=2).path
    write_mrd(simulate_seq_file(seq, truth), tmp_path / "me.h5")
    for fit, words in ((["pd", "b1"], "B1 needs two or more flip angles"), (["b0"], "B0 needs two or more echo")):
        with pytest.raises(InputError, match=words):
            refine([tmp_path / "me.h5"], [seq], tmp_path / "out", RefineConfig(fit=fit), progress=False)
    assert not (tmp_path / "out").exists()


def test_a_bad_tissue_is_refused_before_the_scans_are_read(tmp_path: Path) -> None:
    """The scans do not exist: the tissue's refusal comes first, and no output folder is made."""
    with pytest.raises(InputError, match=r"--tissue 'bogus': expected one of .*grey_matter"):
        refine([tmp_path / "a.h5"], [tmp_path / "a.seq"], tmp_path / "out", RefineConfig(fit=["pd"]), tissue="bogus",
               progress=False)
    assert not (tmp_path / "out").exists()
