"""An independent reconstruction of real twix + .seq pairs, written for the tests with twixtools, pypulseq and numpy.

It shares no code with mrbridge: twixtools gives the samples of every image scan, pypulseq (``detect_rf_use``
for files without RF use) the k-space position of every sample (``calculate_kspace``), and the image is the
separable adjoint DFT  m(y, x) = Σ_r e^{+i2π ky_r·y} Σ_s w_rs·d_rs·e^{+i2π kx_rs·x}  onto voxel centres
(i − n//2)·FOV/n, with w the k_x spacing of each sample (density compensation of ramp-sampled readouts),
then root-sum-of-squares over coils. Valid for line-by-line trajectories (GRE, SE, EPI), in any direction,
on or off the Cartesian grid.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path

import numpy as np
import pypulseq as pp
import twixtools


def twix_scans(dat: Path) -> np.ndarray:
    """(coils, scans, samples) complex64 of the last measurement's image scans (twixtools' own filter)."""
    with contextlib.redirect_stdout(io.StringIO()):
        meas = twixtools.read_twix(str(dat), verbose=False, parse_pmu=False)[-1]
    return np.stack([np.asarray(m.data) for m in meas["mdb"] if m.is_image_scan()], axis=1)


def seq_kspace(seq_path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, pp.Sequence]:
    """k (3, adc_samples) 1/m, the ADC sample times, the excitation times, and the sequence (pypulseq alone)."""
    seq = pp.Sequence()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "older Pulseq format" for 1.4 files
        seq.read(str(seq_path), detect_rf_use=True)
    k, _, t_exc, _, t_adc = seq.calculate_kspace()
    return k, t_adc, np.asarray(t_exc), seq


def adjoint_image(data: np.ndarray, k: np.ndarray, fov: tuple[float, float], n: tuple[int, int]) -> np.ndarray:
    """RSS image (ny, nx) of line readouts. data: (coils, readouts, samples); k: (readouts, samples, 2) 1/m."""
    ny, nx = n
    x = (np.arange(nx) - nx // 2) * fov[0] / nx
    y = (np.arange(ny) - ny // 2) * fov[1] / ny
    kx, ky = k[..., 0], k[..., 1].mean(axis=1)
    w = np.abs(np.gradient(kx, axis=1))  # (readouts, samples)
    ex = np.exp(2j * np.pi * kx[..., None] * x)  # (readouts, samples, nx)
    hybrid = np.einsum("crs,rsx->crx", data * w, ex)  # (coils, readouts, nx)
    ey = np.exp(2j * np.pi * ky[:, None] * y)  # (readouts, ny)
    coils = np.einsum("crx,ry->cyx", hybrid, ey)
    return np.sqrt((np.abs(coils) ** 2).sum(0))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of two magnitude images."""
    a, b = np.abs(a).ravel(), np.abs(b).ravel()
    return float(np.corrcoef(a, b)[0, 1])
