"""Numbers of a sim-vs-measured comparison: fitted scale, NRMSE/SSIM/PSNR, ROI statistics, data consistency.

Images are compared as magnitudes (a simulation and a scanner agree on |m|, not on the receiver phase), after
fitting one global intensity scale s = argmin ‖s·sim − meas‖² over the comparison mask (least squares:
s = Σ sim·meas / Σ sim²), since simulated and scanner intensities have unrelated units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import ismrmrd
import torch
import torch.nn.functional as F

from mrbridge.raw.rawdata import RawData
from mrbridge.recon.coils import estimate_sensitivities
from mrbridge.recon.image import Image
from mrbridge.recon.pipeline import Recon, prewhiten

#: readouts that never enter an image (as in Recon), plus calibration-only lines
_NOT_IMAGING = (
    ismrmrd.ACQ_IS_NOISE_MEASUREMENT,
    ismrmrd.ACQ_IS_NAVIGATION_DATA,
    ismrmrd.ACQ_IS_PHASECORR_DATA,
    ismrmrd.ACQ_IS_DUMMYSCAN_DATA,
    ismrmrd.ACQ_IS_PARALLEL_CALIBRATION,
)


def fit_scale(sim: torch.Tensor, meas: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Least-squares s minimising ‖s·sim − meas‖² over ``mask`` (real tensors of one shape)."""
    a, b = (sim, meas) if mask is None else (sim[mask], meas[mask])
    den = float((a * a).sum())
    return float((a * b).sum()) / den if den > 0 else 1.0


def nrmse(estimate: torch.Tensor, reference: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """‖estimate − reference‖ / ‖reference‖ over ``mask``."""
    a, b = (estimate, reference) if mask is None else (estimate[mask], reference[mask])
    ref = float(torch.linalg.vector_norm(b))
    return float(torch.linalg.vector_norm(a - b)) / ref if ref > 0 else math.inf


def psnr(estimate: torch.Tensor, reference: torch.Tensor) -> float:
    """20·log10(max |reference| / RMSE) in dB (inf for identical images)."""
    mse = float((estimate - reference).square().mean())
    peak = float(reference.abs().max())
    return math.inf if mse == 0 else 10.0 * math.log10(peak**2 / mse)


def ssim(estimate: torch.Tensor, reference: torch.Tensor, *, sigma: float = 1.5) -> float:
    """Mean structural similarity (Wang et al. 2004; Gaussian window σ = 1.5 px, K1 = 0.01, K2 = 0.03).

    estimate, reference: (…, y, x) real; every (y, x) slice is compared in 2-D, the data range is
    max(reference) − min(reference); the mean is over valid (unpadded) window positions of all slices.
    """
    a = estimate.reshape(-1, 1, *estimate.shape[-2:]).to(torch.float64)
    b = reference.reshape(-1, 1, *reference.shape[-2:]).to(torch.float64)
    radius = min(int(3.5 * sigma + 0.5), (min(a.shape[-2:]) - 1) // 2)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    g = torch.exp(-(x**2) / (2 * sigma**2))
    g = g / g.sum()

    def blur(t: torch.Tensor) -> torch.Tensor:
        t = F.conv2d(t, g.view(1, 1, 1, -1))
        return F.conv2d(t, g.view(1, 1, -1, 1))

    data_range = float(b.max() - b.min()) or 1.0
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return float(s.mean())


def labels_on_grid(
    labels: torch.Tensor,
    fov: tuple[float, float, float],
    shape_zyx: tuple[int, int, int],
    fov_out: tuple[float, float, float],
) -> torch.Tensor:
    """Nearest-neighbour resampling of a label map onto another centred grid.

    labels: (z, y, x) int64 on a grid of extent ``fov`` (x, y, z) m; voxel centres at (i − n//2)·Δ on both grids.
    Returns: (z', y', x') int64 on the grid ``shape_zyx`` of extent ``fov_out``; 0 outside the source grid.
    """
    index = []
    for axis, n_out in enumerate(shape_zyx):
        n_in = labels.shape[axis]
        d_in, d_out = fov[2 - axis] / n_in, fov_out[2 - axis] / n_out
        pos = (torch.arange(n_out, dtype=torch.float64) - n_out // 2) * d_out
        src = torch.round(pos / d_in).to(torch.int64) + n_in // 2
        if n_in == 1:  # one slice: every output slice sees it
            src = torch.zeros_like(src)
        index.append(src)
    iz, iy, ix = torch.meshgrid(*index, indexing="ij")
    inside = (iz >= 0) & (iz < labels.shape[0]) & (iy >= 0) & (iy < labels.shape[1]) & (ix >= 0)
    inside &= ix < labels.shape[2]
    out = labels[iz.clamp(0, labels.shape[0] - 1), iy.clamp(0, labels.shape[1] - 1), ix.clamp(0, labels.shape[2] - 1)]
    return torch.where(inside, out, torch.zeros_like(out))


@dataclass
class RoiStat:
    """Statistics of one tissue label (magnitudes; ``sim`` already multiplied by the fitted scale)."""

    label: int
    name: str
    voxels: int
    sim_mean: float
    sim_std: float
    meas_mean: float
    meas_std: float
    ratio: float  # meas_mean / sim_mean


def roi_stats(sim: torch.Tensor, meas: torch.Tensor, labels: torch.Tensor, names: dict[int, str]) -> list[RoiStat]:
    """Per-label mean and standard deviation of both images, and their ratio of means.

    sim, meas: (…, z, y, x) real magnitudes; labels: (z, y, x) int64 on the same grid (0 = background, skipped).
    """
    out = []
    sim_v = sim.reshape(-1, *sim.shape[-3:])
    meas_v = meas.reshape(-1, *meas.shape[-3:])
    for value in sorted(int(v) for v in labels.unique() if int(v) != 0):
        sel = (labels == value).expand_as(sim_v)
        a, b = sim_v[sel].to(torch.float64), meas_v[sel].to(torch.float64)
        sm, mm = float(a.mean()), float(b.mean())
        out.append(RoiStat(label=value, name=names.get(value, f"label {value}"), voxels=int(a.numel()),
                           sim_mean=sm, sim_std=float(a.std()) if a.numel() > 1 else 0.0,
                           meas_mean=mm, meas_std=float(b.std()) if b.numel() > 1 else 0.0,
                           ratio=mm / sm if sm != 0 else math.nan))
    return out


def imaging_readouts(raw: RawData) -> torch.Tensor:
    """(readouts,) bool: readouts that enter an image (no noise, navigator, phase-correction, dummy or
    calibration-only flag)."""
    flags = raw.flags if raw.flags is not None else torch.zeros(raw.readouts, dtype=torch.int64)
    keep = torch.ones(raw.readouts, dtype=torch.bool, device=flags.device)
    for bit in _NOT_IMAGING:
        keep &= (flags >> (bit - 1)) & 1 == 0
    return keep


def data_consistency(recon: Recon, raw: RawData, image: Image) -> float | None:
    """Relative residual ‖E x − y‖ / ‖y‖ of the reconstructed image against the measured samples.

    E is the recon's Cartesian forward model: zero-padding of the (cropped) image back to the encoded matrix,
    coil sensitivities, the centred FFT and sampling at the acquired grid positions; y are the (prewhitened,
    gridded) imaging samples. Sensitivities are those the recon combined with: for a complex image its Walsh
    maps (kernel and threshold of the config), for a magnitude (RSS) image the implicit maps c/‖c‖ of the
    zero-filled coil images c, so a plain inverse FFT + RSS gives 0 (up to signal outside the recon FOV) and
    any change of the image, e.g. detail a network invents, raises it. Returns None for non-Cartesian data.

    raw: the RawData that produced ``image`` (image data (reps, contrasts, z, y, x)).
    """
    if raw.traj is not None and raw.header.trajectory != "cartesian":
        return None
    kdata = raw.kdata
    if recon.config.prewhiten and raw.noise is not None and raw.noise.shape[-1] > raw.coils:
        kdata = prewhiten(kdata, raw.noise)
    keep = imaging_readouts(raw)
    with torch.no_grad():
        grid, mask = recon._grid(raw, kdata, keep.to(kdata.device))  # (coils, reps, con, z, y, x), (reps, …)
        fourier = recon._fourier(raw)
        coil_images = fourier.H(grid)
        x = image.data.detach().to(coil_images.device)
        if tuple(x.shape[:-2]) != tuple(coil_images.shape[1:-2]):
            return None
        x = _pad_centred(x, coil_images.shape[-2:]).to(coil_images.dtype)
        if image.data.is_complex():  # the recon's Walsh maps, as it combined with them
            c = recon.config
            flat = coil_images.reshape(raw.coils, -1, *coil_images.shape[-3:])
            sens = torch.stack([estimate_sensitivities(flat[:, g], kernel=c.sensitivity_kernel,
                                                       threshold=c.sensitivity_threshold)
                                for g in range(flat.shape[1])], 1).reshape(coil_images.shape)
        else:  # RSS = (c/‖c‖)ᴴ c: its implicit maps
            rss = coil_images.abs().square().sum(0, keepdim=True).sqrt()
            sens = torch.where(rss > 0, coil_images / rss.clamp_min(torch.finfo(rss.dtype).tiny), 0)
        predicted = fourier(sens * x) * mask.to(coil_images.real.dtype)
        measured = grid * mask.to(coil_images.real.dtype)
        ref = float(torch.linalg.vector_norm(measured))
        return float(torch.linalg.vector_norm(predicted - measured)) / ref if ref > 0 else None


def _pad_centred(x: torch.Tensor, size: torch.Size) -> torch.Tensor:
    """Zero-pad (…, y, x) to (…, Y, X) keeping voxel (y//2, x//2) at (Y//2, X//2)."""
    (ny, nx), (big_y, big_x) = x.shape[-2:], size
    before_y, before_x = big_y // 2 - ny // 2, big_x // 2 - nx // 2
    out = x.new_zeros(*x.shape[:-2], big_y, big_x)
    out[..., before_y : before_y + ny, before_x : before_x + nx] = x
    return out


@dataclass
class Metrics:
    """Every number of a comparison (JSON-serialisable via ``dataclasses.asdict``)."""

    scale: float  # fitted s: the measured image ≈ s·simulated image
    nrmse: float
    ssim: float
    psnr_db: float
    mask_voxels: int
    dc_residual_sim: float | None
    dc_residual_meas: float | None
    roi: list[RoiStat] = field(default_factory=list)
    dice: float | None = None  # overlap of the two object masks (see report/validity.py)
    correlation: float | None = None  # Pearson correlation of the magnitudes inside the mask


def comparison_mask(sim: torch.Tensor, meas: torch.Tensor, fraction: float = 0.1) -> torch.Tensor:
    """(…, z, y, x) bool: voxels where either magnitude image exceeds ``fraction`` of its maximum."""
    return (sim > fraction * float(sim.max())) | (meas > fraction * float(meas.max()))


def compare_images(sim: torch.Tensor, meas: torch.Tensor, *, labels: torch.Tensor | None = None,
                   names: dict[int, str] | None = None) -> tuple[Metrics, torch.Tensor]:
    """Scale, NRMSE (over the mask), SSIM and PSNR (whole image) and ROI statistics of two magnitude images.

    sim, meas: (…, z, y, x) real, same shape; labels: (z, y, x) int64 on that grid or None.
    Returns (Metrics without the data-consistency residuals, scaled sim  # (…, z, y, x)).
    """
    if sim.shape != meas.shape:
        raise ValueError(f"images differ in shape: sim {tuple(sim.shape)}, meas {tuple(meas.shape)}")
    mask = comparison_mask(sim, meas)
    scale = fit_scale(sim, meas, mask)
    scaled = scale * sim
    roi = roi_stats(scaled, meas, labels, names or {}) if labels is not None else []
    metrics = Metrics(scale=scale, nrmse=nrmse(scaled, meas, mask), ssim=ssim(scaled, meas),
                      psnr_db=psnr(scaled, meas), mask_voxels=int(mask.sum()), dc_residual_sim=None,
                      dc_residual_meas=None, roi=roi)
    return metrics, scaled
