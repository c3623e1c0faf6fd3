"""Receive sensitivities for a twin from a multi-coil Cartesian calibration scan (ISMRMRD raw data).

The scan's readouts are placed on the Cartesian grid by their encoding labels (y: kspace_encode_step_1,
z: slice, or kspace_encode_step_2 for 3D; sample s at x = s − center_sample + nx//2), inverse-FFT'd per coil,
and the sensitivities estimated by Walsh's method (:func:`mrbridge.recon.coils.estimate_sensitivities`). They
are not prewhitened: the twin needs the coils' physical sensitivities (the simulator adds noise itself).
Sensitivities are smooth, so they are brought onto the twin's grid by linear interpolation in physical
coordinates (edge values beyond the scan's FOV).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import ismrmrd
import torch
import torch.nn.functional as F

from mrbridge.errors import InputError
from mrbridge.raw.mrd import read_mrd
from mrbridge.recon.coils import estimate_sensitivities
from mrbridge.recon.operators import FourierOp

#: Walsh window (voxels of the calibration scan)
KERNEL = 5
#: acquisitions that are not imaging data
_SKIP = (ismrmrd.ACQ_IS_NOISE_MEASUREMENT, ismrmrd.ACQ_IS_NAVIGATION_DATA, ismrmrd.ACQ_IS_PHASECORR_DATA,
         ismrmrd.ACQ_IS_DUMMYSCAN_DATA)


def coil_images(path: Path) -> tuple[torch.Tensor, tuple[float, float, float]]:
    """Per-coil images of a Cartesian scan: ((coils, z, y, x) complex64, FOV (x, y, z) m of that grid)."""
    raw = read_mrd(path)
    if raw.coils < 2:
        raise InputError(f"{path}: calibration scan has {raw.coils} coil; coil sensitivities need a multi-coil scan")
    nx, ny, nz = raw.header.encoded_matrix
    flags = raw.flags if raw.flags is not None else torch.zeros(raw.readouts, dtype=torch.int64)
    keep = torch.ones(raw.readouts, dtype=torch.bool)
    for bit in _SKIP:
        keep &= (flags & (1 << (bit - 1))) == 0
    y = raw.labels["kspace_encode_step_1"][keep]
    z = (raw.labels["kspace_encode_step_2"] if nz > 1 else raw.labels["slice"])[keep]
    n_z = nz if nz > 1 else int(z.max()) + 1
    if int(y.max()) >= ny or int(z.max()) >= n_z:
        raise InputError(f"{path}: encoding labels beyond the encoded matrix {nx}×{ny}×{nz}; expected a Cartesian scan")
    xs = torch.arange(raw.samples) - raw.center_sample + nx // 2
    inside = (xs >= 0) & (xs < nx)
    grid = torch.zeros(raw.coils, n_z, ny, nx, dtype=torch.complex64)
    data = raw.kdata[:, keep][:, :, inside].to(torch.complex64)
    grid[:, z[:, None], y[:, None], xs[inside][None, :]] = data
    dims = (n_z, ny, nx) if nz > 1 else (ny, nx)
    images = FourierOp(dims).H(grid)
    fx, fy, fz = raw.header.encoded_fov
    return images, (fx, fy, fz if nz > 1 else fz * n_z)


def sensitivities_from_scan(
    path: str | Path, shape_zyx: tuple[int, int, int], fov: tuple[float, float, float]
) -> tuple[torch.Tensor, dict[str, Any]]:
    """Coil sensitivities on a twin grid from the calibration scan at ``path``.

    Returns ((coils, z, y, x) complex64 sensitivities, provenance dict).
    """
    path = Path(path)
    images, scan_fov = coil_images(path)
    sens = estimate_sensitivities(images, kernel=KERNEL)
    coils, sz = sens.shape[0], sens.shape[1]
    nz = shape_zyx[0]
    if sz not in (1, nz):
        raise InputError(f"{path}: calibration scan has {sz} slices, the twin {nz}; expected 1 or {nz}")

    def coordinate(n_out: int, fov_out: float, n_in: int, fov_in: float) -> torch.Tensor:
        """grid_sample coordinate (align_corners=True) of each output voxel centre in the input grid."""
        pos = (torch.arange(n_out, dtype=torch.float64) - n_out // 2) * fov_out / n_out
        index = pos / (fov_in / n_in) + n_in // 2
        return (2 * index / max(n_in - 1, 1) - 1).to(torch.float32)

    gy = coordinate(shape_zyx[1], fov[1], sens.shape[2], scan_fov[1])
    gx = coordinate(shape_zyx[2], fov[0], sens.shape[3], scan_fov[0])
    yy, xx = torch.meshgrid(gy, gx, indexing="ij")
    where = torch.stack([xx, yy], dim=-1)[None]
    slices = []
    for iz in range(nz):
        s = sens[:, iz if sz == nz else 0]  # (coils, y, x)
        planes = torch.cat([s.real, s.imag])[None]  # (1, 2·coils, y, x)
        out = F.grid_sample(planes, where, mode="bilinear", padding_mode="border", align_corners=True)[0]
        slices.append(torch.complex(out[:coils], out[coils:]))
    result = torch.stack(slices, dim=1).to(torch.complex64)
    info = {"from": str(path), "coils": coils, "method": f"Walsh (kernel {KERNEL}) on the scan's coil images, "
            "linear interpolation onto the twin grid", "scan_matrix_xyz": [int(sens.shape[3]), int(sens.shape[2]), sz],
            "scan_fov_m": list(scan_fov)}
    return result, info
