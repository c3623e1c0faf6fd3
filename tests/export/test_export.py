"""Export: pypulseq accepts every file, reads it back, and its k-space and timing equal the model's."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import yaml

from mrbridge.errors import ConfigError
from mrbridge.sequence.builders import build
from mrbridge.sequence.export import export_seq
from mrbridge.sequence.protocol import load_protocol
from mrbridge.system import SYSTEMS_DIR, System
from tests.export.common import kspace_error_in_steps, read_back
from tests.export.handmade import gre, spin_echo_fid
from tests.helpers import REPO

SEQUENCE_KINDS = ("se", "gre", "tse", "bssfp", "irgre")
PROTOCOLS = sorted(p for p in (REPO / "protocols").glob("*.yaml")
                   if (yaml.safe_load(p.read_text()) or {}).get("kind") in SEQUENCE_KINDS)


@pytest.fixture(scope="module")
def prisma() -> System:
    return System.load(SYSTEMS_DIR / "prisma.yaml")


def _exported_ok(seq, system, tmp_path, **kwargs):
    result = export_seq(seq, system, path=tmp_path / "out.seq", **kwargs)
    ok, errors = result.pulseq.check_timing()
    assert ok, errors[:3]
    back = read_back(tmp_path / "out.seq")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ok_back, _ = back.check_timing()
    assert ok_back
    assert kspace_error_in_steps(back, result.sequence).max() < 1e-3
    return result, back


def test_handmade_gre(tmp_path, prisma) -> None:
    seq = gre(16)
    result, back = _exported_ok(seq, prisma, tmp_path)
    assert result.changes == []  # everything fits: file timing = model timing
    torch.testing.assert_close(result.sequence.kspace(), seq.kspace())
    assert torch.allclose(result.sequence.adc_times() - result.sequence.adc_times()[0],
                          seq.adc_times() - seq.adc_times()[0], atol=1e-7)
    # [DEFINITIONS] for recon, a signature, Pulseq 1.5, no temporary file left behind
    text = (tmp_path / "out.seq").read_text()
    assert "minor 5" in text and "[SIGNATURE]" in text
    assert [float(v) for v in np.atleast_1d(back.definitions["FOV"])] == pytest.approx(list(seq.info.fov))
    assert [int(v) for v in np.atleast_1d(back.definitions["Matrix"])] == [16, 16, 1]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.seq"]
    # labels: one LIN per readout, in order
    assert list(back.evaluate_labels(evolution="adc")["LIN"]) == list(range(16))


def test_rf_and_adc_phases_survive(tmp_path, prisma) -> None:
    """RF spoiling: each excitation's phase and its ADC's phase are in the file."""
    seq = gre(8)
    _, back = _exported_ok(seq, prisma, tmp_path)
    _, fp_exc, _, _ = back.rf_times()
    _, fp_adc = back.adc_times()
    expected = np.array([float(rep.pulse.phase) for rep in seq])
    wrap = lambda a: np.angle(np.exp(1j * a))  # noqa: E731
    np.testing.assert_allclose(wrap(fp_exc[1] - expected), 0, atol=1e-5)
    np.testing.assert_allclose(wrap(np.asarray(fp_adc)[:, 1] - expected), 0, atol=1e-5)
    assert np.ptp(wrap(np.diff(expected))) > 1  # the phases really vary (quadratic spoiling)


def test_refocusing_keeps_k(tmp_path, prisma) -> None:
    """A 180° between prephaser and readout negates k in both the model and pypulseq's calculate_kspace."""
    _exported_ok(spin_echo_fid(), prisma, tmp_path)


def test_block_pulses_and_v14(tmp_path, prisma) -> None:
    _, back = _exported_ok(gre(8), prisma, tmp_path, rf="block", version="1.4")
    assert "minor 4" in (tmp_path / "out.seq").read_text()
    assert back.get_block(1).gz is None  # non-selective


@pytest.mark.parametrize("protocol", PROTOCOLS, ids=lambda p: p.stem)
def test_builder_protocols(tmp_path, prisma, protocol) -> None:
    seq = build(load_protocol(protocol), matrix=16)
    _exported_ok(seq, prisma, tmp_path)


def test_extend_lengthens_and_strict_refuses(tmp_path) -> None:
    system = System.load(SYSTEMS_DIR / "generic3t.yaml")
    seq = gre(32, prephase_time=0.3e-3)  # no room for RF tail + prephaser of 17 k-steps at 32 mT/m
    with pytest.raises(ConfigError, match=r"repetition 0, event 0: needs .* ms .* has 0\.3000 ms"):
        export_seq(seq, system, timing="strict")
    result, _ = _exported_ok(seq, system, tmp_path, timing="extend")
    changed = {(c.repetition, c.event) for c in result.changes}
    assert changed == {(r, 0) for r in range(32)}
    change = result.changes[0]
    assert change.old == pytest.approx(0.3e-3) and change.new > change.old
    assert float(result.sequence[0].event_time[0]) == pytest.approx(change.new)
    # the readout itself is untouched, and k is still exact (checked in _exported_ok)
    assert torch.equal(result.sequence[0].event_time[1:33], seq[0].event_time[1:33])


def test_readout_gradient_beyond_max_grad_is_refused() -> None:
    system = System.load(SYSTEMS_DIR / "generic3t.yaml")
    seq = gre(16, fov=0.01, dwell=2e-6)  # 1/(FOV·dwell) = 50 MHz/m ≫ 32 mT/m
    with pytest.raises(ConfigError, match="exceeds max_grad"):
        export_seq(seq, system)


def test_input_not_modified(prisma) -> None:
    seq = gre(8, prephase_time=0.3e-3)
    before = seq.to_dict()
    export_seq(seq, prisma)
    assert seq.to_dict() == before


def test_slice_thickness_sets_slice_select(prisma) -> None:
    thin = export_seq(gre(4), prisma, slice_thickness=2e-3).pulseq.get_block(1).gz
    thick = export_seq(gre(4), prisma, slice_thickness=8e-3).pulseq.get_block(1).gz
    assert thin.amplitude == pytest.approx(4 * thick.amplitude)
    assert thick.amplitude == pytest.approx(4 / 1e-3 / 8e-3)  # bandwidth / thickness, TBW 4, 1 ms
    assert math.isclose(export_seq(gre(4), prisma).pulseq.get_block(1).gz.amplitude, 4 / 1e-3 / 5e-3)
