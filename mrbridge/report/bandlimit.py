"""Raw data restricted to the k-space an N × N grid holds, so that two scans are compared at the resolution N.

A twin of N² voxels over the field of view holds k-space up to |k_x|, |k_y| < N/(2·FOV) and no finer detail
(:mod:`mrbridge.refinement.scans` fits it in exactly that window). Its prediction of a finer scan is judged by zeroing
every sample outside that window, in the simulated and in the measured raw data alike, before the one recon: both
images are then the same band-limited view of the object. Cropping the k-space of the reconstructed images instead
would be exact only for complex images; a coil-combined (RSS) magnitude is not band-limited where the phase varies.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from mrbridge.errors import InputError
from mrbridge.raw.rawdata import RawData


def kspace_steps(raw: RawData) -> torch.Tensor:
    """(readouts, samples, 2) the (k_x, k_y) of every sample in steps of 1/FOV: from the trajectory when the raw
    data carry one, else from the Cartesian labels (line j at j − N_y/2, sample s at s − center_sample)."""
    fov = torch.tensor(raw.header.encoded_fov[:2], dtype=torch.float64)
    if raw.traj is not None:
        return raw.traj[..., :2].to(torch.float64) * fov
    ny = raw.header.encoded_matrix[1]
    line = raw.labels["kspace_encode_step_1"].to(torch.float64) - ny // 2
    sample = torch.arange(raw.samples, dtype=torch.float64) - raw.center_sample
    return torch.stack(torch.broadcast_tensors(sample[None, :], line[:, None]), -1)


def in_window(steps: Any, matrix: int) -> Any:
    """(…) bool: samples at (…, 2) k_x, k_y steps of 1/FOV (tensor or array) in [−N/2, N/2), the k-space an N × N
    grid holds (mrbridge's convention: index N/2 is k = 0)."""
    tol = 1e-3
    return ((steps >= -matrix / 2 - tol) & (steps < matrix / 2 - tol)).all(-1)


def band_limited(raw: RawData, matrix: int, *, name: str = "raw data") -> RawData:
    """``raw`` with every sample outside |k_x|, |k_y| < matrix/(2·FOV) set to zero (labels, header unchanged)."""
    inside = in_window(kspace_steps(raw), matrix)
    if not bool(inside.any()):
        raise InputError(f"{name}: no sample lies inside the k-space of a {matrix}² grid over its field of view")
    return replace(raw, kdata=raw.kdata * inside.to(raw.kdata.device))
