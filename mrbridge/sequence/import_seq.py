"""Import any Pulseq 1.4/1.5 ``.seq`` file as a :class:`Sequence`.

* Every RF pulse becomes an instantaneous pulse at its centre (``calc_rf_center``); its angle is 2π·|∫ B1 dt|
  (Hz·s) of the shape and its phase the pulse's phase offset plus the phase of that integral. Its usage is the
  file's ``use`` when given, otherwise inferred from its angle and place (:mod:`mrbridge.sequence.rf_use`).
  Its :class:`PulseWaveform` keeps the shape as played (resampled on the RF raster, at most
  ``MAX_WAVEFORM_SAMPLES`` samples) and the z gradient during it.
* Every ADC sample at t = block start + delay + (i + ½)·dwell ends an ADC event of one dwell (shorter only when
  a landmark is closer); a non-ADC event fills the time up to each readout's first event and to the next RF.
* Each event's moment is the integral of the gradient waveforms over its interval, so k at every sample equals
  pypulseq's ``calculate_kspace``. Labels (LIN, PAR, SLC, AVG, ECO, PHS, REP, SET, SEG) become ReadoutLabels.
"""

from __future__ import annotations

import hashlib
import math
import re
import tempfile
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pypulseq as pp
import torch
from pypulseq.decompress_shape import decompress_shape

from mrbridge.errors import InputError
from mrbridge.sequence.flag_labels import ismrmrd_flags
from mrbridge.sequence.model import (
    Pulse,
    PulseShape,
    PulseUsage,
    PulseWaveform,
    ReadoutLabels,
    Repetition,
    Sequence,
    SequenceInfo,
)
from mrbridge.sequence.rf_use import infer_uses, rf_integral

SUPPORTED_VERSIONS = ((1, 4), (1, 5))
UNUSED_AXIS_MOMENT = 0.01  # 1/m: 10⁻⁵ cycles across a 1-mm voxel
MAX_WAVEFORM_SAMPLES = 1000  # longer pulses are resampled coarser than the RF raster
_USES = {
    "excitation": PulseUsage.EXCITATION,
    "refocusing": PulseUsage.REFOCUSING,
    "inversion": PulseUsage.INVERSION,
    "saturation": PulseUsage.OTHER,
    "preparation": PulseUsage.OTHER,
    "other": PulseUsage.OTHER,
}
_LABELS = {
    "LIN": "kspace_encode_step_1",
    "PAR": "kspace_encode_step_2",
    "AVG": "average",
    "SLC": "slice",
    "ECO": "contrast",
    "PHS": "phase",
    "REP": "repetition",
    "SET": "set",
    "SEG": "segment",
}


def _check_text(path: Path, text: str) -> None:
    """Version, required sections and signature; raises InputError naming the file."""
    version = re.search(r"^\[VERSION\]\s*\n\s*major\s+(\d+)\s*\n\s*minor\s+(\d+)", text, re.MULTILINE)
    if version is None:
        raise InputError(f"{path}: no [VERSION] section with 'major' and 'minor'; not a Pulseq file")
    found = (int(version.group(1)), int(version.group(2)))
    if found not in SUPPORTED_VERSIONS:
        raise InputError(f"{path}: Pulseq version {found[0]}.{found[1]}, expected 1.4 or 1.5")
    if not re.search(r"^\[BLOCKS\]", text, re.MULTILINE):
        raise InputError(f"{path}: no [BLOCKS] section")
    head, sep, tail = text.partition("\n[SIGNATURE]")
    if sep:
        declared = re.search(r"^Hash\s+([0-9a-fA-F]+)", tail, re.MULTILINE)
        kind = re.search(r"^Type\s+(\w+)", tail, re.MULTILINE)
        if declared and kind and kind.group(1).lower() == "md5":
            actual = hashlib.md5(head.encode("utf-8")).hexdigest()
            if actual != declared.group(1).lower():
                raise InputError(f"{path}: [SIGNATURE] md5 {declared.group(1)} does not match the content "
                                 f"({actual}): the file was truncated or modified")


def read_pulseq(path: str | Path) -> pp.Sequence:
    """Read and validate a ``.seq`` file; InputError (naming the file) when it is not a usable Pulseq 1.4/1.5."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (UnicodeDecodeError, IsADirectoryError) as err:
        raise InputError(f"{path}: not a text Pulseq file ({err})") from None
    _check_text(path, text)
    seq = pp.Sequence()
    try:
        with warnings.catch_warnings(), tempfile.TemporaryDirectory() as tmp:
            warnings.simplefilter("ignore")
            # pypulseq loops forever on a file that ends inside [SHAPES]; a trailing blank line ends every section
            padded = Path(tmp) / "padded.seq"
            padded.write_text(text + "\n\n", encoding="utf-8")
            seq.read(str(padded))
            _check_shapes(path, seq)
            if not seq.block_events:
                raise InputError(f"{path}: [BLOCKS] holds no block")
            total = seq.definitions.get("TotalDuration")
            if total is not None:
                actual = sum(seq.block_durations.values())
                declared = float(np.atleast_1d(total)[0])
                if abs(actual - declared) > 1e-6:
                    raise InputError(f"{path}: blocks last {actual:.6f} s but TotalDuration is {declared:.6f} s: "
                                     "the file is truncated")
    except (RuntimeError, ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
        raise InputError(f"{path}: not a valid Pulseq file: a section is damaged, truncated or refers to a "
                         f"missing event ({type(err).__name__}: {err})") from None
    return seq


def _check_shapes(path: Path, seq: pp.Sequence) -> None:
    """Every stored shape must decompress to its declared sample count."""
    for shape_id, data in seq.shape_library.data.items():
        data = np.asarray(data, dtype=float)
        count = int(data[0])
        shape = SimpleNamespace(num_samples=count, data=data[1:])
        try:
            samples = len(decompress_shape(shape))
        except (ValueError, IndexError) as err:
            raise InputError(f"{path}: [SHAPES] shape {shape_id} is damaged ({err}): the file is truncated") from None
        if samples != count:
            raise InputError(f"{path}: [SHAPES] shape {shape_id} has {samples} of {count} samples: "
                             "the file is truncated")


def _definition(seq: pp.Sequence, key: str) -> Any:
    value = seq.definitions.get(key)
    return None if value is None else np.atleast_1d(value)


def import_seq(path: str | Path, *, dtype: torch.dtype = torch.float32) -> Sequence:
    """Read a Pulseq ``.seq`` file as a :class:`Sequence` (see the module docstring for the mapping)."""
    path = Path(path)
    pseq = read_pulseq(path)
    try:
        return _convert(pseq, path, dtype)
    except (ValueError, KeyError, IndexError, TypeError, AttributeError) as err:
        raise InputError(f"{path}: cannot interpret the sequence ({type(err).__name__}: {err})") from None


def _convert(pseq: pp.Sequence, path: Path, dtype: torch.dtype) -> Sequence:
    durations = np.array(list(pseq.block_durations.values()))
    starts = np.concatenate([[0.0], np.cumsum(durations)[:-1]])
    total = float(durations.sum())
    pulses: list[dict[str, Any]] = []  # time, angle, phase, use, shape
    adcs: list[tuple[np.ndarray, np.ndarray, float]] = []  # sample times, phases, dwell
    rf_cache: dict[int, dict[str, Any]] = {}
    adc_cache: dict[int, tuple[np.ndarray, np.ndarray, float]] = {}
    for b, (block_id, start) in enumerate(zip(pseq.block_events, starts, strict=True)):
        ids = pseq.block_events[block_id]
        rf_id, adc_id = int(ids[1]), int(ids[5])
        if rf_id == 0 and adc_id == 0:
            continue
        need = (rf_id and rf_id not in rf_cache) or (adc_id and adc_id not in adc_cache)
        block: Any = pseq.get_block(block_id) if need else None
        if rf_id:
            if rf_id not in rf_cache:
                rf = block.rf
                integral = rf_integral(rf)
                signal = np.abs(np.asarray(rf.signal))
                rf_cache[rf_id] = {
                    "centre": rf.delay + pp.calc_rf_center(rf)[0],
                    "rf": rf,
                    "angle": 2 * math.pi * abs(integral),
                    "phase": rf.phase_offset + (float(np.angle(integral)) if integral != 0 else 0.0),
                    "use": getattr(rf, "use", "undefined"),
                    "shape": PulseShape(kind="block" if np.ptp(signal) < 1e-6 * max(signal.max(), 1e-12)
                                        else "sinc", duration=max(float(rf.shape_dur), 1e-9)),
                }
            pulses.append({**rf_cache[rf_id], "time": start + rf_cache[rf_id]["centre"], "block": b})
        if adc_id:
            if adc_id not in adc_cache:
                adc = block.adc
                n = int(adc.num_samples)
                offsets = adc.delay + (np.arange(n) + 0.5) * adc.dwell
                mod = getattr(adc, "phase_modulation", None)
                phases = adc.phase_offset + (np.asarray(mod, dtype=float) if mod is not None and len(mod) == n
                                             else np.zeros(n))
                adc_cache[adc_id] = (offsets, phases, float(adc.dwell))
            offsets, phases, dwell = adc_cache[adc_id]
            adcs.append((start + offsets, phases, dwell))
    if not pulses and not adcs:
        raise InputError(f"{path}: no RF pulse and no ADC; nothing to simulate")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        polys = pseq.get_gradients()
    for pulse in pulses:
        pulse["waveform"] = _waveform(pulse["rf"], pulse["time"] - pulse["centre"], polys[2],
                                      float(pseq.system.rf_raster_time))
    _infer_usage(pulses, adcs)
    if not pulses or (adcs and adcs[0][0][0] < pulses[0]["time"]):
        pulses.insert(0, {"time": 0.0, "angle": 0.0, "phase": 0.0, "usage": PulseUsage.OTHER,
                          "shape": PulseShape(), "block": 0, "waveform": None})
    labels = _labels(pseq, len(adcs))
    # ---- event boundaries per repetition --------------------------------------------------------------
    bounds: list[np.ndarray] = []
    flags: list[np.ndarray] = []
    phase_lists: list[np.ndarray] = []
    rep_labels: list[list[ReadoutLabels]] = []
    a = 0
    for r, pulse in enumerate(pulses):
        t_end = pulses[r + 1]["time"] if r + 1 < len(pulses) else total
        t = [pulse["time"]]
        f: list[bool] = []
        ph: list[float] = []
        labs = []
        while a < len(adcs) and adcs[a][0][0] < t_end:
            times, phases, dwell = adcs[a]
            first = max(times[0] - dwell, t[-1])
            t.append(first)
            f.append(False)
            ph.append(0.0)
            t.extend(times.tolist())
            f.extend([True] * len(times))
            ph.extend(phases.tolist())
            labs.append(labels[a])
            a += 1
        t.append(max(t_end, t[-1]))
        f.append(False)
        ph.append(0.0)
        bounds.append(np.asarray(t))
        flags.append(np.asarray(f))
        phase_lists.append(np.asarray(ph))
        rep_labels.append(labs)
    moments = _moments(polys, np.concatenate(bounds))
    steps, offset = [], 0
    for r in range(len(pulses)):
        steps.append(np.diff(moments[offset:offset + len(bounds[r])], axis=0))
        offset += len(bounds[r])
    # An axis whose every event moment is below the file's number precision (amplitudes are stored with ~6
    # digits, e.g. a balanced slice select) is unused: keep it exactly zero.
    largest = np.max(np.abs(np.concatenate(steps)), axis=0)
    unused = largest < UNUSED_AXIS_MOMENT
    reps = []
    for r, pulse in enumerate(pulses):
        m = steps[r]
        m[:, unused] = 0.0
        reps.append(Repetition(
            pulse=Pulse(torch.tensor(pulse["angle"], dtype=dtype),
                        torch.tensor(math.remainder(pulse["phase"], 2 * math.pi), dtype=dtype),
                        pulse["usage"], pulse["shape"], pulse["waveform"]),
            event_time=torch.tensor(np.diff(bounds[r]), dtype=dtype),
            gradm=torch.tensor(m, dtype=dtype),
            adc_usage=torch.tensor(flags[r], dtype=torch.bool),
            adc_phase=torch.tensor(phase_lists[r], dtype=dtype),
            readouts=rep_labels[r],
        ))
    return Sequence(reps, _info(pseq, path, adcs, labels))


def _infer_usage(pulses: list[dict[str, Any]], adcs: list[tuple[np.ndarray, np.ndarray, float]]) -> None:
    """Each pulse's usage: the file's ``use`` where given, else inferred (:func:`infer_uses`)."""
    inferred = infer_uses(np.array([p["time"] for p in pulses]),
                          np.array([math.degrees(p["angle"]) for p in pulses]),
                          np.array([x[0][0] for x in adcs]))
    for p, guess in zip(pulses, inferred, strict=True):
        p["usage"] = _USES[p["use"] if p["use"] in _USES else guess]


def _waveform(rf: Any, start: float, poly_z: Any, raster: float) -> PulseWaveform:
    """The RF shape (phase offset included) and the z gradient, piecewise constant on a uniform grid.

    ``start``: s, the sequence time at which the RF event (its delay included) starts; ``poly_z``: the z gradient
    as a piecewise polynomial of the sequence time (None: no z gradient).
    """
    t, signal = np.asarray(rf.t, dtype=float), np.asarray(rf.signal, dtype=complex)
    duration = float(rf.shape_dur)
    n = max(1, min(round(duration / raster), MAX_WAVEFORM_SAMPLES))
    dt = duration / n
    mid = (np.arange(n) + 0.5) * dt
    b1 = (np.interp(mid, t, signal.real) + 1j * np.interp(mid, t, signal.imag)) * np.exp(1j * rf.phase_offset)
    gz = np.zeros(n)
    if poly_z is not None:
        times = start + rf.delay + mid
        inside = (times >= poly_z.x[0]) & (times <= poly_z.x[-1])
        gz[inside] = poly_z(times[inside])
    return PulseWaveform(dt, torch.tensor(b1, dtype=torch.complex64), torch.tensor(gz, dtype=torch.float32),
                         min(max(float(pp.calc_rf_center(rf)[0]), 0.0), n * dt))


def _moments(polys: list[Any], times: np.ndarray) -> np.ndarray:
    """∫₀ᵗ gradient dt per axis at ``times``. Returns (len(times), 3) 1/m."""
    out = np.zeros((len(times), 3))
    for axis, poly in enumerate(polys[:3]):
        if poly is None:
            continue
        integral = poly.antiderivative()
        lo, hi = float(poly.x[0]), float(poly.x[-1])
        clipped = np.clip(times, lo, hi)
        out[:, axis] = integral(clipped) - integral(lo)
    return out


def _labels(pseq: pp.Sequence, count: int) -> list[ReadoutLabels]:
    if count == 0:
        return []
    values = pseq.evaluate_labels(evolution="adc")
    fields: dict[str, np.ndarray] = {}
    for key, name in _LABELS.items():
        if key in values:
            arr = np.atleast_1d(np.asarray(values[key], dtype=int))
            if len(arr) == count:
                fields[name] = arr
    fields["flags"] = ismrmrd_flags(values, count)  # NAV, REF, IMA: navigator and calibration lines
    return [ReadoutLabels(**{name: int(arr[i]) for name, arr in fields.items()}) for i in range(count)]


def _info(pseq: pp.Sequence, path: Path, adcs: list[tuple[np.ndarray, np.ndarray, float]],
          labels: list[ReadoutLabels]) -> SequenceInfo:
    name = _definition(pseq, "Name")
    fov = _definition(pseq, "FOV")
    matrix = _definition(pseq, "Matrix")
    samples = max((len(x[0]) for x in adcs), default=1)
    lines = len({lab.kspace_encode_step_1 for lab in labels}) if labels else 1
    if lines <= 1:
        lines = max(len(adcs), 1)
    kwargs: dict[str, Any] = {"name": str(name[0]) if name is not None else path.stem}
    if fov is not None and len(fov) >= 3:
        kwargs["fov"] = tuple(float(v) for v in fov[:3])
    if matrix is not None and len(matrix) >= 3:
        kwargs["matrix"] = tuple(int(float(v)) for v in matrix[:3])
    else:
        kwargs["matrix"] = (samples, lines, 1)
    for key, field in (("TE", "te"), ("TR", "tr"), ("FlipAngle", "flip_angle_deg")):
        value = _definition(pseq, key)
        if value is not None:
            kwargs[field] = float(value[0])
    trajectory = _definition(pseq, "Trajectory")
    if trajectory is not None and str(trajectory[0]) in ("cartesian", "radial", "spiral", "epi", "other"):
        kwargs["trajectory"] = str(trajectory[0])
    kwargs["protocol"] = {"source": str(path)}
    return SequenceInfo(**kwargs)
