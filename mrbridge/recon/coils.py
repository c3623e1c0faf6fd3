"""Coil sensitivity estimation (Walsh et al., MRM 2000: dominant eigenvector of the local coil covariance)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

#: power iterations for the dominant eigenvector (coil covariances are close to rank one inside the object)
POWER_ITERATIONS = 8


def _box_filter(x: torch.Tensor, kernel: int) -> torch.Tensor:
    """Local mean over a kernel×kernel window in (y, x), separably: x (n, z, y, x) real → same shape."""
    n, nz, ny, nx = x.shape
    pad = kernel // 2
    rows = F.avg_pool1d(x.reshape(-1, 1, nx), kernel, stride=1, padding=pad, count_include_pad=False)
    cols = rows.reshape(n * nz, ny, nx).transpose(1, 2).reshape(-1, 1, ny)
    cols = F.avg_pool1d(cols, kernel, stride=1, padding=pad, count_include_pad=False)
    return cols.reshape(n * nz, nx, ny).transpose(1, 2).reshape(n, nz, ny, nx)


def _dominant_eigenvector(cov: torch.Tensor) -> torch.Tensor:
    """Unit eigenvector of the largest eigenvalue of Hermitian PSD matrices, by power iteration.

    cov: (c, c, voxels) complex → (c, voxels); voxels last keeps the tiny products vectorised
    """
    tiny = torch.finfo(cov.real.dtype).tiny

    def normalised(v: torch.Tensor) -> torch.Tensor:
        return v / (v.real.square() + v.imag.square()).sum(0).sqrt().clamp_min(tiny)

    v = cov.sum(1)  # a vector in the range of every matrix
    for i in range(POWER_ITERATIONS):
        v = (cov * (normalised(v) if i % 4 == 0 else v)[None]).sum(1)
    return normalised(v)


def estimate_sensitivities(
    coil_images: torch.Tensor,
    *,
    kernel: int = 5,
    threshold: float = 0.0,
) -> torch.Tensor:
    """Coil sensitivities from (low-resolution) coil images by Walsh's adaptive combination.

    At every voxel the sensitivity vector is the dominant eigenvector (power iteration) of the coil
    covariance summed over a ``kernel``×``kernel`` window in-plane; its phase is referred to coil 0, its norm
    over coils is 1.

    Parameters
    ----------
    coil_images : Tensor  # (coils, z, y, x) complex, e.g. the inverse FFT of fully sampled or ACS k-space
    kernel : odd window width in voxels
    threshold : voxels whose root-sum-of-squares is below ``threshold``·max are set to 0 (0: keep all)

    Returns
    -------
    Tensor  # (coils, z, y, x) complex, same dtype as ``coil_images``
    """
    if coil_images.dim() != 4:
        raise ValueError(f"coil_images must be (coils, z, y, x), got {tuple(coil_images.shape)}")
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"kernel must be a positive odd number, got {kernel}")
    c = coil_images.shape[0]
    x = coil_images.detach()
    x = x / x.abs().max().clamp_min(torch.finfo(x.real.dtype).tiny)  # scale-free: no overflow in the power iteration
    spatial = x.shape[1:]
    i, j = torch.triu_indices(c, c)  # Hermitian: filter the upper triangle only
    pairs = x[i] * x[j].conj()  # (pairs, z, y, x)
    pairs = torch.complex(_box_filter(pairs.real, kernel), _box_filter(pairs.imag, kernel))
    cov = pairs.new_zeros(c, c, *spatial)
    cov[i, j] = pairs
    cov[j, i] = pairs.conj()
    v = _dominant_eigenvector(cov.reshape(c, c, -1))  # (c, voxels)
    ref = v[:1]
    v = v * (ref.conj() / ref.abs().clamp_min(torch.finfo(ref.real.dtype).tiny))
    sens = v.reshape(c, *spatial).to(coil_images.dtype)
    if threshold > 0:
        rss = x.abs().square().sum(0).sqrt()
        sens = sens * (rss >= threshold * rss.max())
    return sens
