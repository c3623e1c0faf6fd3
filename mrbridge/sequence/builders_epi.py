"""Blipped gradient-echo EPI: single- or multi-shot (interleaved), ramp sampling, partial Fourier, navigators.

Gradients are trapezoids of least duration within the protocol's ``system`` (amplitude and slew per axis, times
on the gradient raster). Each readout line is one trapezoid of area A along ±x; its ADC samples are events of
one dwell each whose moment is the trapezoid's area over that dwell, so the k_x of every sample (recorded at its
event's end) follows the trapezoid exactly, on the ramps included:

    K(t) = G·t²/(2r)                for t ≤ r                       (rise r, flat f, amplitude G, T = 2r + f)
         = G·r/2 + G·(t − r)        for r ≤ t ≤ r + f
         = A − G·(T − t)²/(2r)      for t ≥ r + f,                  A = G·(r + f)

- ramp sampling: A = N·Δk; the flat top moves k by at most Δk = 1/FOV per dwell (the least-time trapezoid of
  amplitude Δk/dwell, its flat time rounded up to the raster and its amplitude lowered to keep A, or a
  triangle when the ramps alone reach A); the ADC spans the whole
  trapezoid (M ≤ T/dwell − 1 samples, even, the most for which the first dwell starts a whole number of gradient
  rasters after the trapezoid's start, so its corners stay on the raster from the ADC window), so samples crowd
  on the ramps (k_x non-uniform; recon regrids them). Without ramp sampling the N samples lie on the flat top,
  Δk apart, at k_x = (j − N/2 + 1/2)·Δk.
- the samples are symmetric about the trapezoid's midpoint (k_x = 0, reached ±dwell/2 from the two middle
  samples), so reversed lines sample the same k_x as forward ones; lines alternate in polarity; y blips of
  shots·Δk sit between lines (events of their own); line L is on k_y = (L − N/2)·Δk.
- shots: shot s acquires lines L0 + s, L0 + s + shots, …; its train starts s·ESP/shots later (echo-time
  shifting, rounded to the raster) so that the time of a line grows linearly with k_y, and the centre line
  N/2's midpoint is at TE.
- partial Fourier f: the first L0 = N − ⌈f·N/shots⌉·shots lines (negative k_y) are skipped.
- navigators: three lines without phase encoding (polarities +, −, +) before the train, then a rewinder
  (−A along x) with the shot's y prephaser. Their labels are those of a non-phase-encoded line
  (``kspace_encode_step_1`` = N/2, the k_y = 0 line); the Sequence model has no per-readout ISMRMRD flags yet, so
  they cannot be marked as ``ACQ_IS_PHASECORR_DATA`` here (see :class:`EpiPlan`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from mrbridge.sequence.builders import _gap, _Part, _repetition, rf_spoiling_phase
from mrbridge.sequence.flag_labels import PHASE_CORRECTION  # navigator lines: kept out of the image
from mrbridge.sequence.model import PulseUsage, ReadoutLabels, Repetition, Sequence, SequenceInfo
from mrbridge.sequence.protocol import EpiProtocol, ProtocolValueError
from mrbridge.system import System

#: navigator lines before the train
NAVIGATORS = 3
_EPS = 1e-9


@lru_cache(maxsize=16)
def system_preset(name: str) -> System:
    """The System of a preset name (cached)."""
    return System.load(name)


def raster_ceil(seconds: float, raster: float) -> float:
    """``seconds`` rounded up to a multiple of ``raster``."""
    return math.ceil(seconds / raster - _EPS) * raster


@dataclass(frozen=True)
class Trapezoid:
    """A trapezoid gradient: rise (= fall) and flat time in s, amplitude in Hz/m (≥ 0; the sign is the caller's)."""

    rise: float
    flat: float
    amplitude: float

    @property
    def duration(self) -> float:
        return 2 * self.rise + self.flat

    @property
    def area(self) -> float:
        """1/m."""
        return self.amplitude * (self.rise + self.flat)

    def moment(self, t: np.ndarray) -> np.ndarray:
        """Area from the start to times ``t`` (s, clipped to the trapezoid), exact. t: (n,) → (n,) 1/m."""
        t = np.clip(np.asarray(t, float), 0.0, self.duration)
        g, r, top = self.amplitude, self.rise, self.rise + self.flat
        if r == 0:
            return g * t
        up = g * t**2 / (2 * r)
        flat = g * r / 2 + g * (t - r)
        down = self.area - g * (self.duration - t) ** 2 / (2 * r)
        return np.where(t <= r, up, np.where(t <= top, flat, down))


def least_trapezoid(area: float, system: System, *, flat_step: int = 1) -> Trapezoid:
    """The shortest trapezoid (triangle when short) of |area| (1/m) within the system's amplitude and slew, its
    rise and flat on the gradient raster (the flat a multiple of ``flat_step`` rasters)."""
    area = abs(area)
    raster = system.grad_raster_us * 1e-6
    gmax, smax = system.max_grad, system.max_slew
    if area == 0:
        return Trapezoid(0.0, 0.0, 0.0)
    if area <= gmax**2 / smax:
        rise = raster_ceil(math.sqrt(area / smax), raster)
        return Trapezoid(rise, 0.0, area / rise)
    rise = raster_ceil(gmax / smax, raster)
    flat = raster_ceil(area / gmax - rise, flat_step * raster)
    return Trapezoid(rise, flat, area / (rise + flat))


def gap_time(moment: tuple[float, float, float], system: System) -> float:
    """s: least duration of an event playing ``moment`` (1/m per axis), each axis its own trapezoid."""
    return max(least_trapezoid(m, system).duration for m in moment)


@dataclass(frozen=True)
class EpiPlan:
    """The timing an EPI protocol implies on its system (all s, moments 1/m).

    readout: the line trapezoid (area ``area``);  samples: (M,) s, sample times from the trapezoid start
    blip: y blip duration;  spacing: echo spacing (readout + blip);  lines: k_y lines of each shot
    train_start: (shots,) s from the excitation to the shot's first imaging trapezoid
    nav_rewind: duration of the rewinder after the navigators (0 without);  spoil_time: the least spoiler
    """

    readout: Trapezoid
    samples: np.ndarray
    dwell: float
    dk: float
    blip: float
    lines: list[list[int]]
    train_start: np.ndarray
    nav_rewind: float
    spoil_time: float

    @property
    def area(self) -> float:
        return self.readout.area

    @property
    def spacing(self) -> float:
        return self.readout.duration + self.blip

    def kx(self) -> np.ndarray:
        """(M,) 1/m: k_x of each sample of a forward line (after the −A/2 prephaser)."""
        return self.readout.moment(self.samples) - self.area / 2

    def nav_duration(self) -> float:
        """s from the first navigator trapezoid's start to the first imaging trapezoid's start."""
        if not self.nav_rewind:
            return 0.0
        return NAVIGATORS * self.readout.duration + (NAVIGATORS - 1) * self.blip + self.nav_rewind

    def train_end(self, shot: int) -> float:
        n = len(self.lines[shot])
        return float(self.train_start[shot]) + n * self.readout.duration + (n - 1) * self.blip


def _readout(p: EpiProtocol, system: System) -> tuple[Trapezoid, np.ndarray]:
    """The line trapezoid and its sample times (s from its start)."""
    raster = system.grad_raster_us * 1e-6
    dk, n, dwell = 1.0 / p.fov, p.matrix, p.dwell
    g0 = dk / dwell
    if g0 > system.max_grad * (1 + 1e-9):
        least = dk / system.max_grad * 1e6
        raise ProtocolValueError(
            "dwell_us", p.dwell_us, f"must be ≥ 1/(FOV·max gradient) = {least:.4g} µs on system '{p.system}'"
        )
    rise = raster_ceil(g0 / system.max_slew, raster)
    if p.ramp_sampling:
        area = n * dk
        if area / g0 >= rise:
            flat = raster_ceil(area / g0 - rise, 2 * raster)
            trap = Trapezoid(rise, flat, area / (rise + flat))
        else:  # a triangle: its peak stays below g0, so no two samples are more than Δk apart
            rise = raster_ceil(math.sqrt(area / system.max_slew), raster)
            trap = Trapezoid(rise, 0.0, area / rise)
        count = _aligned_count(trap.duration, dwell, raster)
    else:
        trap = Trapezoid(rise, raster_ceil((n + 1) * dwell, 2 * raster), g0)
        count = n
    # symmetric about the midpoint (k_x = 0): a reversed line samples the same k_x as a forward one
    return trap, trap.duration / 2 + dwell * (np.arange(count) - count / 2 + 0.5)


def _aligned_count(duration: float, dwell: float, raster: float) -> int:
    """The most samples (even) of a symmetric ADC window inside a trapezoid of ``duration`` whose first dwell
    starts on the gradient raster from the trapezoid's start, so that the trapezoid's corners are raster points
    from the window's start (what an exporter playing the run on the raster can reproduce exactly); when no count
    down to 80 % of the most allows it, the most."""
    most = math.floor(duration / dwell - 1 + _EPS)
    most -= most % 2
    for count in range(most, max(int(0.8 * most), 2) - 1, -2):
        lead = (duration - (count + 1) * dwell) / 2 / raster
        if abs(lead - round(lead)) < 1e-6:
            return count
    return most


def epi_plan(p: EpiProtocol) -> EpiPlan:
    """Timing of ``p`` on its system; ProtocolValueError (naming the key) when it does not fit."""
    system = system_preset(p.system)
    raster = system.grad_raster_us * 1e-6
    n, dk = p.matrix, 1.0 / p.fov
    readout, samples = _readout(p, system)
    area = readout.area
    acquired = min(n, math.ceil(p.partial_fourier * n / p.shots - _EPS) * p.shots)
    if p.shots > acquired:
        raise ProtocolValueError("shots", p.shots, f"must be ≤ the acquired lines ({acquired})")
    first = n - acquired
    lines = [list(range(first + s, n, p.shots)) for s in range(p.shots)]
    centre_shot, centre_pos = (n // 2 - first) % p.shots, (n // 2 - first) // p.shots
    blip = least_trapezoid(p.shots * dk, system).duration
    spacing = readout.duration + blip
    shift = np.array([round(s * spacing / p.shots / raster) * raster for s in range(p.shots)])
    te = p.te_ms * 1e-3
    train_start = te - readout.duration / 2 - centre_pos * spacing - shift[centre_shot] + shift
    ky_first = [(row[0] - n // 2) * dk for row in lines]
    rf_tail = p.rf_ms * 1e-3 / 2
    if p.navigators:
        nav_rewind = max(gap_time((area, ky, 0.0), system) for ky in ky_first)
        nav = NAVIGATORS * readout.duration + (NAVIGATORS - 1) * blip + nav_rewind
        need = np.full(p.shots, rf_tail + nav + gap_time((area / 2, 0.0, 0.0), system))
    else:
        nav_rewind = 0.0
        need = np.array([rf_tail + gap_time((area / 2, ky, 0.0), system) for ky in ky_first])
    slack = float((train_start - need).min())
    if slack < -_EPS:
        least = te - slack
        raise ProtocolValueError(
            "te_ms", p.te_ms, f"must be ≥ {_ms(least)} (rf_ms/2, prephaser{', navigators' if p.navigators else ''} "
            f"and {centre_pos} echo spacings of {_ms(spacing)} before the centre line)"
        )
    spoil = p.spoiler_cycles_per_voxel * n * dk
    spoil_time = max(gap_time((spoil + area / 2, (n / 2) * dk, 0.0), system), raster)
    plan = EpiPlan(readout, samples, p.dwell, dk, blip, lines, train_start, nav_rewind, spoil_time)
    least_tr = max(plan.train_end(s) for s in range(p.shots)) + spoil_time + rf_tail
    if p.tr_ms * 1e-3 < least_tr - _EPS:
        raise ProtocolValueError("tr_ms", p.tr_ms, f"must be ≥ {_ms(least_tr)} (the longest shot and its spoiler)")
    return plan


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.4g} ms"


def _line(plan: EpiPlan, sign: float, ky_step: float | None, adc: bool, phase: float) -> list[_Part]:
    """One readout trapezoid (polarity ``sign``) as events: lead-in, one event per ADC sample, tail; then, unless
    ``ky_step`` is None, a blip event of ``plan.blip`` playing the y moment ``ky_step``."""
    trap, s, d = plan.readout, plan.samples, plan.dwell
    # events: [0, s0 − d], then [s_j − d, s_j] for every sample, then [s_last, T]; empty lead/tail dropped
    starts = np.concatenate([[0.0], s - d, [s[-1]]])
    ends = np.concatenate([s[:1] - d, s, [trap.duration]])
    durations = ends - starts
    moments = np.zeros((len(durations), 3))
    moments[:, 0] = sign * (trap.moment(ends) - trap.moment(starts))
    flags = np.zeros(len(durations), bool)
    flags[1:-1] = adc
    keep = (durations > _EPS) | flags
    parts: list[_Part] = [(durations[keep], moments[keep], flags[keep], np.full(int(keep.sum()), phase))]
    if ky_step is not None:
        parts.append(_gap(plan.blip, (0.0, ky_step, 0.0)))
    return parts


def epi(p: EpiProtocol, *, dtype: torch.dtype = torch.float32) -> Sequence:
    """Blipped EPI (see the module docstring); ``dummies`` silent shots of shot 0 first.

    Excitation n (dummies included) has the RF-spoiling phase rf_spoiling_deg·n(n+1)/2, the ADC the same. Each
    shot ends with k_y rewound and ``spoiler_cycles_per_voxel`` net cycles per voxel along x. Labels:
    ``kspace_encode_step_1`` = line (navigators: N/2); te = TE of the centre line; trajectory "epi".
    """
    plan = epi_plan(p)
    n, dk = p.matrix, plan.dk
    te, tr = p.te_ms * 1e-3, p.tr_ms * 1e-3
    area, angle = plan.area, math.radians(p.flip_angle_deg)
    spoil = p.spoiler_cycles_per_voxel * n * dk
    shots = [0] * p.dummies + list(range(p.shots))
    reps: list[Repetition] = []
    for i, shot in enumerate(shots):
        adc = i >= p.dummies
        phase = rf_spoiling_phase(i, p.rf_spoiling_deg)
        lines = plan.lines[shot]
        ky0 = (lines[0] - n // 2) * dk
        start = float(plan.train_start[shot])
        parts: list[_Part] = []
        labels: list[ReadoutLabels] = []
        if p.navigators:
            parts.append(_gap(start - plan.nav_duration(), (-area / 2, 0.0, 0.0)))
            for j in range(NAVIGATORS):
                parts += _line(plan, (-1.0) ** j, 0.0 if j < NAVIGATORS - 1 else None, adc, phase)
            kx = -area / 2 + area * (NAVIGATORS % 2)  # after the navigators
            parts.append(_gap(plan.nav_rewind, (-area / 2 - kx, ky0, 0.0)))
            labels += [ReadoutLabels(kspace_encode_step_1=n // 2, flags=PHASE_CORRECTION) for _ in range(NAVIGATORS)]
        else:
            parts.append(_gap(start, (-area / 2, ky0, 0.0)))
        for j, line in enumerate(lines):
            last = j == len(lines) - 1
            parts += _line(plan, (-1.0) ** j, None if last else p.shots * dk, adc, phase)
            labels.append(ReadoutLabels(kspace_encode_step_1=line))
        kx_end = area / 2 if len(lines) % 2 else -area / 2
        ky_end = (lines[-1] - n // 2) * dk
        parts.append(_gap(tr - plan.train_end(shot), (spoil - kx_end, -ky_end, 0.0)))
        reps.append(_repetition(angle, phase, PulseUsage.EXCITATION, parts, labels if adc else [], dtype, p.rf_ms))
    info = SequenceInfo(
        name=p.name or p.kind, fov=(p.fov, p.fov, p.slice_mm * 1e-3), matrix=(n, n, 1), trajectory="epi",
        te=te, tr=tr, flip_angle_deg=p.flip_angle_deg, contrasts=1, protocol=p.model_dump(mode="json"),
    )
    return Sequence(reps, info)
