"""Builders: Cartesian coverage, echo timing, RF phases, balance and TR totals, from the event model."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch

from mrbridge.sequence.builders import build, train_order
from mrbridge.sequence.model import PulseUsage, Sequence
from mrbridge.sequence.protocol import parse_protocol

# Small matrices keep these fast; the shipped 64² examples are covered in test_protocol.py and below.
CASES: dict[str, dict[str, Any]] = {
    "se": {"kind": "se", "matrix": 16, "dummies": 1},
    "gre": {"kind": "gre", "matrix": 16, "dummies": 5},
    "gre-unspoiled": {"kind": "gre", "matrix": 16, "rf_spoiling_deg": 0, "spoiler_cycles_per_voxel": 0},
    "tse-linear": {"kind": "tse", "matrix": 16, "echo_train_length": 4, "order": "linear", "dummies": 1},
    "tse-centric": {"kind": "tse", "matrix": 16, "echo_train_length": 4, "order": "centric", "te_ms": 30},
    "tse-one-echo": {"kind": "tse", "matrix": 16, "echo_train_length": 1},
    "bssfp": {"kind": "bssfp", "matrix": 16, "dummies": 3},
    "irgre": {"kind": "irgre", "matrix": 16},
    "irgre-train": {
        "kind": "irgre",
        "matrix": 16,
        "lines_per_inversion": 4,
        "gre_tr_ms": 10,
        "order": "centric",
        "dummies": 1,
    },
}


def _build(name: str) -> Sequence:
    return build(parse_protocol(CASES[name]), dtype=torch.float64)


def _starts(seq: Sequence) -> torch.Tensor:
    """(repetitions,) s, start time of every repetition (= its RF pulse)."""
    durations = torch.stack([rep.duration for rep in seq])
    return torch.cumsum(durations, 0) - durations


def _readout_times(seq: Sequence) -> list[tuple[int, int, Any, torch.Tensor]]:
    """(repetition, first event, labels, sample times) per readout, the times cut from ``adc_times``."""
    times, out, i = seq.adc_times(), [], 0
    for r, start, end, labels in seq.readouts():
        out.append((r, start, labels, times[i : i + end - start]))
        i += end - start
    return out


@pytest.mark.parametrize("name", sorted(CASES))
def test_kspace_visits_every_grid_point_once_with_the_labelled_line(name: str) -> None:
    seq = _build(name)
    n = seq.info.matrix[0]
    dk = 1 / seq.info.fov[0]
    k = seq.kspace() / dk  # (samples, 3) in grid units
    assert torch.allclose(k, torch.round(k), atol=1e-9), "samples off the Cartesian grid"
    assert torch.all(k[:, 2] == 0)
    grid = torch.round(k[:, :2]).long() + n // 2  # (samples, 2) = (ix, iy)
    counts = torch.zeros(n, n, dtype=torch.long)
    counts.index_put_((grid[:, 1], grid[:, 0]), torch.ones(len(grid), dtype=torch.long), accumulate=True)
    assert torch.all(counts == 1)
    assert seq.samples_per_readout() == n
    for i, (_, _, _, labels) in enumerate(seq.readouts()):
        row = grid[i * n : (i + 1) * n]
        assert torch.all(row[:, 1] == labels.kspace_encode_step_1)
        assert torch.equal(row[:, 0], torch.arange(n))  # kx = (j − N/2)·Δk in sample order


def _echo_delay(seq: Sequence, r: int) -> float:
    """s from the last excitation up to repetition r's start."""
    starts = _starts(seq)
    last = max(i for i in range(r + 1) if seq[i].pulse.usage == PulseUsage.EXCITATION)
    return float(starts[r] - starts[last])


@pytest.mark.parametrize("name", sorted(CASES))
def test_k0_sample_comes_at_te_after_the_excitation(name: str) -> None:
    seq = _build(name)
    p = parse_protocol(CASES[name])
    n = seq.info.matrix[0]
    starts = _starts(seq)
    centre_seen = False
    for r, _, labels, times in _readout_times(seq):
        last = max(i for i in range(r + 1) if seq[i].pulse.usage == PulseUsage.EXCITATION)
        echo_time = float(times[n // 2] - starts[last])
        if p.kind in ("tse", "se"):
            spacing = p.te_ms if p.kind == "se" else p.echo_spacing_ms
            expected = (labels.segment + 1) * spacing * 1e-3
        else:
            expected = seq.info.te
        assert echo_time == pytest.approx(expected, abs=1e-12)
        if labels.kspace_encode_step_1 == n // 2:
            assert echo_time == pytest.approx(seq.info.te, abs=1e-12)  # the centre line sets the TE
            centre_seen = True
    assert centre_seen


def test_spin_echo_follows_spin() -> None:
    """SPIN: 64 lines, 90° at 0, 180° at TE/2 = 20 ms, readout 64 × 0.1 ms around TE = 40 ms, TR 10 s."""
    seq = build(parse_protocol({"kind": "se"}), dtype=torch.float64)
    assert len(seq) == 128 and seq.adc_count == 64 * 64
    assert seq.info.fov[:2] == (0.064, 0.064) and seq.info.matrix == (64, 64, 1)
    assert (seq.info.te, seq.info.tr, seq.info.flip_angle_deg) == (0.04, 10.0, 90.0)
    for excitation, refocusing in zip(seq.repetitions[::2], seq.repetitions[1::2], strict=True):
        assert excitation.pulse.usage == PulseUsage.EXCITATION
        assert float(excitation.pulse.angle) == pytest.approx(math.pi / 2)
        assert float(excitation.pulse.phase) == pytest.approx(math.pi / 2)
        assert refocusing.pulse.usage == PulseUsage.REFOCUSING
        assert float(refocusing.pulse.angle) == pytest.approx(math.pi) and float(refocusing.pulse.phase) == 0
        assert float(excitation.duration) == pytest.approx(0.02, abs=1e-12)
        assert float(excitation.duration + refocusing.duration) == pytest.approx(10.0, abs=1e-12)
    # Δk = 1/FOV: the readout gradient moment per 0.1 ms dwell is 15.625 /m (Gx = 3.67 mT/m for 1H)
    assert float(seq[1].gradm[seq[1].adc_usage][0, 0]) == pytest.approx(1 / 0.064)
    assert float(seq.duration) == pytest.approx(640.0, abs=1e-9)


def test_gre_rf_phases_follow_the_quadratic_scheme() -> None:
    seq = _build("gre")
    phase = 0.0
    for n, rep in enumerate(seq):
        phase = (phase + n * 117.0) % 360.0  # φ_n = φ_{n−1} + n·117°
        assert float(rep.pulse.phase) == pytest.approx(math.radians(phase), abs=1e-9)
        adc = rep.adc_phase[rep.adc_usage]
        assert torch.allclose(adc, rep.pulse.phase.expand_as(adc))
    off = _build("gre-unspoiled")
    assert all(float(rep.pulse.phase) == 0 for rep in off)


def test_gre_dummies_spoilers_and_tr() -> None:
    p = parse_protocol(CASES["gre"])
    seq = _build("gre")
    dk = 1 / p.fov
    assert len(seq) == p.dummies + p.matrix
    assert [int(rep.adc_usage.sum()) for rep in seq] == [0] * p.dummies + [p.matrix] * p.matrix
    for rep in seq:
        assert float(rep.duration) == pytest.approx(p.tr_ms * 1e-3, abs=1e-15)
        net = rep.gradm.sum(0)
        assert float(net[0]) == pytest.approx(p.spoiler_cycles_per_voxel * p.matrix * dk)  # cycles per voxel
        assert float(net[1]) == pytest.approx(0, abs=1e-9)  # phase encoding rewound
        assert float(rep.pulse.angle) == pytest.approx(math.radians(p.flip_angle_deg))
    assert float(seq.duration) == pytest.approx((p.dummies + p.matrix) * p.tr_ms * 1e-3)


def test_bssfp_is_balanced_and_alternates() -> None:
    p = parse_protocol(CASES["bssfp"])
    seq = _build("bssfp")
    prep, reps = seq[0], seq.repetitions[1:]
    assert float(prep.pulse.angle) == pytest.approx(math.radians(p.flip_angle_deg) / 2)
    assert float(prep.duration) == pytest.approx(p.tr_ms * 1e-3 / 2)
    assert math.cos(float(prep.pulse.phase) - float(reps[0].pulse.phase)) == pytest.approx(-1)
    assert len(reps) == p.dummies + p.matrix
    for i, rep in enumerate(reps):
        assert torch.allclose(rep.gradm.sum(0), torch.zeros(3, dtype=rep.gradm.dtype), atol=1e-9)
        assert float(rep.duration) == pytest.approx(p.tr_ms * 1e-3)
        assert math.cos(float(rep.pulse.phase)) == pytest.approx((-1) ** i)
        adc = rep.adc_phase[rep.adc_usage]
        assert torch.allclose(adc, rep.pulse.phase.expand_as(adc))
    assert seq.info.te == pytest.approx(p.tr_ms * 1e-3 / 2)


@pytest.mark.parametrize("name", ["tse-linear", "tse-centric"])
def test_tse_is_cpmg_with_the_centre_on_the_effective_echo(name: str) -> None:
    p = parse_protocol(CASES[name])
    seq = _build(name)
    etl, esp = p.echo_train_length, p.echo_spacing_ms * 1e-3
    shots = p.dummies + p.matrix // etl
    assert len(seq) == shots * (etl + 1)
    dk = 1 / p.fov
    for s in range(shots):
        shot = seq.repetitions[s * (etl + 1) : (s + 1) * (etl + 1)]
        assert float(torch.stack([rep.duration for rep in shot]).sum()) == pytest.approx(p.tr_ms * 1e-3)
        assert shot[0].pulse.usage == PulseUsage.EXCITATION
        assert float(shot[0].pulse.phase) == pytest.approx(math.pi / 2)
        assert float(shot[0].duration) == pytest.approx(esp / 2)
        # CPMG: k just before each refocusing pulse is the same, (N/2 + 1)·Δk in x, 0 in y
        k = torch.zeros(3, dtype=torch.float64)
        for e, rep in enumerate(shot):
            if e:
                assert rep.pulse.usage == PulseUsage.REFOCUSING and float(rep.pulse.phase) == 0
                assert float(rep.pulse.angle) == pytest.approx(math.radians(p.refocusing_angle_deg))
                assert torch.allclose(k, torch.tensor([(p.matrix // 2 + 1) * dk, 0, 0], dtype=k.dtype))
                k = -k
            span = rep.gradm[:-1] if e == etl else rep.gradm  # the last echo ends with the spoiler
            k = k + span.sum(0)
    labels = [lab for _, _, _, lab in seq.readouts()]
    centre = next(lab for lab in labels if lab.kspace_encode_step_1 == p.matrix // 2)
    assert centre.segment == p.effective_echo
    assert seq.info.te == pytest.approx(p.effective_te)
    if p.order == "linear":
        assert all(lab.kspace_encode_step_1 // (p.matrix // etl) == lab.segment for lab in labels)
    else:
        by_echo = {e: {lab.kspace_encode_step_1 for lab in labels if lab.segment == e} for e in range(etl)}
        assert by_echo == {2: {6, 7, 8, 9}, 1: {4, 5, 10, 11}, 3: {2, 3, 12, 13}, 0: {0, 1, 14, 15}}


def test_train_order_centric_ranks() -> None:
    assert train_order(8, 2, "centric", 0) == [[4, 6], [3, 1], [5, 7], [2, 0]]
    assert train_order(8, 4, "linear") == [[0, 2, 4, 6], [1, 3, 5, 7]]


def test_irgre_inversion_ti_and_tr() -> None:
    p = parse_protocol(CASES["irgre-train"])
    seq = _build("irgre-train")
    per = p.lines_per_inversion + 1
    blocks = p.dummies + p.matrix // p.lines_per_inversion
    assert len(seq) == blocks * per
    starts = _starts(seq)
    for b in range(blocks):
        inversion = seq[b * per]
        assert inversion.pulse.usage == PulseUsage.INVERSION and float(
            inversion.pulse.angle
        ) == pytest.approx(math.pi)
        assert float(starts[b * per + 1] - starts[b * per]) == pytest.approx(p.ti_ms * 1e-3)
        block = torch.stack([rep.duration for rep in seq.repetitions[b * per : (b + 1) * per]]).sum()
        assert float(block) == pytest.approx(p.tr_ms * 1e-3)
        for i in range(1, p.lines_per_inversion):
            assert float(seq[b * per + i].duration) == pytest.approx(p.gre_tr_ms * 1e-3)
    first = [lab for _, _, _, lab in seq.readouts() if lab.segment == 0]
    assert {lab.kspace_encode_step_1 for lab in first} == {6, 7, 8, 9}  # centric: centre lines right after TI
    excitations = [rep for rep in seq if rep.pulse.usage == PulseUsage.EXCITATION]
    for n, rep in enumerate(excitations):
        assert float(rep.pulse.phase) == pytest.approx(math.radians(117 * n * (n + 1) / 2 % 360), abs=1e-9)


def test_info_and_default_dtype() -> None:
    seq = build(parse_protocol({"kind": "gre", "matrix": 8, "dummies": 0, "name": "t1w"}))
    assert seq[0].gradm.dtype == torch.float32 and seq[0].adc_usage.dtype == torch.bool
    info = seq.info
    assert (info.name, info.trajectory, info.matrix, info.contrasts) == ("t1w", "cartesian", (8, 8, 1), 1)
    assert info.fov == pytest.approx((0.2, 0.2, 0.005))
    assert (info.te, info.tr, info.flip_angle_deg) == pytest.approx((0.005, 0.012, 15.0))
    assert info.protocol["kind"] == "gre" and info.protocol["te_ms"] == 5.0
