"""Density compensation for adjoint (gridding) reconstruction of non-Cartesian data.

Pipe & Menon (MRM 1999): iterate w ← w / (K ∗ w), with K ∗ w the convolution of the sample weights with a smooth,
positive kernel, evaluated at the sample positions. K here is a Gaussian of σ = Δk/2 (Δk = 1/FOV per axis),
applied as a NUFFT pair on a grid of twice the FOV: (K ∗ w)_m = Σ_m' w_m' K(k_m − k_m') = (A₂ φ A₂ᴴ w)_m with φ the
Gaussian's transform (≤ 0.7 % at the edge of the doubled grid) — the point-spread function of the image grid itself
(a Dirichlet kernel) has negative side lobes that make the iteration oscillate. K is normalised so that its sum over
the Cartesian grid is 1, so a fully sampled Cartesian grid gets weight 1, and
``op.H(w * y)`` is the density-compensated image at the object's scale.

>>> import torch
>>> k = torch.stack(torch.meshgrid(torch.arange(-8, 8.0), torch.arange(-8, 8.0), indexing="ij"), -1).reshape(-1, 2)
>>> traj = torch.cat([k / 0.2, torch.zeros(256, 1)], 1).double()              # the Cartesian grid
>>> w = pipe_dcf(traj, (1, 16, 16), (0.2, 0.2, 0.005)).reshape(16, 16)
>>> bool(torch.allclose(w[4:12, 4:12], torch.ones(8, 8, dtype=torch.float64), atol=1e-3))
True
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from mrbridge.recon.operators import NonCartesianOp


def pipe_dcf(
    traj: torch.Tensor,
    shape: Sequence[int],
    fov: Sequence[float],
    *,
    iterations: int = 20,
) -> torch.Tensor:
    """Pipe's iterative density compensation weights of the samples at ``traj``.

    Parameters
    ----------
    traj : Tensor  # (M, 3) 1/m (kx, ky, kz), as for ``NonCartesianOp`` (not differentiated)
    shape : (z, y, x) image grid;  fov : (x, y, z) m
    iterations : fixed-point iterations w ← w / (K ∗ w) (10–30 suffice for radial and spiral)

    Returns
    -------
    Tensor  # (M,) real ≥ 0, dtype and device of ``traj``: ≈ the k-space area of each sample in units of Δk
    """
    nz, ny, nx = (int(n) for n in shape)
    if traj.dim() != 2 or traj.shape[1] != 3:
        raise ValueError(f"pipe_dcf: traj must be (M, 3) 1/m, got {tuple(traj.shape)}")
    traj = traj.detach()
    real = traj.dtype if traj.is_floating_point() else torch.float32
    cdtype = torch.complex128 if real == torch.float64 else torch.complex64
    n = (nx, ny, nz)  # per traj column
    big = tuple(2 * m if m > 1 else 1 for m in n)
    big_fov = [f * b / m for f, b, m in zip(fov, big, n, strict=True)]  # same voxels, twice the field of view
    op = NonCartesianOp(traj.to(real), (big[2], big[1], big[0]), big_fov, eps=1e-5)  # weights need no more
    # φ(r) = exp(−2π² σ² r²), σ = 1/(2 FOV): the transform of a Gaussian kernel in k; and the kernel's grid sum
    phi = torch.ones((), dtype=real, device=traj.device)
    norm = 1.0
    for axis, (m, b, f) in enumerate(zip(n, big, fov, strict=True)):
        if m == 1:
            continue
        r = (torch.arange(b, dtype=torch.float64) - b // 2) * (f / m)
        p = torch.exp(-2 * math.pi**2 * (0.5 / f) ** 2 * r**2)
        j = (torch.arange(m, dtype=torch.float64)[:, None] - m // 2) / f  # one period of K (m Δk)
        kernel = (p * torch.cos(2 * math.pi * j * r)).sum(1) / b  # K_axis(j Δk), real (φ even)
        norm *= float(kernel.sum())
        view = [1, 1, 1]
        view[2 - axis] = b
        phi = phi * p.to(real).to(traj.device).reshape(view)
    w = torch.ones(traj.shape[0], dtype=real, device=traj.device)
    with torch.no_grad():
        for _ in range(iterations):
            c = op(phi * op.H(w.to(cdtype))).real / norm
            w = w / c.clamp_min(float(c.max()) * 1e-6 + 1e-30)
    return w
