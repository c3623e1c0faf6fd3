"""Analytic ellipses in normalised coordinates, rasterised at voxel centres (Shepp–Logan convention).

Normalised coordinates run −1…1 across the field of view: u = position / (FOV / 2), x to the right and
y up. Voxel i along an axis of n voxels has its centre at u = 2·(i − n//2)/n, the same place as
:meth:`mrbridge.twin.twin.Twin.positions` puts it ((i − n//2)·Δ with Δ = FOV/n). So image row index
grows with y: row 0 is the bottom edge (y = −1), shown upright with ``origin="lower"``.

An ellipse has centre (x, y), half-axes a (along its own x) and b (along its own y), and an angle
in degrees, counter-clockwise from the x axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Ellipse:
    """One ellipse in normalised coordinates; ``angle_deg`` counter-clockwise from the x axis."""

    x: float
    y: float
    a: float
    b: float
    angle_deg: float

    def moved(self, x: float, y: float) -> Ellipse:
        """The same ellipse centred at (x, y)."""
        return Ellipse(x, y, self.a, self.b, self.angle_deg)

    def grown(self, margin: float) -> Ellipse:
        """The ellipse with both half-axes longer by ``margin`` (contains the original)."""
        return Ellipse(self.x, self.y, self.a + margin, self.b + margin, self.angle_deg)

    def mask(self, grid: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """Which grid points lie inside (boundary included).

        grid: (x, y), each  # (ny, nx) normalised coordinates, from :func:`grid`
        Returns: ndarray  # (ny, nx) bool
        """
        gx, gy = grid
        theta = np.deg2rad(self.angle_deg)
        dx, dy = gx - self.x, gy - self.y
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        return (u / self.a) ** 2 + (v / self.b) ** 2 <= 1.0


def grid(matrix: int) -> tuple[np.ndarray, np.ndarray]:
    """Normalised voxel-centre coordinates of a square matrix.

    Returns: (x, y), each  # (matrix, matrix) float64, indexed (y, x); u = 2·(i − n//2)/n
    """
    u = 2.0 * (np.arange(matrix) - matrix // 2) / matrix
    gy, gx = np.meshgrid(u, u, indexing="ij")
    return gx, gy


def paint(ellipses: list[Ellipse], values: list[float], matrix: int, background: float) -> np.ndarray:
    """Rasterise ellipses in order, each later one overwriting the earlier ones.

    Returns: ndarray  # (matrix, matrix) float64, indexed (y, x)
    """
    points = grid(matrix)
    image = np.full((matrix, matrix), background, dtype=np.float64)
    for ellipse, value in zip(ellipses, values, strict=True):
        image[ellipse.mask(points)] = value
    return image
