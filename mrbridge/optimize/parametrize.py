"""Trainable views of a Sequence: raw parameters → bounded values → the Sequence's tensors.

Each task parameter selects entries of the template (pulses, or events with axes) and maps one raw tensor
through its parametrisation into values in the key's unit (degrees, cycles per FOV, ms):

* ``sigmoid``: v = lo + (hi − lo)·σ(u)  (bounded);
* ``softplus``: v = lo + softplus(u)    (times above a lower bound);
* ``identity``: v = u, put back inside its bounds after every optimizer step (:meth:`SequenceParameters.project`:
  projected gradient descent; a value on a bound keeps its gradient, where a saturated sigmoid or softplus has
  none).

:meth:`SequenceParameters.sequence` writes the values into a copy of the template, differentiably.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mrbridge.sequence.builders import build
from mrbridge.sequence.model import PulseUsage, Repetition, Sequence
from mrbridge.sequence.protocol import Protocol

if TYPE_CHECKING:
    from mrbridge.optimize.task import SequenceParamSpec

#: how far inside its bounds a sigmoid value is placed when asked for a bound (fraction of the range)
_EDGE = 1e-4
#: smallest softplus excess (key unit) an initial value on the lower bound gets
_FLOOR = 1e-3
_AXES = {"x": 0, "y": 1, "z": 2}


def build_template(protocol: Protocol, repeat: int = 1) -> Sequence:
    """The protocol's sequence, ``repeat`` times in a row with readouts labelled contrast 0 … repeat − 1."""
    seq = build(protocol)
    if repeat == 1:
        return seq
    reps: list[Repetition] = []
    for copy in range(repeat):
        for rep in seq.detach().repetitions:
            rep.readouts = [labels.model_copy(update={"contrast": copy}) for labels in rep.readouts]
            reps.append(rep)
    info = seq.info.model_copy(update={"contrasts": repeat})
    return Sequence(reps, info)


@dataclass
class Selection:
    """Entries of the template that one parameter sets.

    reps: (n,) repetition index of each entry; events: (n,) flat event index (−1 for pulse parameters);
    axes: gradient axes (gradm only).
    """

    reps: np.ndarray
    events: np.ndarray
    axes: list[int]

    def __len__(self) -> int:
        return len(self.reps)

    def groups(self, shared: bool | str) -> np.ndarray:
        """(n,) index of the trainable value each entry takes: its own, the one shared value, or its
        repetition's (``shared="repetition"``: e.g. one readout moment per readout, a constant gradient)."""
        if shared == "repetition":
            return np.unique(self.reps, return_inverse=True)[1].reshape(-1)
        return np.zeros(len(self), int) if shared else np.arange(len(self))

    def template_values(self, seq: Sequence, spec: SequenceParamSpec) -> np.ndarray:
        """The template's values in the key's unit: (n,) or (n, axes) for gradm."""
        if spec.name in ("flip_angle", "rf_phase"):
            attr = "angle" if spec.name == "flip_angle" else "phase"
            return np.degrees([float(getattr(seq[r].pulse, attr)) for r in self.reps])
        if spec.name == "gradm":
            flat = torch.cat([rep.gradm.detach() for rep in seq]).double().numpy()
            return flat[self.events][:, self.axes] * np.asarray(seq.info.fov)[self.axes]
        flat_t = torch.cat([rep.event_time.detach() for rep in seq]).double().numpy()
        return flat_t[self.events] * 1e3


def selection(seq: Sequence, spec: SequenceParamSpec) -> Selection:
    """The template entries ``spec`` selects (see the task schema for each name)."""
    default = [PulseUsage.EXCITATION] if spec.name in ("flip_angle", "rf_phase") else list(PulseUsage)
    usages = {PulseUsage(u) for u in spec.pulses} if spec.pulses is not None else set(default)
    offsets = np.cumsum([0] + [rep.event_count for rep in seq])
    chosen = [r for r, rep in enumerate(seq) if rep.pulse.usage in usages]
    if spec.name in ("flip_angle", "rf_phase"):
        return Selection(np.array(chosen, int), np.full(len(chosen), -1), [])
    if spec.name in ("ti", "recovery"):
        inversions = [r for r, rep in enumerate(seq) if rep.pulse.usage == PulseUsage.INVERSION]
        if spec.name == "ti":
            pairs = [(r, offsets[r]) for r in inversions if seq[r].event_count]
        else:
            ends = [r - 1 for r in inversions if r > 0] + [len(seq) - 1] if inversions else []
            pairs = [(r, offsets[r + 1] - 1) for r in ends if seq[r].event_count]
        return Selection(np.array([p[0] for p in pairs], int), np.array([p[1] for p in pairs], int), [])
    reps, events = [], []
    for r in chosen:
        adc = seq[r].adc_usage.numpy()
        keep = {"all": np.ones_like(adc), "adc": adc, "non_adc": ~adc}[getattr(spec, "events", "all")]
        for e in np.flatnonzero(keep):
            reps.append(r)
            events.append(offsets[r] + e)
    axes = [_AXES[a] for a in getattr(spec, "axes", [])]
    return Selection(np.array(reps, int), np.array(events, int), axes)


def _forward(spec: SequenceParamSpec, raw: torch.Tensor) -> torch.Tensor:
    lo, hi = spec.bounds()
    kind = spec.parametrization()
    if kind == "sigmoid":
        assert lo is not None and hi is not None
        return lo + (hi - lo) * torch.sigmoid(raw)
    if kind == "softplus":
        assert lo is not None
        return lo + F.softplus(raw)
    return raw


def _inverse(spec: SequenceParamSpec, value: np.ndarray) -> np.ndarray:
    lo, hi = spec.bounds()
    kind = spec.parametrization()
    if kind == "sigmoid":
        assert lo is not None and hi is not None
        p = np.clip((value - lo) / (hi - lo), _EDGE, 1 - _EDGE)
        return np.asarray(np.log(p) - np.log1p(-p))
    if kind == "softplus":
        assert lo is not None
        excess = np.maximum(value - lo, _FLOOR)
        return np.asarray(excess + np.log(-np.expm1(-excess)))
    return value


class SequenceParameters(nn.Module):
    """The trainable sequence: raw parameters (one per task parameter) over a fixed template.

    >>> from mrbridge.optimize.task import FlipAngleParam
    >>> from mrbridge.sequence.protocol import GreProtocol
    >>> spec = FlipAngleParam(name="flip_angle", shared=True, init=30.0)
    >>> params = SequenceParameters(build_template(GreProtocol(matrix=8, dummies=0)), [spec])
    >>> round(float(params.values()["flip_angle"][0].detach()), 3)
    30.0
    """

    anchor: torch.Tensor  # (0,): the module's device, also without parameters (a task that learns only sampling)

    def __init__(self, template: Sequence, specs: list[SequenceParamSpec], *, seed: int = 0) -> None:
        super().__init__()
        self.register_buffer("anchor", torch.zeros(0), persistent=False)
        self.template = template.detach()
        self.specs = list(specs)
        self.selections = [selection(self.template, s) for s in self.specs]
        self.raw = nn.ParameterList([nn.Parameter(torch.zeros(self._shape(i))) for i in range(len(self.specs))])
        self.initialize(seed)

    def _shape(self, i: int) -> tuple[int, ...]:
        groups = self.selections[i].groups(self.specs[i].shared)
        n = int(groups.max()) + 1 if len(groups) else 0
        axes = self.selections[i].axes
        return (n, len(axes)) if axes else (n,)

    def initialize(self, seed: int, *, random_only: bool = False) -> None:
        """Set every raw parameter from its ``init`` (random ones drawn from ``seed``); ``random_only``:
        re-draw only the random ones (random restarts)."""
        rng = np.random.default_rng(seed)
        for i, (spec, sel) in enumerate(zip(self.specs, self.selections, strict=True)):
            shape = self._shape(i)
            lo, hi = spec.bounds()
            if spec.init == "random":
                assert lo is not None and hi is not None
                value = rng.uniform(lo, hi, size=shape)
            elif random_only:
                continue
            elif spec.init == "template":  # the mean over the entries that share a value
                entries = sel.template_values(self.template, spec)
                groups = sel.groups(spec.shared)
                count = np.bincount(groups, minlength=shape[0]).reshape(-1, *([1] * (len(shape) - 1)))
                value = np.zeros(shape)
                np.add.at(value, groups, entries)
                value = value / count
            elif spec.init == "zero":
                value = np.zeros(shape)
            else:
                value = np.full(shape, float(spec.init))
            if lo is not None or hi is not None:
                value = np.clip(value, lo, hi)
            with torch.no_grad():
                self.raw[i].copy_(torch.from_numpy(_inverse(spec, np.asarray(value, float)).reshape(shape)))

    def project(self) -> None:
        """Clamp every identity-parametrised raw value into its bounds (after each optimizer step)."""
        with torch.no_grad():
            for spec, raw in zip(self.specs, self.raw, strict=True):
                lo, hi = spec.bounds()
                if spec.parametrization() == "identity" and (lo is not None or hi is not None):
                    raw.clamp_(lo, hi)

    def values(self) -> dict[str, torch.Tensor]:
        """Each parameter's values in its key's unit (differentiable); keys ``name`` (``name.2`` if repeated)."""
        out: dict[str, torch.Tensor] = {}
        for spec, raw in zip(self.specs, self.raw, strict=True):
            key = spec.name if spec.name not in out else f"{spec.name}.{len(out)}"
            out[key] = _forward(spec, raw)
        return out

    def sequence(self) -> Sequence:
        """The template with the current values written in (differentiable w.r.t. the raw parameters)."""
        t = self.template
        device = self.anchor.device
        angle = torch.stack([rep.pulse.angle for rep in t]).to(device)
        phase = torch.stack([rep.pulse.phase for rep in t]).to(device)
        times = torch.cat([rep.event_time for rep in t]).to(device)
        gradm = torch.cat([rep.gradm for rep in t]).to(device)
        fov = torch.tensor(t.info.fov, dtype=gradm.dtype, device=device)
        for spec, sel, raw in zip(self.specs, self.selections, self.raw, strict=True):
            groups = torch.as_tensor(sel.groups(spec.shared), device=device)
            value = _forward(spec, raw)[groups].to(gradm.dtype)
            if spec.name == "flip_angle":
                angle = angle.index_put((torch.as_tensor(sel.reps, device=device),), value * (math.pi / 180))
            elif spec.name == "rf_phase":
                phase = phase.index_put((torch.as_tensor(sel.reps, device=device),), value * (math.pi / 180))
            elif spec.name == "gradm":
                rows = torch.as_tensor(sel.events, device=device)[:, None]
                cols = torch.as_tensor(sel.axes, device=device)[None, :]
                gradm = gradm.index_put((rows, cols), value / fov[cols])
            else:
                times = times.index_put((torch.as_tensor(sel.events, device=device),), value * 1e-3)
        reps, start = [], 0
        for r, rep in enumerate(t):
            end = start + rep.event_count
            reps.append(Repetition(
                pulse=type(rep.pulse)(angle[r], phase[r], rep.pulse.usage, rep.pulse.shape),
                event_time=times[start:end], gradm=gradm[start:end], adc_usage=rep.adc_usage.to(device),
                adc_phase=rep.adc_phase.to(device), readouts=list(rep.readouts)))
            start = end
        info = t.info.model_copy(deep=True)
        flips = [float(a) for a, rep in zip(angle.detach(), t, strict=True) if rep.pulse.usage == PulseUsage.EXCITATION]
        if flips:
            info.flip_angle_deg = math.degrees(float(np.mean(flips)))
        return Sequence(reps, info)
