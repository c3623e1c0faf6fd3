"""The waveforms a Pulseq ``.seq`` file really plays, read back with pypulseq (not mrbridge's event model).

What the scanner receives: RF (complex, with its shape, phase and offsets), the three gradient channels with their
ramps, and the ADC windows, over a time window of the file. The default window starts at the block of the last RF
pulse before the first ADC (dummy scans are skipped) and spans two RF-to-ADC cycles (two repetitions of a GRE, the
excitation and first refocusing of a spin echo train), or the first four ADC blocks when no RF follows (an EPI
train).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pypulseq as pp

from mrbridge.errors import InputError
from mrbridge.sequence.import_seq import read_pulseq

#: ¹H gyromagnetic ratio (Hz/T)
GAMMA_HZ_PER_T = 42.577478e6
#: blocks scanned for the default window; a longer preparation falls back to the first blocks
_MAX_BLOCKS_SCANNED = 20000


@dataclass
class SeqWaveforms:
    """Waveforms of one time window of a .seq.

    window: (start, end) s from the start of the sequence
    gradients: three (times s (n,), amplitude mT/m (n,)) for gx, gy, gz, as pypulseq decompresses them (trapezoid
        corners and arbitrary-waveform samples; linear between points)
    rf_time: (m,) s; rf: (m,) complex µT (B1 amplitude and phase, including the pulses' phase offsets)
    adc_windows: (k, 2) s, start and end of every ADC event's sampling inside the window
    duration: s, the whole sequence
    """

    window: tuple[float, float]
    gradients: list[tuple[np.ndarray, np.ndarray]]
    rf_time: np.ndarray
    rf: np.ndarray
    adc_windows: np.ndarray
    duration: float


def _flip_deg(rf: object) -> float:
    """Nominal flip angle of a pypulseq RF event: 360° · |∫ B1(t) dt| (signal in Hz)."""
    signal, t = np.asarray(rf.signal), np.asarray(rf.t, dtype=np.float64)  # type: ignore[attr-defined]
    if signal.size < 2:
        return 0.0
    return float(360.0 * abs(np.sum(signal[:-1] * np.diff(t)) + signal[-1] * (t[-1] - t[-2])))


def _is_refocusing(rf: object) -> bool:
    use = str(getattr(rf, "use", "undefined"))
    return use == "refocusing" or (use in ("undefined", "") and _flip_deg(rf) > 135.0)


def default_window(seq: pp.Sequence) -> tuple[float, float]:
    """(start, end) s: from the excitation before the first ADC over two RF-to-ADC cycles (see the module).

    The excitation is the last RF block before the first ADC, or the one before it when that is a refocusing
    pulse (its ``use``, or a flip above 135° in a Pulseq 1.4 file). The second cycle is shown when the next RF
    starts within four times the first cycle; else the window closes after the first ADC (a spin echo with a
    long TR), or after the fourth ADC block when no RF follows (an EPI train).
    """
    starts: list[float] = []
    rfs: list[tuple[int, object]] = []
    adcs: list[int] = []
    t = 0.0
    for i, block_id in enumerate(seq.block_events):
        if i >= _MAX_BLOCKS_SCANNED:
            break
        block = seq.get_block(block_id)
        starts.append(t)
        t += float(seq.block_durations[block_id])
        if block.rf is not None:
            rfs.append((i, block.rf))
        if block.adc is not None:
            adcs.append(i)
            if any(r > adcs[0] for r, _ in rfs) and adcs[-1] > max(r for r, _ in rfs):
                break
    ends = [*starts[1:], t]
    if not adcs:
        return 0.0, t
    first = adcs[0]
    before = [(r, rf) for r, rf in rfs if r <= first]
    if len(before) >= 2 and _is_refocusing(before[-1][1]):
        before.pop()
    start = starts[before[-1][0]] if before else starts[first]
    cycle = ends[first] - start
    later = [r for r, _ in rfs if r > first]
    closing = [a for a in adcs if later and a > later[0]]
    if later and starts[later[0]] - start <= 4.0 * cycle and closing:
        return float(start), float(ends[closing[0]])
    if later:
        return float(start), float(ends[first] + 0.1 * cycle)
    return float(start), float(ends[adcs[min(3, len(adcs) - 1)]])


def read_waveforms(path: str | Path, window: tuple[float, float] | None = None) -> SeqWaveforms:
    """RF, gradients and ADC windows of ``path`` over ``window`` (s; default :func:`default_window`).

    Raises InputError when the file is not a readable .seq or the window is empty or outside the sequence.
    """
    seq = read_pulseq(path)
    duration = float(sum(seq.block_durations.values()))
    start, end = default_window(seq) if window is None else (float(window[0]), float(window[1]))
    if not (0.0 <= start < end and start < duration):
        raise InputError(f"{path}: time window {start * 1e3:g}–{end * 1e3:g} ms; expected 0 ≤ start < end and "
                         f"start < the sequence's {duration * 1e3:.6g} ms")
    end = min(end, duration)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        waves, *_ = seq.waveforms_and_times(append_RF=True, time_range=[start, end])
    gradients = [(np.asarray(w[0], dtype=np.float64), np.asarray(w[1].real, dtype=np.float64) / GAMMA_HZ_PER_T * 1e3)
                 for w in waves[:3]]
    rf = waves[3] if len(waves) > 3 else np.zeros((2, 0), dtype=complex)
    return SeqWaveforms(window=(start, end), gradients=gradients, rf_time=np.asarray(rf[0].real, dtype=np.float64),
                        rf=np.asarray(rf[1], dtype=np.complex128) / GAMMA_HZ_PER_T * 1e6,
                        adc_windows=_adc_windows(seq, start, end), duration=duration)


def _adc_windows(seq: pp.Sequence, start: float, end: float) -> np.ndarray:
    """(k, 2) s: first-sample start and last-sample end of every ADC event in blocks overlapping [start, end]."""
    out = []
    t = 0.0
    for block_id in seq.block_events:
        length = float(seq.block_durations[block_id])
        if t > end:
            break
        if t + length >= start:
            adc = seq.get_block(block_id).adc
            if adc is not None:
                begin = t + float(adc.delay)
                out.append((begin, begin + int(adc.num_samples) * float(adc.dwell)))
        t += length
    return np.array(out, dtype=np.float64).reshape(-1, 2)
