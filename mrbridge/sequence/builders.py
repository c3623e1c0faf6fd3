"""Build a :class:`~mrbridge.sequence.model.Sequence` from a protocol (spin echo, GRE, TSE, bSSFP, IR-GRE; EPI in
:mod:`mrbridge.sequence.builders_epi`, radial and spiral in :mod:`mrbridge.sequence.builders_noncartesian`).

Every builder uses the same Cartesian readout: ``N`` ADC events of one dwell, each adding Δk = 1/FOV in x,
after a prephaser that puts sample ``j`` (recorded at the end of its event) exactly on
kx = (j − N/2)·Δk and the line on ky = (line − N/2)·Δk. The k = 0 sample (j = N/2) comes at TE after the
excitation, ``N/2 + 1`` dwells after the readout starts. Labels: ``kspace_encode_step_1`` is the line.
Tensors are built in float64 and cast to ``dtype``; nothing requires grad.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from mrbridge.sequence.model import (
    Pulse,
    PulseShape,
    PulseUsage,
    ReadoutLabels,
    Repetition,
    Sequence,
    SequenceInfo,
)
from mrbridge.sequence.protocol import (
    BssfpProtocol,
    EpiProtocol,
    GreProtocol,
    IrGreProtocol,
    Protocol,
    RadialProtocol,
    SpinEchoProtocol,
    TseProtocol,
    with_matrix,
)
from mrbridge.sequence.undersampling import ACS_FLAGS, acquired_lines

_Part = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # (times, moments, adc, adc_phase)


@dataclass(frozen=True)
class _Readout:
    """The shared Cartesian readout of an N × N grid."""

    n: int
    dk: float  # 1/m
    dwell: float  # s

    @property
    def before(self) -> float:
        """s from the readout start to the k = 0 sample."""
        return (self.n // 2 + 1) * self.dwell

    @property
    def after(self) -> float:
        """s from the k = 0 sample to the readout end."""
        return (self.n // 2 - 1) * self.dwell

    @property
    def prephase(self) -> float:
        """1/m, x moment that puts the first sample on −N/2·Δk."""
        return -(self.n // 2 + 1) * self.dk

    def ky(self, line: int) -> float:
        return (line - self.n // 2) * self.dk

    def samples(self, phase: float | None) -> _Part:
        """The N ADC events (phase = receiver phase), or with ``None`` one silent event of the same span."""
        if phase is None:
            return _gap(self.n * self.dwell, (self.n * self.dk, 0.0, 0.0))
        moments = np.zeros((self.n, 3))
        moments[:, 0] = self.dk
        return np.full(self.n, self.dwell), moments, np.ones(self.n, bool), np.full(self.n, phase)


def _gap(duration: float, moment: tuple[float, float, float]) -> _Part:
    """One event without ADC."""
    return np.array([duration]), np.array([moment], float), np.zeros(1, bool), np.zeros(1)


def _repetition(
    angle: float,
    phase: float,
    usage: PulseUsage,
    parts: list[_Part],
    labels: list[ReadoutLabels],
    dtype: torch.dtype,
    rf_ms: float | None = None,
) -> Repetition:
    """One repetition; its pulse's export shape lasts ``rf_ms`` (default: ``PulseShape``'s)."""
    times, moments, adc, adc_phase = (np.concatenate(column) for column in zip(*parts, strict=True))
    return Repetition(
        pulse=Pulse(torch.tensor(angle, dtype=dtype), torch.tensor(phase, dtype=dtype), usage,
                    PulseShape() if rf_ms is None else PulseShape(duration=rf_ms * 1e-3)),
        event_time=torch.tensor(times, dtype=dtype),
        gradm=torch.tensor(moments, dtype=dtype),
        adc_usage=torch.tensor(adc),
        adc_phase=torch.tensor(adc_phase, dtype=dtype),
        readouts=labels,
    )


def rf_spoiling_phase(index: int, increment_deg: float) -> float:
    """RF-spoiling phase of excitation ``index`` (0-based): increment·n(n+1)/2, in rad in [0, 2π)."""
    return math.radians((increment_deg * (index * (index + 1) // 2)) % 360.0)


def train_order(n: int, train: int, order: str, effective: int = 0,
                lines: list[int] | None = None) -> list[list[int | None]]:
    """Lines of each shot: ``table[shot][position]`` for the acquired ``lines`` of ``n`` (default: all) in trains of
    ``train``; None is a silent echo (an undersampled acquisition fills its last shots up with them).

    linear: the lines in k-space order fill position p of shot s at index p·shots + s, after as many silent echoes as
    put the centre line (N/2, or the acquired line nearest to it) on position train // 2 (more shots if need be).
    centric: lines ranked by distance from the centre (N/2, N/2 − 1, N/2 + 1, …, then the silent echoes) fill the
    positions ranked by distance from ``effective``, so the centre line is acquired at position ``effective`` of
    shot 0.
    """
    acquired = list(range(n)) if lines is None else sorted(lines)
    shots = -(-len(acquired) // train)
    ranked: list[int | None]
    if order == "linear":
        centre = min(range(len(acquired)), key=lambda i: (abs(acquired[i] - n // 2), i))
        while True:
            before = max(0, train // 2 * shots - centre)
            after = shots * train - len(acquired) - before
            if after >= 0 and before + centre < (train // 2 + 1) * shots:
                break
            shots += 1
        ranked, positions = [None] * before + list(acquired) + [None] * after, list(range(train))
    else:
        ranked = [*sorted(acquired, key=lambda line: (abs(line - n // 2), line)),
                  *[None] * (shots * train - len(acquired))]
        positions = sorted(range(train), key=lambda p: (abs(p - effective), p))
    table: list[list[int | None]] = [[None] * train for _ in range(shots)]
    for rank, position in enumerate(positions):
        for shot in range(shots):
            table[shot][position] = ranked[rank * shots + shot]
    return table


def _info(p: Protocol, te: float, tr: float, flip_deg: float) -> SequenceInfo:
    return SequenceInfo(
        name=p.name or p.kind,
        fov=(p.fov, p.fov, p.slice_mm * 1e-3),
        matrix=(p.matrix, p.matrix, 1),
        trajectory="cartesian",
        te=te,
        tr=tr,
        flip_angle_deg=flip_deg,
        contrasts=1,
        protocol=p.model_dump(mode="json"),
    )


def _readout(p: Protocol) -> _Readout:
    return _Readout(p.matrix, 1.0 / p.fov, p.dwell)


def _gre_repetition(
    ro: _Readout,
    *,
    angle: float,
    phase: float,
    te: float,
    duration: float,
    line: int | None,
    spoil: float,
    labels: ReadoutLabels,
    dtype: torch.dtype,
) -> Repetition:
    """Excitation, prephaser + phase encoding, readout, rewinder in y and net x moment ``spoil`` per TR."""
    ky = ro.ky(ro.n // 2 if line is None else line)
    parts = [
        _gap(te - ro.before, (ro.prephase, ky, 0.0)),
        ro.samples(None if line is None else phase),
        _gap(duration - te - ro.after, (spoil - ro.prephase - ro.n * ro.dk, -ky, 0.0)),
    ]
    return _repetition(angle, phase, PulseUsage.EXCITATION, parts, [] if line is None else [labels], dtype)


def gre(p: GreProtocol, *, dtype: torch.dtype = torch.float32) -> Sequence:
    """RF- and gradient-spoiled GRE (FLASH): ``dummies`` silent repetitions, then lines 0 … N−1 (undersampled:
    the acquired lines in order, the ACS lines flagged, :mod:`mrbridge.sequence.undersampling`).

    Excitation n (dummies included) has phase rf_spoiling_deg·n(n+1)/2, the ADC the same; after the readout
    the y moment is rewound and x is left with ``spoiler_cycles_per_voxel`` cycles per voxel per TR.
    """
    ro = _readout(p)
    te, tr, angle = p.te_ms * 1e-3, p.tr_ms * 1e-3, math.radians(p.flip_angle_deg)
    spoil = p.spoiler_cycles_per_voxel * p.matrix * ro.dk
    acquired, acs = acquired_lines(p.matrix, p.undersampling)
    lines: list[int | None] = [None] * p.dummies
    lines += acquired
    reps = [
        _gre_repetition(
            ro,
            angle=angle,
            phase=rf_spoiling_phase(i, p.rf_spoiling_deg),
            te=te,
            duration=tr,
            line=line,
            spoil=spoil,
            labels=ReadoutLabels(kspace_encode_step_1=line or 0, flags=ACS_FLAGS if line in acs else 0),
            dtype=dtype,
        )
        for i, line in enumerate(lines)
    ]
    return Sequence(reps, _info(p, te, tr, p.flip_angle_deg))


def _echo_train(
    p: SpinEchoProtocol | TseProtocol, *, spacing: float, table: list[list[int | None]], dtype: torch.dtype,
    acs: set[int] | None = None,
) -> list[Repetition]:
    """CPMG shots: excitation (phase 90°), then one refocusing (phase 0°) per echo, echoes at spacing·(e + 1);
    ``table[shot][echo]`` is the line (None: a silent echo), the ``acs`` lines are flagged as calibration lines.

    Before each refocusing pulse kx = (N/2 + 1)·Δk and ky = 0, so every interval between refocusing pulses
    has the same dephasing (CPMG condition); the last echo is followed by the x spoiler until TR.
    """
    ro = _readout(p)
    tr, train = p.tr_ms * 1e-3, len(table[0])
    flip, refocus = math.radians(p.flip_angle_deg), math.radians(p.refocusing_angle_deg)
    spoil = p.spoiler_cycles_per_voxel * p.matrix * ro.dk
    silent: list[int | None] = [None] * train
    shots: list[list[int | None]] = [silent] * p.dummies + [list(row) for row in table]
    reps = []
    for row in shots:
        reps.append(
            _repetition(
                flip,
                math.pi / 2,
                PulseUsage.EXCITATION,
                [_gap(spacing / 2, (-ro.prephase, 0.0, 0.0))],
                [],
                dtype,
                p.rf_ms,
            )
        )
        for echo, line in enumerate(row):
            ky = ro.ky(ro.n // 2 if line is None else line)
            parts = [
                _gap(spacing / 2 - ro.before, (0.0, ky, 0.0)),
                ro.samples(None if line is None else 0.0),
                _gap(spacing / 2 - ro.after, (2 * ro.dk, -ky, 0.0)),
            ]
            if echo == train - 1:
                parts.append(_gap(tr - (train + 0.5) * spacing, (spoil, 0.0, 0.0)))
            labels = [] if line is None else [ReadoutLabels(kspace_encode_step_1=line, segment=echo,
                                                             flags=ACS_FLAGS if line in (acs or ()) else 0)]
            reps.append(_repetition(refocus, 0.0, PulseUsage.REFOCUSING, parts, labels, dtype, p.refocusing_rf_ms))
    return reps


def spin_echo(p: SpinEchoProtocol, *, dtype: torch.dtype = torch.float32) -> Sequence:
    """Spin echo (SPIN): 90° at 0, 180° at TE/2, one line per TR in order 0 … N−1, after ``dummies`` TRs."""
    te = p.te_ms * 1e-3
    table: list[list[int | None]] = [[line] for line in range(p.matrix)]
    reps = _echo_train(p, spacing=te, table=table, dtype=dtype)
    return Sequence(reps, _info(p, te, p.tr_ms * 1e-3, p.flip_angle_deg))


def tse(p: TseProtocol, *, dtype: torch.dtype = torch.float32) -> Sequence:
    """RARE/TSE: shots of ``echo_train_length`` CPMG echoes; ``segment`` = echo index; te = effective TE.
    Undersampled: the acquired lines in the same order (:func:`train_order`), the ACS lines flagged."""
    acquired, acs = acquired_lines(p.matrix, p.undersampling)
    table = train_order(p.matrix, p.echo_train_length, p.order, p.effective_echo, acquired)
    reps = _echo_train(p, spacing=p.echo_spacing_ms * 1e-3, table=table, dtype=dtype, acs=acs)
    return Sequence(reps, _info(p, p.effective_te, p.tr_ms * 1e-3, p.flip_angle_deg))


def bssfp(p: BssfpProtocol, *, dtype: torch.dtype = torch.float32) -> Sequence:
    """Balanced SSFP: α/2 (phase π) TR/2 before the first α, then α with phases 0, π, 0, … (ADC alike).

    Every repetition's moments sum to zero; TE = TR/2; ``dummies`` silent repetitions precede lines 0 … N−1.
    """
    ro = _readout(p)
    tr, angle = p.tr_ms * 1e-3, math.radians(p.flip_angle_deg)
    prep = _gap(tr / 2, (0.0, 0.0, 0.0))
    reps = [_repetition(angle / 2, math.pi, PulseUsage.EXCITATION, [prep], [], dtype)]
    lines: list[int | None] = [None] * p.dummies + list(range(p.matrix))
    for i, line in enumerate(lines):
        reps.append(
            _gre_repetition(
                ro,
                angle=angle,
                phase=math.pi * (i % 2),
                te=tr / 2,
                duration=tr,
                line=line,
                spoil=0.0,
                labels=ReadoutLabels(kspace_encode_step_1=line or 0),
                dtype=dtype,
            )
        )
    return Sequence(reps, _info(p, tr / 2, tr, p.flip_angle_deg))


def ir_gre(p: IrGreProtocol, *, dtype: torch.dtype = torch.float32) -> Sequence:
    """Inversion recovery GRE: 180°, TI, then ``lines_per_inversion`` spoiled GRE lines; TR per inversion.

    The inversion is followed by the x spoiler; one RF-spoiling counter runs over all excitations.
    Label ``segment`` = position in the train.
    """
    ro = _readout(p)
    ti, te, tr = p.ti_ms * 1e-3, p.te_ms * 1e-3, p.tr_ms * 1e-3
    train = p.lines_per_inversion
    spacing = (p.gre_tr_ms or 0.0) * 1e-3
    angle = math.radians(p.flip_angle_deg)
    spoil = p.spoiler_cycles_per_voxel * p.matrix * ro.dk
    table = train_order(p.matrix, train, p.order)
    silent: list[int | None] = [None] * train
    shots: list[list[int | None]] = [silent] * p.dummies + [list(row) for row in table]
    reps, count = [], 0
    for row in shots:
        reps.append(_repetition(math.pi, 0.0, PulseUsage.INVERSION, [_gap(ti, (spoil, 0.0, 0.0))], [], dtype,
                                p.inversion_rf_ms))
        for position, line in enumerate(row):
            last = position == train - 1
            duration = tr - ti - (train - 1) * spacing if last else spacing
            reps.append(
                _gre_repetition(
                    ro,
                    angle=angle,
                    phase=rf_spoiling_phase(count, p.rf_spoiling_deg),
                    te=te,
                    duration=duration,
                    line=line,
                    spoil=spoil,
                    labels=ReadoutLabels(kspace_encode_step_1=line or 0, segment=position),
                    dtype=dtype,
                )
            )
            count += 1
    return Sequence(reps, _info(p, te, tr, p.flip_angle_deg))


def build(protocol: Protocol, *, matrix: int | None = None, dtype: torch.dtype = torch.float32) -> Sequence:
    """The sequence a protocol describes; ``matrix`` overrides ``protocol.matrix`` (re-validated)."""
    if matrix is not None and matrix != protocol.matrix:
        protocol = with_matrix(protocol, matrix)
    if isinstance(protocol, SpinEchoProtocol):
        return spin_echo(protocol, dtype=dtype)
    if isinstance(protocol, GreProtocol):
        return gre(protocol, dtype=dtype)
    if isinstance(protocol, TseProtocol):
        return tse(protocol, dtype=dtype)
    if isinstance(protocol, BssfpProtocol):
        return bssfp(protocol, dtype=dtype)
    if isinstance(protocol, IrGreProtocol):
        return ir_gre(protocol, dtype=dtype)
    # imported here: these modules build on the helpers above
    from mrbridge.sequence.builders_epi import epi
    from mrbridge.sequence.builders_noncartesian import radial, spiral

    if isinstance(protocol, EpiProtocol):
        return epi(protocol, dtype=dtype)
    if isinstance(protocol, RadialProtocol):
        return radial(protocol, dtype=dtype)
    return spiral(protocol, dtype=dtype)
