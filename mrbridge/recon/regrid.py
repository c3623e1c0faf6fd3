"""Line-wise regridding: readouts along k_x (reversed, ramp-sampled) onto the Cartesian matrix.

A readout is *line-like* when its k_y and k_z stay constant along it; only its k_x samples may be reversed
(alternating readout polarity, EPI) or non-uniform (sampling on the gradient ramps). Each such readout is
resampled onto k_x = (i − nx//2)/FOV_x, i = 0 … nx−1, after which the ordinary Cartesian FFT recon applies.

- Samples already on the grid (uniform step 1/FOV_x up to one constant shift, which only adds a phase ramp to
  the image, as in the Cartesian recon) are *placed*, not interpolated: a reversed line becomes an exact flip.
- Other readouts are interpolated by band-limited least squares: the hybrid (x, line) profile m on an nx-point
  grid spanning FOV_x is the regularised least-squares fit to the samples, s = E m with
  E[s, j] = exp(−i2π k_s x_j), and the gridded line is F m with F[i, j] = exp(−i2π k_i x_j); so
  R = F (EᴴE + λI)⁻¹ Eᴴ (nx × samples), a 1-D sinc interpolation that is exact for an object inside FOV_x.
  "linear" interpolation in k is offered for comparison (it blurs the image edges).

Both are linear in the samples, so the result is differentiable w.r.t. kdata (and, for least squares,
w.r.t. traj).
"""

from __future__ import annotations

import math
from typing import Literal

import torch

#: a k-sample counts as on the grid (and k_y, k_z as constant) within this many grid steps
GRID_TOLERANCE = 0.02
#: λ of the least-squares fit, relative to the mean diagonal of EᴴE
RIDGE = 1e-4

Interpolation = Literal["sinc", "linear"]


def line_like(traj: torch.Tensor, fov: tuple[float, float, float]) -> torch.Tensor:
    """(readouts,) bool: k_y and k_z constant along each readout (within GRID_TOLERANCE grid steps).

    traj: (readouts, samples, 3) 1/m
    """
    steps = traj.detach()[..., 1:] * torch.tensor(fov[1:], dtype=traj.dtype, device=traj.device)
    spread = (steps.amax(1) - steps.amin(1)).amax(-1)
    return spread < GRID_TOLERANCE


def polarity(traj: torch.Tensor) -> torch.Tensor:
    """(readouts,) int64: +1 for readouts running towards +k_x, −1 for reversed ones."""
    kx = traj.detach()[..., 0]
    return torch.where(kx[:, -1] >= kx[:, 0], 1, -1).to(torch.int64)


def grid_size(traj: torch.Tensor, fov_x: float) -> int:
    """nx from the k_x extent: 2·ceil(max|k_x|·FOV_x − tolerance) (128 for k_x up to ±63.9/FOV_x)."""
    extent = float(traj.detach()[..., 0].abs().max()) * fov_x
    return max(1, 2 * math.ceil(extent - GRID_TOLERANCE)) if extent > GRID_TOLERANCE else 1


def grid_shift(kx: torch.Tensor, fov_x: float) -> float:
    """The constant shift (grid steps, in (−0.5, 0.5]) of k_x samples against the integer grid."""
    phase = torch.exp(2j * math.pi * kx.detach().double().reshape(-1) * fov_x).mean()
    shift = float(torch.angle(phase)) / (2 * math.pi)
    return shift + 1.0 if shift <= -0.5 + 1e-6 else shift  # half-step grids: k = +dk/2 → the centre sample


def on_grid(traj: torch.Tensor, fov_x: float) -> bool:
    """Every k_x sample on the grid of step 1/FOV_x (up to one constant shift), no two samples of a readout on
    the same grid point."""
    steps = traj.detach()[..., 0].double() * fov_x
    shifted = steps - grid_shift(traj[..., 0], fov_x)
    if float((shifted - shifted.round()).abs().max()) >= GRID_TOLERANCE:
        return False
    ordered = shifted.round().sort(dim=-1).values
    return bool((ordered.diff(dim=-1) > 0).all())


def needs_regrid(traj: torch.Tensor | None, fov: tuple[float, float, float], keep: torch.Tensor) -> bool:
    """True when the kept readouts are line-like but reversed against each other or off the k_x grid."""
    if traj is None or not bool(keep.any()):
        return False
    t = traj[keep.to(traj.device)]
    if not bool(line_like(t, fov).all()):
        return False
    if bool((polarity(t) != polarity(t)[0]).any()) or bool((polarity(t) < 0).all()):
        return True
    return not on_grid(t, fov[0])


def place_on_grid(kdata: torch.Tensor, kx: torch.Tensor, fov_x: float, nx: int) -> torch.Tensor:
    """Put on-grid samples at their grid points, no interpolation (a reversed line is an exact flip).

    kdata: (coils, readouts, samples) complex;  kx: (readouts, samples) 1/m
    returns (coils, readouts, nx) complex; grid points no sample reaches are zero.
    """
    coils, readouts, samples = kdata.shape
    shifted = kx.detach().double() * fov_x - grid_shift(kx, fov_x)
    index = shifted.round().to(torch.int64) + nx // 2
    inside = (index >= 0) & (index < nx)
    rows = torch.arange(readouts, device=kdata.device)[:, None].expand(readouts, samples)
    flat = (rows * nx + index)[inside].to(kdata.device)
    out = kdata.new_zeros(coils, readouts * nx)
    out = out.index_add(1, flat, kdata[:, inside.to(kdata.device)])
    return out.reshape(coils, readouts, nx)


def sinc_matrix(kx: torch.Tensor, fov_x: float, nx: int) -> torch.Tensor:
    """Least-squares band-limited interpolation matrices R = F (EᴴE + λI)⁻¹ Eᴴ (see the module docstring).

    kx: (patterns, samples) 1/m;  returns (patterns, nx, samples) complex128 (phases up to ±π·nx need float64)
    """
    kx = kx.double()
    cdtype = torch.complex128
    x = (torch.arange(nx, device=kx.device, dtype=kx.dtype) - nx // 2) * (fov_x / nx)
    k_grid = (torch.arange(nx, device=kx.device, dtype=kx.dtype) - nx // 2) / fov_x
    e = torch.exp(-2j * math.pi * (kx[..., :, None] * x).to(cdtype))  # (p, samples, nx)
    f = torch.exp(-2j * math.pi * (k_grid[:, None] * x).to(cdtype))  # (nx, nx)
    eh = e.conj().transpose(-1, -2)
    gram = eh @ e
    ridge = RIDGE * gram.diagonal(dim1=-2, dim2=-1).real.mean(-1)
    gram = gram + ridge[:, None, None] * torch.eye(nx, dtype=cdtype, device=kx.device)
    return f @ torch.linalg.solve(gram, eh)


def linear_matrix(kx: torch.Tensor, fov_x: float, nx: int) -> torch.Tensor:
    """Linear interpolation in k_x from the samples to the grid (zero outside the sampled extent).

    kx: (patterns, samples) 1/m;  returns (patterns, nx, samples) real
    """
    k_grid = (torch.arange(nx, device=kx.device, dtype=kx.dtype) - nx // 2) / fov_x
    order = kx.detach().argsort(dim=-1)
    ks = kx.gather(-1, order)
    p, samples = kx.shape
    hi = torch.searchsorted(ks.detach().contiguous(), k_grid.expand(p, nx).contiguous()).clamp(1, samples - 1)
    lo = hi - 1
    k_lo, k_hi = ks.gather(-1, lo), ks.gather(-1, hi)
    w_hi = ((k_grid - k_lo) / (k_hi - k_lo).clamp_min(1e-12)).clamp(0, 1)
    reached = (k_grid >= ks[:, :1]) & (k_grid <= ks[:, -1:])
    w_hi, w_lo = w_hi * reached, (1 - w_hi) * reached
    out = kx.new_zeros(p, nx, samples)
    rows = torch.arange(nx, device=kx.device).expand(p, nx)
    batch = torch.arange(p, device=kx.device)[:, None]
    out[batch, rows, order.gather(-1, lo)] += w_lo
    out[batch, rows, order.gather(-1, hi)] += w_hi
    return out


def interpolate_lines(
    kdata: torch.Tensor, kx: torch.Tensor, fov_x: float, nx: int, method: Interpolation = "sinc"
) -> torch.Tensor:
    """Resample every readout onto the grid k_x = (i − nx//2)/FOV_x by ``method``.

    kdata: (coils, readouts, samples) complex;  kx: (readouts, samples) 1/m
    returns (coils, readouts, nx) complex. Readouts with identical k_x share one matrix unless kx needs a
    gradient.
    """
    build = sinc_matrix if method == "sinc" else linear_matrix
    if kx.requires_grad:
        matrices, which = build(kx, fov_x, nx), torch.arange(kx.shape[0], device=kx.device)
    else:
        key = torch.round(kx.double() * fov_x * 1e4)
        _, first, which = _unique_rows(key)
        matrices = build(kx[first], fov_x, nx)
    matrices = matrices.to(kdata.dtype)
    return torch.einsum("ris,crs->cri", matrices[which], kdata)


def _unique_rows(key: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(unique rows, index of each unique row's first occurrence, inverse index of every row)."""
    unique, inverse = torch.unique(key, dim=0, return_inverse=True)
    first = torch.full((unique.shape[0],), key.shape[0], dtype=torch.int64, device=key.device)
    first = first.scatter_reduce(0, inverse, torch.arange(key.shape[0], device=key.device), reduce="amin")
    return unique, first, inverse


def regrid_lines(
    kdata: torch.Tensor, traj: torch.Tensor, fov_x: float, nx: int, method: Interpolation = "sinc"
) -> torch.Tensor:
    """Line-like readouts onto the Cartesian k_x grid: placed when on grid (exact flips), else interpolated.

    kdata: (coils, readouts, samples) complex;  traj: (readouts, samples, 3) 1/m
    returns (coils, readouts, nx) complex with sample i at k_x = (i − nx//2)/FOV_x
    """
    if on_grid(traj, fov_x):
        return place_on_grid(kdata, traj[..., 0], fov_x, nx)
    return interpolate_lines(kdata, traj[..., 0], fov_x, nx, method)
