"""IEC dB/dt model, PNS-aware export on a Prisma, and per-pulse RF shapes in the .seq."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pypulseq as pp
import pytest

from mrbridge.sequence.builders import build
from mrbridge.sequence.export import export_seq, system_opts
from mrbridge.sequence.model import PulseUsage
from mrbridge.sequence.pns import max_pns_slew, pns_ratio
from mrbridge.sequence.protocol import GreProtocol, load_protocol
from mrbridge.sequence.safety import check_safety
from mrbridge.system import SYSTEMS_DIR, System
from tests.export.common import read_back
from tests.helpers import REPO


@pytest.fixture(scope="module")
def prisma() -> System:
    return System.load(SYSTEMS_DIR / "prisma.yaml")


def _check(report, prefix: str):
    return next(c for c in report.checks if c.name.startswith(prefix))


def _ramps(pseq: pp.Sequence, gamma: float) -> tuple[np.ndarray, np.ndarray]:
    """|slew| (T/m/s) and duration (s) of every linear piece with a slope, all axes."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        polys = pseq.get_gradients()
    slews, taus = [], []
    for poly in polys[:3]:
        if poly is None:
            continue
        x, c = np.asarray(poly.x), np.asarray(poly.c)
        slope, seg = np.abs(c[-2]) / gamma, np.diff(x)
        keep = np.isfinite(slope) & (seg > 1e-12) & (slope > 1e-3)
        slews.append(slope[keep])
        taus.append(seg[keep])
    return np.concatenate(slews), np.concatenate(taus)


def test_iec_limit_against_hand_computed_numbers(prisma) -> None:
    iec = prisma.iec  # 0.8 · 20 T/s · (1 + 0.36 ms/τ), r = 0.2 m
    assert pns_ratio(32 / 0.2 * 0.36e-3, 0.36e-3, iec) == pytest.approx(1.0)  # 32 T/s = 16 · (1 + 1) at 0.36 ms
    assert pns_ratio(np.array([16.0 / 0.2 * 1e3]), np.array([1e3]), iec)[0] == pytest.approx(1.0, rel=1e-6)  # f·b
    # a ramp to 48 mT/m at 200 T/m/s lasts 0.24 ms: dB/dt = 40 T/s = the limit
    assert pns_ratio(0.048, 0.24e-3, iec) == pytest.approx(1.0)
    assert pns_ratio(0.060, 0.3e-3, iec) == pytest.approx(200 * 0.2 / (16 * (1 + 0.36 / 0.3)))  # 113.6 %
    assert max_pns_slew(0.048, iec) == pytest.approx(200.0)
    assert max_pns_slew(0.080, iec) == pytest.approx(16 / (0.2 - 16 * 0.36e-3 / 0.08))  # 125 T/m/s
    assert max_pns_slew(0.080, iec) == pytest.approx(125.0)
    assert max_pns_slew(0.0287, iec) == math.inf  # ΔG·r ≤ f·b·c (28.8 mT/m): no slew can exceed the limit
    assert max_pns_slew(0.0289, iec) > 10_000
    assert max_pns_slew(0.02, iec) == math.inf and max_pns_slew(0.0, iec) == math.inf
    for g in (0.03, 0.05, 0.08, 0.2):  # the ramp at S_max(G) sits exactly on the limit
        s = max_pns_slew(g, iec)
        assert pns_ratio(g, g / s, iec) == pytest.approx(1.0)
        assert g * 0.2 / (g / s) == pytest.approx(16 * (1 + 0.36e-3 / (g / s)))  # dB/dt = the limit


def test_safety_check_reports_the_iec_ratio_of_one_trapezoid(prisma) -> None:
    opts = system_opts(prisma)
    pseq = pp.Sequence(system=opts)
    amp = 0.060 * prisma.gamma_hz_per_t  # 60 mT/m reached in 0.3 ms: 200 T/m/s
    pseq.add_block(pp.make_trapezoid("x", amplitude=amp, rise_time=0.3e-3, flat_time=1e-3, system=opts))
    pns = _check(check_safety(pseq, prisma), "PNS (IEC")
    assert pns.value == pytest.approx(100 * 200 * 0.2 / (16 * (1 + 0.36 / 0.3)), rel=1e-6)  # 113.6 %
    assert not pns.passed


def _strong_gre() -> GreProtocol:
    """16², FOV 100 mm, dwell 4 µs: readout 1/(FOV·dwell) = 2.5 MHz/m = 58.7 mT/m, above 48 mT/m."""
    return GreProtocol(matrix=16, fov_mm=100, dwell_us=4, te_ms=2, tr_ms=8, dummies=0)


def test_strong_readout_export_passes_iec_pns_on_prisma(prisma, tmp_path) -> None:
    seq = build(_strong_gre())
    result = export_seq(seq, prisma, path=tmp_path / "strong.seq")
    report = check_safety(tmp_path / "strong.seq", prisma)
    assert report.passed, report.summary()
    assert _check(report, "timing errors").value == 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ok, errors = read_back(tmp_path / "strong.seq").check_timing()
    assert ok, errors
    pns = _check(report, "PNS (IEC")
    assert 90 < pns.value < 100  # slew at 95 % of the allowed one: dB/dt at 95–100 % of its limit
    # every ramp of the file obeys S ≤ S_max(ΔG), ΔG = S·τ; the readout ramps below the 200 T/m/s hardware slew
    slew, tau = _ramps(result.pulseq, prisma.gamma_hz_per_t)
    allowed = np.array([max_pns_slew(s * t, prisma.iec) for s, t in zip(slew, tau, strict=True)])
    assert np.all(slew <= 0.95 * allowed * (1 + 1e-6))
    assert slew.max() <= prisma.max_slew_t_per_m_per_s * (1 + 1e-6)
    readout = prisma.gamma_hz_per_t * 0.0587
    assert slew[np.abs(slew * tau * prisma.gamma_hz_per_t - readout) < 0.01 * readout].max() < 0.95 * 160

    # the same sequence with PNS-unaware ramps (an IEC model that never limits the slew) fails the check
    unaware = prisma.model_copy(update={"iec": prisma.iec.model_copy(update={"dbdt_radius_m": 1e-9})})
    fast = check_safety(export_seq(seq, unaware).pulseq, prisma)
    assert _check(fast, "slew x").passed and _check(fast, "gradient x").passed
    assert not _check(fast, "PNS (IEC").passed


def test_pulse_shapes_reach_the_seq_file(prisma, tmp_path) -> None:
    protocol = load_protocol(REPO / "protocols" / "se.yaml")
    assert (protocol.rf_ms, protocol.refocusing_rf_ms) == (1.5, 3)
    seq = build(protocol, matrix=16)
    assert {r.pulse.usage: r.pulse.shape.duration for r in seq} == {PulseUsage.EXCITATION: pytest.approx(1.5e-3),
                                                                     PulseUsage.REFOCUSING: pytest.approx(3e-3)}
    export_seq(seq, prisma, path=tmp_path / "se.seq")
    export_seq(seq, prisma, rf_duration=2e-3, path=tmp_path / "se2.seq")
    for name, expected in (("se.seq", {"excitation": 1.5e-3, "refocusing": 3e-3}),
                           ("se2.seq", {"excitation": 2e-3, "refocusing": 2e-3})):
        pseq = read_back(tmp_path / name)
        durations: dict[str, set[float]] = {}
        for block in pseq.block_events:
            rf = pseq.get_block(block).rf
            if rf is not None:
                durations.setdefault(rf.use, set()).add(round(float(rf.shape_dur), 9))
        assert durations == {use: {d} for use, d in expected.items()}, name


def test_spin_se_protocol_passes_every_check_on_prisma(prisma) -> None:
    seq = build(load_protocol(REPO / "protocols" / "se.yaml"))
    assert seq.info.matrix[:2] == (64, 64)
    result = export_seq(seq, prisma)
    assert not result.changes
    report = check_safety(result.pulseq, prisma)
    assert report.passed, report.summary()
    peak = _check(report, "peak B1")
    assert peak.value == pytest.approx(46.4 / 3, rel=0.01)  # the 180° (and the 1.5-ms 90°): 15.5 µT
    # 1 ms would need 46.4 µT: above the Prisma's 20 µT
    short = check_safety(export_seq(seq, prisma, rf_duration=1e-3).pulseq, prisma)
    assert _check(short, "peak B1").value == pytest.approx(46.4, rel=0.01)
    assert not _check(short, "peak B1").passed
