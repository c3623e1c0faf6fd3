"""One grid for both images of a comparison: k-space resampling when only the matrix differs, else a clear refusal.

Two reconstructions of the same field of view with different matrices sample the same object at different
resolutions. They are brought to the coarser matrix, axis by axis, by a centred crop of their k-space: that is
exactly the image the coarser acquisition would give, and nothing is invented (zero-padding the coarser side up
would only interpolate). A complex image is resampled as it is; a magnitude image (RSS) is resampled as a real
image and its magnitude taken again, a low-pass of the magnitude that equals the complex route wherever the phase
varies slowly across a voxel of the coarser grid. Different fields of view, slice counts, repetitions or contrasts
have no common grid: :class:`~mrbridge.errors.InputError`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from mrbridge.errors import InputError
from mrbridge.recon.image import Image
from mrbridge.report.validity import THRESHOLDS, Thresholds


def _fov_mm(fov: tuple[float, float, float]) -> str:
    return "×".join(f"{1e3 * f:.4g}" for f in fov) + " mm"


def shape_text(image: Image) -> str:
    """'(reps, contrasts, z) y×x over X×Y×Z mm' for messages."""
    lead = tuple(int(n) for n in image.data.shape[:-2])
    y, x = image.data.shape[-2:]
    return f"{lead} {y}×{x} over FOV {_fov_mm(image.fov)}"


def relative_difference(a: float, b: float) -> float:
    """|a − b| / max(|a|, |b|) (0 when both are 0)."""
    big = max(abs(a), abs(b))
    return abs(a - b) / big if big > 0 else 0.0


def resample_kspace(data: torch.Tensor, shape_yx: tuple[int, int]) -> torch.Tensor:
    """Centred crop / zero-pad of the k-space of the last two axes, back to image space.

    data: (…, y, x) complex or real; voxel (y//2, x//2) is the image centre and k-space index n//2 is k = 0, as in
    the recon's centred FFT. Intensities are kept (the mean of a constant image is unchanged).
    Returns: (…, Y, X), complex for complex input, else the magnitude (float).
    """
    out = data if data.is_complex() else data.to(torch.complex128 if data.dtype == torch.float64 else torch.complex64)
    for axis, n_out in zip((-2, -1), shape_yx, strict=True):
        n_in = out.shape[axis]
        if n_in == n_out:
            continue
        k = torch.fft.fftshift(torch.fft.fft(torch.fft.ifftshift(out, dim=axis), dim=axis), dim=axis)
        if n_out < n_in:
            start = n_in // 2 - n_out // 2
            k = k.narrow(axis, start, n_out)
        else:
            pad_shape = list(k.shape)
            pad_shape[axis] = n_out
            padded = k.new_zeros(pad_shape)
            padded.narrow(axis, n_out // 2 - n_in // 2, n_in).copy_(k)
            k = padded
        out = torch.fft.fftshift(torch.fft.ifft(torch.fft.ifftshift(k, dim=axis), dim=axis), dim=axis)
        out = out * (n_out / n_in)  # ifft divides by n_out where fft summed n_in voxels
    return out if data.is_complex() else out.abs().to(data.dtype)


@dataclass
class CommonGrid:
    """Both images on one grid, and what was done to get there.

    sim, meas: the images as compared, data (…, z, y, x) of one shape.
    notes: what was resampled (one line each); warnings: what makes the comparison mean less (very different
    matrices or fields of view).
    """

    sim: Image
    meas: Image
    resampled: dict[str, list[int]] = field(default_factory=dict)  # role → original shape
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def common_grid(sim: Image, meas: Image, *, sim_name: str = "simulated", meas_name: str = "measured",
                thresholds: Thresholds = THRESHOLDS) -> CommonGrid:
    """Bring ``sim`` and ``meas`` onto one grid (see the module docstring) or raise a one-line InputError."""
    t = thresholds
    fov_diff = [relative_difference(a, b) for a, b in zip(sim.fov[:2], meas.fov[:2], strict=True)]
    same_fov = max(fov_diff) <= t.same_fov
    what = f"simulated {shape_text(sim)}, measured {shape_text(meas)}"
    if sim.data.shape[:-2] != meas.data.shape[:-2]:
        raise InputError(f"{sim_name} and {meas_name}: no common grid ({what}): the repetitions, contrasts or "
                         "slices differ; simulate the sequence that was measured")
    result = CommonGrid(sim=sim, meas=meas)
    if sim.data.shape != meas.data.shape:
        if not same_fov:
            raise InputError(f"{sim_name} and {meas_name}: no common grid ({what}): matrix and field of view both "
                             "differ; simulate the sequence that was measured (same FOV and matrix)")
        target = (min(sim.data.shape[-2], meas.data.shape[-2]), min(sim.data.shape[-1], meas.data.shape[-1]))
        for role in ("sim", "meas"):
            image: Image = getattr(result, role)
            if tuple(image.data.shape[-2:]) == target:
                continue
            label = "simulated" if role == "sim" else "measured"
            ny, nx = image.data.shape[-2:]
            result.resampled[label] = [int(n) for n in image.data.shape]
            setattr(result, role, replace(image, data=resample_kspace(image.data, target),  # same FOV, larger voxels
                                          meta={**image.meta, "resampled_from": [int(ny), int(nx)]}))
            result.notes.append(f"{label} image resampled from {ny}×{nx} to {target[0]}×{target[1]} (y×x) by a "
                                "centred crop of its k-space: both are compared at the coarser resolution")
        ratio = max(max(a, b) / min(a, b) for a, b in zip(sim.data.shape[-2:], meas.data.shape[-2:], strict=True))
        if ratio > t.matrix_ratio:
            result.warnings.append(f"very different matrices ({what}): compared at the coarser one, a factor "
                                   f"{ratio:.3g} below the finer; fine detail of the finer image is not compared")
    elif not same_fov:
        result.warnings.append(f"different fields of view ({what}, up to {100 * max(fov_diff):.3g} % apart): "
                               "voxels of the same index are different places in the object")
    slab = relative_difference(sim.fov[2], meas.fov[2])
    if slab > t.same_fov and math.isfinite(slab):
        result.warnings.append(f"different slice extent (simulated {1e3 * sim.fov[2]:.4g} mm, measured "
                               f"{1e3 * meas.fov[2]:.4g} mm): partial-volume and slice-profile effects differ")
    return result
