"""Export a :class:`Sequence` to Pulseq through pypulseq.

How the moment model becomes hardware events (all times on the system's rasters):

* Each repetition's RF becomes one RF block — a slice-selective sinc (slice-select trapezoid on z)
  or a hard pulse, of the pulse's own :class:`PulseShape` kind, duration and time-bandwidth product
  (unless the caller overrides them for every pulse), whose *centre* stands where the model's instantaneous
  pulse stands. The part of the RF block before its centre is taken from the time of the previous repetition's
  last event, the part after it from the time of the repetition's first event.
* Each event without ADC becomes one block holding, per axis, the minimum-time trapezoid (within max gradient
  and slew) of its moment, starting at the block's start. The slice-select moment after the RF centre is
  balanced inside the following event's trapezoid (the slice rephaser, merged), the moment before the centre
  inside the preceding event's: between any two RF pulses and samples the file plays exactly the model's
  moments, so every coherence pathway (spoiling, crushers, stimulated echoes) is the model's.
* A run of equal ADC events (same duration Δt, same moment m) becomes one block with a constant readout gradient
  g = m/Δt and the ADC on its flat top. Pulseq samples at delay + (i + ½)·Δt, the model at the end of event i;
  the neighbouring events absorb the moments and times of the ramps and of that half dwell, so that k and the
  time at every sample equal the model's.
* A run of ADC events with one dwell Δt but different moments m_j (ramp-sampled EPI, spiral, one learned moment
  per sample) becomes the smoothest extended trapezoid per axis, a knot on every gradient raster point, whose k at
  every sample is the model's (within ``K_TOLERANCE`` k steps), within max_grad and the PNS-safe slew
  (:mod:`mrbridge.sequence.export_readout`); runs with short events between them (EPI lines and blips) are one
  such waveform across their blocks, so they keep the model's timing. Failing that, the older per-window design:
  over the window of event j the gradient steps linearly in τ (whole rasters < Δt) from the previous level to
  a_j and stays flat; else a one-line :class:`ConfigError` naming the repetition, events, need and limit.
* Crushers: ``crusher_cycles`` cycles across the slice on z in the events before and after every refocusing pulse
  (equal lobes, every echo alike: the echo and the CPMG condition are kept, the pulse's FID is dephased).
* ``slew_fraction`` scales the slew of every trapezoid (events, constant readouts, slice selects).
* Every gradient ramp keeps to the IEC dB/dt limit (:mod:`mrbridge.sequence.pns`): a trapezoid (event, readout or
  slice select) to amplitude G ramps with at most ``PNS_MARGIN`` × the slew S_max(G) that limit allows (and the
  system's max slew), so the file passes the IEC PNS check of :mod:`mrbridge.sequence.safety` by construction.
* An event too short for what it must hold is lengthened (``timing="extend"``, listed in the change list) or
  refused (``timing="strict"``, :class:`ConfigError`). Durations are rounded to the block raster (listed too).

The returned :class:`Sequence` carries the file's timing (times measured from the first RF centre), so that
simulating it and running the file on the scanner agree.
"""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pypulseq as pp
import torch

from mrbridge.atomic import atomic_path
from mrbridge.errors import ConfigError
from mrbridge.sequence.export_readout import (
    _AREA_TOL,
    _TOL,
    _ceil,
    _check_amplitude,
    _Event,
    _label_events,
    _ReadoutUnit,
    _round,
    _run_adc,
    _smooth_train,
    _trains,
    pns_slew,
)
from mrbridge.sequence.model import Pulse, PulseUsage, ReadoutLabels, Repetition, Sequence, runs
from mrbridge.sequence.protocol import CRUSHER_CYCLES
from mrbridge.system import GAMMA_HZ_PER_T, IecLimits, System

K_TOLERANCE = 2.5e-4  # k steps (1/FOV): the largest k error at an ADC sample a designed readout may have
RF_USE = {
    PulseUsage.EXCITATION: "excitation",
    PulseUsage.REFOCUSING: "refocusing",
    PulseUsage.INVERSION: "inversion",
    PulseUsage.OTHER: "other",
}


@dataclass(frozen=True)
class TimingChange:
    """One event whose duration the exporter changed (indices into the returned Sequence)."""

    repetition: int
    event: int
    old: float  # s
    new: float  # s
    reason: str

    def __str__(self) -> str:
        return (f"repetition {self.repetition} event {self.event}: {self.old * 1e3:.4f} ms → "
                f"{self.new * 1e3:.4f} ms ({self.reason})")


@dataclass
class ExportResult:
    """What :func:`export_seq` produced."""

    pulseq: pp.Sequence
    sequence: Sequence  # the input with the file's timing
    changes: list[TimingChange] = field(default_factory=list)
    path: Path | None = None


def system_opts(system: System) -> pp.Opts:
    """pypulseq ``Opts`` of a :class:`System`."""
    return pp.Opts(
        max_grad=system.max_grad,
        grad_unit="Hz/m",
        max_slew=system.max_slew,
        slew_unit="Hz/m/s",
        rf_dead_time=system.rf_dead_time_us * 1e-6,
        rf_ringdown_time=system.rf_ringdown_time_us * 1e-6,
        adc_dead_time=system.adc_dead_time_us * 1e-6,
        rf_raster_time=system.rf_raster_us * 1e-6,
        grad_raster_time=system.grad_raster_us * 1e-6,
        adc_raster_time=system.adc_raster_us * 1e-6,
        block_duration_raster=system.block_raster_us * 1e-6,
        gamma=system.gamma_hz_per_t,
        B0=system.b0_t,
    )


@dataclass
class _Rep:
    pulse: Pulse
    angle: float
    phase: float
    events: list[_Event]
    readouts: list[ReadoutLabels]


@dataclass
class _RfUnit:
    blocks: list[Any]  # rf, gz
    duration: float  # block duration
    centre: float  # RF centre from block start
    comp_pre: np.ndarray  # (3,) moment the previous event adds (balances the slice select before the centre)
    comp: np.ndarray  # (3,) moment the next event adds (the slice rephaser)


def _plain(seq: Sequence) -> list[_Rep]:
    reps = []
    for rep in seq.detach().to(dtype=torch.float64):
        events = [
            _Event(float(t), np.asarray(g, dtype=float), bool(a), float(p))
            for t, g, a, p in zip(rep.event_time.tolist(), rep.gradm.tolist(), rep.adc_usage.tolist(),
                                  rep.adc_phase.tolist(), strict=True)
        ]
        reps.append(_Rep(rep.pulse, float(rep.pulse.angle), float(rep.pulse.phase), events, list(rep.readouts)))
    return reps


def _plays_rf(rep: _Rep) -> bool:
    return rep.angle != 0.0 or rep.pulse.usage == PulseUsage.EXCITATION


def _pad(reps: list[_Rep]) -> None:
    """Give every repetition a non-ADC first and last event, to hold the RF and readout ramps."""
    zero = np.zeros(3)
    for rep in reps:
        if not rep.events or rep.events[0].adc:
            rep.events.insert(0, _Event(0.0, zero.copy(), False, 0.0, inserted=True))
        if rep.events[-1].adc:
            rep.events.append(_Event(0.0, zero.copy(), False, 0.0, inserted=True))


def _trap_area_until(g: Any, t: float) -> float:
    """Area (1/m) of trapezoid ``g`` from the block start to time ``t``."""
    amp, t = g.amplitude, t - g.delay
    r, f, d = g.rise_time, g.flat_time, g.fall_time
    if t <= 0:
        return 0.0
    if t < r:
        return 0.5 * amp * t * t / r
    if t < r + f:
        return amp * (0.5 * r + t - r)
    if t < r + f + d:
        u = r + f + d - t
        return amp * (0.5 * r + f + 0.5 * d) - 0.5 * amp * u * u / d
    return float(g.area)


def _rf_unit(rep: _Rep, opts: pp.Opts, iec: IecLimits, rf: str | None, rf_duration: float | None,
             tbw: float | None, apodization: float, slice_thickness: float, fraction: float = 1.0) -> _RfUnit:
    rf = rep.pulse.shape.kind if rf is None else rf
    length = rep.pulse.shape.duration if rf_duration is None else rf_duration
    tbw = rep.pulse.shape.time_bandwidth if tbw is None else tbw
    angle, phase = abs(rep.angle), rep.phase + (math.pi if rep.angle < 0 else 0.0)
    phase = math.remainder(phase, 2 * math.pi)
    use = RF_USE[rep.pulse.usage]
    comp, comp_pre = np.zeros(3), np.zeros(3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pypulseq warns when it raises the delay to the dead time
        if rf == "sinc":
            select = tbw / length / slice_thickness  # slice-select amplitude (Hz/m): bandwidth / Δz
            if select > opts.max_grad:
                shortest = tbw / slice_thickness / opts.max_grad
                raise ConfigError(
                    f"a {length * 1e3:g}-ms sinc of time-bandwidth {tbw:g} over a {slice_thickness * 1e3:g}-mm slice "
                    f"needs a slice-select gradient of {select / GAMMA_HZ_PER_T * 1e3:.1f} mT/m, above the "
                    f"system's {opts.max_grad / GAMMA_HZ_PER_T * 1e3:.1f} mT/m; expected a pulse of at least "
                    f"{shortest * 1e3:.2f} ms (--rf-duration-ms) or a thicker slice (--slice-mm)")
            slew = pns_slew(select, opts, iec, fraction)
            pulse, gz, _ = pp.make_sinc_pulse(
                flip_angle=angle, duration=length, time_bw_product=tbw, apodization=apodization,
                slice_thickness=slice_thickness, phase_offset=phase, system=opts, return_gz=True, use=use,
                max_slew=slew)
            events = [pulse, gz]
        else:
            pulse = pp.make_block_pulse(flip_angle=angle, duration=length, phase_offset=phase, system=opts,
                                        use=use)
            events, gz = [pulse], None
    duration = _ceil(pp.calc_duration(*events), opts.block_duration_raster)
    centre = pulse.delay + pp.calc_rf_center(pulse)[0]
    if gz is not None:
        before = _trap_area_until(gz, centre)
        comp_pre[2] = -before
        comp[2] = -(float(gz.area) - before)
    return _RfUnit(events, duration, centre, comp_pre, comp)


def _readout_unit(reps: list[_Rep], r: int, first: int, end: int, labels: ReadoutLabels, opts: pp.Opts,
                  iec: IecLimits, changes: list[TimingChange], fraction: float = 1.0,
                  k_tolerance: float = 1e-3) -> _ReadoutUnit:
    events = reps[r].events[first:end]
    n = len(events)
    times = np.array([e.time for e in events])
    moments = np.stack([e.gradm for e in events])
    if np.ptp(times) > _TOL:
        raise ConfigError(f"repetition {r}, events {first}–{end - 1}: an ADC run must have equal durations (one "
                          f"dwell) to be exported, has {times.min() * 1e6:.4g}–{times.max() * 1e6:.4g} µs")
    dwell = _round(float(times[0]), opts.adc_raster_time)
    if dwell <= 0:
        raise ConfigError(f"repetition {r}, event {first}: ADC dwell {times[0]:.3g} s rounds to 0 on the "
                          f"{opts.adc_raster_time * 1e6:g} µs ADC raster")
    if abs(dwell - times[0]) > _TOL:
        for i in range(first, end):
            changes.append(TimingChange(r, i, float(times[0]), dwell, "ADC raster"))
    if np.abs(moments - moments[0]).max() > 1e-6 * max(1.0, np.abs(moments).max()):
        try:
            return _smooth_train(r, reps[r].events, [(first, end)], [labels], opts, iec, k_tolerance)
        except ConfigError as err:  # the per-window piecewise design plays some step patterns the smooth one cannot
            try:
                return _varying_readout(r, first, events, dwell, labels, opts, iec)
            except ConfigError:
                raise err from None
    amp = moments[0] / dwell  # Hz/m
    _check_amplitude(amp[None], r, first, end, dwell, opts)
    graster = opts.grad_raster_time
    played = np.abs(amp) * dwell > _AREA_TOL / max(n, 1)
    peak = float(np.abs(amp).max())
    rise = max(_ceil(peak / pns_slew(peak, opts, iec, fraction), graster), graster) if played.any() else 0.0
    # ADC delay: past the ramp and the dead time, and (when the rasters allow) such that the model's event grid
    # (sample i ends event i) falls on the block raster: delay ≡ dwell/2 (mod block raster).
    least = rise + _ceil(max(0.0, opts.adc_dead_time - rise), opts.rf_raster_time)
    braster = opts.block_duration_raster
    aligned = dwell / 2 + math.ceil((least - dwell / 2) / braster - 1e-6) * braster
    on_raster = abs(_round(aligned, opts.rf_raster_time) - aligned) < _TOL
    delay = _round(aligned, opts.rf_raster_time) if on_raster else least
    adc = _run_adc(events, dwell, delay, opts)
    flat = _ceil(delay - rise + n * dwell, graster)
    comp_pre, comp_post = np.zeros(3), np.zeros(3)
    block: list[Any] = [adc]
    if played.any():
        for axis in range(3):
            if not played[axis]:
                continue
            g = pp.make_trapezoid(channel="xyz"[axis], amplitude=float(amp[axis]), flat_time=flat, rise_time=rise,
                                  system=opts)
            block.append(g)
            comp_pre[axis] = amp[axis] * (dwell / 2 + rise / 2 - delay)
            comp_post[axis] = -amp[axis] * (dwell / 2 + rise / 2 - delay) - float(g.area) + n * moments[0][axis]
        duration = _ceil(2 * rise + flat, opts.block_duration_raster)
    else:
        duration = _ceil(delay + n * dwell + opts.adc_dead_time, opts.block_duration_raster)
    block.extend(_label_events(labels))
    pre = delay - dwell / 2
    post = duration - (delay + (n - 0.5) * dwell)
    return _ReadoutUnit(r, first, n, dwell, block, duration, pre, post, comp_pre, comp_post)


def _flat_amplitudes(moments: np.ndarray, dwell: float, tau: float) -> np.ndarray:
    """Amplitudes (n + 1, 3) Hz/m of a readout whose window j (one dwell D, ending at sample j) ramps linearly in
    ``tau`` from a[j] to a[j + 1] and stays there: a[j + 1]·D − (a[j + 1] − a[j])·τ/2 = m_j. a[0] = m_0/D, so
    window 0 is flat. The recursion damps any error by τ/(2D − τ) < 1 per window (τ < D)."""
    a = np.empty((len(moments) + 1, 3))
    a[0] = moments[0] / dwell
    for j, m in enumerate(moments):
        a[j + 1] = (m - a[j] * tau / 2) / (dwell - tau / 2)
    return a


def _varying_readout(r: int, first: int, events: list[_Event], dwell: float, labels: ReadoutLabels, opts: pp.Opts,
                     iec: IecLimits) -> _ReadoutUnit:
    """An ADC run whose samples have different moments: a piecewise-linear readout gradient per axis.

    Window j = [t0 + j·D, t0 + (j + 1)·D] ends at sample j (Pulseq samples at delay + (j + ½)·D with
    delay = t0 + D/2). In it the gradient ramps in τ from the previous window's amplitude to a_j and stays flat,
    so its area is exactly m_j (:func:`_flat_amplitudes`). τ, a whole number of gradient rasters < D, is the
    shortest whose steps keep within the PNS-safe slew (:func:`pns_slew`): short τ suit moments that alternate
    from sample to sample, long τ (nearly continuous ramps) smoothly varying ones. Before t0 the gradient rises from 0,
    after the last sample it falls to 0; the neighbouring events absorb those ramps' moments (comp_pre,
    comp_post), so k at every sample equals the model's.
    """
    n, end = len(events), first + len(events)
    moments = np.stack([e.gradm for e in events])
    graster, braster = opts.grad_raster_time, opts.block_duration_raster
    steps = dwell / graster
    if abs(steps - round(steps)) > 1e-6 or round(steps) < 2:
        raise ConfigError(f"repetition {r}, events {first}–{end - 1}: the ADC samples have different moments, "
                          f"which needs a dwell of a whole number (≥ 2) of {graster * 1e6:g}-µs gradient rasters; "
                          f"the dwell is {dwell * 1e6:g} µs")
    steps = round(steps)
    played = np.abs(moments).max(axis=0) > _AREA_TOL
    a = np.zeros((n + 1, 3))
    best = (math.inf, 0.0, 0.0, 0.0)  # need/limit, need, limit, τ of the least bad τ
    for k in range(1, steps):
        tau = k * graster
        a = _flat_amplitudes(moments, dwell, tau)
        jump = float(np.abs(np.diff(a[:, played], axis=0)).max(initial=0.0))
        # the needed slew grows with the jump, the PNS-allowed one falls: the largest jump is the worst
        need, limit = jump / tau, pns_slew(jump, opts, iec)
        if need <= limit * (1 + 1e-9):
            break
        best = min(best, (need / limit, need, limit, tau))
    else:
        _, need, limit, tau = best
        raise ConfigError(
            f"repetition {r}, events {first}–{end - 1}: the readout moments change too fast between samples: at "
            f"best (transitions of {tau * 1e6:g} µs within the {dwell * 1e6:g}-µs dwell) the gradient steps by "
            f"{need * tau / opts.gamma * 1e3:.4g} mT/m, slew {need / opts.gamma:.4g} T/m/s; the PNS-safe limit is "
            f"{limit / opts.gamma:.4g} T/m/s")
    a[:, ~played] = 0.0
    _check_amplitude(a, r, first, end, dwell, opts)

    def ramp(peak: float) -> int:  # gradient rasters to ramp 0 ↔ peak
        return max(math.ceil(peak / pns_slew(peak, opts, iec) / graster - 1e-6), 1)

    rise, fall = ramp(float(np.abs(a[0]).max())), ramp(float(np.abs(a[-1]).max()))
    # window start t0 on the gradient and block rasters, after the rise and with the ADC past its dead time
    unit = math.lcm(round(graster * 1e9), round(braster * 1e9)) * 1e-9
    t0 = math.ceil(max(rise * graster, opts.adc_dead_time - dwell / 2) / unit - 1e-6) * unit
    delay = t0 + dwell / 2
    if abs(_round(delay, opts.rf_raster_time) - delay) > _TOL:
        raise ConfigError(f"repetition {r}, events {first}–{end - 1}: half the dwell ({dwell * 5e5:g} µs) is not on "
                          f"the {opts.rf_raster_time * 1e6:g}-µs raster of the ADC delay")
    start = round(t0 / graster)
    ticks = [start - rise, start]
    for j in range(n):
        ticks += [start + j * steps + k, start + (j + 1) * steps]
    ticks.append(ticks[-1] + fall)
    times = np.asarray(ticks) * graster
    comp_pre, comp_post = np.zeros(3), np.zeros(3)
    block: list[Any] = [_run_adc(events, dwell, _round(delay, opts.rf_raster_time), opts)]
    for axis in np.flatnonzero(played):
        amplitudes = np.concatenate([[0.0, a[0, axis]], np.repeat(a[1:, axis], 2), [0.0]])
        block.append(pp.make_extended_trapezoid(channel="xyz"[axis], times=times, amplitudes=amplitudes,
                                                system=opts))
        comp_pre[axis] = -a[0, axis] * rise * graster / 2
        comp_post[axis] = -a[-1, axis] * fall * graster / 2
    block.extend(_label_events(labels))
    duration = _ceil(max(times[-1], delay + n * dwell + opts.adc_dead_time), braster)
    post = duration - (delay + (n - 0.5) * dwell)
    return _ReadoutUnit(r, first, n, dwell, block, duration, t0, post, comp_pre, comp_post)


def _event_traps(moment: np.ndarray, opts: pp.Opts, iec: IecLimits, fraction: float = 1.0) -> tuple[list[Any], float]:
    """Minimum-time trapezoid per axis (within the PNS-allowed slew) and the time the longest needs.

    The fastest trapezoid's amplitude G sets the slew, :func:`pns_slew`; at that (lower) slew the trapezoid's
    amplitude is at most G, whose allowed slew is at least the one used.
    """
    traps, need = [], 0.0
    for axis in range(3):
        if abs(moment[axis]) > _AREA_TOL:
            g = pp.make_trapezoid(channel="xyz"[axis], area=float(moment[axis]), system=opts)
            slew = pns_slew(g.amplitude, opts, iec, fraction)
            if slew < opts.max_slew:
                g = pp.make_trapezoid(channel="xyz"[axis], area=float(moment[axis]), max_slew=slew, system=opts)
            traps.append(g)
            need = max(need, pp.calc_duration(g))
    return traps, need


def export_seq(
    seq: Sequence,
    system: System,
    *,
    rf: Literal["sinc", "block"] | None = None,
    rf_duration: float | None = None,
    tbw: float | None = None,
    apodization: float = 0.5,
    slice_thickness: float | None = None,
    timing: Literal["extend", "strict"] = "extend",
    path: str | Path | None = None,
    version: Literal["1.5", "1.4"] = "1.5",
    crusher_cycles: float | None = None,
    slew_fraction: float = 1.0,
) -> ExportResult:
    """Turn ``seq`` into a pypulseq Sequence (and a ``.seq`` file when ``path`` is given).

    Parameters
    ----------
    seq: the sequence (not modified).
    system: scanner limits and rasters.
    rf, rf_duration, tbw: ``"sinc"`` (slice-selective, apodised) or ``"block"`` (hard pulse), s and
        time-bandwidth product of every pulse; ``None`` (default): each pulse's own ``shape`` (a 1-ms sinc of
        time-bandwidth 4 unless its protocol says otherwise).
    apodization: Hamming-type apodisation of sinc pulses.
    slice_thickness: m; default ``seq.info.fov[2]``.
    timing: ``"extend"`` lengthens events that cannot hold their gradients, ``"strict"`` raises ConfigError.
    path: write the file there (atomically); pypulseq signs it.
    version: Pulseq file format version.
    crusher_cycles: crushers around every refocusing pulse, cycles across the slice thickness on z (moment
        ``crusher_cycles / slice_thickness`` 1/m), the same before and after each pulse and for every echo (CPMG
        kept, the echo unchanged); the returned Sequence holds them. 0: none. None: the ``crusher_cycles`` of
        the protocol the sequence was built from (SE, TSE), else ``CRUSHER_CYCLES``.
    slew_fraction: in (0, 1]: trapezoids (events, constant readouts, slice selects) ramp with this fraction of
        the PNS-safe slew (:func:`pns_slew`): longer, gentler ramps where time allows.
    """
    if timing not in ("extend", "strict"):
        raise ConfigError(f"timing = {timing!r}, expected 'extend' or 'strict'")
    if rf not in ("sinc", "block", None):
        raise ConfigError(f"rf = {rf!r}, expected 'sinc' or 'block'")
    if not 0 < slew_fraction <= 1:
        raise ConfigError(f"slew_fraction = {slew_fraction}: expected a fraction of the slew limit in (0, 1]")
    if crusher_cycles is None:
        crusher_cycles = float((seq.info.protocol or {}).get("crusher_cycles", CRUSHER_CYCLES))
    if not 0 <= crusher_cycles <= 100:
        raise ConfigError(f"crusher_cycles = {crusher_cycles}: expected cycles across the slice in [0, 100]")
    opts = system_opts(system)
    thickness = float(slice_thickness if slice_thickness is not None else seq.info.fov[2])
    k_tolerance = K_TOLERANCE / max(seq.info.fov[0], seq.info.fov[1])
    reps = _plain(seq)
    _pad(reps)
    _crush(reps, crusher_cycles / thickness)
    changes: list[TimingChange] = []

    # ---- units in file order --------------------------------------------------------------------------
    units: list[tuple[str, int, int, Any]] = []  # (kind, rep, event, unit)
    for r, rep in enumerate(reps):
        if _plays_rf(rep):
            units.append(("rf", r, -1, _rf_unit(rep, opts, system.iec, rf, rf_duration, tbw, apodization,
                                                thickness, slew_fraction)))
        spans = {start: end for start, end in _spans(rep)}
        trains = _trains(rep.events, rep.readouts, opts, system.iec, r, k_tolerance)
        labels = iter(rep.readouts)
        e = 0
        while e < len(rep.events):
            if e in trains:
                unit = trains[e]
                for _ in range(sum(e <= start < unit.first + unit.count for start in spans)):
                    next(labels)  # one per run of the train
                units.append(("adc", r, e, unit))
                e = unit.first + unit.count
            elif e in spans:
                unit = _readout_unit(reps, r, e, spans[e], next(labels), opts, system.iec, changes, slew_fraction,
                                     k_tolerance)
                units.append(("adc", r, e, unit))
                e = spans[e]
            else:
                units.append(("gap", r, e, None))
                e += 1

    # ---- blocks -----------------------------------------------------------------------------------------
    pseq = pp.Sequence(system=opts)
    new_times = [[ev.time for ev in rep.events] for rep in reps]
    comp = np.zeros(3)
    for i, (kind, r, e, unit) in enumerate(units):
        if kind == "rf":
            pseq.add_block(*unit.blocks, pp.make_delay(unit.duration))
            comp = unit.comp.copy()
            continue
        if kind == "adc":
            for content, duration in unit.train or [(unit.events, unit.duration)]:
                pseq.add_block(*content, pp.make_delay(duration))
            comp = unit.comp_post.copy()
            for k in range(unit.count):
                if reps[r].events[e + k].adc:
                    new_times[r][e + k] = unit.dwell
            continue
        event = reps[r].events[e]
        prev = units[i - 1] if i else None
        nxt = units[i + 1] if i + 1 < len(units) else None
        before = 0.0
        if prev is not None and prev[0] == "rf":
            before = prev[3].duration - prev[3].centre
        elif prev is not None and prev[0] == "adc":
            before = prev[3].post
        after, moment = 0.0, event.gradm + comp
        if nxt is not None and nxt[0] == "rf":
            after = nxt[3].centre
            moment = moment + nxt[3].comp_pre
        elif nxt is not None and nxt[0] == "adc":
            after = nxt[3].pre
            moment = moment + nxt[3].comp_pre
        comp = np.zeros(3)
        traps, need = _event_traps(moment, opts, system.iec, slew_fraction)
        available = event.time - before - after
        block = max(_round(available, opts.block_duration_raster), 0.0)
        need = _ceil(need, opts.block_duration_raster)
        reason = "block raster"
        if need > block + _TOL:
            if timing == "strict":
                raise ConfigError(
                    f"repetition {r}, event {e}: needs {(need + before + after) * 1e3:.4f} ms for its gradients, "
                    f"RF and readout ramps, has {event.time * 1e3:.4f} ms (timing='strict'; use 'extend')")
            block, reason = need, "extended to fit gradients"
        if block > _TOL:
            pseq.add_block(*traps, pp.make_delay(block))
        new = block + before + after
        if event.inserted:
            changes.append(TimingChange(r, e, 0.0, new, "inserted to hold RF/readout ramps"))
        elif abs(new - event.time) > max(_TOL, 1e-7 * event.time):  # above float32 rounding
            changes.append(TimingChange(r, e, event.time, new, reason))
        new_times[r][e] = new

    _definitions(pseq, seq, thickness)
    result = ExportResult(pseq, _rebuild(seq, reps, new_times), changes)
    if path is not None:
        result.path = Path(path)
        write_pulseq(pseq, result.path, version=version)
    return result


def _crush(reps: list[_Rep], moment: float) -> None:
    """Add the crusher ``moment`` (1/m) on z to the last event before and the first event after every played
    refocusing pulse whose neighbouring events have no z moment of their own: refocused magnetisation sees +m,
    then −m (the pulse negates k) and +m, and is unchanged; the FID of the pulse itself sees +m and is dephased;
    every pulse gets the same pair (CPMG condition kept)."""
    if moment <= 0:
        return
    pairs = []
    for r, rep in enumerate(reps):
        if rep.pulse.usage != PulseUsage.REFOCUSING or not _plays_rf(rep) or r == 0:
            continue
        before, after = reps[r - 1].events[-1], rep.events[0]
        if abs(before.gradm[2]) <= _AREA_TOL and abs(after.gradm[2]) <= _AREA_TOL:
            pairs.append((before, after))  # else the model has its own z gradients there: played as they are
    for before, after in pairs:
        before.gradm[2] += moment
        after.gradm[2] += moment


def _spans(rep: _Rep) -> list[tuple[int, int]]:
    return runs([ev.adc for ev in rep.events])


def _definitions(pseq: pp.Sequence, seq: Sequence, thickness: float) -> None:
    info = seq.info
    pseq.set_definition("Name", info.name)
    pseq.set_definition("FOV", [info.fov[0], info.fov[1], info.fov[2]])
    pseq.set_definition("Matrix", list(info.matrix))
    pseq.set_definition("SliceThickness", thickness)
    pseq.set_definition("Trajectory", info.trajectory)
    pseq.set_definition("TE", info.te)
    pseq.set_definition("TR", info.tr)
    pseq.set_definition("FlipAngle", info.flip_angle_deg)
    pseq.set_definition("Contrasts", info.contrasts)
    pseq.set_definition("ReadoutOversamplingFactor", 1)
    pseq.set_definition("Generator", "mrbridge")


def _rebuild(seq: Sequence, reps: list[_Rep], times: list[list[float]]) -> Sequence:
    dtype = seq.repetitions[0].gradm.dtype if seq.repetitions else torch.float32
    out = []
    for rep, t in zip(reps, times, strict=True):
        out.append(Repetition(
            pulse=Pulse(rep.pulse.angle.detach().clone(), rep.pulse.phase.detach().clone(), rep.pulse.usage,
                        rep.pulse.shape),
            event_time=torch.tensor(t, dtype=dtype),
            gradm=torch.tensor(np.stack([e.gradm for e in rep.events]), dtype=dtype),
            adc_usage=torch.tensor([e.adc for e in rep.events], dtype=torch.bool),
            adc_phase=torch.tensor([e.adc_phase for e in rep.events], dtype=dtype),
            readouts=list(rep.readouts),
        ))
    return Sequence(out, seq.info.model_copy(deep=True))


def write_pulseq(pseq: pp.Sequence, path: str | Path, *, version: Literal["1.5", "1.4"] = "1.5") -> None:
    """Write a signed ``.seq`` file atomically (Pulseq 1.5, or 1.4.1-compatible)."""
    with atomic_path(path) as tmp:
        target = tmp.with_name(tmp.name + ".seq")  # pypulseq appends .seq to any other suffix
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                pseq.write(str(target), create_signature=True, v141_compat=version == "1.4")
            os.replace(target, tmp)
        finally:
            target.unlink(missing_ok=True)
