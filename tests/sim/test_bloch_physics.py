"""The Bloch simulator against analytic signals (each within 1 % of the signal) and an EPG reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from mrbridge.sequence.builders import build
from mrbridge.sequence.model import Pulse, PulseUsage, Repetition, Sequence
from mrbridge.sequence.protocol import BssfpProtocol, GreProtocol, IrGreProtocol, SpinEchoProtocol
from mrbridge.sim.bloch import SpinLayout, lorentzian_levels, simulate_bloch, spin_grid, spin_pattern
from mrbridge.sim.common import to_rawdata
from mrbridge.twin.twin import Twin


def one_voxel(fov: float, matrix: int, *, t1: float, t2: float, slice_m: float = 5e-3, **maps: float) -> Twin:
    """A single voxel at the origin, FOV/matrix wide in x (spoilers dephase it), thin in y (phase encoding does
    not), so that the k = 0 sample of every line carries the whole magnetisation."""
    size = fov / matrix
    extra = {name: torch.tensor([value]) for name, value in maps.items()}
    return Twin.from_maps(torch.ones(1), torch.tensor([t1]), torch.tensor([t2]), (size, 1e-6, slice_m), **extra)


def echoes(seq: Sequence, signal: torch.Tensor) -> torch.Tensor:
    """The k = 0 sample of every readout. Returns (coils, readouts) complex."""
    raw = to_rawdata(seq, signal)
    return raw.kdata[:, :, raw.center_sample]


def rep(angle_deg: float, phase: float, times: list[float], moments: list[tuple[float, float, float]] | None = None,
        adc: list[bool] | None = None, usage: PulseUsage = PulseUsage.EXCITATION) -> Repetition:
    """A hand-made repetition (float64)."""
    n = len(times)
    return Repetition(
        pulse=Pulse(torch.tensor(math.radians(angle_deg), dtype=torch.float64),
                    torch.tensor(phase, dtype=torch.float64), usage),
        event_time=torch.tensor(times, dtype=torch.float64),
        gradm=torch.tensor(moments if moments is not None else [(0.0, 0.0, 0.0)] * n, dtype=torch.float64),
        adc_usage=torch.tensor(adc if adc is not None else [True] * n),
        adc_phase=torch.zeros(n, dtype=torch.float64),
    )


def close(actual: torch.Tensor, expected: torch.Tensor | float, tol: float = 0.01) -> None:
    """Every value within ``tol`` of the largest expected magnitude."""
    expected = torch.as_tensor(expected, dtype=actual.dtype)
    scale = float(expected.abs().max())
    err = float((actual - expected).abs().max())
    assert err <= tol * scale, f"max error {err:.3g} > {tol:.0%} of {scale:.4g}\n{actual}\n{expected}"


@pytest.mark.parametrize(("t1", "t2", "tr_ms"), [(0.857, 0.1, 10_000.0), (4.2, 1.99, 10_000.0), (0.5, 0.08, 1500.0)])
def test_spin_echo_matches_spin_formula(t1: float, t2: float, tr_ms: float) -> None:
    p = SpinEchoProtocol(matrix=8, tr_ms=tr_ms, dummies=1)
    seq = build(p)
    twin = one_voxel(p.fov, p.matrix, t1=t1, t2=t2)
    signal = echoes(seq, simulate_bloch(seq, twin, spins=16))
    te, tr = p.te_ms * 1e-3, p.tr_ms * 1e-3
    close(signal.abs(), torch.full_like(signal.real, (1 - math.exp(-tr / t1)) * math.exp(-te / t2)))


def test_spoiled_gre_reaches_ernst_steady_state() -> None:
    t1, t2, alpha = 0.5, 0.05, 15.0
    p = GreProtocol(matrix=8, flip_angle_deg=alpha, dummies=150)
    seq = build(p)
    signal = echoes(seq, simulate_bloch(seq, one_voxel(p.fov, p.matrix, t1=t1, t2=t2), spins=1024))
    e1, a = math.exp(-p.tr_ms * 1e-3 / t1), math.radians(alpha)
    ernst = math.sin(a) * (1 - e1) / (1 - math.cos(a) * e1) * math.exp(-p.te_ms * 1e-3 / t2)
    # 117° quadratic spoiling leaves a constant phase offset (≈ −0.05 rad here), so compare magnitudes
    close(signal.abs(), torch.full_like(signal.real, ernst))


def test_bssfp_on_resonance_steady_state() -> None:
    t1, t2, alpha = 0.5, 0.1, 40.0
    p = BssfpProtocol(matrix=8, flip_angle_deg=alpha, dummies=600)
    seq = build(p)
    signal = echoes(seq, simulate_bloch(seq, one_voxel(p.fov, p.matrix, t1=t1, t2=t2), spins=16))
    tr, a = p.tr_ms * 1e-3, math.radians(alpha)
    e1, e2 = math.exp(-tr / t1), math.exp(-tr / t2)
    ss = (1 - e1) * math.sin(a) / (1 - (e1 - e2) * math.cos(a) - e1 * e2) * math.exp(-tr / 2 / t2)
    close(signal.abs(), torch.full_like(signal.real, ss))


@pytest.mark.parametrize("ti_ms", [50.0, 150.0, 400.0])
def test_inversion_recovery_seen_by_the_readout(ti_ms: float) -> None:
    t1, t2, alpha = 0.3, 0.08, 30.0
    p = IrGreProtocol(matrix=8, ti_ms=ti_ms, tr_ms=4000, flip_angle_deg=alpha, lines_per_inversion=1)
    seq = build(p)
    signal = echoes(seq, simulate_bloch(seq, one_voxel(p.fov, p.matrix, t1=t1, t2=t2), spins=16))
    mz = 1 - 2 * math.exp(-ti_ms * 1e-3 / t1)  # signed: the readout sees the sign of Mz(TI)
    expected = -1j * mz * math.sin(math.radians(alpha)) * math.exp(-p.te_ms * 1e-3 / t2)
    close(signal, torch.full_like(signal, expected))


def epg_cpmg(alpha: float, refocus: float, esp: float, echoes: int, t1: float, t2: float) -> np.ndarray:
    """Echo amplitudes F0 of a CPMG train by the extended phase graph (Weigel 2015), states F+, F−, Z.

    Excitation ``alpha`` with phase 90°, refocusing ``refocus`` with phase 0°, one dephasing shift in each
    half of the echo spacing.
    """
    n = 2 * echoes + 3
    fp, fm, z = np.zeros(n, complex), np.zeros(n, complex), np.zeros(n, complex)
    z[0] = 1.0

    def rf(a: float, phi: float) -> None:
        c2, s2, s = math.cos(a / 2) ** 2, math.sin(a / 2) ** 2, math.sin(a)
        e = np.exp(1j * phi)
        new_fp = c2 * fp + e**2 * s2 * fm - 1j * e * s * z
        new_fm = np.conj(e) ** 2 * s2 * fp + c2 * fm + 1j * np.conj(e) * s * z
        new_z = -0.5j * np.conj(e) * s * fp + 0.5j * e * s * fm + math.cos(a) * z
        fp[:], fm[:], z[:] = new_fp, new_fm, new_z

    def relax_and_shift(t: float) -> None:
        e1, e2 = math.exp(-t / t1), math.exp(-t / t2)
        fp[:] *= e2
        fm[:] *= e2
        z[:] *= e1
        z[0] += 1 - e1
        fp[1:] = fp[:-1].copy()
        fm[:-1] = fm[1:].copy()
        fm[-1] = 0
        fp[0] = np.conj(fm[0])

    rf(alpha, math.pi / 2)
    out = []
    for _ in range(echoes):
        relax_and_shift(esp / 2)
        rf(refocus, 0.0)
        relax_and_shift(esp / 2)
        out.append(fp[0])
    return np.array(out)


def test_cpmg_train_matches_epg() -> None:
    t1, t2, esp, train, refocus = 1.0, 0.1, 10e-3, 8, 120.0
    crusher = (4 / 1e-3, 0.0, 0.0)  # 4 cycles across the 1 mm voxel in each half spacing
    reps = [rep(90, math.pi / 2, [esp / 2], [crusher], [False])]
    for _ in range(train):
        reps.append(rep(refocus, 0.0, [esp / 2, esp / 2], [crusher, crusher], [True, False], PulseUsage.REFOCUSING))
    twin = Twin.from_maps(torch.ones(1), torch.tensor([t1]), torch.tensor([t2]), (1e-3, 1e-3, 1e-3))
    signal = simulate_bloch(Sequence(reps), twin.to(dtype=torch.float64), spins=2048)[0]
    reference = torch.from_numpy(epg_cpmg(math.pi / 2, math.radians(refocus), esp, train, t1, t2))
    close(signal, reference)
    assert float(reference.abs().min()) < 0.8 * float(reference.abs().max())  # a train that is not flat


def fid(twin: Twin, times: list[float], angle_deg: float = 90.0, spins: int = 16) -> torch.Tensor:
    """Samples at ``times`` (s, increasing) after one excitation (phase 0)."""
    steps = np.diff([0.0, *times]).tolist()
    return simulate_bloch(Sequence([rep(angle_deg, 0.0, steps)]), twin.to(dtype=torch.float64), spins=spins)[0]


def test_b1_scales_the_flip_angle() -> None:
    twin = one_voxel(0.2, 64, t1=1.0, t2=0.1, b1=0.6)
    signal = fid(twin, [1e-6], angle_deg=90.0)
    close(signal, torch.tensor([-1j * math.sin(0.6 * math.pi / 2) * math.exp(-1e-6 / 0.1)]))


def test_b0_accrues_phase() -> None:
    times = [1e-3 * i for i in range(1, 11)]
    twin = one_voxel(0.2, 64, t1=1.0, t2=0.1, b0=37.0)
    t = torch.tensor(times, dtype=torch.float64)
    close(fid(twin, times), -1j * torch.exp(-t / 0.1) * torch.exp(-2j * math.pi * 37.0 * t))


def test_t2dash_free_induction_decay() -> None:
    t2, t2dash = 0.1, 0.02
    times = [2e-3 * i for i in range(1, 21)]
    twin = one_voxel(0.2, 64, t1=1.0, t2=t2, t2dash=t2dash)
    t = torch.tensor(times, dtype=torch.float64)
    close(fid(twin, times, spins=4096), -1j * torch.exp(-t / t2 - t / t2dash))


def test_t2dash_refocused_by_spin_echo_and_decays_off_the_echo() -> None:
    t2, t2dash, tau = 0.1, 0.01, 20e-3
    offsets = [1e-3 * i for i in range(-10, 11)]  # ADC around the spin echo at 2τ
    first = tau + offsets[0]
    steps = [first] + [1e-3] * (len(offsets) - 1)
    reps = [rep(90, math.pi / 2, [tau], adc=[False]), rep(180, 0.0, steps, usage=PulseUsage.REFOCUSING)]
    twin = one_voxel(0.2, 64, t1=1.0, t2=t2, t2dash=t2dash).to(dtype=torch.float64)
    signal = simulate_bloch(Sequence(reps), twin, spins=4096)[0]
    d = torch.tensor(offsets, dtype=torch.float64)
    close(signal.abs(), torch.exp(-(2 * tau + d) / t2 - d.abs() / t2dash))


def test_coil_sensitivities_weight_each_voxel() -> None:
    pd = torch.tensor([[1.0, 0.7]])
    sens = torch.tensor([[[1.0, 1.0]], [[0.5 + 0.5j, -0.25j]]], dtype=torch.complex64)
    kw = dict(t1=torch.tensor([[1.0, 0.6]]), t2=torch.tensor([[0.1, 0.05]]), fov=(2e-3, 1e-3, 5e-3))
    twin = Twin.from_maps(pd, coil_sens=sens, b0=torch.tensor([[0.0, 20.0]]), **kw)
    seq = Sequence([rep(60, 0.3, [1e-3] * 4, [(300.0, 0.0, 0.0)] * 4)])
    both = simulate_bloch(seq, twin, spins=8)
    singles = [simulate_bloch(seq, Twin.from_maps(pd * torch.tensor([[1.0 - v, float(v)]]),
                                                  b0=torch.tensor([[0.0, 20.0]]), **kw), spins=8)[0]
               for v in (0, 1)]
    expected = torch.stack([s * sens[c, 0, 0] + t * sens[c, 0, 1] for c, (s, t) in
                            enumerate([(singles[0], singles[1])] * 2)])
    close(both, expected, tol=1e-5)


def test_kspace_sign_convention() -> None:
    """A voxel at x0 gives s(k) ∝ exp(−i2π k x0) along a readout (DESIGN.md)."""
    dx, n = 2e-3, 5
    pd = torch.zeros(1, 1, n)
    pd[0, 0, 4] = 1.0  # x0 = (4 − n//2)·dx = 4 mm
    twin = Twin.from_maps(pd, torch.ones(1, 1, n), torch.full((1, 1, n), 10.0), (n * dx, dx, 5e-3))
    dk = 10.0  # 1/m per sample
    seq = Sequence([rep(90, 0.0, [1e-6] * 8, [(dk, 0.0, 0.0)] * 8)])
    signal = simulate_bloch(seq, twin, spins=64)[0]
    k = dk * torch.arange(1, 9, dtype=torch.float64)
    ratio = signal / (-1j * torch.exp(-2j * math.pi * k * 4e-3))
    close(ratio / ratio.abs(), torch.ones(8, dtype=torch.complex128), tol=2e-3)


def test_spin_pattern_cancels_spoiled_coherences_level_by_level() -> None:
    layout = SpinLayout((8, 4, 1), 8)  # x spoiled, y phase-encoded, 8 off-resonance levels in every cell
    offsets, quantiles, weights = spin_pattern(layout)
    again = spin_pattern(layout)
    assert all(torch.equal(a, b) for a, b in zip((offsets, quantiles, weights), again, strict=True))
    assert offsets.shape == (8 * 4 * 8, 3) and torch.all(offsets.abs() < 0.5)
    assert abs(float(weights.sum()) - 1) < 1e-12 and abs(float(weights @ quantiles)) < 1e-9
    assert torch.allclose(weights @ offsets, torch.zeros(3, dtype=offsets.dtype), atol=1e-12)
    xs = sorted((i + 0.5) / 8 - 0.5 for i in range(8) for _ in range(4))
    for level in quantiles.unique():  # every level sits in every cell, with one weight
        at = quantiles == level
        assert sorted(offsets[at, 0].tolist()) == xs and torch.allclose(weights[at], weights[at][0])
    # 3 cycles per voxel along x cancel exactly for any off-resonance phase (no aliasing below 8 cycles)
    for t in (0.0, 0.1, 2.0):
        phase = weights * torch.exp(2j * math.pi * 3 * offsets[:, 0] - 1j * quantiles * t)
        assert abs(complex(phase.sum())) < 1e-12


def test_lorentzian_levels_give_exponential_decay() -> None:
    t = torch.tensor([0.003, 0.01, 0.02, 0.05, 0.3, 1.0], dtype=torch.float64)
    for levels, tol in ((8, [0.012] * 4 + [0.075, 0.17]), (4096, [5e-4] * 6)):
        nodes, weights = lorentzian_levels(levels)
        decay = torch.cos(t[:, None] * nodes[None]) @ weights
        assert torch.all((decay - torch.exp(-t)).abs() <= torch.tensor(tol, dtype=torch.float64)), (levels, decay)
        assert abs(float(weights.sum()) - 1) < 1e-12 and torch.equal(nodes, -nodes.flip(0))


def test_spin_grid_follows_the_dephasing() -> None:
    p = GreProtocol(matrix=8, dummies=2)
    voxel = (p.fov / 8, p.fov / 8, 5e-3)
    gre = build(p)
    assert spin_grid(gre, voxel, 256) == ((64, 4, 1), 1)  # x spoiled, y phase-encoded, z untouched
    assert spin_grid(gre, voxel, 256, dephasing=True) == ((64, 4, 1), 1)  # too few spins for levels
    assert spin_grid(gre, voxel, 8192, dephasing=True) == ((256, 4, 1), 8)  # 8 levels in every cell
    fid = Sequence([rep(90, 0.0, [1e-3] * 4)])
    assert spin_grid(fid, voxel, 64) == ((1, 1, 1), 1)
    assert spin_grid(fid, voxel, 64, dephasing=True) == ((1, 1, 1), 64)  # no cells needed: all levels


def test_spoiled_gre_with_t2dash_converges_in_spins() -> None:
    """Finite T2′ and a long T2 (spoiled coherences live long): the echoes with S and 4S spins agree, and equal
    those without T2′ times e^{−TE/T2′} (every echo pathway of identical TRs has dephased for TE). Dealing
    distinct off-resonances to the spoiler cells (instead of every level to every cell) leaked spoiled
    coherences here by several percent."""
    t1, t2, t2dash = 1.0, 0.5, 0.1
    p = GreProtocol(matrix=8, dummies=40)  # at most 2·48 = 96 cycles per voxel along x: < 128 cells at 4096
    seq = build(p)
    twin = one_voxel(p.fov, p.matrix, t1=t1, t2=t2, t2dash=t2dash)
    few, many = (echoes(seq, simulate_bloch(seq, twin, spins=s)) for s in (4096, 16384))
    close(few, many, tol=0.005)
    sharp = echoes(seq, simulate_bloch(seq, one_voxel(p.fov, p.matrix, t1=t1, t2=t2), spins=512))
    close(many, sharp * math.exp(-p.te_ms * 1e-3 / t2dash), tol=0.005)
