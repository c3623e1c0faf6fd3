"""What a Pulseq ``.seq`` file says about each of its readouts: k-space, timing, labels and encoding.

Measured Pulseq raw data carry almost no labels; the ``.seq`` that produced them does. This module turns a
``.seq`` into one row per ADC event (in the order the scanner plays them), so that a raw-data reader can
attach trajectory, sampling times and ISMRMRD encoding counters to the measured samples.

Axes follow the Pulseq logical convention: x = readout, y = first phase encode, z = partition/slice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pypulseq as pp
import torch

from mrbridge.errors import InputError, where
from mrbridge.raw.rawdata import LABELS, RawData, RawHeader
from mrbridge.sequence.flag_labels import ismrmrd_flags
from mrbridge.sequence.import_seq import read_pulseq
from mrbridge.sequence.rf_use import complete_rf_uses, rf_integral

#: pypulseq counter labels → ISMRMRD encoding counters
COUNTER_LABELS = {
    "LIN": "kspace_encode_step_1",
    "PAR": "kspace_encode_step_2",
    "SLC": "slice",
    "ECO": "contrast",
    "PHS": "phase",
    "REP": "repetition",
    "AVG": "average",
    "SET": "set",
    "SEG": "segment",
}
#: a k-sample counts as on the Cartesian grid when it lies this many grid steps from a grid point at most
GRID_TOLERANCE = 0.02
#: k-space differences below this (1/m, a cycle per km) are taken as no step
MIN_STEP = 1e-3


@dataclass
class SeqReadouts:
    """One row per image ADC event of a ``.seq`` file (noise ADCs, labelled ``NOISE``, listed apart).

    traj: ndarray         # (readouts, samples, 3) float64, k at every sample in 1/m (x = readout)
    sample_time: ndarray  # (readouts, samples) float64, s since the sequence start
    labels: dict[str, ndarray]  # each (readouts,) int64, ISMRMRD encoding counters
    flags: ndarray        # (readouts,) int64, ISMRMRD acquisition flag bits
    num_samples: ndarray  # (readouts,) int64, samples of each ADC event
    noise_samples: ndarray  # (noise_readouts,) int64, samples of each ADC labelled NOISE
    """

    traj: np.ndarray
    sample_time: np.ndarray
    labels: dict[str, np.ndarray]
    flags: np.ndarray
    num_samples: np.ndarray
    noise_samples: np.ndarray
    dwell: float
    center_sample: int
    fov: tuple[float, float, float]
    matrix: tuple[int, int, int]
    trajectory: str
    name: str
    te: list[float] = field(default_factory=list)
    tr: list[float] = field(default_factory=list)
    flip_angle_deg: list[float] = field(default_factory=list)
    seq_labels: tuple[str, ...] = ()  # the pypulseq counter labels the sequence sets
    rf_uses_inferred: dict[str, int] = field(default_factory=dict)  # pulses per use, for a file without RF use
    fov_source: str = "file"  # "file", or how the FOV was found when [DEFINITIONS] has none

    @property
    def readouts(self) -> int:
        return int(self.num_samples.shape[0])

    def notes(self) -> dict[str, str]:
        """What was inferred rather than read from the file, for provenance and the user."""
        notes = {}
        if self.rf_uses_inferred:
            uses = ", ".join(f"{n} {use}" for use, n in self.rf_uses_inferred.items())
            notes["rf_use_inferred"] = f"{uses} (the file does not state the RF use)"
        if self.fov_source != "file":
            notes["fov_source"] = self.fov_source
        return notes

    def relabel(self, simulated: RawData) -> RawData:
        """Simulated raw data of this ``.seq`` (e.g. from ``import_seq`` + ``simulate``) with the encoding the
        scanner's raw data of it get here: ``recon`` and ``compare`` then treat both alike."""
        h = simulated.header
        return self.rawdata(simulated.kdata, noise=simulated.noise, provenance=simulated.provenance,
                            field_strength_t=h.field_strength_t, larmor_hz=h.larmor_hz)

    def twin_matrix(self) -> int:
        """In-plane matrix a built-in twin needs to show this sequence's resolution (64 without encoding)."""
        return self.matrix[1] if self.matrix[1] > 1 else self.matrix[0] if self.matrix[0] > 1 else 64

    def rawdata(self, kdata: torch.Tensor, *, noise: torch.Tensor | None = None, provenance: dict[str, str],
                **header: Any) -> RawData:
        """Samples of this sequence's readouts, measured or simulated, with the encoding the ``.seq`` defines.

        kdata: (coils, readouts, samples) complex64 in ADC order; ``header``: RawHeader fields of the source
        (field strength, vendor, …). Both the twix reader and ``simulate --seq`` build their RawData here, so
        measured and simulated data of one ``.seq`` carry identical labels, trajectory and header.
        """
        if tuple(kdata.shape[1:]) != (self.readouts, int(self.num_samples[0])):
            raise InputError(f"{self.name}: {tuple(kdata.shape[1:])} readouts × samples; the .seq has "
                             f"{self.readouts} × {int(self.num_samples[0])}")
        head = RawHeader(
            sequence_name=self.name, trajectory=self.trajectory, encoded_fov=self.fov,  # type: ignore[arg-type]
            encoded_matrix=self.matrix, recon_fov=self.fov, recon_matrix=self.matrix, te=self.te, tr=self.tr,
            flip_angle_deg=self.flip_angle_deg, coils=int(kdata.shape[0]), **header,
        )
        return RawData(
            kdata=kdata, header=head, traj=torch.from_numpy(self.traj.astype(np.float32)),
            labels={k: torch.from_numpy(v.astype(np.int64)) for k, v in self.labels.items()},
            flags=torch.from_numpy(self.flags), sample_time=torch.from_numpy(self.sample_time), noise=noise,
            dwell=self.dwell, center_sample=self.center_sample,
            provenance={**provenance, "seq_labels": ",".join(self.seq_labels), **self.notes()},
        )


def read_seq_readouts(seq_path: str | Path, *, trajectory_delay: float = 0.0) -> SeqReadouts:
    """Read a Pulseq ``.seq`` and describe each ADC event (k-space, timing, labels, header values).

    ``trajectory_delay`` (s) shifts the ADC against the gradients in ``calculate_kspace`` (scanner gradient
    delay; a few µs move the odd and even lines of an EPI apart).

    Counters come from the pypulseq label extensions (LIN, PAR, SLC, ECO, …) the sequence sets; those it
    does not set are derived: ``kspace_encode_step_1``/``_2`` from the phase-encode k of each readout (at
    its k-space centre, step = round(k·FOV) + N//2), ``contrast`` from the echo index among readouts of the
    same excitation with the same phase encode, ``slice`` from the excitation's frequency offset, and (only
    in a sequence without counter labels) ``repetition`` from the number of earlier readouts with the same
    counters.

    Raises
    ------
    InputError
        the file cannot be read by pypulseq, has no ADC events, or has ADC events of different lengths.
    """
    seq_path = Path(seq_path)
    if not seq_path.is_file():
        raise InputError(f"{seq_path}: no such .seq file")
    seq = read_pulseq(seq_path)
    rf_uses = complete_rf_uses(seq)
    blocks = [seq.get_block(b) for b in seq.block_events]
    adc_blocks = [b for b in blocks if b.adc is not None]
    if not adc_blocks:
        raise InputError(f"{where(str(seq_path), '[ADC]')}: the sequence has no ADC events; expected readouts")
    label_rows = seq.evaluate_labels(evolution="adc")
    is_noise = np.asarray(label_rows.get("NOISE", np.zeros(len(adc_blocks))), dtype=bool)
    sizes = np.array([b.adc.num_samples for b in adc_blocks], dtype=np.int64)
    image = ~is_noise
    if not image.any():
        raise InputError(f"{where(str(seq_path), '[ADC]')}: every ADC event is labelled NOISE; expected readouts")
    n_samples = sizes[image]
    if np.any(n_samples != n_samples[0]):
        raise InputError(
            f"{where(str(seq_path), '[ADC]')}: ADC events have {sorted(set(n_samples.tolist()))} samples; "
            "readouts of different lengths (e.g. navigators or calibration lines of another size) cannot be "
            "reconstructed together here: expected one length for all readouts"
        )
    k_adc, _, t_exc, _, t_adc = seq.calculate_kspace(trajectory_delay=trajectory_delay)
    n_s = int(n_samples[0])
    offsets = np.concatenate([[0], np.cumsum(sizes)])
    take = np.concatenate([np.arange(offsets[i], offsets[i + 1]) for i in np.flatnonzero(image)])
    traj = np.ascontiguousarray(k_adc[:, take].T.reshape(-1, n_s, 3))
    times = t_adc[take].reshape(-1, n_s)

    fov, fov_source = _fov(seq, seq_path, traj, blocks)
    matrix = _matrix(seq, traj, fov)
    center = _center_sample(traj)
    rf = [b.rf for b in blocks if b.rf is not None and b.rf.use == "excitation"]
    exc_index = np.searchsorted(np.asarray(t_exc, dtype=np.float64), times[:, 0]) - 1
    used = tuple(k for k in COUNTER_LABELS if k in label_rows)
    _, fp_exc, _, _ = seq.rf_times()
    labels = _derive_labels(traj[:, center], exc_index, fp_exc[0], fov, matrix)
    if used:  # the sequence's own counters win; recurrence is not a repetition when the sequence labels
        del labels["repetition"]
        labels.update({COUNTER_LABELS[k]: np.asarray(label_rows[k], dtype=np.int64)[image] for k in used})
    for name in LABELS:
        labels.setdefault(name, np.zeros(len(traj), dtype=np.int64))
    flags = ismrmrd_flags(label_rows, len(adc_blocks))[image]  # NAV, REF, IMA (mrbridge.sequence.flag_labels)
    return SeqReadouts(
        traj=traj,
        sample_time=times,
        labels=labels,
        flags=flags,
        num_samples=n_samples,
        noise_samples=sizes[is_noise],
        dwell=float(adc_blocks[int(np.flatnonzero(image)[0])].adc.dwell),
        center_sample=center,
        fov=fov,
        matrix=matrix,
        trajectory=_classify(traj, fov, exc_index),
        name=str(seq.definitions.get("Name", seq_path.stem)),
        te=_te(times[:, center], traj[:, center], exc_index, np.asarray(t_exc), labels["contrast"]),
        tr=_tr(np.asarray(t_exc)),
        flip_angle_deg=sorted({round(math.degrees(2 * math.pi * abs(rf_integral(r))), 3) for r in rf}),
        seq_labels=used,
        rf_uses_inferred=rf_uses,
        fov_source=fov_source,
    )




def _fov(
    seq: pp.Sequence, seq_path: Path, traj: np.ndarray, blocks: list[Any]
) -> tuple[tuple[float, float, float], str]:
    """FOV (x, y, z) in m and where it came from: ``[DEFINITIONS] FOV`` (values > 1 are taken as mm), else
    1/(k-space step) per encoded axis; a 2-D file's z is its slice thickness (see ``_slice_thickness``)."""
    raw = seq.definitions.get("FOV")
    if raw is None:
        return _fov_from_kspace(traj, _slice_thickness(blocks))
    values = np.atleast_1d(np.asarray(raw, dtype=np.float64))
    if values.size < 2 or np.any(values <= 0):
        raise InputError(f"{where(str(seq_path), '[DEFINITIONS] FOV')}: {raw!r}; expected 2 or 3 positive values")
    if np.any(values > 1):
        values = values * 1e-3
    z = float(values[2]) if values.size > 2 else float(values[1])
    return (float(values[0]), float(values[1]), z), "file"


def _fov_from_kspace(traj: np.ndarray, thickness: float | None) -> tuple[tuple[float, float, float], str]:
    """FOV = 1/Δk per axis: Δk along x between neighbouring samples, along y and z between distinct lines; an
    axis without encoding takes ``thickness`` (z) or the FOV of an encoded axis (1 m when none is encoded)."""
    steps: list[float | None] = []
    kx = np.abs(np.diff(traj[..., 0], axis=1))
    steps.append(float(np.median(kx[kx > MIN_STEP])) if np.any(kx > MIN_STEP) else None)
    centre = traj[:, traj.shape[1] // 2]
    for axis in (1, 2):
        levels = np.unique(np.round(centre[:, axis] / MIN_STEP) * MIN_STEP)
        gaps = np.diff(levels)
        gaps = gaps[gaps > MIN_STEP]
        if gaps.size:  # the common gap, refined over the whole span of lines
            span = float(levels[-1] - levels[0])
            steps.append(span / round(span / float(np.median(gaps))))
        else:
            steps.append(None)
    if all(s is None for s in steps):
        return (1.0, 1.0, 1.0), "none: no spatial encoding"
    known = [1 / s for s in steps if s is not None]
    fov = [1 / s if s is not None else known[0] for s in steps]
    z_from = "k-space step"
    if steps[2] is None:
        fov[2], z_from = (thickness, "slice thickness") if thickness else (known[0], "not encoded, taken as x")
    shown = " x ".join(f"{f * 1e3:.1f}" for f in fov)
    return (fov[0], fov[1], fov[2]), f"k-space step ({shown} mm, z {z_from}; [DEFINITIONS] has no FOV)"


def _slice_thickness(blocks: list[Any]) -> float | None:
    """Thickness (m) the first excitation selects: its RF bandwidth (FWHM of the spectrum, pypulseq) over its z
    gradient; None without a slice-select trapezoid."""
    for b in blocks:
        if b.rf is not None and b.rf.use == "excitation":
            gz = getattr(b, "gz", None)
            if gz is None or getattr(gz, "type", "") != "trap" or gz.amplitude == 0:
                return None
            return float(np.ravel(pp.calc_rf_bandwidth(b.rf))[0]) / abs(float(gz.amplitude))  # FWHM, Hz / (Hz/m)
    return None


def _matrix(seq: pp.Sequence, traj: np.ndarray, fov: tuple[float, float, float]) -> tuple[int, int, int]:
    """Matrix (x, y, z): ``[DEFINITIONS]`` matrix/Nx/Ny/Nz where present, else 2·ceil(max|k|·FOV)."""
    defs = seq.definitions
    given: list[int | None] = [None, None, None]
    if "matrix" in defs or "Matrix" in defs:
        values = np.atleast_1d(np.asarray(defs.get("matrix", defs.get("Matrix")), dtype=np.float64))
        for i, v in enumerate(values[:3]):
            given[i] = round(float(v))
    for i, key in enumerate(("Nx", "Ny", "Nz")):
        if key in defs:
            given[i] = round(float(np.asarray(defs[key]).ravel()[0]))
    extent = np.abs(traj).reshape(-1, 3).max(axis=0) * np.asarray(fov)
    inferred = [max(1, 2 * math.ceil(e - GRID_TOLERANCE)) if e > GRID_TOLERANCE else 1 for e in extent]
    return tuple(g if g is not None else n for g, n in zip(given, inferred, strict=True))  # type: ignore[return-value]


def _center_sample(traj: np.ndarray) -> int:
    """The sample nearest k_x = 0, as the most common choice over readouts (ties → the later sample)."""
    kx = traj[..., 0]
    n_s = kx.shape[1]
    pos = np.arange(n_s)
    picks = []
    for row in kx:
        order = np.argsort(row)
        zero = float(np.interp(0.0, row[order], pos[order])) if row[order][0] <= 0 <= row[order][-1] else n_s / 2
        picks.append(math.floor(zero + 0.5) if row[-1] >= row[0] else math.ceil(zero - 0.5))
    values, counts = np.unique(np.clip(picks, 0, n_s - 1), return_counts=True)
    return int(values[np.argmax(counts)])


def _reversed(traj: np.ndarray) -> np.ndarray:
    """(readouts,) bool: readouts that run against the direction of the first readout along x."""
    direction = np.sign(traj[:, -1, 0] - traj[:, 0, 0])
    return direction == -direction[0]


def _derive_labels(
    k_center: np.ndarray,
    exc_index: np.ndarray,
    exc_freq: np.ndarray,
    fov: tuple[float, float, float],
    matrix: tuple[int, int, int],
) -> dict[str, np.ndarray]:
    """Encoding counters of an unlabelled sequence from its k-space (see ``read_seq_readouts``)."""
    n = len(k_center)
    step1 = _encode_steps(k_center[:, 1] * fov[1], matrix[1])
    if matrix[2] > 1:
        step2 = _encode_steps(k_center[:, 2] * fov[2], matrix[2])
    else:
        step2 = np.zeros(n, dtype=np.int64)
    # one slice per distinct excitation frequency (Hz), readouts before any excitation in slice 0
    freq = np.concatenate([[0], np.round(np.asarray(exc_freq, dtype=np.float64))])
    slice_of_exc = np.unique(freq[1:], return_inverse=True)[1] if freq.size > 1 else np.zeros(0, dtype=np.int64)
    slc = np.concatenate([[0], slice_of_exc]).astype(np.int64)[exc_index + 1]
    contrast = np.zeros(n, dtype=np.int64)
    repetition = np.zeros(n, dtype=np.int64)
    echoes: dict[tuple[int, int, int], int] = {}
    seen: dict[tuple[int, int, int, int], int] = {}
    for i in range(n):
        key = (int(exc_index[i]), int(step1[i]), int(step2[i]))
        contrast[i] = echoes.get(key, 0)
        echoes[key] = contrast[i] + 1
        counters = (int(step1[i]), int(step2[i]), int(contrast[i]), int(slc[i]))
        repetition[i] = seen.get(counters, 0)
        seen[counters] = repetition[i] + 1
    return {
        "kspace_encode_step_1": step1,
        "kspace_encode_step_2": step2,
        "contrast": contrast,
        "slice": np.asarray(slc, dtype=np.int64),
        "repetition": repetition,
    }


def _encode_steps(k_steps: np.ndarray, n: int) -> np.ndarray:
    """(readouts,) int64 encoding steps round(k·FOV) + n//2 of phase-encode positions in k-steps.

    Lines that span n steps but sit one off the centred grid (e.g. −n/2+1 … n/2, as a refocusing pulse leaves
    them) are moved onto it: a whole k-step is a linear phase across the FOV, the magnitude is unchanged.
    """
    steps = np.round(k_steps).astype(np.int64) + n // 2
    lo, hi = int(steps.min()), int(steps.max())
    if hi - lo < n and (lo < 0 or hi >= n):
        steps = steps - (lo if lo < 0 else hi - n + 1)
    return np.clip(steps, 0, None)


def _classify(traj: np.ndarray, fov: tuple[float, float, float], exc_index: np.ndarray) -> str:
    """Trajectory type of the readouts.

    "cartesian": every sample on a grid of step 1/FOV (up to one constant shift per axis, which only adds a
    phase ramp to the image) and every readout samples the same k_x; "epi": several readouts per excitation
    alternating along x; else "other".
    """
    if np.abs(traj).max() < MIN_STEP:
        return "other"  # no spatial encoding: an FID
    steps = traj * np.asarray(fov)
    frac = steps - np.round(steps)
    shift = np.angle(np.exp(2j * np.pi * frac.reshape(-1, 3)).mean(axis=0)) / (2 * np.pi)
    off_grid = np.abs((steps - shift) - np.round(steps - shift)).max()
    same_readout = np.abs(steps[..., 0] - steps[:1, :, 0]).max()
    if off_grid < GRID_TOLERANCE and same_readout < GRID_TOLERANCE:
        return "cartesian"
    _, per_exc = np.unique(exc_index, return_counts=True)
    if per_exc.max() > 1 and _reversed(traj).any():
        return "epi"
    return "other"


def _te(
    t_center: np.ndarray, k_center: np.ndarray, exc_index: np.ndarray, t_exc: np.ndarray, contrast: np.ndarray
) -> list[float]:
    """Echo time(s) in s, one per contrast: centre-sample time − excitation time of the readout(s) nearest k = 0."""
    valid = exc_index >= 0
    if not valid.any() or t_exc.size == 0:
        return []
    delay = t_center - t_exc[np.clip(exc_index, 0, None)]
    radius = np.linalg.norm(k_center, axis=1)
    te = []
    for c in np.unique(contrast[valid]):
        mine = valid & (contrast == c)
        nearest = mine & (radius <= radius[mine].min() + 1e-6)
        te.append(round(float(np.median(delay[nearest])), 7))
    return te


def _tr(t_exc: np.ndarray) -> list[float]:
    """Repetition time in s: the most common interval between excitations."""
    if t_exc.size < 2:
        return []
    gaps, counts = np.unique(np.round(np.diff(t_exc), 7), return_counts=True)
    return [float(gaps[np.argmax(counts)])]
