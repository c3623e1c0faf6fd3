"""Slice-profile simulation: Cayley–Klein rotations of played RF waveforms, their import, and the Bloch engine."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mrbridge.errors import ConfigError, InputError
from mrbridge.sequence.builders import build
from mrbridge.sequence.export import export_seq
from mrbridge.sequence.import_seq import import_seq
from mrbridge.sequence.model import PulseWaveform, Sequence
from mrbridge.sequence.protocol import load_protocol
from mrbridge.sim.bloch import _rf, simulate_bloch
from mrbridge.sim.simulate import simulate
from mrbridge.sim.slice_profile import cayley_klein, lobe_moments, profile, rotate
from mrbridge.system import SYSTEMS_DIR, System
from mrbridge.twin.twin import Twin
from mrbridge.twin.zresolved import zresolved
from tests.helpers import REPO, nrmse, shared_data

THICKNESS = 5e-3  # m


def _sinc(flip: float, *, samples: int = 1000, duration: float = 2e-3, tbw: float = 4.0) -> PulseWaveform:
    """Unapodised sinc of ``tbw`` zero crossings with the slice-select gradient of THICKNESS."""
    dt = duration / samples
    t = (np.arange(samples) + 0.5) * dt - duration / 2
    shape = np.sinc(tbw * t / duration)
    b1 = shape / (shape.sum() * dt) * flip / (2 * math.pi)
    return PulseWaveform(dt, torch.tensor(b1, dtype=torch.complex64),
                         torch.full((samples,), tbw / duration / THICKNESS), duration / 2)


def _random_state(count: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return (torch.randn(count, dtype=torch.complex128, generator=g),
            torch.randn(count, dtype=torch.float64, generator=g))


def test_block_pulse_without_gradient_is_the_instantaneous_rotation() -> None:
    samples, dt, angle, phase = 200, 5e-6, 1.1, 0.7
    b1 = torch.full((samples,), angle / (2 * math.pi * samples * dt) * complex(math.cos(phase), math.sin(phase)),
                    dtype=torch.complex128)
    wave = PulseWaveform(dt, b1, torch.zeros(samples), samples * dt / 2)
    z = torch.linspace(-0.01, 0.01, 7, dtype=torch.float64)
    mp, mz = _random_state(7)
    got = rotate(*cayley_klein(wave, z), mp, mz)
    want = _rf(mp, mz, torch.tensor(angle, dtype=torch.float64), torch.tensor(phase, dtype=torch.float64))
    assert torch.allclose(got[0], want[0], atol=1e-12) and torch.allclose(got[1], want[1], atol=1e-12)
    # the convention: Mz = 1 → M+ = −i·e^{iφ}·sin α
    m = profile(wave, z[:1])[0]
    assert abs(m - (-1j) * complex(math.cos(phase), math.sin(phase)) * math.sin(angle)) < 1e-12


def test_time_stepped_pulse_with_the_model_precession_matches_the_centred_operator() -> None:
    """Independent of the Cayley–Klein algebra: the pulse played as many tiny instantaneous rotations (the
    engine's _rf) with the model's free precession M+ → M+·e^{−i2π·gz·z·dt} around each equals
    P(k_after)·R_eff·P(k_before), for an asymmetric complex pulse over an asymmetric gradient."""
    samples, dt = 4000, 5e-7
    t = (np.arange(samples) + 0.5) * dt
    b1 = 400 * (1 + t / t[-1]) * np.exp(1j * 2 * math.pi * 300 * t)  # Hz, ramped and frequency-swept
    gz = 2e5 * (1 + 0.5 * np.sin(2 * math.pi * t / t[-1]))  # Hz/m
    wave = PulseWaveform(dt, torch.tensor(b1), torch.tensor(gz), 0.4 * samples * dt)
    z = torch.linspace(-4e-3, 4e-3, 9, dtype=torch.float64)
    mp, mz = _random_state(9)
    k_before, k_after = lobe_moments(wave)
    assert k_before == pytest.approx(float(gz[: int(0.4 * samples)].sum()) * dt)
    cp, cz = rotate(*cayley_klein(wave, z), mp * torch.exp(-2j * math.pi * k_before * z), mz)
    cp = cp * torch.exp(-2j * math.pi * k_after * z)
    sp, sz = mp, mz
    for i in range(samples):  # symmetric splitting: half the precession, the rotation, the other half
        sp = sp * torch.exp(-1j * math.pi * gz[i] * dt * z)
        sp, sz = _rf(sp, sz, torch.tensor(2 * math.pi * abs(b1[i]) * dt, dtype=torch.float64),
                     torch.tensor(float(np.angle(b1[i])), dtype=torch.float64))
        sp = sp * torch.exp(-1j * math.pi * gz[i] * dt * z)
    assert torch.allclose(cp, sp, atol=1e-5) and torch.allclose(cz, sz, atol=1e-5)


def test_small_angle_sinc_profile_is_the_fourier_transform_and_flat_in_phase() -> None:
    flip = math.radians(5)
    wave = _sinc(flip)
    z = torch.linspace(-1.5 * THICKNESS, 1.5 * THICKNESS, 601, dtype=torch.float64)
    m = profile(wave, z)
    # small-tip: M+(z) = −i·2π·Σ b1(t)·e^{i2π·gz·z·(t − t_centre)}·dt
    t = torch.tensor((np.arange(1000) + 0.5) * wave.dt - wave.centre)
    ft = -2j * math.pi * wave.dt * (wave.b1.to(torch.complex128)[None] *
                                    torch.exp(2j * math.pi * float(wave.gz[0]) * z[:, None] * t[None])).sum(1)
    assert nrmse(m, ft) < 0.01
    # width: the half-maximum points lie at ±thickness/2 (within 5 %)
    half = z[m.abs() >= m.abs().max() / 2]
    assert float(half.max() - half.min()) == pytest.approx(THICKNESS, rel=0.05)
    # rephased: the phase is flat (−π/2) across the slice, while the unreferenced pulse leaves a linear phase
    inside = z.abs() < 0.4 * THICKNESS
    assert float((m[inside] / -1j).angle().abs().max()) < 0.01
    raw = m[inside] * torch.exp(-2j * math.pi * lobe_moments(wave)[1] * z[inside])  # P(k_after)·R_eff·Mz
    assert float((raw / -1j).angle().abs().max()) > 1.0


@pytest.fixture(scope="module")
def exported_gre(tmp_path_factory) -> tuple[Sequence, Sequence]:
    """A small GRE (protocols/gre.yaml at matrix 8, 10°, no dummies) exported as .seq and imported back."""
    protocol = load_protocol(REPO / "protocols" / "gre.yaml").model_copy(
        update={"dummies": 0, "flip_angle_deg": 10.0})
    seq = build(protocol, matrix=8)
    path = tmp_path_factory.mktemp("profile") / "gre.seq"
    export_seq(seq, System.load(SYSTEMS_DIR / "prisma.yaml"), path=path, slice_thickness=THICKNESS)
    return seq, import_seq(path)


def test_import_keeps_each_rf_shape_and_its_slice_select_gradient(exported_gre) -> None:
    built, imported = exported_gre
    assert len(imported) == len(built)
    for rep in imported:
        wave = rep.pulse.waveform
        assert wave is not None and wave.b1.shape == (1000,) and wave.dt == pytest.approx(1e-6)
        area = complex(wave.b1.to(torch.complex128).sum()) * wave.dt
        assert 2 * math.pi * abs(area) == pytest.approx(float(rep.pulse.angle), rel=1e-5)
        assert math.remainder(np.angle(area) - float(rep.pulse.phase), 2 * math.pi) == pytest.approx(0, abs=1e-5)
        # exporter: 1 ms sinc, TBW 4 → gz = 4 / 1 ms / 5 mm during the whole pulse, centred
        assert torch.allclose(wave.gz, torch.full((1000,), 4 / 1e-3 / THICKNESS))
        assert wave.centre == pytest.approx(0.5e-3)
        assert lobe_moments(wave) == pytest.approx((400.0, 400.0), rel=1e-4)
    # the JSON form keeps the waveform exactly
    back = Sequence.from_dict(imported.to_dict())
    for a, b in zip(imported, back, strict=True):
        assert a.pulse.waveform is not None and b.pulse.waveform is not None
        assert torch.equal(a.pulse.waveform.b1, b.pulse.waveform.b1)
        assert torch.equal(a.pulse.waveform.gz, b.pulse.waveform.gz)
        assert (a.pulse.waveform.dt, a.pulse.waveform.centre) == (b.pulse.waveform.dt, b.pulse.waveform.centre)
    assert all(rep.pulse.waveform is None for rep in Sequence.from_dict(built.to_dict()))


def test_real_pulseq_file_keeps_its_sinc_and_slice_gradient() -> None:
    seq = import_seq(shared_data("11_from_GRE_to_EPI__01_GRE.seq"))
    wave = seq[0].pulse.waveform
    assert wave is not None
    # 3 ms sinc, TBW 4, 3 mm slice: gz = 4 / 3 ms / 3 mm, half of its moment on each side of the centre
    assert float(wave.gz[500]) == pytest.approx(4 / 3e-3 / 3e-3, rel=1e-5)
    assert lobe_moments(wave) == pytest.approx((4 / 3e-3 / 2, 4 / 3e-3 / 2), rel=1e-4)
    assert 2 * math.pi * abs(complex(wave.b1.sum())) * wave.dt == pytest.approx(math.radians(10), rel=1e-4)


def _uniform(n: int) -> Twin:
    # T1, T2 ≪ TR: every repetition starts from Mz = 1 without transverse coherences left, so that the signal
    # is linear in the small excitation whatever the spoiling
    return Twin.from_maps(torch.ones(n, n), torch.full((n, n), 2e-3), torch.full((n, n), 2e-3),
                          (0.2, 0.2, THICKNESS))


def test_zresolved_twin_replicates_the_slice() -> None:
    twin = _uniform(4)
    z = zresolved(twin)
    assert z.shape == (17, 4, 4) and z.coil_sens.shape == (1, 17, 4, 4)
    assert z.fov[2] == pytest.approx(3 * THICKNESS)
    assert torch.allclose(z.pd, torch.full_like(z.pd, 3 / 17)) and torch.equal(z.t1[5], twin.t1[0])
    assert twin.shape == (1, 4, 4) and torch.equal(twin.pd, torch.ones(1, 4, 4))
    with pytest.raises(InputError, match="2D twin"):
        zresolved(z)


def test_gre_with_slice_profile_is_the_instantaneous_signal_scaled_by_the_profile_integral(exported_gre) -> None:
    """Small tip (10°, Mz = 1 before every pulse): ∫M+(z)dz = −i·2π·b1(t_c)/gz, so the slice-profile signal
    is the 2D instantaneous one times η = b1(t_c) / (gz·∫b1 dt·thickness). Tolerance 2 %: the small-tip error
    at 10° (≲ 0.3 %), the profile cut at ±1.5 thicknesses (side lobes ≲ 0.5 %) and its sampling over
    17 planes × 4 z cells; measured 0.09 %."""
    _, seq = exported_gre
    twin = _uniform(8)
    slab = zresolved(twin)
    with torch.no_grad():
        reference = simulate_bloch(seq, twin, spins=64)
        # instantaneous RF excites the whole slab, three slice thicknesses, uniformly
        assert nrmse(simulate_bloch(seq, slab, spins=64), 3 * reference) < 1e-3
        got = simulate(seq, slab, engine="bloch", spins=64, slice_profile=True)
    wave = seq[0].pulse.waveform
    assert wave is not None
    centre = abs(complex(wave.b1[500])) / (float(wave.gz[500]) * abs(complex(wave.b1.sum())) * wave.dt)
    eta = centre / THICKNESS
    assert 0.9 < eta < 1.1
    assert nrmse(got.kdata.flatten(), eta * reference) < 0.02
    assert got.provenance["slice_profile"] == "True"


def test_slice_profile_is_a_bloch_option_only(exported_gre) -> None:
    with pytest.raises(ConfigError, match="slice_profile"):
        simulate(exported_gre[1], zresolved(_uniform(4)), engine="graph", slice_profile=True)
