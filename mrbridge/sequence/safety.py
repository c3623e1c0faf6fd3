"""Safety checks of a Pulseq sequence: timing, gradients, B1, SAR, PNS.

Energy model (documented in the system files): every RF pulse deposits E = ∫|B1(t)|² dt (µT²·s), B1 = |rf| / γ.
Over a window W the mean-square field is ⟨B1²⟩ = ΣE / W (a sequence shorter than W is taken as repeated back to
back, as scanners do, so ⟨B1²⟩ = ΣE / duration). The transmit coil's absorbed power is
P = ``watts_per_ut2`` · ⟨B1²⟩; whole-body SAR = P / patient mass; the exposed region's SAR = P / (exposed mass
fraction · patient mass). Limits (IEC 60601-2-33 normal mode): head 3.2 W/kg, whole body 2 W/kg over 6 min,
partial body 10 − 8·(exposed mass / patient mass) W/kg; any 10-s average at most 2× those.

PNS: the SAFE model (pypulseq ``calculate_pns``) when the system has its parameters; otherwise the IEC dB/dt
estimate of :mod:`mrbridge.sequence.pns`: each gradient ramp (each linear piece of the waveform) of duration τ
and slew S gives dB/dt = S · r (r = 0.2 m, the compliance cylinder), compared with 0.8 · 20 T/s · (1 + 0.36 ms / τ).
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import numpy as np
import pypulseq as pp
from pydantic import BaseModel, ConfigDict, Field, computed_field

from mrbridge.atomic import atomic_write_text
from mrbridge.errors import ConfigError
from mrbridge.sequence.import_seq import read_pulseq
from mrbridge.sequence.pns import pns_ratio
from mrbridge.system import IecLimits, System


class SafetyCheck(BaseModel):
    """One figure against its limit."""

    model_config = ConfigDict(frozen=True)

    name: str
    value: float
    limit: float | None  # None: reported, not limited
    unit: str
    passed: bool
    block: int | None = None  # offending (or worst) block, 1-based as in pypulseq
    time_s: float | None = None  # time of the worst value / start of the worst window

    def __str__(self) -> str:
        limit = "no limit" if self.limit is None else f"limit {self.limit:.4g} {self.unit}"
        where = f" at block {self.block} (t = {self.time_s:.4f} s)" if self.block is not None else ""
        return f"{'ok  ' if self.passed else 'FAIL'} {self.name}: {self.value:.4g} {self.unit} ({limit}){where}"


class SafetyReport(BaseModel):
    """Every figure of :func:`check_safety`."""

    source: str
    system: str
    coil: str
    patient_kg: float
    duration_s: float
    checks: list[SafetyCheck] = Field(default_factory=list)

    @computed_field  # type: ignore[prop-decorator]
    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.checks)

    def failures(self) -> list[SafetyCheck]:
        return [c for c in self.checks if not c.passed]

    def summary(self) -> str:
        """One line per check."""
        return "\n".join(str(c) for c in self.checks)

    def save(self, path: str | Path) -> None:
        """Write JSON atomically (``safety.json``)."""
        atomic_write_text(Path(path), json.dumps(self.model_dump(mode="json"), indent=2))


def _block_at(starts: np.ndarray, t: float) -> int:
    return int(np.clip(np.searchsorted(starts, t, side="right"), 1, len(starts)))


def _rf_events(pseq: pp.Sequence, starts: np.ndarray, gamma: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Centre time (s), energy ∫|B1|²dt (µT²·s) and peak |B1| (µT) of every RF pulse, with its block."""
    cache: dict[int, tuple[float, float, float]] = {}
    times, energy, peak, blocks = [], [], [], []
    for b, (block_id, start) in enumerate(zip(pseq.block_events, starts, strict=True)):
        rf_id = int(pseq.block_events[block_id][1])
        if rf_id == 0:
            continue
        if rf_id not in cache:
            rf = pseq.get_block(block_id).rf
            b1 = np.abs(np.asarray(rf.signal)) / gamma * 1e6  # µT
            t = np.asarray(rf.t, dtype=float)
            edges = np.concatenate([[0.0], (t[1:] + t[:-1]) / 2, [float(rf.shape_dur)]]) if len(t) > 1 \
                else np.array([0.0, float(rf.shape_dur)])
            dt = np.diff(edges)
            cache[rf_id] = (rf.delay + pp.calc_rf_center(rf)[0], float(np.sum(b1**2 * dt)), float(b1.max()))
        centre, e, p = cache[rf_id]
        times.append(start + centre)
        energy.append(e)
        peak.append(p)
        blocks.append(b + 1)
    return np.array(times), np.array(energy), np.column_stack([peak, blocks]) if peak else np.zeros((0, 2))


def _worst_window(times: np.ndarray, energy: np.ndarray, window: float, duration: float) -> tuple[float, float]:
    """Largest ⟨B1²⟩ (µT²) over any window of ``window`` s, and its start time."""
    if len(times) == 0:
        return 0.0, 0.0
    if duration <= window:
        return float(energy.sum() / duration), 0.0
    cum = np.concatenate([[0.0], np.cumsum(energy)])
    ends = np.searchsorted(times, times + window, side="left")
    sums = cum[ends] - cum[np.arange(len(times))]
    i = int(np.argmax(sums))
    return float(sums[i] / window), float(times[i])


def _gradient_checks(pseq: pp.Sequence, system: System, starts: np.ndarray) -> list[SafetyCheck]:
    checks = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        polys = pseq.get_gradients()
    gamma = system.gamma_hz_per_t
    iec = system.iec
    worst_pns: tuple[float, int | None, float | None] = (0.0, None, None)
    for axis, poly in enumerate(polys[:3]):
        name = "xyz"[axis]
        if poly is None:
            checks.append(SafetyCheck(name=f"gradient {name}", value=0.0, limit=system.max_grad_mt_per_m,
                                      unit="mT/m", passed=True))
            checks.append(SafetyCheck(name=f"slew {name}", value=0.0, limit=system.max_slew_t_per_m_per_s,
                                      unit="T/m/s", passed=True))
            continue
        x, c = np.asarray(poly.x), np.asarray(poly.c)
        seg = np.diff(x)
        slope = c[-2] if c.shape[0] >= 2 else np.zeros(len(seg))
        values = np.abs(np.concatenate([c[-1], [poly(x[-1] - 1e-12)]]))
        values[~np.isfinite(values)] = 0.0
        g = int(np.argmax(values))
        gmax = values[g] / gamma * 1e3
        t_g = float(x[min(g, len(x) - 1)])
        checks.append(SafetyCheck(name=f"gradient {name}", value=gmax, limit=system.max_grad_mt_per_m, unit="mT/m",
                                  passed=gmax <= system.max_grad_mt_per_m * (1 + 1e-6),
                                  block=_block_at(starts, t_g), time_s=t_g))
        s_abs = np.abs(slope) / gamma
        s_abs[~np.isfinite(s_abs) | (seg <= 1e-12)] = 0.0
        k = int(np.argmax(s_abs))
        checks.append(SafetyCheck(name=f"slew {name}", value=float(s_abs[k]), limit=system.max_slew_t_per_m_per_s,
                                  unit="T/m/s", passed=s_abs[k] <= system.max_slew_t_per_m_per_s * (1 + 1e-6),
                                  block=_block_at(starts, float(x[k])), time_s=float(x[k])))
        joint = np.isin(np.round(x[:-1] * 1e8), np.round(starts * 1e8))  # pieces that start a block
        ramp_start, ratio = _ramp_ratios(seg, np.where(s_abs > 1e-3, np.sign(slope), 0.0), s_abs, joint, iec)
        if len(ratio):
            j = int(np.argmax(ratio))
            if ratio[j] > worst_pns[0]:
                t_r = float(x[ramp_start[j]])
                worst_pns = (float(ratio[j]), _block_at(starts, t_r), t_r)
    if system.pns_safe is None:
        value, block, t = worst_pns
        checks.append(SafetyCheck(name="PNS (IEC dB/dt estimate)", value=100 * value, limit=100.0, unit="%",
                                  passed=value <= 1.0, block=block, time_s=t))
    else:
        checks.append(_safe_pns(pseq, system, starts))
    return checks


def _ramp_ratios(seg: np.ndarray, sign: np.ndarray, s_abs: np.ndarray, joint: np.ndarray,
                 iec: IecLimits) -> tuple[np.ndarray, np.ndarray]:
    """IEC dB/dt ratio of every ramp: a maximal run of consecutive linear pieces within one block that change the
    gradient in one direction (an arbitrary or extended-trapezoid waveform on the gradient raster is many such
    pieces; ramps that meet at a block joint are taken apart, as the exporter designs them). A ramp by
    ΔG (T/m) whose steepest piece has slew S_peak has the effective stimulus duration ΔG / S_peak (IEC
    60601-2-33), so its ratio is :func:`pns_ratio` (ΔG, ΔG / S_peak); for one linear piece that is its own
    duration. Returns the first piece of each ramp and its ratio."""
    real = np.flatnonzero(seg > 1e-12)  # zero-length pieces (block joints) neither end nor carry a ramp
    seg, sign, s_abs, joint = seg[real], sign[real], s_abs[real], joint[real]
    moving = np.flatnonzero(sign != 0)
    if len(moving) == 0:
        return np.zeros(0, dtype=int), np.zeros(0)
    # a new ramp where the direction changes or a flat (or zero-length) piece intervenes
    new = np.ones(len(moving), dtype=bool)
    new[1:] = (np.diff(moving) != 1) | (sign[moving[1:]] != sign[moving[:-1]]) | joint[moving[1:]]
    label = np.cumsum(new) - 1
    delta = np.bincount(label, weights=s_abs[moving] * seg[moving])
    peak = np.zeros(label[-1] + 1)
    np.maximum.at(peak, label, s_abs[moving])
    return real[moving[new]], pns_ratio(delta, delta / peak, iec)


def _safe_pns(pseq: pp.Sequence, system: System, starts: np.ndarray) -> SafetyCheck:
    assert system.pns_safe is not None
    hw = SimpleNamespace(name=system.pns_safe.name, checksum="", dependency="")
    for axis in "xyz":
        setattr(hw, axis, SimpleNamespace(**getattr(system.pns_safe, axis).model_dump()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _, norm, _, t = pseq.calculate_pns(hw, do_plots=False)
    i = int(np.argmax(norm)) if len(norm) else 0
    value = float(norm[i]) if len(norm) else 0.0
    t_i = float(t[i]) if len(t) else 0.0
    return SafetyCheck(name="PNS (SAFE model)", value=100 * value, limit=100.0, unit="%", passed=value < 1.0,
                       block=_block_at(starts, t_i), time_s=t_i)


def check_safety(
    seq: pp.Sequence | str | Path,
    system: System,
    *,
    patient_kg: float = 75.0,
    coil: Literal["head", "body"] = "head",
) -> SafetyReport:
    """Check a pypulseq Sequence (or a ``.seq`` path) against ``system``'s limits.

    Checks: Pulseq timing; per-axis gradient amplitude and slew; peak B1; B1+rms over 10 s; whole-body and
    head (head coil) or partial-body (body coil) SAR over 10 s and 6 min; PNS. See the module docstring.
    """
    if coil not in system.sar:
        raise ConfigError(f"coil = {coil!r}: system '{system.name}' has SAR constants for {sorted(system.sar)}")
    if not 1 <= patient_kg <= 400:
        raise ConfigError(f"patient_kg = {patient_kg}: expected a patient mass in kg (1–400)")
    source = str(seq) if isinstance(seq, (str, Path)) else "pypulseq sequence"
    pseq = read_pulseq(seq) if isinstance(seq, (str, Path)) else seq
    durations = np.array(list(pseq.block_durations.values()))
    starts = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
    duration = float(durations.sum())
    report = SafetyReport(source=source, system=system.name, coil=coil, patient_kg=patient_kg, duration_s=duration)
    checks = report.checks

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ok, errors = pseq.check_timing()
    first = errors[0].block if errors else None
    checks.append(SafetyCheck(name="timing errors", value=float(len(errors)), limit=0.0, unit="", passed=ok,
                              block=first))
    checks.extend(_gradient_checks(pseq, system, starts))

    times, energy, peaks = _rf_events(pseq, starts, system.gamma_hz_per_t)
    if len(peaks):
        i = int(np.argmax(peaks[:, 0]))
        checks.append(SafetyCheck(name="peak B1", value=float(peaks[i, 0]), limit=system.max_b1_ut, unit="µT",
                                  passed=peaks[i, 0] <= system.max_b1_ut, block=int(peaks[i, 1]),
                                  time_s=float(times[i])))
    iec = system.iec
    short_ms, short_t = _worst_window(times, energy, iec.short_window_s, duration)
    long_ms, long_t = _worst_window(times, energy, iec.long_window_s, duration)
    b1rms = math.sqrt(short_ms)
    checks.append(SafetyCheck(name=f"B1+rms ({iec.short_window_s:g} s)", value=b1rms, limit=iec.max_b1rms_ut,
                              unit="µT", passed=iec.max_b1rms_ut is None or b1rms <= iec.max_b1rms_ut,
                              block=_block_at(starts, short_t), time_s=short_t))
    model = system.sar[coil]
    fraction = model.exposed_mass_fraction
    if coil == "head":
        region, region_limit = "head SAR", iec.head_sar_w_per_kg
    else:
        region, region_limit = "partial-body SAR", 10.0 - 8.0 * fraction
    for label, mean_square, start, factor in (
        (f"{iec.long_window_s / 60:g} min", long_ms, long_t, 1.0),
        (f"{iec.short_window_s:g} s", short_ms, short_t, iec.short_term_factor),
    ):
        power = model.watts_per_ut2 * mean_square
        for name, value, limit in (
            ("whole-body SAR", power / patient_kg, iec.whole_body_sar_w_per_kg),
            (region, power / (fraction * patient_kg), region_limit),
        ):
            checks.append(SafetyCheck(name=f"{name} ({label})", value=value, limit=factor * limit, unit="W/kg",
                                      passed=value <= factor * limit, block=_block_at(starts, start), time_s=start))
    return report
