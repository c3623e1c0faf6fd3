"""Losses and metrics: image similarity (MSE, L1, SSIM, PSNR, NRMSE), SAR, scan time, hardware feasibility.

Image functions take real tensors (batch, y, x) (any leading dims are flattened into the batch) and are
differentiable. Sequence penalties take a :class:`~mrbridge.sequence.model.Sequence` and return () tensors
that are differentiable w.r.t. its flip angles, durations and moments.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from mrbridge.sequence.model import Sequence
from mrbridge.sequence.pns import pns_ratio
from mrbridge.system import System

#: SSIM constants (Wang et al. 2004) for a data range of 1, Gaussian window 11 × 11, σ = 1.5
_K1, _K2, _WIN, _SIGMA = 0.01, 0.03, 11, 1.5


def _images(x: torch.Tensor) -> torch.Tensor:
    """(…, y, x) → (n, 1, y, x)."""
    return x.reshape(-1, 1, *x.shape[-2:])


def mse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all elements. Returns () tensor."""
    return (x - y).abs().square().mean()


def l1(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean absolute error. Returns () tensor."""
    return (x - y).abs().mean()


def ssim(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Mean SSIM (Gaussian 11 × 11 window, σ 1.5, valid region) of real images x, y (…, y, x). Returns ()."""
    g = torch.arange(_WIN, dtype=x.dtype, device=x.device) - _WIN // 2
    g = torch.exp(-(g**2) / (2 * _SIGMA**2))
    g = g / g.sum()
    window = (g[:, None] * g[None, :])[None, None]
    a, b = _images(x), _images(y)
    size = min(_WIN, a.shape[-1], a.shape[-2])
    if size < _WIN:  # small images: a centred crop of the window
        lo = (_WIN - size) // 2
        window = window[..., lo:lo + size, lo:lo + size]
        window = window / window.sum()

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(t, window)

    mu_a, mu_b = blur(a), blur(b)
    var_a = blur(a * a) - mu_a**2
    var_b = blur(b * b) - mu_b**2
    cov = blur(a * b) - mu_a * mu_b
    c1, c2 = (_K1 * data_range) ** 2, (_K2 * data_range) ** 2
    s = ((2 * mu_a * mu_b + c1) * (2 * cov + c2)) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    return s.mean()


def fit_scale(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """s·x with the least-squares scale s = Re⟨x, y⟩ / ‖x‖² of each image (batch, …): differentiable."""
    dims = tuple(range(1, x.dim()))
    s = (x.conj() * y).real.sum(dims, keepdim=True) / x.abs().square().sum(dims, keepdim=True).clamp_min(1e-30)
    return s * x


def psnr(x: torch.Tensor, y: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB, 10·log10(range² / MSE). Returns ()."""
    return 10 * torch.log10(data_range**2 / mse(x, y).clamp_min(1e-30))


def nrmse(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """‖x − y‖ / ‖y‖. Returns ()."""
    return torch.linalg.vector_norm(x - y) / torch.linalg.vector_norm(y).clamp_min(1e-30)


# ---- sequence penalties -------------------------------------------------------------------------------
def flip_squared(seq: Sequence) -> torch.Tensor:
    """MRzero's SAR proxy: Σ α² (rad²) over all pulses, per second of sequence. Returns () 1/s."""
    angles = torch.stack([rep.pulse.angle for rep in seq])
    return angles.square().sum() / seq.duration


def _energy_factor(kind: str, time_bandwidth: float) -> float:
    """∫b(t)²dt / (∫b(t)dt)² · duration for a unit pulse shape (1 for a block; > 1 for a Hann sinc)."""
    if kind == "block":
        return 1.0
    t = torch.linspace(-0.5, 0.5, 2001, dtype=torch.float64)[1:-1]
    shape = torch.sinc(time_bandwidth * t) * (0.5 + 0.5 * torch.cos(2 * math.pi * t))
    return float(shape.square().mean() / shape.mean() ** 2)


def sar_estimate(seq: Sequence, system: System, *, coil: str = "head", patient_kg: float = 70.0) -> torch.Tensor:
    """Time-averaged SAR (W/kg) of the exposed region, with the safety module's energy model.

    A pulse of angle α and duration d (its export shape) has mean B1 = α / (2πγ d); its energy is
    E = factor·B1²·d (µT²·s, factor from the shape); P = watts_per_ut2 · ΣE / duration; SAR = P / (exposed
    mass fraction · patient_kg). Returns () W/kg.
    """
    sar = system.sar[coil]  # type: ignore[index]
    energy = torch.zeros((), dtype=seq[0].gradm.dtype, device=seq[0].gradm.device)
    for rep in seq:
        shape = rep.pulse.shape
        b1_ut = rep.pulse.angle / (2 * math.pi * system.gamma_hz_per_t * shape.duration) * 1e6
        energy = energy + _energy_factor(shape.kind, shape.time_bandwidth) * b1_ut.square() * shape.duration
    return sar.watts_per_ut2 * energy / seq.duration / (sar.exposed_mass_fraction * patient_kg)


def scan_time(seq: Sequence) -> torch.Tensor:
    """Total duration. Returns () s."""
    return seq.duration


def hardware_penalty(seq: Sequence, system: System, *, margin: float = 1.0) -> torch.Tensor:
    """How far the gradients exceed ``margin`` × the system's amplitude, slew and PNS limits (0 when they fit).

    Each event plays its moment m over its duration T as the mean amplitude g = m/T (Hz/m); the amplitude
    changes from event to event over half of each event, Δt = (T_prev + T)/2, and starts and ends each repetition
    at 0 (the RF pulse). Each such step is a ramp of duration Δt for the IEC dB/dt estimate
    (:mod:`mrbridge.sequence.pns`): ρ = |Δg|/γ · r / (f·b·(Δt + c)), the dB/dt S·r of slew S = |Δg|/(γ·Δt) over
    its limit f·b·(1 + c/Δt). With μ = ``margin``, returns () Σ relu(|g|/(μG) − 1)² + Σ relu(|Δg|/(μSΔt) − 1)²
    + Σ relu(ρ/μ − 1)² over events and axes.
    """
    g_max, s_max, gamma = margin * system.max_grad, margin * system.max_slew, system.gamma_hz_per_t
    total = torch.zeros((), dtype=seq[0].gradm.dtype, device=seq[0].gradm.device)
    for rep in seq:
        if not rep.event_count:
            continue
        times = rep.event_time.clamp_min(1e-9)
        g = rep.gradm / times[:, None]  # (events, 3) Hz/m
        zero = g.new_zeros(1, 3)
        steps = torch.diff(torch.cat([zero, g, zero]), dim=0)  # (events + 1, 3)
        half = torch.cat([times[:1] / 2, (times[1:] + times[:-1]) / 2, times[-1:] / 2])  # (events + 1,)
        total = total + F.relu(g.abs() / g_max - 1).square().sum()
        total = total + F.relu(steps.abs() / (half[:, None] * s_max) - 1).square().sum()
        total = total + F.relu(pns_ratio(steps.abs() / gamma, half[:, None], system.iec) / margin - 1).square().sum()
    return total
