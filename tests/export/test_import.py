"""Import: real third-party .seq files, malformed files, and export → import round trips."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch

from mrbridge.errors import InputError
from mrbridge.sequence.builders import build
from mrbridge.sequence.export import export_seq
from mrbridge.sequence.import_seq import import_seq
from mrbridge.sequence.model import PulseUsage
from mrbridge.sequence.protocol import load_protocol
from mrbridge.system import SYSTEMS_DIR, System
from tests.export.common import kspace_error_in_steps, read_back
from tests.export.handmade import gre, spin_echo_fid
from tests.helpers import REPO, nrmse, shared_data

TUTORIALS = {
    "11_from_GRE_to_EPI__01_GRE.seq": (256, 256, 10.0),
    "02_basic_gradient_echo__07_GRE_xSpoil_yRephase_RFspoilADC_dummy.seq": (256, 256, None),
    "11_from_GRE_to_EPI__05_EPI.seq": (128, 152, 90.0),
}


@pytest.fixture(scope="module")
def prisma() -> System:
    return System.load(SYSTEMS_DIR / "prisma.yaml")


@pytest.mark.parametrize("name", sorted(TUTORIALS))
def test_real_seq_files_import(name: str) -> None:
    path = shared_data(f"pulseq-tutorials/{name}".removeprefix("pulseq-tutorials/"))
    seq = import_seq(path)
    readouts, samples, flip = TUTORIALS[name]
    assert len(seq.readouts()) == readouts
    assert {end - start for _, start, end, _ in seq.readouts()} == {samples}
    if flip is not None:
        assert math.degrees(float(seq[0].pulse.angle)) == pytest.approx(flip, abs=0.05)
    assert seq[0].pulse.usage == PulseUsage.EXCITATION
    # k at every sample equals pypulseq's own calculate_kspace (float32 model: 1e-3 of a step)
    assert kspace_error_in_steps(read_back(path), seq).max() < 1e-3


def test_rf_spoiled_tutorial_keeps_rf_and_adc_phases() -> None:
    path = shared_data("02_basic_gradient_echo__07_GRE_xSpoil_yRephase_RFspoilADC_dummy.seq")
    seq = import_seq(path)
    rf_phases = np.array([float(rep.pulse.phase) for rep in seq])
    assert np.ptp(np.diff(np.unwrap(rf_phases))) > 1  # quadratic RF spoiling
    reps_with_adc = [rep for rep in seq if rep.adc_usage.any()]
    for rep in reps_with_adc[:20]:  # the demo sets the ADC phase to the RF phase
        adc_phase = rep.adc_phase[rep.adc_usage]
        assert torch.allclose(torch.remainder(adc_phase - rep.pulse.phase + math.pi, 2 * math.pi) - math.pi,
                              torch.zeros_like(adc_phase), atol=1e-4)


def _malformed(tmp_path, text: str):
    path = tmp_path / "bad.seq"
    path.write_text(text)
    return path


@pytest.fixture(scope="module")
def good_text(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("good") / "good.seq"
    export_seq(gre(8), System.load(SYSTEMS_DIR / "prisma.yaml"), path=path)
    return path.read_text()


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda t: t[: len(t) // 2], "truncated"),
    (lambda t: t.replace("Hash ", "Hash 0"), "truncated or modified"),
    (lambda t: t[: t.index("[SHAPES]") + 40], "truncated"),  # ends inside [SHAPES], unsigned
    (lambda t: t.split("[SIGNATURE]")[0][: len(t) // 3], "truncated"),
    (lambda t: t.replace("minor 5", "minor 2"), "version 1.2, expected 1.4 or 1.5"),
    (lambda t: t.replace("[VERSION]", "[VERSON]"), r"no \[VERSION\]"),
    (lambda t: t.replace("[BLOCKS]", "[BLOCKZ]"), r"no \[BLOCKS\]"),
    (lambda t: "", r"no \[VERSION\]"),
])
def test_malformed_files_raise_input_error_naming_the_file(tmp_path, good_text, mutate, message) -> None:
    path = _malformed(tmp_path, mutate(good_text))
    with pytest.raises(InputError, match=message) as info:
        import_seq(path)
    assert str(path) in str(info.value)


def test_missing_file(tmp_path) -> None:
    with pytest.raises(InputError, match="no such file"):
        import_seq(tmp_path / "none.seq")


def _round_trip(seq, system, tmp_path, **options):
    exported = export_seq(seq, system, path=tmp_path / "rt.seq", **options)
    return exported.sequence, import_seq(tmp_path / "rt.seq")


@pytest.mark.parametrize("make", [lambda: gre(16), spin_echo_fid], ids=["gre", "se"])
def test_round_trip_preserves_pulses_phases_moments(tmp_path, prisma, make) -> None:
    exported, imported = _round_trip(make(), prisma, tmp_path)
    assert len(imported) == len(exported)
    for a, b in zip(exported, imported, strict=True):
        assert float(b.pulse.angle) == pytest.approx(float(a.pulse.angle), abs=1e-5)
        assert math.remainder(float(b.pulse.phase) - float(a.pulse.phase), 2 * math.pi) == pytest.approx(0, abs=1e-5)
        assert b.pulse.usage == a.pulse.usage
        assert b.readouts == a.readouts
    steps = (imported.kspace() - exported.kspace()) * torch.tensor(exported.info.fov)
    assert steps.abs().max() < 1e-3
    assert torch.allclose(imported.adc_times() - imported.adc_times()[0],
                          exported.adc_times() - exported.adc_times()[0], atol=1e-6)
    a_phase = torch.cat([rep.adc_phase[rep.adc_usage] for rep in exported])
    b_phase = torch.cat([rep.adc_phase[rep.adc_usage] for rep in imported])
    assert torch.allclose(torch.remainder(b_phase - a_phase + math.pi, 2 * math.pi) - math.pi,
                          torch.zeros_like(a_phase), atol=1e-5)
    assert imported.info.fov == pytest.approx(exported.info.fov)


@pytest.mark.parametrize("protocol", ["gre", "tse", "se", "bssfp", "irgre"])
def test_round_trip_simulates_like_the_builder(tmp_path, prisma, protocol) -> None:
    bloch = pytest.importorskip("mrbridge.sim.bloch")
    phantoms = pytest.importorskip("mrbridge.twin.phantoms")
    twin = phantoms.builtin("brain", matrix=16)
    seq = build(load_protocol(REPO / "protocols" / f"{protocol}.yaml"), matrix=16)
    # the builder's model has no crushers (the twin's B1+ makes the refocusing imperfect, and crushers would change
    # its signal by design: tests/export/test_crushers.py)
    _, imported = _round_trip(seq, prisma, tmp_path, crusher_cycles=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = bloch.simulate_bloch(seq, twin, spins=1024)  # same engine both sides: convergence irrelevant
        signal = bloch.simulate_bloch(imported, twin, spins=1024)
    assert nrmse(signal, reference) < 0.01
