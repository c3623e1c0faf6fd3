"""Measured training data: fully sampled Cartesian scans that a task's recon (and its sampling mask) learns from by
retrospective undersampling, real multi-coil data instead of simulations (``data: {kind: raw, files: [...]}``).

Scan ``i`` is ``data.files[i]``, an ISMRMRD ``.h5`` or a Siemens twix ``.dat`` read with the Pulseq ``.seq`` of the
same name beside it (paths relative to the task file); the last ``data.validation`` scans validate. Each must be a
fully sampled 2D scan on the protocol's grid: matrix N × N, every one of its N phase-encoding lines once. All are
read when the run starts, so a bad file fails before any training.

The recon sees a scan with the protocol's ACS lines flagged, weighted line by line by the sampling mask (a line
of weight 0 is not acquired: the scan undersampled retrospectively); the target is the same scan with every line
calibrating, through the same recon without its network (its SENSE image). ``data.noise`` adds complex Gaussian
noise of σ = noise·max|k| of the scan on each of the real and imaginary parts, as simulations get it (on top
of the scan's own).
"""

from __future__ import annotations

from dataclasses import replace

import torch

from mrbridge.errors import InputError
from mrbridge.optimize.task import ResolvedTask
from mrbridge.raw.rawdata import RawData
from mrbridge.raw.read import read_raw
from mrbridge.sequence.undersampling import ACS_FLAGS, acs_range
from mrbridge.sim.common import complex_noise


class MeasuredSet:
    """The scans of a task's ``data`` section of kind ``raw``, held on ``device`` (moved there once, not every step).

    train: indices of the training scans; validation: indices of the validation scans (may be empty).
    """

    def __init__(self, task: ResolvedTask, device: torch.device | str = "cpu") -> None:
        spec, n = task.task.data, task.protocol.matrix
        assert task.undersampling is not None  # the task's checks ask for a sampling parameter, hence this
        self.noise = spec.noise
        self.scans = [self._read(task, i, name).to(device) for i, name in enumerate(spec.files)]
        n_train = len(self.scans) - spec.validation
        self.train, self.validation = list(range(n_train)), list(range(n_train, len(self.scans)))
        acs = set(acs_range(n, task.undersampling.acs_lines))
        self._acs_flags = [torch.tensor([ACS_FLAGS if int(v) in acs else 0 for v in s.labels["kspace_encode_step_1"]],
                                        dtype=torch.int64, device=device) for s in self.scans]

    @staticmethod
    def _read(task: ResolvedTask, index: int, name: str) -> RawData:
        path = task.base / name
        where = f"{task.source}: field 'data.files[{index}]' = {name!r}"
        try:
            raw = read_raw(path, path.with_suffix(".seq") if path.suffix.lower() == ".dat" else None)
        except InputError as err:
            raise InputError(f"{where}: {err}") from None
        n = task.protocol.matrix
        lines = raw.labels["kspace_encode_step_1"]
        nx, ny, nz = raw.header.encoded_matrix
        if (nx, ny, nz) != (n, n, 1) or sorted(int(v) for v in lines) != list(range(n)):
            raise InputError(f"{where}: a {nx} × {ny} × {nz} scan of {raw.readouts} readouts on "
                             f"{len(set(int(v) for v in lines))} distinct phase-encoding lines; expected a fully "
                             f"sampled 2D scan on the protocol's {n} × {n} grid, each of its {n} lines once")
        return raw

    def scan(self, index: int, seed: int) -> RawData:
        """Scan ``index`` as an accelerated acquisition sees it: ACS lines flagged, plus ``noise`` seeded by ``seed``
        (the sampling mask's line weights apply in the recon)."""
        raw = self.scans[index]
        return replace(raw, kdata=self._noisy(raw.kdata, seed), flags=self._acs_flags[index])

    def fully_sampled(self, index: int) -> RawData:
        """Scan ``index`` with every line calibrating and imaging (the target's data)."""
        raw = self.scans[index]
        return replace(raw, flags=torch.full((raw.readouts,), ACS_FLAGS, dtype=torch.int64, device=raw.kdata.device))

    def _noisy(self, kdata: torch.Tensor, seed: int) -> torch.Tensor:
        if not self.noise:
            return kdata
        sigma = self.noise * float(kdata.abs().max())
        return kdata + complex_noise(tuple(kdata.shape), sigma, torch.Generator().manual_seed(seed), like=kdata)
