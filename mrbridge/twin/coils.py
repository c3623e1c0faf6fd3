"""Simulated receive-coil sensitivities: long straight wires on a ring around the field of view.

Each coil is an infinitely long wire parallel to z at radius R = 0.75·max(FOV_x, FOV_y) (outside every
voxel of the grid), at angle 2πc/N. By Biot–Savart a wire at p gives an in-plane field
B ∝ ẑ × (r − p)/|r − p|², whose receive component B1⁻ ∝ (B_x − iB_y)/2 equals −i/(w) with
w = (x − p_x) + i(y − p_y): magnitude falling off as 1/|r − p| and a phase that turns around the wire.
Sensitivities do not vary along z. They are scaled so that the root-sum-of-squares is 1 at the centre
(the voxel at index n//2, position 0); one coil is uniform (all ones).
"""

from __future__ import annotations

import math

import torch

#: ring radius of the wires, as a multiple of the larger in-plane FOV
RING_RADIUS = 0.75


def simulated_coils(
    shape_zyx: tuple[int, int, int], fov: tuple[float, float, float], coils: int
) -> torch.Tensor:
    """Complex sensitivities of ``coils`` receive coils evenly spaced on a ring around the FOV.

    Parameters
    ----------
    shape_zyx: grid shape (z, y, x)
    fov: (x, y, z) m
    coils: number of coils (≥ 1)

    Returns
    -------
    Tensor  # (coils, z, y, x) complex64, root-sum-of-squares 1 at the centre voxel
    """
    if coils < 1:
        raise ValueError(f"coils = {coils}, expected at least 1")
    nz, ny, nx = shape_zyx
    if coils == 1:
        return torch.ones((1, nz, ny, nx), dtype=torch.complex64)
    x = (torch.arange(nx, dtype=torch.float64) - nx // 2) * (fov[0] / nx)
    y = (torch.arange(ny, dtype=torch.float64) - ny // 2) * (fov[1] / ny)
    points = x[None, :] + 1j * y[:, None]  # (y, x) complex positions
    radius = RING_RADIUS * max(fov[0], fov[1])
    angles = 2 * math.pi * torch.arange(coils, dtype=torch.float64) / coils
    wires = radius * torch.exp(1j * angles)  # (coils,)
    sens = -1j / (points[None] - wires[:, None, None])  # (coils, y, x)
    sens = sens * (radius / math.sqrt(coils))  # each |s| = 1/R at the centre → RSS 1 there
    return sens[:, None].expand(coils, nz, ny, nx).to(torch.complex64).contiguous()
