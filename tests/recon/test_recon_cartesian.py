"""Cartesian recon of files written by the C++ ISMRMRD generator, against the C++ recon and BART."""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch

from mrbridge.raw.mrd import read_mrd
from mrbridge.recon.pipeline import Recon, ReconConfig
from tests.helpers import nrmse

GENERATE = shutil.which("ismrmrd_generate_cartesian_shepp_logan")
RECON_2D = shutil.which("ismrmrd_recon_cartesian_2d")
BART = shutil.which("bart")
needs_tools = pytest.mark.skipif(GENERATE is None or RECON_2D is None, reason="ismrmrd-tools not installed")


@pytest.fixture(scope="module")
def shepp_logan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """64×64, 4 coils, readout oversampling 2, reconstructed in place by ismrmrd_recon_cartesian_2d."""
    if GENERATE is None or RECON_2D is None:
        pytest.skip("ismrmrd-tools not installed")
    path = tmp_path_factory.mktemp("sl") / "sl.h5"
    subprocess.run([GENERATE, "-m", "64", "-c", "4", "-o", str(path)], check=True, capture_output=True)
    subprocess.run([RECON_2D, str(path)], check=True, capture_output=True)
    return path


def write_cfl(base: Path, array: np.ndarray) -> None:
    """BART .hdr/.cfl pair: dims padded to 16, complex64 in column-major order."""
    dims = list(array.shape) + [1] * (16 - array.ndim)
    base.with_suffix(".hdr").write_text("# Dimensions\n" + " ".join(map(str, dims)) + "\n")
    array.astype(np.complex64).ravel(order="F").tofile(base.with_suffix(".cfl"))


def read_cfl(base: Path) -> np.ndarray:
    dims = [int(d) for d in base.with_suffix(".hdr").read_text().splitlines()[1].split()]
    while len(dims) > 1 and dims[-1] == 1:
        dims.pop()
    return np.fromfile(base.with_suffix(".cfl"), dtype=np.complex64).reshape(dims, order="F")


@needs_tools
def test_fft_matches_ismrmrd_recon_cartesian_2d(shepp_logan: Path) -> None:
    raw = read_mrd(shepp_logan)
    assert raw.header.encoded_matrix == (128, 64, 1) and raw.header.recon_matrix == (64, 64, 1)
    image = Recon(ReconConfig(method="fft"))(raw)
    assert image.data.shape == (1, 1, 1, 64, 64)
    assert image.fov == pytest.approx((0.3, 0.3, 0.006))
    with h5py.File(shepp_logan) as f:
        reference = torch.from_numpy(f["dataset/cpp/data"][...].reshape(1, 64, 64))
    # the C++ recon uses unnormalised FFTs: a factor √(nx_encoded · ny) from our orthonormal ones
    assert nrmse(image.data[0, 0] * math.sqrt(128 * 64), reference) <= 1e-5


@needs_tools
@pytest.mark.skipif(BART is None, reason="bart not installed")
def test_fft_matches_bart_fft_rss(shepp_logan: Path, tmp_path: Path) -> None:
    # k-space (x, y, 1, coils) straight from the file with h5py, independent of read_mrd
    with h5py.File(shepp_logan) as f:
        acq = f["dataset/data"][...]
    lines = np.stack([d.view(np.float32).view(np.complex64).reshape(4, -1) for d in acq["data"]])  # (y, c, x)
    kspace = np.zeros((128, 64, 1, 4), np.complex64)
    kspace[:, acq["head"]["idx"]["kspace_encode_step_1"], 0, :] = lines.transpose(2, 0, 1)
    write_cfl(tmp_path / "k", kspace)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for cmd in (
        ["fft", "-u", "-i", "3", "k", "img"],
        ["rss", "8", "img", "rss"],
        ["resize", "-c", "0", "64", "rss", "out"],
    ):
        subprocess.run([BART, *cmd], cwd=tmp_path, check=True, capture_output=True, env=env)
    reference = torch.from_numpy(np.abs(read_cfl(tmp_path / "out")).T.copy())  # (y, x)
    ours = Recon(ReconConfig(method="fft"))(read_mrd(shepp_logan)).data[0, 0, 0]
    assert nrmse(ours, reference) <= 1e-5


@needs_tools
def test_adjoint_and_cg_equal_fft_on_cartesian_data(shepp_logan: Path) -> None:
    """The exact non-Cartesian transform at the Cartesian positions is the FFT; CG then converges at once."""
    raw = read_mrd(shepp_logan)
    fft = Recon(ReconConfig(method="fft"))(raw).data
    adjoint = Recon(ReconConfig(method="adjoint"))(raw).data
    cg = Recon(ReconConfig(method="cg", iterations=3))(raw).data
    assert nrmse(adjoint, fft) <= 1e-4
    assert nrmse(cg, fft) <= 1e-4


@needs_tools
def test_sensitivity_combination_is_complex_and_close_to_rss(shepp_logan: Path) -> None:
    raw = read_mrd(shepp_logan)
    rss = Recon(ReconConfig(method="fft"))(raw).data
    sens = Recon(ReconConfig(method="fft", coil_combine="sensitivity"))(raw).data
    assert sens.is_complex() and not rss.is_complex()
    inside = rss > 0.2 * rss.max()  # the object; RSS carries a noise floor outside
    a, b = sens.abs()[inside], rss[inside]
    assert nrmse(a * float((a * b).sum() / (a * a).sum()), b) < 0.05


@needs_tools
def test_cg_sense_on_a_generated_r2_file_beats_zero_filling(tmp_path: Path) -> None:
    """R=2 with 24 ACS lines from the C++ generator (first pass only), against its stored phantom."""
    assert GENERATE is not None
    path = tmp_path / "r2.h5"
    args = ["-m", "64", "-c", "4", "-a", "2", "-w", "24", "-n", "0.01", "-o", str(path)]
    subprocess.run([GENERATE, *args], check=True, capture_output=True)
    raw = read_mrd(path)
    first = raw.labels["repetition"] == 0
    raw = replace(
        raw,
        kdata=raw.kdata[:, first],
        labels={k: v[first] for k, v in raw.labels.items()},
        flags=raw.flags[first] if raw.flags is not None else None,
    )
    with h5py.File(path) as f:
        phantom = torch.from_numpy(f["dataset/phantom"][...].view(np.complex64).reshape(64, 64))
        csm = torch.from_numpy(f["dataset/csm"][...].view(np.complex64).reshape(4, 64, 64))
    truth = phantom.abs() * csm.abs().square().sum(0).sqrt()

    def error(image: torch.Tensor) -> float:
        a = image.abs().reshape(-1)
        b = truth.reshape(-1)
        return nrmse(a * float(a @ b / (a @ a)), b)

    sense = error(Recon(ReconConfig(method="sense", iterations=10, tikhonov=1e-3))(raw).data)
    zero_filled = error(Recon(ReconConfig(method="fft"))(raw).data)
    assert sense < 0.08 and sense < 0.3 * zero_filled, (sense, zero_filled)
