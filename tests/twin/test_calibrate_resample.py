"""Resampling (anti-aliased down, no invented detail up), T2′ from T2*, coils from a calibration scan, and a
brain slice from one stacked .mat array that calibrates, simulates and reconstructs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mrbridge.errors import InputError
from mrbridge.raw.mrd import write_mrd
from mrbridge.raw.rawdata import RawData, RawHeader
from mrbridge.recon.operators import FourierOp
from mrbridge.recon.pipeline import Recon
from mrbridge.sequence.builders import build
from mrbridge.sequence.protocol import load_protocol
from mrbridge.sim.simulate import simulate
from mrbridge.twin.calibrate import calibrate, default_t2dash
from mrbridge.twin.coils import simulated_coils
from mrbridge.twin.phantoms import builtin
from mrbridge.twin.readers import read_stacked
from mrbridge.twin.resample import overlap_weights, resample_area
from mrbridge.twin.twin import Twin
from tests.helpers import nrmse
from tests.twin.mapfiles import synthetic_maps, write_mat_stacked

FOV_MM = 200.0  # protocols/gre.yaml
GENERATOR = "ismrmrd_generate_cartesian_shepp_logan"


def test_overlap_weights_average_out_the_finest_detail() -> None:
    w = overlap_weights(64, 32)
    np.testing.assert_allclose(w.sum(1), 1.0)
    checker = (-1.0) ** np.arange(64)
    # Nyquist of the input → its mean, not aliased (but in the edge voxel, half outside the input grid)
    np.testing.assert_allclose((w @ checker)[1:], 0.0, atol=1e-12)
    np.testing.assert_allclose(w[16, 31:34], [0.25, 0.5, 0.25])  # coarse voxel at 0 covers fine voxels −δ, 0, +δ
    assert (w >= 0).all()


def test_upsampling_invents_no_detail() -> None:
    step = np.zeros((1, 8, 8))
    step[:, :, 4:] = 1.0
    up = resample_area(step, (32, 32))
    assert up.min() >= 0.0 and up.max() <= 1.0  # no ringing (a sinc interpolation overshoots here)
    row = up[0, 16]
    assert np.count_nonzero((row > 0) & (row < 1)) <= 1  # the edge stays one voxel sharp, no ramp invented
    np.testing.assert_allclose(resample_area(np.full((1, 8, 8), 3.0), (32, 20)), 3.0)


def smooth_maps(n: int, checker: float = 0.0) -> dict[str, np.ndarray]:
    """Smooth maps sampled at the voxel centres of an n² grid over the FOV; ``checker`` adds a checkerboard
    of that relative amplitude to PD at the grid's own Nyquist frequency."""
    c = (np.arange(n) - n // 2) / n * FOV_MM  # mm
    y, x = np.meshgrid(c, c, indexing="ij")
    head = np.exp(-((x / 50) ** 2 + (y / 60) ** 2) / 2)
    blob = np.exp(-(((x - 20) / 20) ** 2 + ((y + 10) / 20) ** 2) / 2)
    pd = 0.05 + 0.7 * head + 0.25 * blob
    pd = pd * (1 + checker * (-1.0) ** (np.arange(n)[:, None] + np.arange(n)[None, :]))
    return {"pd": pd[None], "t1": (0.7 + 0.8 * blob)[None], "t2": (0.07 + 0.05 * head)[None],
            "b0": (0.3 * x - 0.2 * y + 0.002 * x * y)[None], "b1": (0.9 + 0.2 * head)[None]}


def calibrate_smooth(maps: dict[str, np.ndarray], matrix: int | None = None) -> Twin:
    n = maps["pd"].shape[-1]
    return calibrate(maps, mask=np.ones_like(maps["pd"]), voxel_mm=(FOV_MM / n, FOV_MM / n, 5.0), matrix=matrix)


@pytest.mark.slow
def test_downsampled_twin_simulates_like_the_native_one() -> None:
    seq = build(load_protocol("protocols/gre.yaml").model_copy(update={"dummies": 0}), matrix=32)
    native = calibrate_smooth(smooth_maps(32))
    fine = smooth_maps(64, checker=0.3)
    down = calibrate_smooth(fine, matrix=32)
    assert down.fov == native.fov and down.shape == native.shape
    decimated = calibrate_smooth({k: v[:, ::2, ::2] for k, v in fine.items()})  # no anti-aliasing: the control
    kdata = {name: simulate(seq, twin).kdata for name, twin in
             (("native", native), ("down", down), ("decimated", decimated))}
    error = nrmse(kdata["down"], kdata["native"])
    assert error < 0.02, f"anti-aliased 2× twin differs by {error:.2%} NRMSE"
    assert nrmse(kdata["decimated"], kdata["native"]) > 0.1  # the test can fail: aliasing is visible
    assert nrmse(down.pd, native.pd) < 0.01


def test_t2dash_from_t2star_and_the_default() -> None:
    maps = synthetic_maps(nz=1)
    t2 = maps["t2"]
    t2star = np.where(t2 > 0, 1 / (1 / np.where(t2 > 0, t2, 1) + 1 / 0.05), 0.0)  # T2′ = 50 ms
    t2star[0, 16, 16] = t2[0, 16, 16]  # no reversible dephasing here: T2′ = inf
    t2star[0, 16, 17] = t2[0, 16, 17] * 1.5  # T2* > T2: inconsistent, masked and counted
    twin = calibrate({**maps, "t2*": t2star}, voxel_mm=(5.0, 5.0, 5.0))
    tissue = twin.pd[0] > 0
    t2dash = twin.t2dash[0][tissue]
    assert torch.isinf(twin.t2dash[0, 16, 16])
    np.testing.assert_allclose(t2dash[torch.isfinite(t2dash)].numpy(), 0.05, rtol=1e-4)
    assert twin.provenance["cleaning"]["counts"] == {"t2*>t2:t2star": 1}
    assert twin.pd[0, 16, 17] == 0
    value, source = default_t2dash()
    assert value == pytest.approx(1 / 3.65) and "brain3t.yaml" in source and "Gelman" in source
    no_t2star = calibrate(maps, voxel_mm=(5.0, 5.0, 5.0))
    np.testing.assert_allclose(no_t2star.t2dash[no_t2star.pd > 0].numpy(), value, rtol=1e-6)


def calibration_scan(path: Path, pd: torch.Tensor, sens: torch.Tensor, fov_m: float) -> Path:
    """A fully sampled 2D Cartesian multi-coil scan of the object pd·sens, as ISMRMRD raw data."""
    n = pd.shape[-1]
    k = FourierOp((n, n))(sens[:, 0] * pd[0])  # (coils, ky, kx)
    raw = RawData(
        kdata=k.to(torch.complex64),
        header=RawHeader(encoded_fov=(fov_m, fov_m, 0.005), encoded_matrix=(n, n, 1), recon_fov=(fov_m, fov_m, 0.005),
                         recon_matrix=(n, n, 1), coils=sens.shape[0]),
        labels={"kspace_encode_step_1": torch.arange(n)},
        center_sample=n // 2,
    )
    write_mrd(raw, path)
    return path


def test_coil_sensitivities_from_a_calibration_scan(tmp_path: Path) -> None:
    maps = synthetic_maps(nz=1)
    vox = (220 / 32, 220 / 32, 5.0)
    fov = 0.22
    truth = simulated_coils((1, 32, 32), (fov, fov, 0.005), 4)
    # the scan: 24×24 over the same FOV, so the maps must be interpolated onto the twin's 32×32 grid
    scan_pd = torch.from_numpy(smooth_maps(24)["pd"]).float()
    scan = calibration_scan(tmp_path / "csm.h5", scan_pd, simulated_coils((1, 24, 24), (fov, fov, 0.005), 4), fov)
    twin = calibrate(maps, voxel_mm=vox, coils=scan)
    assert twin.coil_sens.shape == (4, 1, 32, 32)
    assert twin.provenance["coils"]["coils"] == 4
    tissue = twin.pd[0] > 0
    # compare with the truth, normalised like Walsh's estimate: unit norm over coils, phase of coil 0 removed
    ref = truth / truth.abs().square().sum(0, keepdim=True).sqrt()
    ref = ref * (ref[:1].conj() / ref[:1].abs())
    err = nrmse(twin.coil_sens[:, 0][:, tissue], ref[:, 0][:, tissue])
    assert err < 0.06, f"sensitivities differ by {err:.2%}"  # 4.3 % measured (Walsh window + interpolation)
    single = calibration_scan(tmp_path / "one.h5", scan_pd, simulated_coils((1, 24, 24), (fov, fov, 0.005), 1), fov)
    with pytest.raises(InputError, match=r"one\.h5: calibration scan has 1 coil"):
        calibrate(maps, voxel_mm=vox, coils=single)


@pytest.mark.skipif(shutil.which(GENERATOR) is None, reason="Debian ismrmrd-tools not installed")
def test_coil_sensitivities_match_the_cpp_generators_truth(tmp_path: Path) -> None:
    """ISMRMRD's C++ Shepp–Logan generator (2× readout oversampling) stores its true coil maps beside the data."""
    scan = tmp_path / "sl.h5"
    subprocess.run([GENERATOR, "-m", "64", "-c", "4", "-n", "0", "-o", str(scan)], check=True, capture_output=True)
    with h5py.File(scan, "r") as f:
        csm, phantom = f["dataset/csm"][()][0], f["dataset/phantom"][()][0]
    truth = torch.from_numpy(csm["real"] + 1j * csm["imag"])  # (coils, y, x) over the 300 mm recon FOV
    obj = torch.from_numpy(np.abs(phantom["real"] + 1j * phantom["imag"]))
    maps = {"pd": obj.numpy(), "t1": np.full((64, 64), 1.0), "t2": np.full((64, 64), 0.1)}
    twin = calibrate(maps, voxel_mm=(300 / 64, 300 / 64, 6.0), coils=scan)
    ref = truth / truth.abs().square().sum(0, keepdim=True).sqrt()
    ref = ref * (ref[:1].conj() / ref[:1].abs())
    inside = obj > 0.1 * obj.max()
    err = nrmse(twin.coil_sens[:, 0][:, inside], ref[:, inside])
    assert err < 0.05, f"sensitivities differ from the generator's by {err:.2%}"  # 2.2 % measured
    assert nrmse(twin.coil_sens[:, 0].flip(-1)[:, inside], ref[:, inside]) > 0.3  # orientation matters


@pytest.mark.slow
def test_stacked_mat_brain_slice_calibrates_simulates_and_reconstructs(tmp_path: Path) -> None:
    brain = builtin("brain", matrix=64)
    maps = {k: getattr(brain, k).numpy().astype(np.float64) for k in ("pd", "t1", "t2", "b0", "b1")}  # s, Hz
    path = write_mat_stacked(tmp_path / "brain.mat", maps, geometry=False)  # (64, 64, 5), nothing else
    twin = calibrate(read_stacked(path, ["PD", "T1", "T2", "B0", "B1"]))
    units = {k: v["unit"] for k, v in twin.provenance["inputs"].items()}
    assert units == {"pd": "relative", "t1": "s", "t2": "s", "b0": "Hz", "b1": "relative"}
    tissue = brain.pd > 0
    assert torch.equal(twin.pd > 0, tissue)
    for name in ("pd", "t1", "t2", "b0", "b1"):
        torch.testing.assert_close(getattr(twin, name)[tissue], getattr(brain, name)[tissue], rtol=1e-6, atol=1e-5)
    assert "assumed" in twin.provenance["geometry"]["from"]  # no geometry in the file: 1 mm voxels, and says so
    np.testing.assert_allclose(twin.fov, [0.064, 0.064, 0.001])
    voxel = (220 / 64, 220 / 64, 5.0)  # the brain's geometry, stated
    small = calibrate(read_stacked(path, ["PD", "T1", "T2", "B0", "B1"]), matrix=32, voxel_mm=voxel)
    np.testing.assert_allclose(small.fov, brain.fov)
    seq = build(load_protocol("protocols/gre.yaml").model_copy(update={"dummies": 0}), matrix=32)
    image = Recon()(simulate(seq, small)).data.abs().reshape(32, 32)
    reference = Recon()(simulate(seq, builtin("brain", matrix=32))).data.abs().reshape(32, 32)
    corr = float(torch.corrcoef(torch.stack([image.flatten(), reference.flatten()]))[0, 1])
    assert corr > 0.9, f"brain image from the calibrated twin correlates {corr:.3f} with the built-in's"
