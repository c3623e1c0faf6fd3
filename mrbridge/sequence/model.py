"""The Sequence: repetitions of (instantaneous RF pulse, then events).

Time model (shared by every simulator, the exporter and the importer):

* A repetition starts with its RF pulse, played instantaneously at the repetition's start.
* Then its events follow, each of duration ``event_time[e]``. During event ``e`` the magnetisation relaxes and
  precesses (B0, T2') for ``event_time[e]`` and is dephased by the gradient moment ``gradm[e]`` (1/m, the
  time integral of γ·G, as Pulseq areas).
* An event with ``adc_usage[e]`` true records one ADC sample *at its end*, demodulated by ``adc_phase[e]``.
  A maximal run of consecutive ADC events is one readout (one ISMRMRD acquisition); each readout carries
  its :class:`ReadoutLabels`.

Sign conventions (DESIGN.md): a spin at r with transverse magnetisation m contributes m·exp(−i2π k·r) after
the moment k; an RF pulse of angle α and phase φ rotates right-handedly about (cos φ, sin φ, 0), so that
Mz = 1 becomes M+ = −i·e^{iφ}·sin α; the ADC returns Σ M+ · e^{−iφ_adc}.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from mrbridge.atomic import atomic_write_text
from mrbridge.errors import InputError

FORMAT_VERSION = 1


class PulseUsage(StrEnum):
    """What an RF pulse is for; the nominal trajectory and the exporter depend on it."""

    EXCITATION = "excitation"
    REFOCUSING = "refocusing"
    INVERSION = "inversion"
    OTHER = "other"


class PulseShape(BaseModel):
    """Shape the exporter gives the pulse (by default MRzero's: a 1-ms slice-selective sinc of time-bandwidth
    4); simulators treat every pulse as instantaneous."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    kind: Literal["block", "sinc"] = "sinc"
    duration: float = Field(default=1e-3, gt=0, description="s")
    time_bandwidth: float = Field(default=4.0, gt=0)


class ReadoutLabels(BaseModel):
    """ISMRMRD encoding counters of one readout (names as in ``ismrmrd.EncodingCounters``) and its role flags."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    kspace_encode_step_1: int = 0
    kspace_encode_step_2: int = 0
    average: int = 0
    slice: int = 0
    contrast: int = 0
    phase: int = 0
    repetition: int = 0
    set: int = 0
    segment: int = 0
    flags: int = 0  # ISMRMRD acquisition flag bits of the readout's role, e.g. phase-correction (navigator) lines


class SequenceInfo(BaseModel):
    """What recon and the ISMRMRD header need to know about a sequence (SI units)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = "sequence"
    fov: tuple[float, float, float] = (0.2, 0.2, 0.005)  # m (x, y, z); z is the slice thickness in 2D
    matrix: tuple[int, int, int] = (64, 64, 1)  # (x, y, z) encoded matrix
    trajectory: Literal["cartesian", "radial", "spiral", "epi", "other"] = "cartesian"
    te: float = 0.0  # s, echo time of the first contrast
    tr: float = 0.0  # s
    flip_angle_deg: float = 0.0
    contrasts: int = 1
    protocol: dict[str, Any] = Field(default_factory=dict)  # the builder's parameters, for provenance


@dataclass
class PulseWaveform:
    """The RF pulse as played (for slice-profile simulation), piecewise constant on a uniform grid.

    dt: float      # s, sample spacing; sample i covers [i·dt, (i+1)·dt) from the pulse start
    b1: Tensor     # (n,) complex64 Hz (Pulseq RF units), the RF field including the pulse's phase offset
    gz: Tensor     # (n,) Hz/m, slice (z) gradient during each sample
    centre: float  # s from the pulse start: the time of the instantaneous pulse
    """

    dt: float
    b1: torch.Tensor
    gz: torch.Tensor
    centre: float

    def __post_init__(self) -> None:
        n = self.b1.shape[0]
        if self.b1.dim() != 1 or self.gz.shape != (n,) or n == 0:
            raise ValueError(f"waveform b1 and gz must both be (n,) with n > 0, got {tuple(self.b1.shape)} "
                             f"and {tuple(self.gz.shape)}")
        if not (self.dt > 0 and 0 <= self.centre <= n * self.dt):
            raise ValueError(f"waveform dt = {self.dt} must be > 0 and centre = {self.centre} within the pulse")

    def to(self, device: torch.device | str | None = None) -> PulseWaveform:
        return PulseWaveform(self.dt, self.b1.to(device), self.gz.to(device), self.centre)

    def to_dict(self) -> dict[str, Any]:
        b1 = self.b1.detach().cpu()
        return {"dt": self.dt, "centre": self.centre, "b1_real": b1.real.tolist(), "b1_imag": b1.imag.tolist(),
                "gz": self.gz.detach().cpu().tolist()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PulseWaveform:
        b1 = torch.complex(_tensor(data["b1_real"], torch.float32), _tensor(data["b1_imag"], torch.float32))
        return cls(float(data["dt"]), b1, _tensor(data["gz"], torch.float32), float(data["centre"]))


@dataclass
class Pulse:
    """An instantaneous RF rotation.

    angle: Tensor  # () rad, nominal flip angle (scaled by B1+ in simulation)
    phase: Tensor  # () rad
    waveform: the pulse as played, when known (imported files); used only by slice-profile simulation
    """

    angle: torch.Tensor
    phase: torch.Tensor
    usage: PulseUsage = PulseUsage.EXCITATION
    shape: PulseShape = field(default_factory=PulseShape)
    waveform: PulseWaveform | None = None


@dataclass
class Repetition:
    """One RF pulse followed by events.

    event_time: Tensor  # (events,) s, duration of each event
    gradm: Tensor       # (events, 3) 1/m, gradient moment (x, y, z) played during each event
    adc_usage: Tensor   # (events,) bool, event ends with an ADC sample
    adc_phase: Tensor   # (events,) rad, receiver phase of each sample
    readouts: one ReadoutLabels per run of consecutive ADC events
    """

    pulse: Pulse
    event_time: torch.Tensor
    gradm: torch.Tensor
    adc_usage: torch.Tensor
    adc_phase: torch.Tensor
    readouts: list[ReadoutLabels] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = self.event_time.shape[0]
        if self.event_time.dim() != 1 or self.gradm.shape != (n, 3):
            raise ValueError(f"gradm must be (events, 3) = ({n}, 3), got {tuple(self.gradm.shape)}")
        if self.adc_usage.shape != (n,) or self.adc_phase.shape != (n,):
            raise ValueError(f"adc_usage and adc_phase must be ({n},)")
        runs = len(self.readout_spans())
        if not self.readouts and runs:
            self.readouts = [ReadoutLabels() for _ in range(runs)]
        if len(self.readouts) != runs:
            raise ValueError(f"{runs} readouts (ADC runs) but {len(self.readouts)} readout labels")

    @property
    def event_count(self) -> int:
        return int(self.event_time.shape[0])

    def readout_spans(self) -> list[tuple[int, int]]:
        """(first event, end event) of each run of consecutive ADC events."""
        return runs(self.adc_usage.tolist())

    @property
    def duration(self) -> torch.Tensor:
        """() s."""
        return self.event_time.sum()


def _tensor(values: Any, dtype: torch.dtype) -> torch.Tensor:
    return torch.tensor(values, dtype=dtype)


def runs(flags: list[bool]) -> list[tuple[int, int]]:
    """(first, end) index of each run of consecutive true flags: [F, T, T, F, T] → [(1, 3), (4, 5)]."""
    spans, start = [], None
    for i, on in enumerate([*flags, False]):
        if on and start is None:
            start = i
        elif not on and start is not None:
            spans.append((start, i))
            start = None
    return spans


@dataclass
class Sequence:
    """Repetitions of (RF pulse, events), with the metadata recon needs. Any tensor may require grad."""

    repetitions: list[Repetition]
    info: SequenceInfo = field(default_factory=SequenceInfo)

    def __len__(self) -> int:
        return len(self.repetitions)

    def __iter__(self) -> Iterator[Repetition]:
        return iter(self.repetitions)

    def __getitem__(self, index: int) -> Repetition:
        return self.repetitions[index]

    # ---- derived quantities -------------------------------------------------------------------------
    @property
    def adc_count(self) -> int:
        return int(sum(int(rep.adc_usage.sum()) for rep in self.repetitions))

    def readouts(self) -> list[tuple[int, int, int, ReadoutLabels]]:
        """Every readout in acquisition order as (repetition, first event, end event, labels)."""
        out = []
        for r, rep in enumerate(self.repetitions):
            for (start, end), labels in zip(rep.readout_spans(), rep.readouts, strict=True):
                out.append((r, start, end, labels))
        return out

    def samples_per_readout(self) -> int:
        """Common sample count of all readouts; raises InputError when they differ."""
        counts = {end - start for _, start, end, _ in self.readouts()}
        if len(counts) != 1:
            raise InputError(f"sequence '{self.info.name}': readouts have different sample counts {sorted(counts)}")
        return counts.pop()

    @property
    def duration(self) -> torch.Tensor:
        """() s, total duration."""
        return torch.stack([rep.duration for rep in self.repetitions]).sum()

    def kspace(self) -> torch.Tensor:
        """Nominal k-space position at every ADC sample, in acquisition order.

        Moments accumulate event by event; an excitation resets k to 0 and a refocusing pulse negates it.
        Returns: Tensor  # (adc_samples, 3) 1/m, differentiable w.r.t. gradm
        """
        k = torch.zeros(3, dtype=self.repetitions[0].gradm.dtype, device=self.repetitions[0].gradm.device)
        samples = []
        for rep in self.repetitions:
            if rep.pulse.usage == PulseUsage.EXCITATION:
                k = torch.zeros_like(k)
            elif rep.pulse.usage == PulseUsage.REFOCUSING:
                k = -k
            path = k + torch.cumsum(rep.gradm, dim=0)
            samples.append(path[rep.adc_usage])
            k = path[-1] if rep.event_count else k
        return torch.cat(samples)

    def adc_times(self) -> torch.Tensor:
        """Time of every ADC sample since the sequence start. Returns: Tensor  # (adc_samples,) s."""
        t0 = torch.zeros((), dtype=self.repetitions[0].event_time.dtype)
        times = []
        for rep in self.repetitions:
            ends = t0 + torch.cumsum(rep.event_time, dim=0)
            times.append(ends[rep.adc_usage])
            t0 = t0 + rep.duration
        return torch.cat(times)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Sequence:
        """A copy on ``device`` with real tensors cast to ``dtype`` (adc_usage stays bool)."""

        def move(t: torch.Tensor) -> torch.Tensor:
            return t.to(device=device, dtype=dtype if t.is_floating_point() else None)

        reps = [
            Repetition(
                pulse=Pulse(move(rep.pulse.angle), move(rep.pulse.phase), rep.pulse.usage, rep.pulse.shape,
                            None if rep.pulse.waveform is None else rep.pulse.waveform.to(device)),
                event_time=move(rep.event_time),
                gradm=move(rep.gradm),
                adc_usage=rep.adc_usage.to(device=device),
                adc_phase=move(rep.adc_phase),
                readouts=list(rep.readouts),
            )
            for rep in self.repetitions
        ]
        return Sequence(reps, self.info.model_copy(deep=True))

    def detach(self) -> Sequence:
        """A copy whose tensors carry no autograd history."""
        reps = [
            Repetition(
                pulse=Pulse(rep.pulse.angle.detach().clone(), rep.pulse.phase.detach().clone(),
                            rep.pulse.usage, rep.pulse.shape, rep.pulse.waveform),
                event_time=rep.event_time.detach().clone(),
                gradm=rep.gradm.detach().clone(),
                adc_usage=rep.adc_usage.clone(),
                adc_phase=rep.adc_phase.detach().clone(),
                readouts=list(rep.readouts),
            )
            for rep in self.repetitions
        ]
        return Sequence(reps, self.info.model_copy(deep=True))

    # ---- JSON ---------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain-Python form; float32 values survive the round trip exactly."""
        dtype = str(self.repetitions[0].gradm.dtype).removeprefix("torch.") if self.repetitions else "float32"
        return {
            "format": "mrbridge.sequence",
            "version": FORMAT_VERSION,
            "dtype": dtype,
            "info": self.info.model_dump(mode="json"),
            "repetitions": [
                {
                    "pulse": {
                        "angle": rep.pulse.angle.item(),
                        "phase": rep.pulse.phase.item(),
                        "usage": rep.pulse.usage.value,
                        "shape": rep.pulse.shape.model_dump(),
                        **({} if rep.pulse.waveform is None else {"waveform": rep.pulse.waveform.to_dict()}),
                    },
                    "event_time": rep.event_time.tolist(),
                    "gradm": rep.gradm.tolist(),
                    "adc_usage": [int(v) for v in rep.adc_usage.tolist()],
                    "adc_phase": rep.adc_phase.tolist(),
                    "readouts": [labels.model_dump(exclude_defaults=True) for labels in rep.readouts],
                }
                for rep in self.repetitions
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | None = None) -> Sequence:
        """Inverse of :meth:`to_dict`; raises InputError naming ``source`` and the field on bad content."""
        where = source or "sequence"
        if data.get("format") != "mrbridge.sequence":
            raise InputError(f"{where}: field 'format' is {data.get('format')!r}, expected 'mrbridge.sequence'")
        try:
            dtype = getattr(torch, data.get("dtype", "float32"))
            reps = []
            for i, r in enumerate(data["repetitions"]):
                try:
                    pulse = Pulse(
                        angle=_tensor(r["pulse"]["angle"], dtype),
                        phase=_tensor(r["pulse"]["phase"], dtype),
                        usage=PulseUsage(r["pulse"]["usage"]),
                        shape=PulseShape(**r["pulse"].get("shape", {})),
                        waveform=(PulseWaveform.from_dict(r["pulse"]["waveform"]) if "waveform" in r["pulse"]
                                  else None),
                    )
                    n = len(r["event_time"])
                    reps.append(
                        Repetition(
                            pulse=pulse,
                            event_time=_tensor(r["event_time"], dtype),
                            gradm=_tensor(r["gradm"], dtype).reshape(n, 3),
                            adc_usage=_tensor(r["adc_usage"], torch.bool).reshape(n),
                            adc_phase=_tensor(r["adc_phase"], dtype),
                            readouts=[ReadoutLabels(**lab) for lab in r.get("readouts", [])],
                        )
                    )
                except (KeyError, TypeError, ValueError, RuntimeError, ValidationError) as err:
                    raise InputError(f"{where}: repetitions[{i}]: {err}") from None
            info = SequenceInfo(**data.get("info", {}))
        except (KeyError, TypeError, ValidationError, AttributeError) as err:
            raise InputError(f"{where}: {err}") from None
        return cls(reps, info)

    def save(self, path: str | Path) -> None:
        """Write JSON atomically."""
        atomic_write_text(Path(path), json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path: str | Path) -> Sequence:
        """Read a sequence JSON written by ``save`` (InputError naming the file when it is not one)."""
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise InputError(f"{path}: no such file") from None
        except json.JSONDecodeError as err:
            raise InputError(f"{path}: not valid JSON ({err})") from None
        except (UnicodeDecodeError, IsADirectoryError) as err:
            raise InputError(f"{path}: not a text JSON file ({err}); expected a sequence JSON") from None
        return cls.from_dict(data, source=str(path))

    # ---- front doors (``mb.Sequence.from_file(...)``); the readers load on first use ----------------
    @classmethod
    def from_protocol(cls, path: str | Path, matrix: int | None = None) -> Sequence:
        """Build the sequence a protocol YAML describes (``protocols/*.yaml``).

        Parameters
        ----------
        path
            Protocol file (``kind: gre``, ``se``, ``tse``, ``bssfp``, ``irgre``, ``epi``, ``radial``, ``spiral``).
        matrix
            In-plane matrix size overriding the protocol's (the timing is re-validated).

        Returns
        -------
        Sequence
            float32 tensors; ``info`` holds the protocol's FOV (m), matrix, TE/TR (s) and parameters.

        Raises
        ------
        ConfigError
            One line naming the file, the key, the value and what was expected.

        Examples
        --------
        >>> seq = Sequence.from_protocol("protocols/gre.yaml", matrix=16)  # from the repository root
        >>> seq.info.matrix, len(seq.readouts()), seq.samples_per_readout()
        ((16, 16, 1), 16, 16)
        """
        from mrbridge.sequence.builders import build
        from mrbridge.sequence.protocol import load_protocol

        return build(load_protocol(path), matrix=matrix)

    @classmethod
    def from_seq(cls, path: str | Path) -> Sequence:
        """Import a Pulseq ``.seq`` file (any version 1.2–1.5; ``mrbridge.sequence.import_seq``).

        Returns
        -------
        Sequence
            One repetition per RF pulse; gradient moments (1/m) and event times (s) as the file plays them.
        """
        from mrbridge.sequence.import_seq import import_seq

        return import_seq(path)

    @classmethod
    def from_file(cls, path: str | Path, *, matrix: int | None = None) -> Sequence:
        """Open a protocol (``.yaml``/``.yml``), a Pulseq ``.seq`` or a sequence ``.json``, by its suffix.

        ``matrix`` applies to protocols only (an InputError for other files, whose encoding is fixed).

        Examples
        --------
        >>> Sequence.from_file("protocols/se.yaml", matrix=16).info.name  # from the repository root
        'spin-echo-spin'
        """
        path = Path(path)
        suffix = path.suffix.lower()
        if suffix in (".yaml", ".yml"):
            return cls.from_protocol(path, matrix=matrix)
        if matrix is not None:
            raise InputError(f"{path}: matrix = {matrix} applies to protocols (.yaml) only; a {suffix or 'file'} "
                             "has its encoding fixed")
        if suffix == ".seq":
            return cls.from_seq(path)
        if suffix == ".json":
            return cls.load(path)
        raise InputError(f"{path}: unknown sequence file type {suffix or '(no suffix)'!r}; "
                         "expected a protocol .yaml, a Pulseq .seq or a sequence .json")
