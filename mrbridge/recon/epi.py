"""EPI and alternating-polarity readouts: N/2 ghost correction from the data, and their Cartesian view.

Readouts that alternate in k_x direction see the scanner's gradient delay and eddy-current phase with opposite
signs, so odd and even lines disagree and the image has an N/2 ghost. The model has two parameters:

- a delay τ (s) between the gradients and the ADC, the same for every readout: the trajectory becomes
  k_x(t + τ) (the sign of pypulseq's ``calculate_kspace(trajectory_delay=τ)``, i.e. of ``--trajectory-delay-us``),
  which shifts forward and reversed lines in opposite directions along k_x (on the ramps by less);
- a constant phase φ between the two polarities: forward lines get e^(−iφ/2), reversed lines e^(+iφ/2).

``estimate_ghost`` finds (φ, τ) minimising the entropy of the root-sum-of-squares image (the autofocus
criterion of Atkinson et al. 1997, used for EPI by Clare 2003), by coarse-to-fine scans, and resolves the π
ambiguity of φ (φ + π swaps object and ghost) by the continuity of k-space across the centre lines.
``cartesian_view`` applies the correction and regrids the readouts (``mrbridge.recon.regrid``), returning
RawData that the Cartesian FFT recon reconstructs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from mrbridge.raw.rawdata import LABELS, RawData
from mrbridge.recon.regrid import Interpolation, grid_size, polarity, regrid_lines

#: fraction of the corrected image's maximum above which a voxel is object (ghost-to-signal ratio)
OBJECT_THRESHOLD = 0.2
#: delay search range either side of zero: this many dwell times, and at least DELAY_RANGE_S
DELAY_RANGE_SAMPLES = 4.0
DELAY_RANGE_S = 10e-6


@dataclass(frozen=True)
class GhostCorrection:
    """Odd/even correction of alternating readouts and what it achieved.

    phase_rad: φ, the phase of reversed against forward lines;  delay_s: τ, the gradient-to-ADC delay
    gsr_before, gsr_after: ghost-to-signal ratio without and with the correction (nan when not measurable)
    """

    phase_rad: float = 0.0
    delay_s: float = 0.0
    gsr_before: float = math.nan
    gsr_after: float = math.nan
    estimated: bool = False

    def meta(self) -> dict[str, str]:
        """The Image meta entries (strings) the CLI prints."""
        return {
            "ghost_correction": "estimated" if self.estimated else "fixed",
            "ghost_phase_rad": f"{self.phase_rad:.4f}",
            "ghost_delay_us": f"{self.delay_s * 1e6:.3f}",
            "ghost_gsr_before": f"{self.gsr_before:.4f}",
            "ghost_gsr_after": f"{self.gsr_after:.4f}",
        }


def delay_kx(kx: torch.Tensor, shift: float) -> torch.Tensor:
    """k_x at sample s + ``shift`` (in samples) by linear interpolation along each readout, extrapolated at the
    ends.  kx: (readouts, samples);  returns (readouts, samples), differentiable w.r.t. kx."""
    if shift == 0.0:
        return kx
    n = kx.shape[-1]
    pos = torch.arange(n, device=kx.device, dtype=torch.float64) + shift
    lo = pos.floor().clamp(0, n - 2).to(torch.int64)
    frac = (pos - lo).to(kx.dtype)
    return kx[:, lo] * (1 - frac) + kx[:, lo + 1] * frac


def correct(
    kdata: torch.Tensor, kx: torch.Tensor, sign: torch.Tensor, phase: float, delay_samples: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply (φ, τ): kdata (coils, readouts, samples) · e^(−i·sign·φ/2), kx (readouts, samples) delayed.

    sign: (readouts,) ±1 polarity.  Returns (kdata, kx) of the same shapes.
    """
    if phase != 0.0:
        ramp = torch.exp(-0.5j * phase * sign.to(torch.float64)).to(kdata.dtype)
        kdata = kdata * ramp[None, :, None]
    return kdata, delay_kx(kx, delay_samples)


def ghost_to_signal(image: torch.Tensor, reference: torch.Tensor | None = None) -> float:
    """Mean intensity in the ghost region over mean intensity in the object (magnitude images (…, y, x)).

    The object mask is where ``reference`` (default: ``image``; give the corrected image) exceeds
    OBJECT_THRESHOLD of its maximum; the ghost region is that mask shifted by ny/2 along y, minus the mask.
    Returns nan when the ghost region is empty.
    """
    ref = image if reference is None else reference
    mask = ref > OBJECT_THRESHOLD * ref.amax(dim=(-2, -1), keepdim=True)
    ghost = mask.roll(image.shape[-2] // 2, dims=-2) & ~mask
    if not bool(ghost.any()) or not bool(mask.any()):
        return math.nan
    return float(image[ghost].mean() / image[mask].mean())


class _Problem:
    """The alternating readouts of one dataset as RSS images, for evaluating candidate corrections."""

    def __init__(self, raw: RawData, kdata: torch.Tensor, keep: torch.Tensor, nx: int,
                 interpolation: Interpolation) -> None:
        self.kdata = kdata[:, keep].detach()
        traj = raw.traj.detach()[keep].to(kdata.device)  # type: ignore[union-attr]
        self.kx = traj[..., 0]
        self.sign = polarity(traj)
        self.fov_x, self.nx, self.interpolation = raw.header.encoded_fov[0], nx, interpolation
        self.ny = raw.header.encoded_matrix[1]
        self.group = _groups(raw, keep).to(kdata.device)
        self.groups = int(self.group.max()) + 1
        step = raw.labels["kspace_encode_step_1"]
        self.line = step[keep.to(step.device)].to(kdata.device).clamp(0, self.ny - 1)

    def kspace(self, phase: float, delay_samples: float, only: int = 0) -> torch.Tensor:
        """(coils, groups, ny, nx) gridded k-space after the correction (``only`` ±1: that polarity's lines)."""
        k, kx = correct(self.kdata, self.kx, self.sign, phase, delay_samples)
        traj = torch.zeros(*kx.shape, 3, dtype=kx.dtype, device=kx.device)
        traj[..., 0] = kx
        return self._grid(regrid_lines(k, traj, self.fov_x, self.nx, self.interpolation), only)

    def _grid(self, lines: torch.Tensor, only: int = 0) -> torch.Tensor:
        """(coils, readouts, nx) gridded lines → (coils, groups, ny, nx) (``only`` ±1: that polarity's lines)."""
        if only:
            lines = lines * (self.sign == only).to(lines.real.dtype)[None, :, None]
        grid = lines.new_zeros(lines.shape[0], self.groups * self.ny, self.nx)
        return grid.index_copy(1, self.group * self.ny + self.line, lines).reshape(
            lines.shape[0], self.groups, self.ny, self.nx)

    @staticmethod
    def _images(k: torch.Tensor) -> torch.Tensor:
        """k-space (…, ny, nx) → complex images (y and x centred as in the recon)."""
        return torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(k, dim=(-2, -1))), dim=(-2, -1))

    def image(self, phase: float, delay_samples: float) -> torch.Tensor:
        """(groups, ny, nx) RSS magnitude."""
        return self._images(self.kspace(phase, delay_samples)).abs().square().sum(0).sqrt()

    def entropies(self, phases: torch.Tensor, delay_samples: float) -> torch.Tensor:
        """(phases,) image entropy at one delay and many phases: the image is linear in the two polarities'
        images, e^(−iφ/2)·(I₊ + e^(iφ)·I₋), so one regridding serves every phase."""
        _, kx = correct(self.kdata, self.kx, self.sign, 0.0, delay_samples)
        traj = torch.zeros(*kx.shape, 3, dtype=kx.dtype, device=kx.device)
        traj[..., 0] = kx
        lines = regrid_lines(self.kdata, traj, self.fov_x, self.nx, self.interpolation)
        forward, backward = self._images(self._grid(lines, 1)), self._images(self._grid(lines, -1))
        out = []
        for phi in phases.tolist():
            img = (forward + complex(math.cos(phi), math.sin(phi)) * backward).abs().square().sum(0).sqrt()
            p = img / img.square().sum().sqrt().clamp_min(1e-30)
            out.append(-(p * torch.log(p.clamp_min(1e-30))).sum())
        return torch.stack(out)

    def search(self, phases: torch.Tensor, delays: torch.Tensor) -> tuple[float, float, float]:
        """(φ, delay, entropy) of least entropy over the grid phases × delays (samples)."""
        best = (0.0, 0.0, math.inf)
        for u in delays.tolist():
            costs = self.entropies(phases, u)
            i = int(costs.argmin())
            if float(costs[i]) < best[2]:
                best = (float(phases[i]), u, float(costs[i]))
        return best

    def centre_coherence(self, phase: float, delay_samples: float) -> float:
        """Re Σ conj(line y)·(line y+1) over the lines next to k_y = 0: positive when k-space is continuous."""
        k = self.kspace(phase, delay_samples)
        c = self.ny // 2
        lo, hi = max(c - 4, 0), min(c + 4, self.ny - 1)
        return float((k[:, :, lo:hi].conj() * k[:, :, lo + 1:hi + 1]).real.sum())


def estimate_ghost(raw: RawData, kdata: torch.Tensor, keep: torch.Tensor, nx: int,
                   interpolation: Interpolation = "sinc") -> GhostCorrection:
    """Estimate (φ, τ) from the data (entropy autofocus) and measure the ghost-to-signal ratio before/after.

    raw: line-like readouts of both polarities (raw.traj set);  kdata: (coils, readouts, samples) as used by
    the recon (e.g. prewhitened);  keep: (readouts,) bool, the imaging readouts;  nx: the k_x grid size.
    """
    with torch.no_grad():
        p = _Problem(raw, kdata, keep, nx, interpolation)
        reach = max(DELAY_RANGE_SAMPLES, DELAY_RANGE_S / raw.dwell)  # delays in samples
        step = 2 * reach / 80
        phi, u, _ = p.search(torch.arange(-math.pi / 2, math.pi / 2, math.pi / 24), torch.linspace(-reach, reach, 81))
        phi, u, _ = p.search(phi + torch.linspace(-math.pi / 24, math.pi / 24, 17),
                             u + torch.linspace(-1.5 * step, 1.5 * step, 31))
        if p.centre_coherence(phi, u) < 0:  # φ + π gives the same entropy: the object and its ghost swapped
            phi = math.remainder(phi + math.pi, 2 * math.pi)
        before, after = p.image(0.0, 0.0), p.image(phi, u)
    return GhostCorrection(phase_rad=phi, delay_s=u * raw.dwell, estimated=True,
                           gsr_before=ghost_to_signal(before, after), gsr_after=ghost_to_signal(after))


def _groups(raw: RawData, keep: torch.Tensor) -> torch.Tensor:
    """(kept readouts,) int64: one index per image (equal labels apart from kspace_encode_step_1)."""
    lab = [raw.labels[k][keep.to(raw.labels[k].device)] for k in LABELS if k != "kspace_encode_step_1"]
    return torch.unique(torch.stack(lab, -1), dim=0, return_inverse=True)[1]


def alternating(raw: RawData, keep: torch.Tensor) -> bool:
    """Some image's readouts run in both k_x directions (EPI, alternating segmented GRE) — not e.g. a bipolar
    multi-echo GRE, whose echoes alternate but each image has one direction."""
    if raw.traj is None or not bool(keep.any()):
        return False
    sign = polarity(raw.traj[keep.to(raw.traj.device)]).cpu()
    group = _groups(raw, keep).cpu()
    n = int(group.max()) + 1
    forward = torch.zeros(n, dtype=torch.bool).index_fill(0, group[sign > 0], True)
    reverse = torch.zeros(n, dtype=torch.bool).index_fill(0, group[sign < 0], True)
    return bool((forward & reverse).any())


def cartesian_view(raw: RawData, kdata: torch.Tensor, keep: torch.Tensor, *, ghost: str, phase_rad: float = 0.0,
                   delay_us: float = 0.0, interpolation: Interpolation = "sinc"
                   ) -> tuple[RawData, torch.Tensor, dict[str, str]]:
    """Line-like readouts as Cartesian RawData: odd/even corrected (``ghost`` "auto": estimated when the readouts
    alternate; "fixed": ``phase_rad``, ``delay_us``; "none") and regridded onto k_x = (i − nx//2)/FOV_x.

    raw.traj: (readouts, samples, 3) 1/m, line-like;  kdata: (coils, readouts, samples) (e.g. prewhitened)
    Returns (raw with kdata (coils, readouts, nx), traj on the grid, center_sample nx//2 and encoded/recon matrix
    x = nx; the same kdata; Image meta entries). nx comes from the k_x extent (``grid_size``), not the header.
    """
    assert raw.traj is not None
    traj = raw.traj.to(kdata.device)
    fov_x = raw.header.encoded_fov[0]
    nx = grid_size(traj[keep.to(traj.device)], fov_x)
    meta: dict[str, str] = {"regrid": interpolation, "regrid_nx": str(nx)}
    kx = traj[..., 0]
    if ghost == "none" and alternating(raw, keep):
        meta["ghost_correction"] = "none"
    elif ghost != "none" and alternating(raw, keep):
        if ghost == "auto":
            fix = estimate_ghost(raw, kdata, keep, nx, interpolation)
        else:
            fix = GhostCorrection(phase_rad=phase_rad, delay_s=delay_us * 1e-6)
            with torch.no_grad():
                p = _Problem(raw, kdata, keep, nx, interpolation)
                u = fix.delay_s / raw.dwell
                before, after = p.image(0.0, 0.0), p.image(fix.phase_rad, u)
            fix = replace(fix, gsr_before=ghost_to_signal(before, after), gsr_after=ghost_to_signal(after))
        kdata, kx = correct(kdata, kx, polarity(traj), fix.phase_rad, fix.delay_s / raw.dwell)
        meta.update(fix.meta())
    moved = torch.cat([kx[..., None], traj[..., 1:]], -1)
    rows = keep.to(kdata.device).nonzero()[:, 0]  # only imaging readouts (noise, navigators stay zero)
    part = regrid_lines(kdata[:, rows], moved[rows], fov_x, nx, interpolation)
    gridded = part.new_zeros(kdata.shape[0], raw.readouts, nx).index_copy(1, rows, part)
    k_grid = (torch.arange(nx, device=traj.device, dtype=traj.dtype) - nx // 2) / fov_x
    new_traj = torch.cat([k_grid[None, :, None].expand(raw.readouts, nx, 1),
                          traj[:, :1, 1:].detach().expand(raw.readouts, nx, 2)], -1)
    h = raw.header
    header = h.model_copy(update={
        "encoded_matrix": (nx, *h.encoded_matrix[1:]),
        "recon_matrix": (min(h.recon_matrix[0], nx) if h.recon_matrix[0] < h.encoded_matrix[0] else nx,
                         *h.recon_matrix[1:]),
    })
    view = replace(raw, kdata=gridded, traj=new_traj, header=header, center_sample=nx // 2, sample_time=None,
                   dwell=raw.dwell)
    return view, gridded, meta
