"""Does a comparison mean anything? Checks of the encoding, the images and their overlap, with every threshold here.

A report of NRMSE, SSIM and tissue ratios looks equally authoritative whether it compares two images of one
object or a stripe pattern against a phantom. These checks say when the numbers mean little; each returns
one-line warnings that the report puts at the top of the page, into ``metrics.json`` and on the command line.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from mrbridge.raw.rawdata import LABELS, RawData
from mrbridge.report.metrics import comparison_mask, imaging_readouts


@dataclass(frozen=True)
class Thresholds:
    """Every threshold of the validity checks and of the common grid, with the physics behind it."""

    #: fields of view closer than this (relative) are the same: headers store mm with 0.1 mm or coarser rounding,
    #: protocols step the FOV by 5 % or more
    same_fov: float = 0.02
    #: matrices further apart than this factor (per axis) are "very different": resampling to the coarser one then
    #: discards more than half of the finer image's k-space extent along that axis
    matrix_ratio: float = 2.0
    #: imaging readouts per distinct labelled k-space position at or above which the labels are degenerate:
    #: up to 3 unlabelled averages pass, a .seq without line labels gives one position for every readout
    readouts_per_position: float = 4.0
    #: fewer encoded phase lines than this fraction of the matrix (FFT recon): zero-filled aliasing dominates;
    #: partial Fourier (≥ 5/8) and acceleration up to 3 with calibration lines pass
    min_line_coverage: float = 0.25
    #: an image whose variation along one axis is below this fraction of its variance is a stripe pattern: a real
    #: object of finite extent varies strongly along both axes (its edges alone), and noise adds to both
    stripe_variance: float = 0.02
    #: most of the energy in one row or column (an object spanning k rows has about 1/k of it per row)
    one_line_energy: float = 0.5
    #: axes shorter than this are not checked for stripes or single lines (1-D profiles, FIDs, thin slabs)
    min_axis: int = 4
    #: object mask: voxels above this fraction of the image's high quantile below (the comparison mask's 10 %,
    #: taken of a quantile so that a few hot voxels or a spike do not set the level)
    object_level: float = 0.1
    object_quantile: float = 0.999
    #: Dice overlap of the two object masks below which the objects barely overlap: images of one object through
    #: one recon overlap > 0.9 despite 10 % intensity errors; 0.5 is a disc shifted by 40 % of its diameter, or
    #: one object a third of the other's area
    min_dice: float = 0.5
    #: Pearson correlation of the two magnitudes inside the comparison mask below which the measured object is
    #: not the simulated twin (T1/T2/B1 mismatches of one object keep it above 0.8), so tissue ROIs of the twin
    #: do not fall on those tissues in the measurement
    min_correlation: float = 0.5


THRESHOLDS = Thresholds()


# ---- encoding -----------------------------------------------------------------------------------------------
def _distinct(values: torch.Tensor) -> int:
    return int(torch.unique(values, dim=0).shape[0]) if values.numel() else 0


def encoding_warnings(raw: RawData, role: str, *, method: str = "fft",
                      thresholds: Thresholds = THRESHOLDS) -> list[str]:
    """Warnings about labels that do not encode an image (only where the recon grids by labels).

    The recon places a readout by its labels for methods "fft" and "sense", and for any method when the data has
    no trajectory; otherwise the trajectory places it and the labels only group readouts.
    """
    t = thresholds
    if not (method in ("fft", "sense") or raw.traj is None):
        return []
    keep = imaging_readouts(raw)
    n = int(keep.sum())
    if n == 0:
        return [f"{role}: no imaging readouts (every readout is flagged noise, navigation, dummy or calibration)"]
    _, ny, nz = raw.header.encoded_matrix
    out: list[str] = []
    for name, size in (("kspace_encode_step_1", ny), ("kspace_encode_step_2", nz)):
        if size <= 1:
            continue
        values = raw.labels[name][keep]
        lines = _distinct(values)
        if lines == 1 and n > 1:
            hint = ""
            if name == "kspace_encode_step_1" and raw.traj is not None:
                fov_y = raw.header.encoded_fov[1]
                ky = torch.round(raw.traj[keep][:, min(raw.center_sample, raw.samples - 1), 1].double() * fov_y)
                if _distinct(ky) > 1:
                    hint = f" although its trajectory visits {_distinct(ky)} k_y lines"
            out.append(f"{role}: all {n} imaging readouts are at {name} = {int(values[0])} (matrix {size}){hint}: "
                       "the labels carry no phase encoding (a .seq without line labels?), the image is a stripe "
                       "pattern")
        elif method == "fft" and lines / size < t.min_line_coverage:
            out.append(f"{role}: only {lines} of {size} {name} lines carry data: the zero-filled image is mostly "
                       "aliasing")
    if not out:
        keys = torch.stack([raw.labels[name][keep] for name in LABELS], 1)
        positions = _distinct(keys)
        if n / positions >= t.readouts_per_position:
            out.append(f"{role}: {n} imaging readouts land on only {positions} labelled k-space positions "
                       f"({n / positions:.3g} each, not labelled as averages): the encoding labels are degenerate")
    return out


# ---- images -------------------------------------------------------------------------------------------------
def _percent(fraction: float) -> str:
    return "< 0.01 %" if fraction < 1e-4 else f"{100 * fraction:.3g} %"


def image_warnings(magnitude: torch.Tensor, role: str, *, thresholds: Thresholds = THRESHOLDS) -> list[str]:
    """Warnings about an image that shows no object: empty, a stripe pattern, or its energy in one row/column.

    magnitude: (…, z, y, x) real; the 2-D (y, x) slice with the most energy is checked.
    """
    t = thresholds
    slices = magnitude.detach().abs().reshape(-1, *magnitude.shape[-2:]).to(torch.float64).cpu()
    energy = slices.square().sum((-2, -1))
    if not bool(torch.isfinite(energy).all()):
        return [f"{role} image has non-finite values"]
    if float(energy.max()) == 0:
        return [f"{role} image is zero everywhere"]
    m = slices[int(energy.argmax())]
    ny, nx = m.shape
    power = m.square()
    total_energy = float(power.sum())
    variance = float((m - m.mean()).square().sum())
    out: list[str] = []
    if ny >= t.min_axis and nx >= t.min_axis:
        if variance == 0:
            return [f"{role} image is constant"]
        along_y = float((m - m.mean(0, keepdim=True)).square().sum()) / variance
        along_x = float((m - m.mean(1, keepdim=True)).square().sum()) / variance
        for axis, share in (("y", along_y), ("x", along_x)):
            if share < t.stripe_variance:
                out.append(f"{role} image is a stripe pattern: only {_percent(share)} of its variance varies "
                           f"along {axis} (no spatial encoding along {axis}?)")
        if out:
            return out
    for axis, lines, size in (("row", power.sum(1), ny), ("column", power.sum(0), nx)):
        share = float(lines.max()) / total_energy
        if size >= t.min_axis and share > t.one_line_energy:
            out.append(f"{role} image holds {_percent(share)} of its energy in one {axis} of {size}")
    return out


# ---- overlap ------------------------------------------------------------------------------------------------
def object_mask(magnitude: torch.Tensor, *, thresholds: Thresholds = THRESHOLDS) -> torch.Tensor:
    """(…, z, y, x) bool: voxels above ``object_level`` × the ``object_quantile`` of the magnitude."""
    flat = magnitude.detach().reshape(-1).to(torch.float64)
    ordered = torch.sort(flat).values
    level = float(ordered[min(int(thresholds.object_quantile * (flat.numel() - 1) + 0.5), flat.numel() - 1)])
    return magnitude > thresholds.object_level * level


def dice(a: torch.Tensor, b: torch.Tensor) -> float:
    """2|A ∩ B| / (|A| + |B|) of two bool masks of one shape (NaN when both are empty)."""
    total = int(a.sum()) + int(b.sum())
    return 2.0 * int((a & b).sum()) / total if total else math.nan


def correlation(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """Pearson correlation of two real tensors over ``mask`` (NaN when either is constant there)."""
    x, y = (a, b) if mask is None else (a[mask], b[mask])
    x, y = x.reshape(-1).to(torch.float64), y.reshape(-1).to(torch.float64)
    if x.numel() < 2:
        return math.nan
    x, y = x - x.mean(), y - y.mean()
    den = float(torch.linalg.vector_norm(x) * torch.linalg.vector_norm(y))
    return float((x * y).sum()) / den if den > 0 else math.nan


@dataclass
class Validity:
    """The outcome of every check: the numbers behind them and the warnings (one line each)."""

    dice: float
    correlation: float
    warnings: list[str] = field(default_factory=list)
    roi_meaningful: bool = True


def assess(sim: torch.Tensor, meas: torch.Tensor, *, sim_raw: RawData | None = None, meas_raw: RawData | None = None,
           method: str = "fft", twin: str | None = None, spatial: bool = True,
           thresholds: Thresholds = THRESHOLDS) -> Validity:
    """Check a comparison of two magnitude images (…, z, y, x) of one grid, and the raw data they came from.

    ``twin``: the twin whose tissue ROIs are reported (None: no ROI statistics, no ROI warning).
    ``spatial=False`` (spectra of unencoded acquisitions, rows = readouts): no encoding or stripe checks, since
    repeated identical FIDs are rows of one spectrum by design.
    """
    t = thresholds
    warnings: list[str] = []
    if spatial:
        for raw, role in ((sim_raw, "simulated"), (meas_raw, "measured")):
            if raw is not None:
                warnings += encoding_warnings(raw, role, method=method, thresholds=t)
        warnings += image_warnings(sim, "simulated", thresholds=t) + image_warnings(meas, "measured", thresholds=t)
    overlap = dice(object_mask(sim, thresholds=t), object_mask(meas, thresholds=t))
    corr = correlation(sim, meas, comparison_mask(sim, meas))
    if not overlap >= t.min_dice:  # NaN included
        warnings.append(f"the objects barely overlap: Dice {overlap:.2f} < {t.min_dice} of the simulated and "
                        f"measured object masks (> {100 * t.object_level:.0f} % of each image's bright level); "
                        "misplaced object, wrong FOV or a different object")
    unlike = not corr >= t.min_correlation
    if unlike and twin is None and overlap >= t.min_dice:  # objects that do not overlap are warned of above
        warnings.append(f"the simulated and measured images do not look alike (correlation of the magnitudes "
                        f"{corr:.2f} < {t.min_correlation} inside the object): the twin is probably not the "
                        "scanned object, so the numbers compare two different objects")
    roi_meaningful = True
    if twin is not None:
        reasons = []
        if unlike:
            reasons.append(f"the measured object does not look like the twin (correlation of the magnitudes "
                           f"{corr:.2f} < {t.min_correlation} inside the object)")
        if warnings:
            reasons.append("see the warnings above")
        if reasons:
            roi_meaningful = False
            warnings.append(f"tissue ratios of {twin} are not meaningful: " + "; ".join(reasons))
    return Validity(dice=overlap, correlation=corr, warnings=warnings, roi_meaningful=roi_meaningful)
