"""Where a refinement starts when no twin is given: the maps the measured data show directly.

PD and the coils come from the first echo's image (the adjoint of the scan's own encoding on the twin grid, the
k-space divided by the box shape of the twin's voxels first), the object mask from its magnitude. A multi-echo
scan gives B0 (the phase difference of its first two echoes) and T2′ (the decay over all its echoes, a weighted
log-linear fit). T1 and T2 come from a tissue of ``calibration/phantoms/brain3t.yaml`` (T2 raised to the measured
T2* where that is longer: T2 ≥ T2*), B1+ is uniform.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mrbridge.errors import InputError
from mrbridge.recon.operators import NonCartesianOp
from mrbridge.refinement.scans import Grid, Scan
from mrbridge.twin.phantoms import Tissue, brain_table
from mrbridge.twin.twin import Twin

#: object mask: |image| above this fraction of its 99th percentile (then dilated by one voxel)
MASK_FRACTION = 0.1
#: smoothing (voxels, Gaussian σ) of the starting B0 map
SMOOTH_SIGMA = 1.5
#: the start's longest T2 (s) and smallest R2′ (1/s). Echoes a few ms apart barely tell a T2 of 0.5 s from one of
#: 3 s (e^{−ΔTE/T2} within 2 % over 10 ms), but the graph keeps a long T2's transverse states over many more TRs
#: (200 evaluations of the Prisma 3-echo refine: 6 min 25 s with T2 up to 3 s)
T2_MAX = 0.5
R2DASH_MIN = 0.1


def adjoint_image(kdata: torch.Tensor, traj: torch.Tensor, grid: Grid) -> torch.Tensor:
    """Eᴴy on the grid with the recon's own non-Cartesian operator (the inverse DFT for a full Cartesian window).

    kdata: (coils, K) complex;  traj: (K, 3) 1/m.  Returns (coils, y, x) complex64.
    """
    op = NonCartesianOp(traj, (1, grid.matrix, grid.matrix), grid.fov)
    return op.adjoint(kdata.to(torch.complex64))[:, 0].to(torch.complex64)


def voxel_shape(traj: torch.Tensor, grid: Grid) -> torch.Tensor:
    """(K,) the signal of a uniform box voxel of the grid at each k-space sample, relative to a point: Π sinc(k·Δ)
    over x, y (the factor the graph engine applies, :mod:`mrbridge.sim.graph`). traj: (K, 3) 1/m."""
    size = torch.tensor([f / grid.matrix for f in grid.fov[:2]], dtype=traj.dtype)
    return torch.sinc(traj[:, :2] * size).prod(-1)


def smooth(values: torch.Tensor, mask: torch.Tensor, sigma: float = SMOOTH_SIGMA) -> torch.Tensor:
    """Gaussian smoothing inside ``mask`` only (normalised convolution). values: (…, y, x) real or complex."""
    radius = max(1, math.ceil(3 * sigma))
    g = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=torch.float64) / sigma) ** 2)
    kernel = (g[:, None] * g[None, :])[None, None]

    def blur(m: torch.Tensor) -> torch.Tensor:
        flat = m.reshape(-1, 1, *m.shape[-2:]).to(torch.float64)
        return F.conv2d(flat, kernel, padding=radius).reshape(m.shape)

    weight = blur(mask.to(torch.float64)).clamp_min(1e-12)
    if values.is_complex():
        return torch.complex(blur(values.real * mask), blur(values.imag * mask)) / weight
    return blur(values * mask) / weight


def decay_rate(magnitudes: torch.Tensor, echo_times: list[float]) -> torch.Tensor:
    """R2* (1/s) per voxel: the slope of the log-linear least-squares fit of the echo magnitudes, each weighted by
    its square (the log of a noisy magnitude has a variance ∝ 1/m²); for two echoes ln(m₁/m₂)/ΔTE.

    magnitudes: (echoes, y, x) real ≥ 0;  echo_times: (echoes,) s, not all equal.  Returns (y, x) float64.
    """
    m = magnitudes.to(torch.float64)
    t = torch.tensor(echo_times, dtype=torch.float64)[:, None, None]
    log_m = torch.log(m.clamp_min(1e-12 * float(m.max())))
    w = m.square()
    total = w.sum(0).clamp_min(1e-300)
    t_mean, log_mean = (w * t).sum(0) / total, (w * log_m).sum(0) / total
    slope = (w * (t - t_mean) * (log_m - log_mean)).sum(0) / (w * (t - t_mean).square()).sum(0).clamp_min(1e-300)
    return -slope


def start_tissue(tissue: str) -> Tissue:
    """The brain3t.yaml tissue whose T1/T2 the start takes (InputError naming the usable ones)."""
    table = brain_table().tissues
    if tissue not in table or table[tissue].t1_ms is None:
        usable = [n for n, t in table.items() if t.t1_ms is not None]
        raise InputError(f"--tissue {tissue!r}: expected one of {', '.join(usable)} "
                         "(calibration/phantoms/brain3t.yaml)")
    return table[tissue]


def object_mask(magnitude: torch.Tensor) -> torch.Tensor:
    """(y, x) bool: the object, |image| > MASK_FRACTION of its 99th percentile, dilated by one voxel."""
    inside = magnitude > MASK_FRACTION * torch.quantile(magnitude.flatten().to(torch.float64), 0.99).item()
    return F.max_pool2d(inside[None, None].float(), 3, stride=1, padding=1)[0, 0] > 0


def start_twin(scans: list[Scan], grid: Grid, tissue: str = "grey_matter") -> Twin:
    """The starting twin from the data (see the module docstring); its provenance says where each map came from."""
    values = start_tissue(tissue)
    first = scans[0]
    kdata = first.kdata / voxel_shape(first.traj, grid)  # the twin's voxels are boxes: PD is their density
    images = [adjoint_image(kdata[:, first.contrast == c], first.traj[first.contrast == c], grid)
              for c in sorted(set(first.contrast.tolist()))]
    magnitudes = torch.stack([im.abs().square().sum(0).sqrt() for im in images])  # (echoes, y, x), coils' RSS
    rss = magnitudes[0]
    mask = object_mask(rss)
    t2 = torch.full_like(rss, 1e-3 * float(values.t2_ms or 100.0), dtype=torch.float64)
    r2dash = torch.full_like(rss, float(values.r2dash_per_s or 1.0), dtype=torch.float64)
    b0 = torch.zeros_like(r2dash)
    te = first.echo_times
    notes = {"pd": f"first echo of {first.name}", "t1_t2": f"tissue '{tissue}' of brain3t.yaml", "b1": "uniform 1"}
    if len(images) >= 2 and len(te) >= 2 and te[1] > te[0]:
        dte = te[1] - te[0]
        product = (images[1] * images[0].conj()).sum(0)
        # the signal's phase runs as −2π·B0·t (s ∝ exp(−i2π(k·r + B0·t)), as the simulators); smoothing the
        # complex product keeps phase wraps
        b0 = -torch.angle(smooth(product, mask)).to(torch.float64) / (2 * math.pi * dte)
        echoes = min(len(images), len(te))
        r2star = decay_rate(magnitudes[:echoes], te[:echoes]).clamp_min(0.0)
        t2 = torch.maximum(t2, 1 / r2star.clamp_min(1 / T2_MAX))  # T2 ≥ T2*: a slower decay than the tissue's T2
        r2dash = (r2star - 1 / t2).clamp(R2DASH_MIN, 500.0)
        notes["b0_t2dash"] = (f"echoes 1 and 2 (B0, ΔTE {1e3 * dte:.3g} ms) and the decay over {echoes} echoes "
                               f"(T2′) of {first.name}")
        notes["t1_t2"] += ", T2 raised to the measured T2* where that is longer"
    te1 = te[0] if te else 0.0
    unwind = torch.exp(2j * math.pi * b0 * te1).to(torch.complex64)  # the coil phase without B0's at TE1
    sens = images[0] / rss.clamp_min(1e-12 * float(rss.max())) * unwind
    sens = sens / sens.abs().square().sum(0).sqrt().clamp_min(1e-12)
    pd = torch.where(mask, rss.to(torch.float64) * torch.exp((r2dash + 1 / t2) * te1), torch.zeros_like(r2dash))
    pd = pd / pd.max().clamp_min(1e-30)
    shape = (1, grid.matrix, grid.matrix)
    twin = Twin.from_maps(
        pd.reshape(shape).float(), torch.full(shape, 1e-3 * float(values.t1_ms or 1000.0)), t2.reshape(shape).float(),
        grid.fov, t2dash=(1 / r2dash).reshape(shape).float(), b0=b0.reshape(shape).float(),
        coil_sens=torch.where(mask, sens, torch.ones_like(sens)).reshape(sens.shape[0], *shape).to(torch.complex64),
    )
    twin.provenance["refine_start"] = "; ".join(f"{k}: {v}" for k, v in notes.items())
    return twin
