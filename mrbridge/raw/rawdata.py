"""RawData: what a simulator produces and a scanner returns, in one type that recon consumes."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

#: ISMRMRD encoding counters kept per readout (names as in ``ismrmrd.EncodingCounters``)
LABELS = (
    "kspace_encode_step_1",
    "kspace_encode_step_2",
    "average",
    "slice",
    "contrast",
    "phase",
    "repetition",
    "set",
    "segment",
)


class RawHeader(BaseModel):
    """The parts of the ISMRMRD XML header mrbridge reads and writes (SI units)."""

    model_config = ConfigDict(extra="forbid")

    sequence_name: str = "mrbridge"
    trajectory: Literal["cartesian", "radial", "spiral", "epi", "other"] = "cartesian"
    encoded_fov: tuple[float, float, float] = (0.2, 0.2, 0.005)  # m (x, y, z)
    encoded_matrix: tuple[int, int, int] = (64, 64, 1)  # (x, y, z)
    recon_fov: tuple[float, float, float] = (0.2, 0.2, 0.005)  # m
    recon_matrix: tuple[int, int, int] = (64, 64, 1)
    field_strength_t: float = 3.0
    larmor_hz: float = 127.7e6
    te: list[float] = Field(default_factory=list)  # s
    tr: list[float] = Field(default_factory=list)  # s
    flip_angle_deg: list[float] = Field(default_factory=list)
    coils: int = 1
    system_vendor: str = "mrbridge"
    system_model: str = "simulation"
    xml: str | None = None  # the full original XML header when read from a file (kept for pass-through)


@dataclass
class RawData:
    """Complex samples with their trajectory, labels and noise scan.

    kdata: Tensor        # (coils, readouts, samples) complex64
    traj: Tensor | None  # (readouts, samples, 3) 1/m, k-space position of every sample (None: Cartesian labels)
    labels: dict[str, Tensor]  # each (readouts,) int64, ISMRMRD encoding counters (see LABELS)
    flags: Tensor        # (readouts,) int64, ISMRMRD acquisition flags
    sample_time: Tensor | None  # (readouts, samples) s since the sequence start
    noise: Tensor | None # (coils, noise_samples) complex64, noise-only samples for prewhitening
    dwell: float         # s between samples
    center_sample: int   # index of the sample at k-space centre along the readout
    """

    kdata: torch.Tensor
    header: RawHeader = field(default_factory=RawHeader)
    traj: torch.Tensor | None = None
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    flags: torch.Tensor | None = None
    sample_time: torch.Tensor | None = None
    noise: torch.Tensor | None = None
    dwell: float = 1e-5
    center_sample: int = 0
    provenance: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kdata.dim() != 3:
            raise ValueError(f"kdata must be (coils, readouts, samples), got shape {tuple(self.kdata.shape)}")
        _, n_ro, n_s = self.kdata.shape
        for name in LABELS:
            self.labels.setdefault(name, torch.zeros(n_ro, dtype=torch.int64))
            if self.labels[name].shape != (n_ro,):
                raise ValueError(f"label '{name}' must be ({n_ro},), got {tuple(self.labels[name].shape)}")
        if self.flags is None:
            self.flags = torch.zeros(n_ro, dtype=torch.int64)
        if self.traj is not None and tuple(self.traj.shape) != (n_ro, n_s, 3):
            raise ValueError(f"traj must be ({n_ro}, {n_s}, 3), got {tuple(self.traj.shape)}")

    @property
    def coils(self) -> int:
        return int(self.kdata.shape[0])

    @property
    def readouts(self) -> int:
        return int(self.kdata.shape[1])

    @property
    def samples(self) -> int:
        return int(self.kdata.shape[2])

    @classmethod
    def from_file(cls, path: str | Path, seq: str | Path | None = None, *, trajectory_delay: float = 0.0) -> RawData:
        """Read raw data: ISMRMRD ``.h5`` as is, or a Siemens twix ``.dat`` with the Pulseq ``seq`` that ran it.

        The twix readouts are ordered, labelled and given their trajectory from the ``.seq``, exactly as the
        raw data ``mrbridge simulate --seq`` writes for the same file, so both reconstruct through one
        ``mrbridge.recon.pipeline.Recon``. ``trajectory_delay`` (s) shifts a twix trajectory against the
        ADC (gradient delay). The same as ``mrbridge.raw.read.read_raw``.

        Returns
        -------
        RawData
            ``kdata`` (coils, readouts, samples) complex64.
        """
        from mrbridge.raw.read import read_raw

        return read_raw(path, seq, trajectory_delay=trajectory_delay)

    def with_kdata(self, kdata: torch.Tensor) -> RawData:
        """The same acquisition with other samples (e.g. noise added, coils combined)."""
        return replace(self, kdata=kdata)

    def to(self, device: torch.device | str) -> RawData:
        """A copy with every tensor on ``device``."""

        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(device)

        return replace(
            self,
            kdata=self.kdata.to(device),
            traj=move(self.traj),
            labels={k: v.to(device) for k, v in self.labels.items()},
            flags=move(self.flags),
            sample_time=move(self.sample_time),
            noise=move(self.noise),
        )
