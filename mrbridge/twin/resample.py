"""Resample tissue maps onto another in-plane matrix over the same FOV by exact voxel-overlap (area) weights.

Each output voxel is the area-weighted mean of the input voxels it overlaps (both grids centred as the twin's:
voxel i of n at (i − n//2)·FOV/n). Downsampling is therefore box-filter anti-aliasing followed by
decimation in one step: detail finer than an output voxel averages out instead of folding back (at an
integer factor, a checkerboard at the input Nyquist frequency becomes exactly its mean). Upsampling copies
each input value onto the output voxels it covers (nearest neighbour, blended only where an output voxel straddles two
input voxels): no detail is invented, unlike sinc (k-space zero-filling) interpolation, which rings at
tissue borders and can make T1 or T2 negative. Area weights are convex, so every output value lies within
the range of its inputs.

A mixed voxel's signal is the PD-weighted sum of its parts; relaxation acts through exp(−t·R), so to first
order the voxel behaves like the PD-weighted mean rate. PD is area-averaged; R1 = 1/T1, R2 = 1/T2,
R2′ = 1/T2′ (T2′ = inf → 0), B0 and B1 are PD-weighted means (plain area means where a voxel holds no PD).
"""

from __future__ import annotations

import numpy as np

#: maps averaged as rates 1/value (PD-weighted)
RATE_MAPS = ("t1", "t2", "t2dash")
#: maps averaged as values (PD-weighted)
VALUE_MAPS = ("b0", "b1")


def overlap_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights: the fraction of output voxel i covered by input voxel j (rows sum to 1).

    The two grids' extents differ by up to one voxel (both are centred at voxel n//2): the input's edge
    voxels are extended outwards to cover the rest (edge values repeat; maps are not periodic, B0 at one
    edge says nothing of the other).
    """
    def edges(n: int) -> tuple[np.ndarray, np.ndarray]:
        centre = (np.arange(n) - n // 2) / n
        return centre - 0.5 / n, centre + 0.5 / n

    lo_in, hi_in = edges(n_in)
    lo_in[0], hi_in[-1] = -np.inf, np.inf
    lo_out, hi_out = edges(n_out)
    overlap = np.clip(np.minimum(hi_out[:, None], hi_in[None]) - np.maximum(lo_out[:, None], lo_in[None]), 0, None)
    return overlap / overlap.sum(axis=1, keepdims=True)


def resample_area(a: np.ndarray, shape_yx: tuple[int, int]) -> np.ndarray:
    """Area-weighted resampling of (z, y, x) → (z, *shape_yx) over the same FOV."""
    wy = overlap_weights(a.shape[1], shape_yx[0])
    wx = overlap_weights(a.shape[2], shape_yx[1])
    return np.einsum("iy,zyx,jx->zij", wy, a, wx)


def resample_maps(maps: dict[str, np.ndarray], shape_yx: tuple[int, int]) -> dict[str, np.ndarray]:
    """Resample twin maps (SI, each (z, y, x); keys pd, t1, t2, t2dash, b0, b1) onto ``shape_yx`` in-plane.

    Returns the same keys, each (z, *shape_yx); see the module docstring for how each map is averaged.
    """
    pd = maps["pd"]
    pd_out = resample_area(pd, shape_yx)
    has_pd = pd_out > 0
    out = {"pd": pd_out}
    for name in (*RATE_MAPS, *VALUE_MAPS):
        value = maps[name]
        quantity = 1.0 / value if name in RATE_MAPS else value  # 1/inf = 0: no reversible dephasing
        weighted = resample_area(pd * quantity, shape_yx) / np.where(has_pd, pd_out, 1.0)
        plain = resample_area(quantity, shape_yx)
        mean = np.where(has_pd, weighted, plain)
        if name in RATE_MAPS:
            with np.errstate(divide="ignore"):
                mean = 1.0 / mean
        out[name] = mean
    return out
