"""Readout units of the exporter (:mod:`mrbridge.sequence.export`) and the gradient waveform of any readout.

An ADC run of one dwell D whose samples have their own moments m_j (ramp-sampled EPI, spirals, learned per-sample
gradients) is played as Pulseq extended trapezoids with a knot on every gradient raster point: the gradient is
linear between knots (as scanners play it), so the moment between any two times is a linear function of the
knots (exact integrals of hat functions, for any D and window offset, on or off the raster). The knots solve

    minimise  Σ_i w_i·(g_{i+1} − g_i)²  subject to (within σ) the moment between consecutive samples = the model's,

a sparse, banded least-squares problem (:func:`design_readout`; reweighted so that steep steps weigh more, which
moves from the least slew energy towards the least peak slew): the smoothest waveform whose k at every sample is
the model's. When D ≥ Δ there are more knots than samples and k is met to rounding; when D < Δ (spiral dwells of
a few µs) the fit is least squares and its worst k error goes back to the caller to judge.

Several ADC runs of a repetition with short events between them (EPI lines and their blips) are one *train*
(:func:`_trains`): one waveform over all of them, k held at every sample, the events between them counted through
their moments; it is cut at the block boundaries (one ADC block per run, gradient-only blocks between) into
extended trapezoids that join at non-zero amplitudes, so the lines keep the model's timing. Before the train the
gradient rises from 0 and after it falls to 0 over free knots; their moments go to the neighbouring events.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pypulseq as pp
from scipy import sparse
from scipy.optimize import linprog
from scipy.sparse.linalg import splu

from mrbridge.errors import ConfigError
from mrbridge.sequence.flag_labels import pulseq_flags
from mrbridge.sequence.model import ReadoutLabels, runs
from mrbridge.sequence.pns import max_pns_slew
from mrbridge.system import IecLimits

_TOL = 1e-9  # s, timing tolerance
_AREA_TOL = 1e-6  # 1/m, smaller moments are not played
PNS_MARGIN = 0.95  # exported ramps use at most this fraction of the slew the IEC dB/dt limit allows
TRAIN_GAP = 1e-3  # s: ADC runs with smooth readouts this close are designed as one train (EPI lines and blips)
LABEL_NAMES = {  # ReadoutLabels field → Pulseq label
    "kspace_encode_step_1": "LIN",
    "kspace_encode_step_2": "PAR",
    "average": "AVG",
    "slice": "SLC",
    "contrast": "ECO",
    "phase": "PHS",
    "repetition": "REP",
    "set": "SET",
    "segment": "SEG",
}


def _ceil(value: float, raster: float) -> float:
    return math.ceil(value / raster - 1e-6) * raster


def _round(value: float, raster: float) -> float:
    return round(value / raster) * raster


def pns_slew(amplitude: float, opts: pp.Opts, iec: IecLimits, fraction: float = 1.0) -> float:
    """Hz/m/s: the slew a ramp from 0 to ``amplitude`` (Hz/m) is designed with — the system's maximum, or
    ``PNS_MARGIN`` × the IEC-allowed S_max(|amplitude|) when that is lower; times ``fraction``."""
    allowed = PNS_MARGIN * max_pns_slew(abs(amplitude) / opts.gamma, iec) * opts.gamma
    return fraction * min(float(opts.max_slew), allowed)


@dataclass
class _Event:
    """One model event in plain floats."""

    time: float
    gradm: np.ndarray  # (3,) 1/m
    adc: bool
    adc_phase: float
    inserted: bool = False


@dataclass
class _ReadoutUnit:
    rep: int
    first: int
    count: int
    dwell: float
    events: list[Any]  # gx, gy, gz, adc, labels
    duration: float
    pre: float  # block start → model start of the run
    post: float  # last sample → block end
    comp_pre: np.ndarray  # (3,) added to the previous event
    comp_post: np.ndarray  # (3,) added to the next event
    train: list[tuple[list[Any], float]] | None = None  # (events, duration) per block, for smooth designs


def _run_adc(events: list[_Event], dwell: float, delay: float, opts: pp.Opts) -> Any:
    """The ADC of a run: one sample per event, each event's phase."""
    phases = np.array([e.adc_phase for e in events])
    mod = phases - phases[0]
    return pp.make_adc(num_samples=len(events), dwell=dwell, delay=delay, phase_offset=float(phases[0]),
                       system=opts, phase_modulation=mod if np.abs(mod).max() > 0 else None)


def _label_events(labels: ReadoutLabels) -> list[Any]:
    """The readout's counters and its calibration flags (REF, IMA: :mod:`mrbridge.sequence.flag_labels`)."""
    counters = [pp.make_label(type="SET", label=key, value=int(getattr(labels, name)))
                for name, key in LABEL_NAMES.items()]
    return counters + [pp.make_label(type="SET", label=key, value=on) for key, on in pulseq_flags(labels.flags).items()]


def _check_amplitude(amp: np.ndarray, r: int, first: int, end: int, dwell: float, opts: pp.Opts) -> None:
    """ConfigError when a readout amplitude ``amp`` (…, 3) Hz/m exceeds max_grad."""
    j, worst = np.unravel_index(int(np.argmax(np.abs(amp))), amp.shape)
    if abs(amp[j, worst]) > opts.max_grad * (1 + 1e-9):
        raise ConfigError(f"repetition {r}, events {first}–{end - 1}: readout gradient {amp[j, worst]:.4g} Hz/m "
                          f"on {'xyz'[worst]} exceeds max_grad {opts.max_grad:.4g} Hz/m (dwell {dwell * 1e6:g} µs)")


def _smooth_train(r: int, events: list[_Event], runs_: list[tuple[int, int]], labels: list[ReadoutLabels],
                  opts: pp.Opts, iec: IecLimits, k_tolerance: float) -> _ReadoutUnit:
    """ADC runs of one repetition (each of one dwell, samples with their own moments: ramp-sampled EPI lines, a
    spiral, learned moments) and the events between them, played as one smooth gradient per axis with a knot on
    every gradient raster point (:func:`mrbridge.sequence.export_readout.design_readout`): k at every sample is the
    model's and every event keeps its time. The waveform is cut at the block boundaries (one ADC block per run,
    gradient-only blocks between) into extended trapezoids that join at non-zero amplitudes.

    The knots keep the model's raster: t₀ (from the block start) has the phase, on the block raster, of the
    train's model start after the repetition's start (the RF centre, on the raster in the file), so that a model
    designed on the gradient raster (trapezoids, blips, spiral arms) is played exactly and the event before the
    train keeps its time.
    The ramp into the train (before t₀, its model start) and out of it are free knots, first as long as half the
    PNS-safe slew needs to reach the gradient extrapolated to the ends, doubled (up to three times) while a ramp is
    too steep. Every monotone stretch must keep within :func:`pns_slew` of its amplitude change (the IEC dB/dt limit
    with its effective stimulus duration ΔG/peak slew) and max_grad; the k error at every sample within
    ``k_tolerance`` (1/m); the ADC blocks must fit between the samples with their dead times; else
    :class:`ConfigError`.
    """
    first, end = runs_[0][0], runs_[-1][1]
    window = events[first:end]
    durations = np.array([_round(e.time, opts.adc_raster_time) if e.adc else e.time for e in window])
    moments = np.stack([e.gradm for e in window])
    sampled = np.array([e.adc for e in window])
    graster, braster, rraster = opts.grad_raster_time, opts.block_duration_raster, opts.rf_raster_time
    played = np.abs(moments).max(axis=0) > _AREA_TOL
    moments = np.where(played, moments, 0.0)
    head, tail = moments[: runs_[0][1] - first], moments[runs_[-1][0] - first:]
    dwell0, dwell1 = durations[0], durations[-1]
    g_first = float(np.abs(1.5 * head[0] - 0.5 * head[1]).max() if len(head) > 1 else np.abs(head[0]).max()) / dwell0
    g_last = float(np.abs(1.5 * tail[-1] - 0.5 * tail[-2]).max() if len(tail) > 1 else np.abs(tail[-1]).max()) / dwell1
    rise = max(math.ceil(g_first / (0.5 * pns_slew(g_first, opts, iec)) / graster - 1e-6), 1)
    fall = max(math.ceil(g_last / (0.5 * pns_slew(g_last, opts, iec)) / graster - 1e-6), 1)
    unit = math.lcm(round(graster * 1e9), round(braster * 1e9)) * 1e-9
    where = f"repetition {r}, events {first}–{end - 1}"
    phase = math.fmod(sum(e.time for e in events[:first]), unit)
    phase = 0.0 if min(phase, unit - phase) < 1e-8 else phase
    failure, done = "", False
    for _ in range(4):
        least = max(rise * graster, opts.adc_dead_time - dwell0 / 2)
        t0 = phase + math.ceil((least - phase) / unit - 1e-6) * unit  # the model's phase on the block raster
        if abs(_round(t0 + dwell0 / 2, rraster) - (t0 + dwell0 / 2)) > _TOL:
            t0 = math.ceil((least + dwell0 / 2) / rraster - 1e-6) * rraster - dwell0 / 2
        for least_peak in (False, True):  # the smoothest; if a little too steep, the least peak slew
            try:
                wave = design_readout(durations, moments, sampled, t0, graster, fall, float(opts.max_slew),
                                      k_tolerance, least_peak)
            except ValueError:
                break
            error = float(wave.k_error[played].max(initial=0.0))
            if error > k_tolerance and least_peak:
                break
            if error > k_tolerance:
                raise ConfigError(
                    f"{where}: no gradient on the {graster * 1e6:g}-µs raster plays the readout's moments at the "
                    f"{dwell0 * 1e6:g}-µs dwell: k is off by {error:.3g} 1/m at a sample, more than the "
                    f"{k_tolerance:.3g} 1/m allowed; expected the moments of a gradient that is smooth (or linear) "
                    f"between the raster points")
            _check_amplitude(wave.amplitudes, r, first, end, dwell0, opts)
            worst = (0.0, 0.0, 0.0, 0, 0.0)  # need/limit, need, limit, axis, ΔG
            for axis in np.flatnonzero(played):
                for _, _, jump, peak in ramps(wave.amplitudes[:, axis], graster):
                    limit = pns_slew(jump, opts, iec)
                    if peak / limit > worst[0]:
                        worst = (peak / limit, peak, limit, int(axis), jump)
            if worst[0] <= 1 + 1e-9:
                done = True
                break
            if not least_peak:
                _, need, limit, worst_axis, jump = worst
                failure = (f"{where}: the readout moments change too fast between samples: the smoothest gradient "
                           f"that plays them ramps by {jump / opts.gamma * 1e3:.4g} mT/m on {'xyz'[worst_axis]} at "
                           f"{need / opts.gamma:.4g} T/m/s; the PNS-safe limit is {limit / opts.gamma:.4g} T/m/s")
                if worst[0] > 2:
                    break  # far beyond: no design of least peak slew will do
        if done:
            break
        rise, fall = 2 * rise, 2 * fall
    else:
        raise ConfigError(failure)
    # ---- blocks: [start, stop) from the train start, on the block raster; one ADC block per run --------------
    starts = t0 + np.concatenate([[0.0], np.cumsum(durations)])  # window starts (and the last end)
    spans: list[tuple[float, float, int]] = []  # (block start, block end, run index or −1)
    for k, (a, b) in enumerate(runs_):
        dwell = durations[a - first]
        sample0 = starts[a - first] + dwell / 2  # ADC delay reference: the first sample's centre convention
        begin = 0.0 if k == 0 else math.floor((sample0 - opts.adc_dead_time) / braster + 1e-6) * braster
        stop = math.ceil((starts[b - first] + dwell / 2 + opts.adc_dead_time) / braster - 1e-6) * braster
        if abs(_round(sample0 - begin, rraster) - (sample0 - begin)) > _TOL:
            raise ConfigError(f"{where}: run {k + 1} starts {(sample0 - begin) * 1e6:.4g} µs into its block, off "
                              f"the {rraster * 1e6:g}-µs raster of the ADC delay")
        if spans and begin < spans[-1][1] - _TOL:
            raise ConfigError(f"{where}: {(spans[-1][1] - begin) * 1e6:.3g} µs too little time between ADC runs "
                              f"{k} and {k + 1} for their {opts.adc_dead_time * 1e6:g}-µs ADC dead times")
        if spans and begin > spans[-1][1] + _TOL:
            spans.append((spans[-1][1], begin, -1))
        spans.append((begin, stop, k))
    whole = _ceil(max(float(wave.knots[-1]), spans[-1][1]), braster)
    spans[-1] = (spans[-1][0], whole, spans[-1][2])
    if abs(round(braster / graster) * graster - braster) > _TOL:
        raise ConfigError(f"{where}: the {braster * 1e6:g}-µs block raster is not a whole number of gradient rasters")
    knots = np.arange(round(whole / graster) + 1) * graster
    amplitudes = np.zeros((len(knots), 3))
    amplitudes[: len(wave.amplitudes)] = wave.amplitudes
    blocks: list[tuple[list[Any], float]] = []
    for begin, stop, k in spans:
        i0, i1 = round(begin / graster), round(stop / graster)
        content: list[Any] = []
        if k >= 0:
            a, b = runs_[k]
            dwell = durations[a - first]
            delay = _round(starts[a - first] + dwell / 2 - begin, rraster)
            content.append(_run_adc(events[a:b], dwell, delay, opts))
            content.extend(_label_events(labels[k]))
        for axis in np.flatnonzero(played):
            piece = amplitudes[i0:i1 + 1, axis]
            if np.abs(piece).max() > 0:
                content.append(pp.make_extended_trapezoid(channel="xyz"[axis], times=knots[: i1 - i0 + 1],
                                                          amplitudes=piece, system=opts))
        blocks.append((content, stop - begin))
    post = whole - starts[-1]
    comp_pre = np.where(played, -wave.pre_area, 0.0)
    comp_post = np.where(played, -wave.post_area, 0.0)
    n = end - first
    return _ReadoutUnit(r, first, n, dwell0, [], whole, t0, post, comp_pre, comp_post, blocks)


def _trains(events: list[_Event], readouts: list[ReadoutLabels], opts: pp.Opts, iec: IecLimits, r: int,
            k_tolerance: float) -> dict[int, _ReadoutUnit]:
    """Chains of ≥ 2 ADC runs of a repetition played as one smooth waveform (:func:`_smooth_train`), by first event.

    Chained: consecutive runs whose samples have different moments, of one dwell on the ADC raster, with at most
    ``TRAIN_GAP`` s of events between them (EPI lines and their blips). A chain that cannot be played as one (too
    little time for the ADC dead times, off the rasters) falls back to one unit per run.
    """
    spans = runs([ev.adc for ev in events])
    out: dict[int, _ReadoutUnit] = {}

    def varying(span: tuple[int, int]) -> float | None:  # the run's dwell when it qualifies
        run = events[span[0]:span[1]]
        times = np.array([e.time for e in run])
        moments = np.stack([e.gradm for e in run])
        dwell = float(times[0])
        if (np.ptp(times) > _TOL or abs(_round(dwell, opts.adc_raster_time) - dwell) > _TOL
                or np.abs(moments - moments[0]).max() <= 1e-6 * max(1.0, np.abs(moments).max())):
            return None
        return dwell

    i = 0
    while i < len(spans):
        dwell = varying(spans[i])
        j = i
        while (dwell is not None and j + 1 < len(spans) and varying(spans[j + 1]) == dwell
               and sum(e.time for e in events[spans[j][1]:spans[j + 1][0]]) <= TRAIN_GAP):
            j += 1
        if j > i:
            try:
                out[spans[i][0]] = _smooth_train(r, events, spans[i:j + 1], readouts[i:j + 1], opts, iec,
                                                 k_tolerance)
            except ConfigError:
                pass  # played run by run
        i = j + 1
    return out


@dataclass
class ReadoutWaveform:
    """The designed gradients of one ADC run (times from the block start).

    knots: (M + 1,) s, on the gradient raster, from 0
    amplitudes: (M + 1, 3) Hz/m, 0 at both ends
    pre_area: (3,) 1/m, ∫ from the block start to t₀ (the run's model start)
    post_area: (3,) 1/m, ∫ from the last sample to the block end
    k_error: (3,) 1/m, worst |k − model k| over the samples, per axis
    """

    knots: np.ndarray
    amplitudes: np.ndarray
    pre_area: np.ndarray
    post_area: np.ndarray
    k_error: np.ndarray


def hat_integrals(times: np.ndarray, knots: int, raster: float) -> np.ndarray:
    """∫₀ᵀ φ_i dt of the linear hat functions φ_i on knots i·raster (i = 0 … knots − 1), per time T.

    Returns: (len(times), knots) s. A gradient with knot values g has moment ∫₀ᵀ g = (result @ g).
    """
    u = np.asarray(times, dtype=float)[:, None] / raster  # in rasters
    i = np.arange(knots)[None, :].astype(float)
    # φ_i(s) = max(0, 1 − |s − i|) in rasters; its integral from −∞ to u:
    left = np.clip(u - (i - 1), 0.0, 1.0)  # the rising half over [i − 1, i]
    right = np.clip(u - i, 0.0, 1.0)  # the falling half over [i, i + 1]
    out = 0.5 * left**2 + (right - 0.5 * right**2)
    out[:, 0] -= 0.5  # knot 0 has no rising half (the gradient starts at t = 0)
    return out * raster


def design_readout(durations: np.ndarray, moments: np.ndarray, sampled: np.ndarray, t0: float, raster: float,
                   fall: int, slew: float, k_scale: float, least_peak: bool = False) -> ReadoutWaveform:
    """Knots of the smoothest gradient that plays ``moments`` (W, 3) 1/m over consecutive windows of ``durations``
    (W,) s from ``t0``; k is held at the end of every ``sampled`` (W,) window (an ADC sample), the windows between
    samples (the events between the ADC runs of a train, e.g. EPI blips) count together.

    raster: s, gradient raster Δ; fall: rasters after the last window to ramp down; slew: Hz/m/s, the scale of
    one knot step (ρ = slew·Δ); k_scale: 1/m, the k accuracy asked.

    Each stretch between consecutive samples must hold its moment (a sparse, banded row per stretch, weight
    1/σ with σ = 1e-3·k_scale/√n so that the errors, summed into k, stay far below k_scale); the knot steps are
    weighted by iteratively reweighted least squares (per axis, eight damped rounds, steep steps weighing more),
    which moves from the least slew energy (a parabola for a lone blip, 1.5× steeper at its ends than a
    triangle) towards the least peak slew.
    Solved in the augmented (saddle-point) form, which is banded and well conditioned: sparse LU, linear in the
    readout's length. ``least_peak``: instead, per axis, the least peak slew exactly (a linear programme, HiGHS:
    minimise s + ε·Σ|Δg| with |Δg_i| ≤ s, each stretch's moment within k_scale/(2n)), for readouts whose
    smooth design is a little too steep (the total-variation term keeps its ramps monotone).
    """
    durations = np.asarray(durations, dtype=float)
    sampled = np.asarray(sampled, dtype=bool)
    bounds = t0 + np.concatenate([[0.0], np.cumsum(durations)])
    count = int(np.ceil(bounds[-1] / raster - 1e-9)) + fall + 1  # knots 0 … M
    # stretches: from t₀ (or the previous sample) to each sample
    ends = bounds[1:][sampled]
    begins = np.concatenate([[t0], ends[:-1]])
    cum = np.cumsum(moments, axis=0)[sampled]
    target = np.diff(np.vstack([np.zeros((1, 3)), cum]), axis=0)  # (n, 3) moment of each stretch
    n = len(ends)
    rows = _stretch_rows(begins, ends, count, raster)[:, 1:-1]  # g_0 = g_M = 0
    sigma = 1e-3 * k_scale / math.sqrt(max(n, 1))
    rho = slew * raster
    diff = sparse.diags([-np.ones(count - 1), np.ones(count - 1)], [0, 1], shape=(count - 1, count)).tocsr()[:, 1:-1]
    scaled = (rows * rho).tocsr()  # knots in units of ρ
    amplitudes = np.zeros((count, 3))
    for axis in range(3):
        if not np.any(target[:, axis]):
            continue
        if least_peak:
            amplitudes[1:-1, axis] = _least_peak(scaled, diff, target[:, axis], 0.5 * k_scale) * rho
            continue
        weights = np.ones(count - 1)
        for _ in range(8):
            # augmented (saddle-point) form of the weighted least squares: [[DᵀWD, Aᵀ], [A, −σ²]]·[x, λ] = [0, b]
            smooth = diff.T @ sparse.diags(weights) @ diff
            matrix = sparse.bmat([[smooth, scaled.T], [scaled, -sigma**2 * sparse.identity(n)]]).tocsc()
            x = splu(matrix).solve(np.concatenate([np.zeros(count - 2), target[:, axis]]))
            amplitudes[1:-1, axis] = x[: count - 2] * rho
            # steps above a third of the slew scale weigh more, (step/ρ)²; smaller ones alike (no incentive to move
            # a ramp into a quiet stretch), averaged with the previous weights (damped)
            new = np.maximum(np.abs(np.diff(amplitudes[:, axis])) / rho, 1 / 3) ** 2
            weights = np.sqrt(weights * new)
    k = _moment_at(amplitudes, np.concatenate([[t0], ends]), raster)
    k_error = np.abs((k[1:] - k[0]) - cum).max(axis=0) if n else np.zeros(3)
    whole = 0.5 * raster * (amplitudes[1:] + amplitudes[:-1]).sum(axis=0)
    last = _moment_at(amplitudes, bounds[-1:], raster)[0]
    return ReadoutWaveform(np.arange(count) * raster, amplitudes, k[0], whole - last, k_error)


def _least_peak(rows: sparse.csr_matrix, diff: sparse.csr_matrix, target: np.ndarray, tolerance: float) -> np.ndarray:
    """Knots x (units of ρ) minimising max|Δx| (+ a small total variation) with k at every sample, the running sum
    of ``rows·x``, within ``tolerance`` of the running sum of ``target`` (auxiliary k variables keep it sparse)."""
    m, steps, n = rows.shape[1], diff.shape[0], rows.shape[0]
    scale = max(float(np.abs(np.cumsum(target)).max()), tolerance)
    a, k_target, slack = rows / scale, np.cumsum(target) / scale, tolerance / scale
    eye = sparse.identity(steps, format="csr")
    column = sparse.csr_matrix(np.ones((steps, 1)))
    upper = sparse.vstack([
        sparse.hstack([diff, -eye, sparse.csr_matrix((steps, 1 + n))]),
        sparse.hstack([-diff, -eye, sparse.csr_matrix((steps, 1 + n))]),
        sparse.hstack([sparse.csr_matrix((steps, m)), eye, -column, sparse.csr_matrix((steps, n))]),
    ]).tocsc()
    running = sparse.identity(n, format="csr") - sparse.eye(n, k=-1, format="csr")  # c_j − c_{j−1}
    equal = sparse.hstack([-a, sparse.csr_matrix((n, steps + 1)), running]).tocsc()
    cost = np.concatenate([np.zeros(m), np.full(steps, 1.0 / steps), [1.0], np.zeros(n)])
    limits = ([(None, None)] * m + [(0, None)] * (steps + 1)
              + list(zip(k_target - slack, k_target + slack, strict=True)))
    result = linprog(cost, A_ub=upper, b_ub=np.zeros(3 * steps), A_eq=equal, b_eq=np.zeros(n), bounds=limits,
                     method="highs")
    if result.x is None:
        raise ValueError(f"no least-peak-slew gradient found: {result.message}")
    return np.asarray(result.x[:m])


def _stretch_rows(begins: np.ndarray, ends: np.ndarray, count: int, raster: float) -> sparse.csr_matrix:
    """(n, count) sparse: ∫ from begins[j] to ends[j] of each knot's hat function (s)."""
    first = np.maximum(np.floor(begins / raster).astype(int) - 1, 0)
    last = np.minimum(np.ceil(ends / raster).astype(int) + 1, count - 1)
    width = int((last - first).max()) + 1
    knots = first[:, None] + np.arange(width)[None, :]
    inside = knots <= last[:, None]
    knots = np.minimum(knots, count - 1)

    def integral(t: np.ndarray) -> np.ndarray:  # ∫₀ᵗ φ_knot, elementwise for the (n, width) knots
        u = t[:, None] / raster
        left = np.clip(u - (knots - 1), 0.0, 1.0)
        right = np.clip(u - knots, 0.0, 1.0)
        out = 0.5 * left**2 + (right - 0.5 * right**2)
        return np.where(knots == 0, out - 0.5, out) * raster

    values = np.where(inside, integral(ends) - integral(begins), 0.0)
    row = np.repeat(np.arange(len(ends)), width)
    matrix = sparse.coo_matrix((values.ravel(), (row, knots.ravel())), shape=(len(ends), count))
    return matrix.tocsr()


def _moment_at(amplitudes: np.ndarray, times: np.ndarray, raster: float) -> np.ndarray:
    """∫₀ᵗ of the piecewise-linear knots ``amplitudes`` (M + 1, 3) at ``times`` (s). Returns (len(times), 3)."""
    at_knots = np.vstack([np.zeros((1, 3)), np.cumsum(0.5 * raster * (amplitudes[1:] + amplitudes[:-1]), axis=0)])
    u = np.asarray(times, dtype=float) / raster
    i = np.clip(np.floor(u).astype(int), 0, len(amplitudes) - 2)
    f = (u - i)[:, None]
    g0, g1 = amplitudes[i], amplitudes[i + 1]
    return at_knots[i] + raster * (g0 * (f - 0.5 * f**2) + g1 * 0.5 * f**2)


def ramps(amplitudes: np.ndarray, raster: float) -> list[tuple[int, int, float, float]]:
    """Monotone stretches of a knot sequence: (first knot, last knot, |ΔG| Hz/m, peak |slew| Hz/m/s) each."""
    step = np.diff(amplitudes)
    sign = np.sign(np.where(np.abs(step) > 1e-9 * max(float(np.abs(amplitudes).max(initial=0.0)), 1.0), step, 0.0))
    out: list[tuple[int, int, float, float]] = []
    i = 0
    while i < len(step):
        if sign[i] == 0:
            i += 1
            continue
        j = i
        while j + 1 < len(step) and sign[j + 1] == sign[i]:
            j += 1
        out.append((i, j + 1, abs(float(amplitudes[j + 1] - amplitudes[i])),
                    float(np.abs(step[i:j + 1]).max()) / raster))
        i = j + 1
    return out
