"""Which RF pulses excite, refocus or invert, for Pulseq files that do not say (1.4 and older have no RF use).

The rule, from each pulse's flip angle and its place among the other pulses and the ADC events:

* below ``EXCITATION_MAX_DEG`` a pulse excites;
* a larger pulse inverts when the next event among {ADC, exciting pulse} is an exciting pulse (an inversion
  prepares magnetisation that a later excitation reads), and refocuses otherwise (an ADC follows it before
  the next excitation: a spin echo or an echo train).

Used by the ``.seq`` importer (simulation) and by the readout encoding (``calculate_kspace`` must know which
pulses refocus: they negate k), so both worlds agree.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import pypulseq as pp

#: pulses below this flip angle excite
EXCITATION_MAX_DEG = 100.0
#: pypulseq's one-letter RF use codes
_CODES = {"excitation": "e", "refocusing": "r", "inversion": "i"}


def rf_integral(rf: Any) -> complex:
    """∫ signal dt (Hz·s) of a pypulseq RF event; its flip angle is 2π·|∫|."""
    t, s = np.asarray(rf.t, dtype=float), np.asarray(rf.signal)
    if len(t) > 2:
        dt = np.diff(t)
        if np.ptp(dt) < 1e-9 and abs(t[0] - dt[0] / 2) < 1e-9:  # piecewise constant on a raster
            return complex(s.sum() * dt[0])
    return complex(np.trapezoid(s, t))


def infer_uses(times: np.ndarray, angles_deg: np.ndarray, adc_times: np.ndarray) -> list[str]:
    """Use of each pulse ("excitation", "refocusing" or "inversion") by the rule of the module docstring.

    times: (pulses,) s, in playing order; angles_deg: (pulses,); adc_times: (adcs,) s, each ADC's start.
    """
    exciting = angles_deg < EXCITATION_MAX_DEG
    exc_times = np.asarray(times)[exciting]
    adc_times = np.sort(np.asarray(adc_times, dtype=float))
    uses = []
    for t, excites in zip(times, exciting, strict=True):
        if excites:
            uses.append("excitation")
            continue
        next_exc = exc_times[np.searchsorted(exc_times, t, side="right")] if np.any(exc_times > t) else math.inf
        next_adc = adc_times[np.searchsorted(adc_times, t, side="right")] if np.any(adc_times > t) else math.inf
        uses.append("inversion" if next_exc < next_adc else "refocusing")
    return uses


def complete_rf_uses(seq: pp.Sequence) -> dict[str, int]:
    """Give every RF event of ``seq`` whose use is undefined the inferred use, in place.

    pypulseq keeps one use per RF library event: an event played in several roles takes its most common one.
    Returns the number of pulses of each inferred use (empty when the file stated every use).
    """
    library = seq.rf_library
    undefined = {k for k in library.data if library.type.get(k, "u") not in ("e", "r", "i", "s", "p", "o")}
    if not undefined:
        return {}
    durations = np.array(list(seq.block_durations.values()))
    starts = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
    rf_ids, rf_times, adc_times = [], [], []
    for start, ids in zip(starts, seq.block_events.values(), strict=True):
        if ids[1]:
            rf_ids.append(int(ids[1]))
            rf_times.append(start)
        if ids[5]:
            adc_times.append(start)
    angles: dict[int, float] = {}
    for k in set(rf_ids):
        rf = seq.rf_from_lib_data(library.data[k], library.type.get(k, "u"))
        angles[k] = math.degrees(2 * math.pi * abs(rf_integral(rf)))
    uses = infer_uses(np.asarray(rf_times), np.array([angles[k] for k in rf_ids]), np.asarray(adc_times))
    by_event: dict[int, Counter[str]] = {}
    for k, use in zip(rf_ids, uses, strict=True):
        by_event.setdefault(k, Counter())[use] += 1
    counts: Counter[str] = Counter()
    for k in undefined & set(by_event):
        library.type[k] = _CODES[by_event[k].most_common(1)[0][0]]
        counts.update(by_event[k])
    seq.block_cache.clear()
    return dict(counts)
