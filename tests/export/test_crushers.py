"""Crushers around every refocusing pulse of an exported spin echo / TSE.

Equal z lobes before and after each refocusing pulse leave the echo (k negated by the pulse: +C, −C, +C → 0)
and dephase the FID of an imperfect refocusing pulse (+C only). The FID is measured by phase cycling: shifting
every refocusing pulse's phase by π flips the sign of its FID (∝ e^{iφ}) but not of the echo (∝ e^{2iφ}) nor of
the unrefocused part, so FID = (S(0) − S(π))/2 and echo = (S(0) + S(π))/2.
"""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pytest
import torch

from mrbridge.errors import ConfigError
from mrbridge.sequence.builders import build
from mrbridge.sequence.export import CRUSHER_CYCLES, export_seq
from mrbridge.sequence.import_seq import import_seq
from mrbridge.sequence.model import PulseUsage, Sequence
from mrbridge.sequence.protocol import load_protocol
from mrbridge.sim.simulate import simulate
from mrbridge.system import System
from mrbridge.twin.phantoms import builtin
from mrbridge.twin.zresolved import zresolved
from tests.export.common import kspace_error_in_steps, read_back
from tests.helpers import REPO

THICKNESS = 5e-3  # m, protocols/se.yaml's slice


@pytest.fixture(scope="module")
def prisma() -> System:
    return System.load("prisma")


def _refocusing_phase_shifted(seq: Sequence, shift: float) -> Sequence:
    reps = [dataclasses.replace(rep, pulse=dataclasses.replace(rep.pulse, phase=rep.pulse.phase + shift))
            if rep.pulse.usage == PulseUsage.REFOCUSING else rep for rep in seq]
    return Sequence(reps, seq.info)


def _z_around_refocusing(seq: Sequence) -> list[tuple[float, float]]:
    """(z moment of the event before, of the event after) every refocusing pulse, 1/m."""
    out = []
    for r in range(1, len(seq)):
        if seq[r].pulse.usage == PulseUsage.REFOCUSING:
            out.append((float(seq[r - 1].gradm[-1, 2]), float(seq[r].gradm[0, 2])))
    return out


@pytest.mark.parametrize("kind", ["se", "tse"])
def test_equal_crushers_around_every_refocusing_pulse_keep_k(tmp_path, prisma, kind) -> None:
    seq = build(load_protocol(REPO / "protocols" / f"{kind}.yaml").model_copy(update={"dummies": 0}), matrix=16)
    result = export_seq(seq, prisma, path=tmp_path / "c.seq", slice_thickness=THICKNESS)
    crusher = CRUSHER_CYCLES / THICKNESS
    pairs = _z_around_refocusing(result.sequence)
    assert len(pairs) == sum(rep.pulse.usage == PulseUsage.REFOCUSING for rep in seq) > 0
    # the same lobe before and after every pulse (CPMG: every echo interval alike), 4 cycles across the slice
    np.testing.assert_allclose(pairs, crusher, rtol=1e-6)
    # the echoes are untouched: k at every sample (the file's, by pypulseq) is the builder's, k_z = 0
    torch.testing.assert_close(result.sequence.kspace(), seq.kspace())
    back = read_back(tmp_path / "c.seq")
    assert kspace_error_in_steps(back, result.sequence).max() < 1e-3
    ok, errors = result.pulseq.check_timing()
    assert ok, errors[:3]
    # the file really plays them: the imported z moments around each pulse are the crushers (± the slice rephasing
    # is folded in: the lobes are measured from RF centre to RF centre)
    imported = _z_around_refocusing(import_seq(tmp_path / "c.seq"))
    np.testing.assert_allclose(imported, crusher, rtol=1e-3)
    # crusher_cycles=0: today's file, no net z moment around the pulses
    plain = export_seq(seq, prisma, slice_thickness=THICKNESS, crusher_cycles=0)
    assert np.abs(_z_around_refocusing(plain.sequence)).max() == 0.0


def test_crusher_area_is_configurable_and_checked(prisma) -> None:
    seq = build(load_protocol(REPO / "protocols" / "se.yaml"), matrix=8)
    result = export_seq(seq, prisma, slice_thickness=THICKNESS, crusher_cycles=2.5)
    np.testing.assert_allclose(_z_around_refocusing(result.sequence), 2.5 / THICKNESS, rtol=1e-6)
    with pytest.raises(ConfigError, match="crusher_cycles = -1"):
        export_seq(seq, prisma, crusher_cycles=-1)


def test_a_model_with_its_own_z_lobes_is_played_as_it_is(prisma) -> None:
    seq = build(load_protocol(REPO / "protocols" / "se.yaml"), matrix=8)
    reps = []
    for r, rep in enumerate(seq):
        g = rep.gradm.clone()
        if rep.pulse.usage == PulseUsage.REFOCUSING:
            g[0, 2] = 300.0
        if r + 1 < len(seq) and seq[r + 1].pulse.usage == PulseUsage.REFOCUSING:
            g[-1, 2] = 300.0
        reps.append(dataclasses.replace(rep, gradm=g))
    own = Sequence(reps, seq.info)
    result = export_seq(own, prisma, slice_thickness=THICKNESS)
    np.testing.assert_allclose(_z_around_refocusing(result.sequence), 300.0, rtol=1e-6)


def test_crushers_suppress_the_fid_of_a_150_degree_refocusing_pulse(tmp_path, prisma) -> None:
    """SE (protocols/se.yaml, 16², 150° refocusing) exported with and without crushers, imported, simulated with
    the Bloch engine over the slice profile (z-resolved twin): the refocusing FID is 0.03 % of the echo with the
    default crushers and 15 % without them (measured)."""
    protocol = load_protocol(REPO / "protocols" / "se.yaml").model_copy(update={"refocusing_angle_deg": 150.0})
    seq = build(protocol, matrix=16)
    slab = zresolved(builtin("brain", matrix=16), thickness=THICKNESS)
    ratio = {}
    for cycles in (CRUSHER_CYCLES, 0.0):
        signals = []
        for shift in (0.0, math.pi):
            path = tmp_path / f"se_{cycles:g}_{shift:.1f}.seq"
            export_seq(_refocusing_phase_shifted(seq, shift), prisma, path=path, slice_thickness=THICKNESS,
                       crusher_cycles=cycles)
            with warnings.catch_warnings(), torch.no_grad():
                warnings.simplefilter("ignore")
                raw = simulate(import_seq(path), slab, engine="bloch", spins=64, slice_profile=True)
            signals.append(raw.kdata.flatten())
        fid, echo = (signals[0] - signals[1]) / 2, (signals[0] + signals[1]) / 2
        ratio[cycles] = float(fid.norm() / echo.norm())
    assert ratio[CRUSHER_CYCLES] < 0.02, ratio
    assert ratio[0.0] > 0.08, ratio
    assert ratio[0.0] > 10 * ratio[CRUSHER_CYCLES], ratio


def test_the_protocol_states_the_crushers_and_the_export_follows_it(prisma, tmp_path) -> None:
    """SE/TSE protocols carry crusher_cycles (default CRUSHER_CYCLES) and crusher_axis z; export without an explicit
    crusher_cycles plays the protocol's, an explicit value overrides it; a negative area names the key."""
    se = load_protocol(REPO / "protocols" / "se.yaml")
    assert (se.crusher_cycles, se.crusher_axis) == (CRUSHER_CYCLES, "z")  # type: ignore[union-attr]
    seq = build(se.model_copy(update={"crusher_cycles": 2.0}), matrix=8)
    assert seq.info.protocol["crusher_cycles"] == 2.0
    np.testing.assert_allclose(_z_around_refocusing(export_seq(seq, prisma, slice_thickness=THICKNESS).sequence),
                               2.0 / THICKNESS, rtol=1e-6)
    np.testing.assert_allclose(
        _z_around_refocusing(export_seq(seq, prisma, slice_thickness=THICKNESS, crusher_cycles=6).sequence),
        6.0 / THICKNESS, rtol=1e-6)
    tse = build(load_protocol(REPO / "protocols" / "tse.yaml").model_copy(update={"crusher_cycles": 0.0}), matrix=16)
    assert np.abs(_z_around_refocusing(export_seq(tse, prisma, slice_thickness=THICKNESS).sequence)).max() == 0.0
    bad = tmp_path / "se.yaml"
    bad.write_text((REPO / "protocols" / "se.yaml").read_text().replace("crusher_cycles: 4", "crusher_cycles: -1"))
    with pytest.raises(ConfigError, match="crusher_cycles"):
        load_protocol(bad)
    bad.write_text((REPO / "protocols" / "se.yaml").read_text().replace("crusher_axis: z", "crusher_axis: x"))
    with pytest.raises(ConfigError, match="crusher_axis"):
        load_protocol(bad)
