"""Sequence model: lossless JSON, differentiable k-space, timing, and clear errors on bad files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mrbridge.errors import InputError
from mrbridge.sequence.builders import build
from mrbridge.sequence.model import Pulse, PulseShape, PulseUsage, ReadoutLabels, Repetition, Sequence
from mrbridge.sequence.protocol import parse_protocol


def _random_sequence(dtype: torch.dtype) -> Sequence:
    """A small TSE whose every float is perturbed to an arbitrary (non-decimal) value."""
    seq = build(parse_protocol({"kind": "tse", "matrix": 8, "echo_train_length": 4}), dtype=dtype)
    gen = torch.Generator().manual_seed(0)
    for rep in seq:
        for t in (rep.pulse.angle, rep.pulse.phase, rep.event_time, rep.gradm, rep.adc_phase):
            t.add_(torch.rand(t.shape, generator=gen, dtype=torch.float64).to(dtype) * 1e-3)
    seq[0].pulse.shape = PulseShape(kind="sinc", duration=2e-3, time_bandwidth=4.0)
    return seq


def _assert_identical(a: Sequence, b: Sequence) -> None:
    assert a.info == b.info and len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert (x.pulse.usage, x.pulse.shape, x.readouts) == (y.pulse.usage, y.pulse.shape, y.readouts)
        for s, t in [
            (x.pulse.angle, y.pulse.angle),
            (x.pulse.phase, y.pulse.phase),
            (x.event_time, y.event_time),
            (x.gradm, y.gradm),
            (x.adc_usage, y.adc_usage),
            (x.adc_phase, y.adc_phase),
        ]:
            assert s.dtype == t.dtype and s.shape == t.shape
            assert torch.equal(s.detach(), t), "JSON round trip changed a value"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_json_round_trip_is_lossless(tmp_path: Path, dtype: torch.dtype) -> None:
    seq = _random_sequence(dtype)
    seq.save(tmp_path / "seq.json")
    back = Sequence.load(tmp_path / "seq.json")
    _assert_identical(seq, back)
    assert back.readouts() == seq.readouts()


def test_round_trip_of_tensors_that_require_grad(tmp_path: Path) -> None:
    seq = _random_sequence(torch.float32)
    for rep in seq:
        rep.gradm.requires_grad_(True)
        rep.pulse.angle.requires_grad_(True)
    seq.save(tmp_path / "seq.json")
    back = Sequence.load(tmp_path / "seq.json")
    _assert_identical(seq, back)
    # the loaded tensors are plain leaves that can be optimized again
    for rep in back:
        rep.gradm.requires_grad_(True)
    back.kspace().pow(2).sum().backward()
    assert all(rep.gradm.grad is not None for rep in back)


def test_kspace_gradient_matches_its_definition() -> None:
    """k at sample i is the sum of the moments since the last excitation (negated at each refocusing)."""
    seq = build(parse_protocol({"kind": "se", "matrix": 8}), dtype=torch.float64)
    moments = [rep.gradm.requires_grad_(True) for rep in seq]
    k = seq.kspace()
    k[4, 0].backward()  # sample 4 of line 0: after excitation rep 0, then (negated) moments of rep 1
    assert torch.equal(moments[0].grad[:, 0], -torch.ones(1, dtype=torch.float64))
    # rep 1: prephaser, 8 samples, rewinder, spoiler; sample 4 ends the 5th ADC event
    expected = torch.tensor([1.0] * 6 + [0.0] * 5, dtype=torch.float64)
    assert torch.equal(moments[1].grad[:, 0], expected)
    assert all(float(m.grad.abs().sum()) == 0 for m in moments[2:])


def test_adc_times_and_duration() -> None:
    seq = build(parse_protocol({"kind": "gre", "matrix": 8, "dummies": 2}), dtype=torch.float64)
    times = seq.adc_times()
    assert times.shape == (64,)
    # first sample of the first line: 2 dummy TRs, then TE − (N/2 + 1 − 1)·dwell
    assert float(times[0]) == pytest.approx(2 * 0.012 + 0.005 - 4 * 50e-6)
    assert torch.allclose(torch.diff(times[:8]), torch.full((7,), 50e-6, dtype=torch.float64))
    assert float(seq.duration) == pytest.approx(10 * 0.012)


def test_to_and_detach_keep_structure() -> None:
    seq = build(parse_protocol({"kind": "bssfp", "matrix": 8}))
    wide = seq.to(dtype=torch.float64)
    assert wide[1].gradm.dtype == torch.float64 and wide[1].adc_usage.dtype == torch.bool
    assert torch.equal(wide.kspace().float(), seq.kspace())
    seq[1].gradm.requires_grad_(True)
    assert not seq.detach()[1].gradm.requires_grad


def test_bad_files_raise_input_error(tmp_path: Path) -> None:
    path = tmp_path / "seq.json"
    data = build(parse_protocol({"kind": "gre", "matrix": 8, "dummies": 0})).to_dict()
    path.write_text(json.dumps({**data, "format": "other"}))
    with pytest.raises(InputError, match="field 'format'"):
        Sequence.load(path)
    broken = json.loads(json.dumps(data))
    del broken["repetitions"][3]["gradm"]
    path.write_text(json.dumps(broken))
    with pytest.raises(InputError, match=r"repetitions\[3\]"):
        Sequence.load(path)
    path.write_text("{")
    with pytest.raises(InputError, match="not valid JSON"):
        Sequence.load(path)
    with pytest.raises(InputError, match="no such file"):
        Sequence.load(tmp_path / "absent.json")


def test_repetition_checks_labels_against_adc_runs() -> None:
    adc = torch.tensor([False, True, True, False, True])
    args = dict(event_time=torch.ones(5), gradm=torch.zeros(5, 3), adc_usage=adc, adc_phase=torch.zeros(5))
    pulse = Pulse(torch.tensor(1.0), torch.tensor(0.0), PulseUsage.EXCITATION)
    assert Repetition(pulse, **args).readout_spans() == [(1, 3), (4, 5)]
    with pytest.raises(ValueError, match="2 readouts"):
        Repetition(pulse, readouts=[ReadoutLabels()], **args)
