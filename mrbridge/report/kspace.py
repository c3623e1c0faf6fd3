"""The k-space a report shows: the samples of the imaging readouts, RSS over coils, as the recon grids them.

Cartesian data are placed on the recon's Cartesian grid, so simulation and measurement
line up sample by sample (ky, kx) whatever their acquisition order; other trajectories are shown as acquired
(readouts, samples).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from mrbridge.raw.rawdata import RawData
from mrbridge.recon.pipeline import Recon
from mrbridge.report.metrics import imaging_readouts


@dataclass
class KspacePlane:
    """|k| of one plane: (rows, columns) float64, NaN where nothing was sampled.

    gridded: True when rows/columns are ky/kx grid positions (index − n//2 = cycles per FOV), False when they are
    readouts and samples in acquisition order.
    """

    magnitude: np.ndarray
    gridded: bool


def kspace_plane(recon: Recon, raw: RawData) -> KspacePlane:
    """RSS-over-coils |k| of the first repetition and contrast, central kz plane (3D) — see the module."""
    keep = imaging_readouts(raw)
    if not bool(keep.any()):
        keep = torch.ones_like(keep)
    if raw.traj is None or raw.header.trajectory == "cartesian":
        with torch.no_grad():
            grid, mask = recon._grid(raw, raw.kdata, keep.to(raw.kdata.device))  # (coils, reps, con, z, y, x)
        rss = grid.abs().square().sum(0).sqrt()
        rss = rss.reshape(-1, *rss.shape[-3:])[0]
        sampled = mask.reshape(-1, *mask.shape[-3:])[0]
        z = rss.shape[0] // 2
        plane = rss[z].detach().cpu().to(torch.float64).numpy()
        return KspacePlane(np.where(sampled[z].cpu().numpy(), plane, np.nan), gridded=True)
    rss = raw.kdata[:, keep].abs().square().sum(0).sqrt()
    return KspacePlane(rss.detach().cpu().to(torch.float64).numpy(), gridded=False)


def log_magnitude(k: np.ndarray) -> np.ndarray:
    """log10 |k|, NaN where |k| is 0 or not sampled."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(k > 0, np.log10(np.where(k > 0, k, 1.0)), np.nan)
