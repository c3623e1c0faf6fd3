"""2D non-Cartesian spoiled GRE: golden-angle radial and variable-density spiral.

Both are FLASH-like: excitation n (dummies included) with RF-spoiling phase rf_spoiling_deg·n(n+1)/2 (the ADC
the same), the readout, then a rewinder that leaves ``spoiler_cycles_per_voxel`` net cycles per voxel along x
per TR, as :func:`mrbridge.sequence.builders.gre` does — so a Cartesian GRE of the same TE/TR/flip angle has
the same contrast. Readouts carry default labels (``kspace_encode_step_1`` = 0): the trajectory is in the
moments; the spoke or arm index is the repetition order.

Radial (Winkelmann et al., IEEE TMI 2007): spoke n (0-based, after the dummies) runs along the angle
n·111.246° (180°/golden ratio) through the centre; 2·N samples of one dwell, each moving k by 1/(2·FOV) (readout
oversampling 2), sample N on k = 0 at TE, so the spoke covers −N/2 … (N − 1)/2 in units of 1/FOV.

Spiral: ``interleaves`` arms rotated by 2π/interleaves, each from k = 0 (at TE) out to k_max = N/(2·FOV). The arm
is the curve r(θ) with turn spacing (all arms together)

    dr/dθ · 2π / interleaves = Δk_r(r) = (1 + (r/k0)^p) / FOV,    k0 = density_k0_fraction·k_max,

so the sampling density ∝ 1/(1 + (r/k0)^p): Nyquist at the centre, sparser outwards (the "variable-density"
spiral of Kim, Adalsteinsson & Spielman, MRM 2003, in this density form). It is traversed in least time within
the system's gradient amplitude G and slew S (Lustig, Kim & Pauly, IEEE TMI 2008): along the arc length s, with
curvature κ(s), the speed |dk/dt| = γ|G| is bounded by γG_max and √(γS_max/κ), and a forward and a backward pass
limit the tangential acceleration to √((γS_max)² − (κ v²)²), starting and ending at rest. The gradient is then
sampled on the gradient raster (knots at t = i·Δt from the arm's start, 0 at both ends, linear in between: the
waveform a Pulseq extended trapezoid on the raster plays), and the moment of every ADC dwell is the exact
integral of that piecewise-linear waveform.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Literal

import numpy as np
import torch

from mrbridge.sequence.builders import _gap, _Part, _repetition, rf_spoiling_phase
from mrbridge.sequence.builders_epi import gap_time, system_preset
from mrbridge.sequence.model import PulseUsage, ReadoutLabels, Sequence, SequenceInfo
from mrbridge.sequence.protocol import Protocol, ProtocolValueError, RadialProtocol, SpiralProtocol

#: 180°/golden ratio (Winkelmann et al. 2007)
GOLDEN_ANGLE_DEG = 111.246
_EPS = 1e-9


def _info(p: Protocol, trajectory: Literal["radial", "spiral"], te: float, tr: float, flip_deg: float
          ) -> SequenceInfo:
    return SequenceInfo(
        name=p.name or p.kind, fov=(p.fov, p.fov, p.slice_mm * 1e-3), matrix=(p.matrix, p.matrix, 1),
        trajectory=trajectory, te=te, tr=tr, flip_angle_deg=flip_deg, contrasts=1, protocol=p.model_dump(mode="json"),
    )


def _vec(v: np.ndarray) -> tuple[float, float, float]:
    return float(v[0]), float(v[1]), float(v[2])


def spoke_angle(index: int) -> float:
    """rad: the direction of spoke ``index`` (0-based), index·111.246° modulo 360°."""
    return math.radians((index * GOLDEN_ANGLE_DEG) % 360.0)


def radial(p: RadialProtocol, *, dtype: torch.dtype = torch.float32) -> Sequence:
    """Golden-angle radial spoiled GRE (see the module docstring); ``dummies`` silent TRs along spoke 0 first."""
    n, half = p.matrix, 0.5 / p.fov
    te, tr, angle = p.te_ms * 1e-3, p.tr_ms * 1e-3, math.radians(p.flip_angle_deg)
    spoil = p.spoiler_cycles_per_voxel * n / p.fov
    spokes: list[int | None] = [None] * p.dummies + list(range(p.spokes))
    reps = []
    for i, spoke in enumerate(spokes):
        theta = spoke_angle(spoke or 0)
        u = np.array([math.cos(theta), math.sin(theta), 0.0])
        pre = -(n + 1) * half * u
        phase = rf_spoiling_phase(i, p.rf_spoiling_deg)
        if spoke is None:
            readout = _gap(2 * n * p.dwell, _vec(2 * n * half * u))
        else:
            moments = np.tile(half * u, (2 * n, 1))
            readout = (np.full(2 * n, p.dwell), moments, np.ones(2 * n, bool), np.full(2 * n, phase))
        end = pre + 2 * n * half * u
        parts = [
            _gap(te - p.before_echo, _vec(pre)),
            readout,
            _gap(tr - te - p.after_echo, (spoil - end[0], -end[1], 0.0)),
        ]
        labels = [] if spoke is None else [ReadoutLabels()]
        reps.append(_repetition(angle, phase, PulseUsage.EXCITATION, parts, labels, dtype))
    return Sequence(reps, _info(p, "radial", te, tr, p.flip_angle_deg))


# ---- spiral --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SpiralPlan:
    """One arm as a gradient waveform on the raster, and its ADC.

    knots: (R + 1, 2) Hz/m, the gradient (γG) at t = 0, Δt, …, R·Δt of arm 0, linear in between, 0 at both ends
    raster: Δt (s);  samples: (M,) s, ADC sample times from the arm's start;  rewind: least rewinder time (s)
    """

    knots: np.ndarray
    raster: float
    samples: np.ndarray
    dwell: float
    rewind: float

    @property
    def duration(self) -> float:
        return (len(self.knots) - 1) * self.raster

    def moment(self, t: np.ndarray) -> np.ndarray:
        """(n, 2) 1/m: k at times ``t`` (s, within the arm) of arm 0, the exact integral of the piecewise-linear
        gradient: K(t_i + τ) = K(t_i) + g_i·τ + (g_{i+1} − g_i)·τ²/(2Δt)."""
        g, dt = self.knots, self.raster
        at_knots = np.concatenate([np.zeros((1, 2)), np.cumsum((g[1:] + g[:-1]) / 2 * dt, axis=0)])
        t = np.clip(np.asarray(t, float), 0.0, self.duration)
        i = np.minimum((t / dt + _EPS).astype(int), len(g) - 2)
        tau = (t - i * dt)[:, None]
        return at_knots[i] + g[i] * tau + (g[i + 1] - g[i]) * tau**2 / (2 * dt)


def _curve(kmax: float, fov: float, arms: int, k0: float, power: float
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The arm as dense points (complex, 1/m), its unit tangent (complex) and curvature (m) at each point, from the
    turn spacing of the module docstring."""
    turns = kmax * fov / arms
    count = int(max(4000, 400 * turns))
    r = np.linspace(0.0, kmax, count)
    density = 1.0 + (r / k0) ** power
    dtheta = 2 * math.pi * fov / (arms * density)  # dθ/dr
    d2theta = -2 * math.pi * fov / arms * power * (r / k0) ** (power - 1) / k0 / density**2
    theta = np.concatenate([[0.0], np.cumsum((dtheta[1:] + dtheta[:-1]) / 2 * np.diff(r))])
    points = r * np.exp(1j * theta)
    # c(r) = r·e^{iθ}: c' = e^{iθ}(1 + i r θ'), c'' = e^{iθ}(2iθ' + i r θ'' − r θ'²)
    d1 = 1 + 1j * r * dtheta
    d2 = 2j * dtheta + 1j * r * d2theta - r * dtheta**2
    curvature = np.abs((np.conj(d1) * d2).imag) / np.abs(d1) ** 3
    return points, np.exp(1j * theta) * d1 / np.abs(d1), curvature


def _speeds(ds: np.ndarray, curvature: np.ndarray, gmax: float, smax: float) -> np.ndarray:
    """Least-time speed along the curve (Lustig et al. 2008): at rest at both ends."""
    vmax = np.minimum(gmax, np.sqrt(smax / np.maximum(curvature, 1e-30)))
    v = np.zeros(len(curvature))
    for i in range(len(ds)):
        a = math.sqrt(max(smax**2 - (curvature[i] * v[i] ** 2) ** 2, 0.0))
        v[i + 1] = min(vmax[i + 1], math.sqrt(v[i] ** 2 + 2 * a * ds[i]))
    v[-1] = 0.0
    for i in range(len(ds) - 1, -1, -1):
        a = math.sqrt(max(smax**2 - (curvature[i + 1] * v[i + 1] ** 2) ** 2, 0.0))
        v[i] = min(v[i], math.sqrt(v[i + 1] ** 2 + 2 * a * ds[i]))
    return v


@lru_cache(maxsize=32)
def design_arm(kmax: float, fov: float, arms: int, k0: float, power: float, gmax: float, smax: float,
               raster: float) -> np.ndarray:
    """(R + 1, 2) Hz/m: the gradient knots of arm 0 on the raster (0 at both ends, linear in between).

    The least-time speed profile v(s) gives the gradient v·(unit tangent) at each raster time; its integral is
    turned (by < 0.1 %) onto the curve's end point, so the arm ends exactly at k_max. |knot| ≤ gmax (Hz/m) and
    |knot step|/raster ≤ smax (Hz/m/s) everywhere: the design margin shrinks until they hold.
    """
    points, tangent, curvature = _curve(kmax, fov, arms, k0, power)
    ds = np.abs(np.diff(points))
    s = np.concatenate([[0.0], np.cumsum(ds)])
    margin = 0.97
    for _ in range(12):
        v = _speeds(ds, curvature, margin * gmax, margin * smax)
        mean = (v[1:] + v[:-1]) / 2
        t = np.concatenate([[0.0], np.cumsum(ds / np.maximum(mean, 1e-30))])
        steps = math.ceil(t[-1] / raster - _EPS)
        at = np.interp(np.arange(steps + 1) * raster, t, s)
        g = np.interp(at, s, v) * (np.interp(at, s, tangent.real) + 1j * np.interp(at, s, tangent.imag))
        g[0] = g[-1] = 0.0
        g *= points[-1] / ((g[1:] + g[:-1]).sum() / 2 * raster)
        slew = np.abs(np.diff(g)) / raster
        if np.abs(g).max() <= gmax and slew.max() <= smax:
            return np.stack([g.real, g.imag], -1)
        margin *= 0.95
    raise RuntimeError("spiral design did not meet the gradient limits")  # pragma: no cover


def spiral_plan(p: SpiralProtocol) -> SpiralPlan:
    """The arm and ADC of ``p`` on its system; ProtocolValueError (naming the key) when the timing does not fit."""
    system = system_preset(p.system)
    raster = system.grad_raster_us * 1e-6
    dk = 1.0 / p.fov
    kmax = p.matrix / 2 * dk
    knots = design_arm(kmax, p.fov, p.interleaves, p.density_k0_fraction * kmax, p.density_power,
                       system.max_grad, system.max_slew, raster)
    peak = float(np.linalg.norm(knots, axis=1).max())
    if p.dwell * peak > dk * (1 + 1e-9):
        raise ProtocolValueError(
            "dwell_us", p.dwell_us, f"must be ≤ 1/(FOV·peak gradient) = {dk / peak * 1e6:.4g} µs (the arm's peak on "
            f"system '{p.system}'), so that samples along the arm are at most 1/FOV apart"
        )
    duration = (len(knots) - 1) * raster
    count = math.floor(duration / p.dwell + _EPS)
    samples = p.dwell * np.arange(1, count + 1)
    spoil = p.spoiler_cycles_per_voxel * p.matrix * dk
    rewind = max(gap_time((spoil + kmax, kmax, 0.0), system), raster)
    te, rf_tail = p.te_ms * 1e-3, p.rf_ms * 1e-3 / 2
    if te < rf_tail - _EPS:
        raise ProtocolValueError("te_ms", p.te_ms, f"must be ≥ rf_ms/2 = {rf_tail * 1e3:.4g} ms")
    least = te + duration + rewind + rf_tail
    if p.tr_ms * 1e-3 < least - _EPS:
        raise ProtocolValueError(
            "tr_ms", p.tr_ms, f"must be ≥ {least * 1e3:.4g} ms (te_ms, the {duration * 1e3:.4g}-ms arm, its rewinder "
            "and rf_ms/2)"
        )
    return SpiralPlan(knots, raster, samples, p.dwell, rewind)


def spiral(p: SpiralProtocol, *, dtype: torch.dtype = torch.float32) -> Sequence:
    """Variable-density spiral spoiled GRE (see the module docstring): ``dummies`` silent TRs of arm 0, then arms
    0 … interleaves − 1, arm a rotated by 2π·a/interleaves; one ADC event per dwell with its exact moment."""
    plan = spiral_plan(p)
    te, tr, angle = p.te_ms * 1e-3, p.tr_ms * 1e-3, math.radians(p.flip_angle_deg)
    spoil = p.spoiler_cycles_per_voxel * p.matrix / p.fov
    s, d = plan.samples, plan.dwell
    starts = np.concatenate([s - d, [s[-1]]])
    ends = np.concatenate([s, [plan.duration]])
    steps = plan.moment(ends) - plan.moment(starts)  # (M + 1, 2): the ADC dwells, then the tail
    keep = np.ones(len(ends), bool)
    keep[-1] = ends[-1] - starts[-1] > _EPS
    end = plan.moment(np.array([plan.duration]))[0]
    arms: list[int | None] = [None] * p.dummies + list(range(p.interleaves))
    reps = []
    for i, arm in enumerate(arms):
        rot = 2 * math.pi * (arm or 0) / p.interleaves
        c, si = math.cos(rot), math.sin(rot)
        moments = np.zeros((len(ends), 3))
        moments[:, 0] = c * steps[:, 0] - si * steps[:, 1]
        moments[:, 1] = si * steps[:, 0] + c * steps[:, 1]
        kx, ky = c * end[0] - si * end[1], si * end[0] + c * end[1]
        phase = rf_spoiling_phase(i, p.rf_spoiling_deg)
        adc = np.zeros(len(ends), bool)
        adc[:-1] = arm is not None
        readout: _Part = ((ends - starts)[keep], moments[keep], adc[keep], np.full(int(keep.sum()), phase))
        parts = [
            _gap(te, (0.0, 0.0, 0.0)),
            readout,
            _gap(tr - te - plan.duration, (spoil - kx, -ky, 0.0)),
        ]
        labels = [] if arm is None else [ReadoutLabels()]
        reps.append(_repetition(angle, phase, PulseUsage.EXCITATION, parts, labels, dtype, p.rf_ms))
    return Sequence(reps, _info(p, "spiral", te, tr, p.flip_angle_deg))
