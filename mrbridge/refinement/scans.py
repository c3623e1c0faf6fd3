"""The measured scans a refinement fits: each (raw data, ``.seq``) pair, windowed to the k-space a twin grid holds.

A twin of N × N voxels over the field of view represents k-space up to its Nyquist limit, |k_x|, |k_y| < N/(2·FOV).
Measured samples beyond it carry detail the twin cannot hold, so each scan is fitted only in that window: its
``.seq`` is imported (the same import ``simulate --seq`` uses), its ADC is switched off outside the window, and the
measured samples inside it are kept, in ADC order. Simulated and measured samples then pair one to one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mrbridge.errors import InputError
from mrbridge.raw.rawdata import RawData
from mrbridge.raw.seqreadouts import SeqReadouts, read_seq_readouts
from mrbridge.recon.pipeline import prewhiten
from mrbridge.report.bandlimit import in_window
from mrbridge.sequence.import_seq import import_seq
from mrbridge.sequence.model import PulseUsage, Repetition, Sequence

#: scans of one object share their field of view within this fraction (x, y) and slice thickness within 5 %
FOV_TOLERANCE = 0.01
THICKNESS_TOLERANCE = 0.05


@dataclass(frozen=True)
class Grid:
    """The twin's grid: ``matrix`` × ``matrix`` voxels over ``fov`` (x, y, z) m; one slice (z = thickness)."""

    matrix: int
    fov: tuple[float, float, float]

    def window(self, traj: np.ndarray) -> np.ndarray:
        """Samples this grid can represent: k_x, k_y in [−N/2, N/2) steps of 1/FOV, k_z within half a step.

        traj: (readouts, samples, 3) 1/m.  Returns (readouts, samples) bool.
        """
        steps = traj * np.asarray(self.fov)
        return in_window(steps[..., :2], self.matrix) & (np.abs(steps[..., 2]) < 0.5)


@dataclass
class Scan:
    """One measurement to fit, windowed to the twin's grid.

    kdata: Tensor  # (coils, K) complex64, the measured samples inside the window, in ADC order (prewhitened)
    traj: Tensor   # (K, 3) float32 1/m, their k-space positions
    contrast: Tensor  # (K,) int64, the ISMRMRD contrast (echo) index of each sample
    window: Tensor  # (readouts, samples) bool, which samples of the raw data were kept
    sequence: the imported ``.seq`` with its ADC on inside the window only (what is simulated)
    """

    name: str
    meas_path: Path
    seq_path: Path
    encoding: SeqReadouts
    sequence: Sequence
    window: torch.Tensor
    kdata: torch.Tensor
    traj: torch.Tensor
    contrast: torch.Tensor

    @property
    def echo_times(self) -> list[float]:
        """s, one per contrast."""
        return list(self.encoding.te)

    def flip_angles_deg(self) -> set[float]:
        """Distinct excitation flip angles of the sequence (0.1° resolution)."""
        return {round(math.degrees(abs(float(rep.pulse.angle))), 1) for rep in self.sequence
                if rep.pulse.usage == PulseUsage.EXCITATION and float(rep.pulse.angle) != 0}

    def has(self, usage: PulseUsage) -> bool:
        return any(rep.pulse.usage == usage for rep in self.sequence)


def load_scan(meas: str | Path, seq: str | Path) -> tuple[RawData, SeqReadouts]:
    """The measured raw data (twix ``.dat`` with its ``.seq``, or ISMRMRD ``.h5``) and the encoding of ``seq``."""
    meas, seq = Path(meas), Path(seq)
    if seq.suffix.lower() != ".seq":
        raise InputError(f"--seq {seq}: expected the Pulseq .seq file that was run")
    encoding = read_seq_readouts(seq)
    raw = RawData.from_file(meas, seq)
    expected = (encoding.readouts, int(encoding.num_samples[0]))
    if tuple(raw.kdata.shape[1:]) != expected:
        raise InputError(f"--meas {meas}: {raw.readouts} readouts × {raw.samples} samples, but {seq.name} plays "
                         f"{expected[0]} × {expected[1]}: the raw data were not measured with this .seq")
    return raw, encoding


def default_grid(encoding: SeqReadouts, matrix: int | None) -> Grid:
    """The twin grid for a scan: its field of view at ``matrix`` (None: the scan's own in-plane matrix)."""
    own = max(encoding.matrix[0], encoding.matrix[1])
    n = own if matrix is None else matrix
    if n < 8 or n % 2:
        raise InputError(f"--matrix {n}: expected an even number ≥ 8")
    if n > own:
        raise InputError(f"--matrix {n}: the scans encode a {own}² matrix; a finer twin than the data cannot be "
                         f"fitted (expected ≤ {own})")
    return Grid(n, encoding.fov)


def window_scan(meas: str | Path, seq: str | Path, raw: RawData, encoding: SeqReadouts, grid: Grid) -> Scan:
    """``raw`` (measured with ``seq``) restricted to what ``grid`` can represent."""
    check_geometry(Path(seq), encoding, grid)
    window = grid.window(encoding.traj)
    if not window.any():
        raise InputError(f"--seq {seq}: no sample lies inside the twin's k-space window ({grid.matrix}² over "
                         f"{1e3 * grid.fov[0]:.4g} mm)")
    kdata = raw.kdata if raw.noise is None else prewhiten(raw.kdata, raw.noise)
    mask = torch.from_numpy(window)
    contrast = raw.labels.get("contrast", torch.zeros(raw.readouts, dtype=torch.int64))
    return Scan(
        name=Path(meas).name, meas_path=Path(meas), seq_path=Path(seq), encoding=encoding,
        sequence=windowed(import_seq(seq), mask.reshape(-1)), window=mask,
        kdata=kdata[:, mask].to(torch.complex64), traj=torch.from_numpy(encoding.traj[window].astype(np.float32)),
        contrast=contrast[:, None].expand(-1, raw.samples)[mask],
    )


def windowed(seq: Sequence, keep: torch.Tensor) -> Sequence:
    """``seq`` with its ADC samples (in order) kept where ``keep`` (adc_samples,) is true; timing unchanged."""
    if keep.numel() != seq.adc_count:
        raise InputError(f"sequence '{seq.info.name}': {seq.adc_count} ADC samples, window of {keep.numel()}")
    reps, start = [], 0
    for rep in seq:
        use = rep.adc_usage.clone()
        n = int(use.sum())
        use[rep.adc_usage] = keep[start:start + n].to(use.device)
        start += n
        reps.append(Repetition(rep.pulse, rep.event_time, rep.gradm, use, rep.adc_phase))
    return Sequence(reps, seq.info.model_copy(deep=True))


def check_geometry(seq: Path, encoding: SeqReadouts, grid: Grid) -> None:
    """Refuse a scan whose field of view or slice differs from the twin grid's (another object or position)."""
    fov, ref = encoding.fov, grid.fov
    for axis, name in ((0, "x"), (1, "y")):
        if abs(fov[axis] - ref[axis]) > FOV_TOLERANCE * ref[axis]:
            raise InputError(f"--seq {seq}: field of view {name} = {1e3 * fov[axis]:.4g} mm, but the twin's is "
                             f"{1e3 * ref[axis]:.4g} mm: scans of one object need one geometry")
    if abs(fov[2] - ref[2]) > THICKNESS_TOLERANCE * ref[2]:
        raise InputError(f"--seq {seq}: slice thickness {1e3 * fov[2]:.4g} mm, but the twin's is "
                         f"{1e3 * ref[2]:.4g} mm: scans of one object need one geometry")
