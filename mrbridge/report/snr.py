"""SNR per region of interest: mean magnitude over the noise standard deviation, with the method stated.

Two methods, in order of preference:

* ``noise scan`` — the raw data carry noise-only samples (``RawData.noise``). Noise with their coil covariance
  (each added sample a coil vector drawn at random from the scan, seeded) is added to the imaging samples, and
  the same Recon reconstructs again: σ of a region is the standard deviation of the change of its magnitudes.
  This propagates the noise through the recon exactly (FFT scaling, coil combination, prewhitening, crop). It
  assumes the noise scan was sampled at the imaging receiver bandwidth.
* ``neighbour difference`` — without a noise scan: σ = std(I(y, x+1) − I(y, x)) / √2 over neighbouring pairs
  inside the region. Smooth tissue differs little from voxel to voxel, so the difference is mostly noise; edges
  and texture count as noise too, so it underestimates the SNR of structured regions, and of a noise-free
  simulation it measures structure only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from mrbridge.raw.rawdata import RawData

NOISE_SCAN = "noise scan"
NEIGHBOUR_DIFFERENCE = "neighbour difference"
#: noise-only samples needed for the noise-scan method (per coil)
_MIN_NOISE_SAMPLES = 16


@dataclass
class RoiSnr:
    """SNR of one region in both images (None where the region is too small or σ is 0)."""

    name: str
    voxels: int
    sim: float | None
    meas: float | None


@dataclass
class SnrReport:
    """Per-region SNR and the method that estimated σ for each image."""

    rows: list[RoiSnr]
    sim_method: str
    meas_method: str


def bootstrap_noise(raw: RawData, seed: int = 0) -> torch.Tensor | None:
    """(coils, readouts, samples) complex: coil vectors of ``raw.noise`` drawn with replacement (None without a
    usable noise scan)."""
    noise = raw.noise
    if noise is None or noise.shape[0] != raw.coils or noise.shape[-1] < _MIN_NOISE_SAMPLES:
        return None
    generator = torch.Generator().manual_seed(seed)
    pick = torch.randint(noise.shape[-1], (raw.readouts * raw.samples,), generator=generator)
    drawn = noise.detach().cpu()[:, pick].reshape(raw.coils, raw.readouts, raw.samples)
    return drawn.to(device=raw.kdata.device, dtype=raw.kdata.dtype)


def noise_change(raw: RawData, reconstruct: Callable[[RawData], torch.Tensor],
                 baseline: torch.Tensor) -> torch.Tensor | None:
    """|recon(y + n)| − |recon(y)| (…, z, y, x) for bootstrapped noise n, or None without a noise scan.

    reconstruct: raw data → magnitude image on the report's grid (…, z, y, x); baseline: reconstruct(raw).
    """
    noise = bootstrap_noise(raw)
    if noise is None:
        return None
    return reconstruct(raw.with_kdata(raw.kdata + noise)) - baseline


def _neighbour_sigma(image: torch.Tensor, region: torch.Tensor) -> float | None:
    """std(I(y, x+1) − I(y, x)) / √2 over pairs with both voxels in ``region`` ((…, z, y, x) and (z, y, x))."""
    both = region[..., 1:] & region[..., :-1]
    diff = (image[..., 1:] - image[..., :-1])[..., both]
    if diff.numel() < 2:
        return None
    return float(diff.to(torch.float64).std()) / math.sqrt(2.0)


def _snr(image: torch.Tensor, region: torch.Tensor, change: torch.Tensor | None) -> float | None:
    mean = float(image[..., region].to(torch.float64).mean())
    if change is not None:
        values = change[..., region]
        sigma = float(values.to(torch.float64).std()) if values.numel() > 1 else None
    else:
        sigma = _neighbour_sigma(image, region)
    return mean / sigma if sigma else None


def roi_snr(
    sim: torch.Tensor,
    meas: torch.Tensor,
    regions: dict[str, torch.Tensor],
    *,
    sim_change: torch.Tensor | None = None,
    meas_change: torch.Tensor | None = None,
) -> SnrReport:
    """SNR of every region in both magnitude images.

    sim, meas: (…, z, y, x) real magnitudes on one grid; regions: name → (z, y, x) bool on that grid;
    sim_change, meas_change: the images' :func:`noise_change` (…, z, y, x), or None for the neighbour difference.
    """
    rows = [RoiSnr(name=name, voxels=int(region.sum()), sim=_snr(sim, region, sim_change),
                   meas=_snr(meas, region, meas_change)) for name, region in regions.items() if bool(region.any())]
    return SnrReport(rows=rows, sim_method=NOISE_SCAN if sim_change is not None else NEIGHBOUR_DIFFERENCE,
                     meas_method=NOISE_SCAN if meas_change is not None else NEIGHBOUR_DIFFERENCE)
