"""Image: what Recon returns, with the geometry the writers (ISMRMRD, NIfTI, PNG) need."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import torch


@dataclass
class Image:
    """A reconstructed image with its geometry.

    data: Tensor   # (…, z, y, x) complex64 or real float32; leading dims e.g. (repetitions, contrasts)
    fov: (x, y, z) m, the extent of the grid (voxel size = fov / matrix)
    position: (x, y, z) m, patient-frame position of the voxel at index (z//2, y//2, x//2)
    read_dir, phase_dir, slice_dir: unit vectors of the x, y and z image axes in the patient frame
    meta: free-form provenance (method, coils, source file …), JSON-serialisable values
    """

    data: torch.Tensor
    fov: tuple[float, float, float] = (0.2, 0.2, 0.005)
    position: tuple[float, float, float] = (0.0, 0.0, 0.0)
    read_dir: tuple[float, float, float] = (1.0, 0.0, 0.0)
    phase_dir: tuple[float, float, float] = (0.0, 1.0, 0.0)
    slice_dir: tuple[float, float, float] = (0.0, 0.0, 1.0)
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.data.dim() < 3:
            raise ValueError(f"Image data must be (…, z, y, x), got shape {tuple(self.data.shape)}")

    @property
    def matrix(self) -> tuple[int, int, int]:
        """Grid size (x, y, z)."""
        z, y, x = self.data.shape[-3:]
        return (int(x), int(y), int(z))

    @property
    def voxel_size(self) -> tuple[float, float, float]:
        """Voxel size (x, y, z) in m."""
        return (
            self.fov[0] / self.matrix[0],
            self.fov[1] / self.matrix[1],
            self.fov[2] / self.matrix[2],
        )

    def magnitude(self) -> Image:
        """The same image with ``data`` replaced by its magnitude (real, same shape)."""
        return replace(self, data=self.data.abs(), meta=dict(self.meta))
