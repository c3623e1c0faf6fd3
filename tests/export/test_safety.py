"""Safety: the SAR/B1 checks trip on a hard TSE and pass a gentle one; gradient, PNS and report figures."""

from __future__ import annotations

import json

import pytest
from pypulseq.utils.safe_pns_prediction import safe_example_hw

from mrbridge.errors import ConfigError
from mrbridge.sequence.builders import build
from mrbridge.sequence.export import export_seq
from mrbridge.sequence.protocol import load_protocol
from mrbridge.sequence.safety import check_safety
from mrbridge.system import SYSTEMS_DIR, System
from tests.export.handmade import gre
from tests.helpers import REPO


@pytest.fixture(scope="module")
def generic() -> System:
    return System.load(SYSTEMS_DIR / "generic3t.yaml")


def _tse(refocusing_deg: float):
    p = load_protocol(REPO / "protocols" / "tse.yaml")
    return build(p.model_copy(update={"refocusing_angle_deg": refocusing_deg, "echo_spacing_ms": 6,
                                      "echo_train_length": 16, "te_ms": 48, "tr_ms": 100, "dwell_us": 20}),
                 matrix=32)


def test_tse_180_trips_sar_and_b1_lower_angles_pass(generic) -> None:
    hard = check_safety(export_seq(_tse(180), generic, rf_duration=2e-3).pulseq, generic)
    names = {c.name for c in hard.failures()}
    assert not hard.passed
    assert {"peak B1", "head SAR (6 min)", "head SAR (10 s)"} <= names
    peak = next(c for c in hard.checks if c.name == "peak B1")
    assert peak.limit == 20.0 and peak.value > 20.0 and peak.block is not None
    assert "limit 20 µT" in str(peak) and "block" in str(peak)
    sar = next(c for c in hard.checks if c.name == "head SAR (6 min)")
    assert sar.limit == 3.2 and "3.2 W/kg" in str(sar)

    gentle = check_safety(export_seq(_tse(60), generic, rf_duration=2e-3).pulseq, generic)
    assert gentle.passed, gentle.summary()
    # the energy model: SAR scales with the square of the refocusing angle's B1 (plus the fixed 90°s)
    hard_sar, gentle_sar = (next(c.value for c in r.checks if c.name == "head SAR (6 min)") for r in (hard, gentle))
    assert 4 < hard_sar / gentle_sar < 9


def test_sar_scales_with_patient_mass_and_coil(generic) -> None:
    pulseq = export_seq(_tse(120), generic, rf_duration=2e-3).pulseq
    light = check_safety(pulseq, generic, patient_kg=50)
    heavy = check_safety(pulseq, generic, patient_kg=100)
    wb = "whole-body SAR (6 min)"
    value = {r.patient_kg: next(c.value for c in r.checks if c.name == wb) for r in (light, heavy)}
    assert value[50] == pytest.approx(2 * value[100])
    body = check_safety(pulseq, generic, coil="body")
    assert any(c.name.startswith("partial-body SAR") and c.limit == pytest.approx(2.0) for c in body.checks)
    with pytest.raises(ConfigError, match="knee"):
        check_safety(pulseq, generic, coil="knee")  # type: ignore[arg-type]


def test_gradients_beyond_a_weaker_system_are_named(tmp_path) -> None:
    prisma = System.load(SYSTEMS_DIR / "prisma.yaml")
    generic = System.load(SYSTEMS_DIR / "generic3t.yaml")
    export_seq(gre(16, prephase_time=0.5e-3), prisma, path=tmp_path / "fast.seq")
    on_prisma = check_safety(tmp_path / "fast.seq", prisma)
    assert all(c.passed for c in on_prisma.checks if c.name.startswith(("gradient", "slew", "timing")))
    on_generic = check_safety(tmp_path / "fast.seq", generic)
    failed = {c.name for c in on_generic.failures()}
    assert {"slew x", "gradient z"} <= failed
    slew = next(c for c in on_generic.checks if c.name == "slew x")
    assert slew.limit == 130 and 130 < slew.value <= 200 and slew.block is not None


def test_pns_safe_model_when_the_system_has_it(tmp_path, generic) -> None:
    hw = safe_example_hw()
    axes = {a: {k: getattr(getattr(hw, a), k) for k in ("tau1", "tau2", "tau3", "a1", "a2", "a3", "stim_limit",
                                                          "stim_thresh", "g_scale")} for a in "xyz"}
    with_safe = System.model_validate({**generic.model_dump(), "pns_safe": {"name": hw.name, **axes}})
    pulseq = export_seq(gre(4, tr=4e-3, prephase_time=1.5e-3), generic).pulseq
    safe = next(c for c in check_safety(pulseq, with_safe).checks if c.name.startswith("PNS"))
    iec = next(c for c in check_safety(pulseq, generic).checks if c.name.startswith("PNS"))
    assert safe.name == "PNS (SAFE model)" and iec.name == "PNS (IEC dB/dt estimate)"
    assert 0 < safe.value and 0 < iec.value


def test_report_json_records_every_figure(tmp_path, generic) -> None:
    report = check_safety(export_seq(gre(8), generic).pulseq, generic)
    report.save(tmp_path / "safety.json")
    data = json.loads((tmp_path / "safety.json").read_text())
    assert data["passed"] is report.passed
    names = [c["name"] for c in data["checks"]]
    for expected in ("timing errors", "gradient x", "slew z", "peak B1", "B1+rms (10 s)", "whole-body SAR (6 min)",
                     "head SAR (10 s)"):
        assert expected in names


def test_real_prisma_gre_is_safe_on_prisma() -> None:
    """The tutorial GRE was measured on a Prisma: its gradients, B1 and SAR pass our Prisma limits."""
    from tests.helpers import shared_data

    path = shared_data("11_from_GRE_to_EPI__01_GRE.seq")
    report = check_safety(path, System.load(SYSTEMS_DIR / "prisma.yaml"))
    assert report.passed, report.summary()
    assert report.duration_s == pytest.approx(256 * 0.021)  # 256 lines at TR 21 ms
