"""The phase-graph engine: against the converged Bloch engine, analytic signals, gradients, batches, the knob.

Bloch references at 16×16 on the builtin brain (T2′, B0, B1 maps), NRMSE against the exact graph (accuracy
1e-6): SE, TSE, bSSFP ≤ 0.65 % at 1024 spins per voxel, IR-GRE 1.0 % / 0.7 % at 1024 / 4096, the RF-spoiled GRE
1.5 %, 0.7 %, 0.4 % at 1024, 4096, 16 384 spins.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from mrbridge.refinement.fit import delayed
from mrbridge.sequence.builders import build
from mrbridge.sequence.model import PulseUsage, Sequence
from mrbridge.sequence.protocol import BssfpProtocol, GreProtocol, IrGreProtocol, SpinEchoProtocol, load_protocol
from mrbridge.sim.bloch import simulate_bloch
from mrbridge.sim.common import to_rawdata
from mrbridge.sim.graph import plan_graph, simulate_graph
from mrbridge.sim.simulate import simulate
from mrbridge.twin.phantoms import builtin
from mrbridge.twin.twin import Twin
from tests.helpers import REPO, assert_gradcheck, nrmse
from tests.sim.test_bloch_physics import close, echoes, epg_cpmg, one_voxel, rep

MATRIX = 16
#: Bloch spins per voxel that converge each protocol's reference
SPINS = {"se": 1024, "tse": 1024, "bssfp": 1024, "irgre": 4096, "gre": 16384}


def protocol_case(name: str) -> tuple[Sequence, Twin]:
    return build(load_protocol(REPO / "protocols" / f"{name}.yaml"), matrix=MATRIX), builtin("brain", matrix=MATRIX)


@pytest.mark.parametrize("name", ["se", "tse", "bssfp", "irgre", pytest.param("gre", marks=pytest.mark.slow)])
def test_protocols_match_converged_bloch(name: str) -> None:
    seq, twin = protocol_case(name)
    assert twin.t2dash.isfinite().any() and twin.b0.abs().max() > 0  # the twin has T2' and B0
    graph = simulate_graph(seq, twin)
    with torch.no_grad():
        reference = simulate_bloch(seq, twin, spins=SPINS[name])
    assert graph.shape == reference.shape
    assert nrmse(graph, reference) <= 0.01


def test_spin_echo_formula() -> None:
    t1, t2 = 0.5, 0.08
    p = SpinEchoProtocol(matrix=8, tr_ms=1500.0, dummies=1)
    seq = build(p)
    signal = echoes(seq, simulate_graph(seq, one_voxel(p.fov, p.matrix, t1=t1, t2=t2)))
    te, tr = p.te_ms * 1e-3, p.tr_ms * 1e-3
    close(signal.abs(), torch.full_like(signal.real, (1 - math.exp(-tr / t1)) * math.exp(-te / t2)))


def test_spoiled_gre_reaches_ernst_steady_state() -> None:
    t1, t2, alpha = 0.5, 0.05, 15.0
    p = GreProtocol(matrix=8, flip_angle_deg=alpha, dummies=150)
    seq = build(p)
    signal = echoes(seq, simulate_graph(seq, one_voxel(p.fov, p.matrix, t1=t1, t2=t2), accuracy=1e-5))
    e1, a = math.exp(-p.tr_ms * 1e-3 / t1), math.radians(alpha)
    ernst = math.sin(a) * (1 - e1) / (1 - math.cos(a) * e1) * math.exp(-p.te_ms * 1e-3 / t2)
    close(signal.abs(), torch.full_like(signal.real, ernst))


def test_bssfp_on_resonance_steady_state() -> None:
    t1, t2, alpha = 0.5, 0.1, 40.0
    p = BssfpProtocol(matrix=8, flip_angle_deg=alpha, dummies=600)
    seq = build(p)
    signal = echoes(seq, simulate_graph(seq, one_voxel(p.fov, p.matrix, t1=t1, t2=t2)))
    tr, a = p.tr_ms * 1e-3, math.radians(alpha)
    e1, e2 = math.exp(-tr / t1), math.exp(-tr / t2)
    ss = (1 - e1) * math.sin(a) / (1 - (e1 - e2) * math.cos(a) - e1 * e2) * math.exp(-tr / 2 / t2)
    close(signal.abs(), torch.full_like(signal.real, ss))


@pytest.mark.parametrize("ti_ms", [50.0, 400.0])
def test_inversion_recovery(ti_ms: float) -> None:
    t1, t2, alpha = 0.3, 0.08, 30.0
    p = IrGreProtocol(matrix=8, ti_ms=ti_ms, tr_ms=4000, flip_angle_deg=alpha, lines_per_inversion=1)
    seq = build(p)
    signal = echoes(seq, simulate_graph(seq, one_voxel(p.fov, p.matrix, t1=t1, t2=t2)))
    mz = 1 - 2 * math.exp(-ti_ms * 1e-3 / t1)
    close(signal, torch.full_like(signal, -1j * mz * math.sin(math.radians(alpha)) * math.exp(-p.te_ms * 1e-3 / t2)))


def test_cpmg_train_matches_epg() -> None:
    t1, t2, esp, train, refocus = 1.0, 0.1, 10e-3, 8, 120.0
    crusher = (4 / 1e-3, 0.0, 0.0)
    reps = [rep(90, math.pi / 2, [esp / 2], [crusher], [False])]
    for _ in range(train):
        reps.append(rep(refocus, 0.0, [esp / 2, esp / 2], [crusher, crusher], [True, False], PulseUsage.REFOCUSING))
    # 4 cycles across the 1 mm voxel: sinc(4n) = 0, so dephased states vanish as in the textbook EPG
    twin = Twin.from_maps(torch.ones(1), torch.tensor([t1]), torch.tensor([t2]), (1e-3, 1e-3, 1e-3))
    signal = simulate_graph(Sequence(reps), twin.to(dtype=torch.float64), accuracy=1e-9)[0]
    close(signal, torch.from_numpy(epg_cpmg(math.pi / 2, math.radians(refocus), esp, train, t1, t2)), tol=1e-6)


def test_t2dash_and_b0_at_a_spin_echo() -> None:
    """e^{−|τ|/T2'} on both sides of the echo and the B0 phase of the dephasing time τ."""
    t2, t2dash, b0, tau = 0.1, 0.01, 23.0, 20e-3
    offsets = [1e-3 * i for i in range(-10, 11)]
    steps = [tau + offsets[0]] + [1e-3] * (len(offsets) - 1)
    reps = [rep(90, math.pi / 2, [tau], adc=[False]), rep(180, 0.0, steps, usage=PulseUsage.REFOCUSING)]
    twin = one_voxel(0.2, 64, t1=1.0, t2=t2, t2dash=t2dash, b0=b0).to(dtype=torch.float64)
    signal = simulate_graph(Sequence(reps), twin)[0]
    d = torch.tensor(offsets, dtype=torch.float64)
    expected = torch.exp(-(2 * tau + d) / t2 - d.abs() / t2dash) * torch.exp(-2j * math.pi * b0 * d)
    close(signal / signal[10] * signal[10].abs(), expected)


def tiny_case() -> tuple[Sequence, Twin]:
    """Three voxels, four repetitions with distinct moments (no two histories merge) and durations (no echo
    lands exactly on a sample, where e^{−|τ|/T2'} has its kink), two coils, float64."""
    moments = [(310.0, 40.0, 0.0), (-130.0, 75.0, 20.0), (55.0, -160.0, 0.0), (200.0, 10.0, -30.0)]
    first = (2e-3, 2.37e-3, 3.13e-3, 2.61e-3)
    reps = [rep(70 - 10 * i, 0.4 * i, [first[i], 1e-3, 1e-3], [moments[i], (20.0, 5.0, 0.0), (20.0, 5.0, 0.0)],
                [False, True, True]) for i in range(4)]
    twin = Twin.from_maps(
        torch.tensor([[1.0, 0.6, 0.8]]), torch.tensor([[0.9, 0.4, 1.3]]), torch.tensor([[0.08, 0.05, 0.2]]),
        (6e-3, 2e-3, 3e-3), t2dash=torch.tensor([[0.02, 0.05, 0.03]]), b0=torch.tensor([[12.0, -30.0, 5.0]]),
        b1=torch.tensor([[1.1, 0.9, 1.0]]),
        coil_sens=torch.tensor([[[1.0, 0.8, 0.6]], [[0.3j, 0.5, 0.2 - 0.4j]]], dtype=torch.complex64),
    )
    return Sequence(reps), twin.to(dtype=torch.float64)


def test_gradcheck_sequence_and_twin() -> None:
    seq, twin = tiny_case()
    names = ("pd", "t1", "t2", "t2dash", "b0", "b1", "coil_sens")
    seq_tensors = [t for r in seq for t in (r.pulse.angle, r.pulse.phase, r.event_time, r.gradm, r.adc_phase)]
    inputs = [t.clone().requires_grad_(True) for t in (*seq_tensors, *(getattr(twin, n) for n in names))]

    def run(*tensors: torch.Tensor) -> torch.Tensor:
        for i, r in enumerate(seq):
            r.pulse.angle, r.pulse.phase, r.event_time, r.gradm, r.adc_phase = tensors[5 * i:5 * i + 5]
        maps = dict(zip(names, tensors[len(seq_tensors):], strict=True))
        return simulate_graph(seq, Twin(**maps, fov=twin.fov), accuracy=1e-12)

    assert_gradcheck(run, *inputs, fast_mode=True)


def test_batch_of_twins_equals_separate_runs() -> None:
    seq, _ = protocol_case("irgre")
    twins = [builtin("brain", matrix=MATRIX), builtin("brain", matrix=MATRIX)]
    other = twins[1]
    other.pd, other.t1, other.t2, other.b0 = other.pd.flip(-1), other.t1 * 1.3, other.t2 * 0.8, -other.b0
    batch = Twin(**{n: torch.stack([getattr(t, n) for t in twins]) for n in ("pd", "t1", "t2", "t2dash", "b0", "b1")},
                 coil_sens=twins[0].coil_sens, fov=twins[0].fov)
    # a tight knob keeps every state that matters, whichever twins the pre-pass sees (it sees both here)
    together = simulate_graph(seq, batch, accuracy=1e-7)
    assert together.shape == (2, 1, seq.adc_count)
    for i, twin in enumerate(twins):
        assert nrmse(together[i], simulate_graph(seq, twin, accuracy=1e-7)) <= 1e-5


def test_accuracy_knob_is_monotone() -> None:
    seq, twin = protocol_case("gre")
    exact = simulate_graph(seq, twin, accuracy=1e-7)
    errors = [nrmse(simulate_graph(seq, twin, accuracy=a), exact) for a in (3e-2, 1e-2, 1e-3, 1e-4)]
    assert all(b < a for a, b in itertools.pairwise(errors)), errors
    assert errors[0] > 0.02 and errors[-1] < 1e-3


def test_registered_engine_gives_rawdata() -> None:
    seq, twin = protocol_case("se")
    raw = simulate(seq, twin, engine="graph")
    expected = to_rawdata(seq, simulate_graph(seq, twin))
    assert torch.equal(raw.kdata, expected.kdata)
    assert raw.provenance["engine"] == "graph"



def test_a_plan_is_reused_while_b0_pd_and_t2dash_change() -> None:
    seq, twin = protocol_case("gre")
    # planned for no T2′ decay: it keeps every state that a twin with any T2′ needs
    plan = plan_graph(seq, Twin.from_maps(twin.pd, twin.t1, twin.t2, twin.fov, t2dash=torch.full_like(twin.t2dash, 1e6),
                                          b0=twin.b0, b1=twin.b1))
    b0 = (twin.b0 + 30 * torch.linspace(-1, 1, MATRIX)).requires_grad_()
    pd = twin.pd * (1.2 + 0.3 * torch.linspace(-1, 1, MATRIX))  # the same voxels (PD > 0)
    changed = Twin.from_maps(pd, twin.t1, twin.t2, twin.fov, t2dash=0.5 * twin.t2dash, b0=b0, b1=twin.b1)
    signals, grads = [], []
    for kwargs in ({"plan": plan}, {}, {"accuracy": 1e-7}):  # reused, planned anew, exact
        signal = simulate_graph(seq, changed, **kwargs)  # type: ignore[arg-type]
        (grad,) = torch.autograd.grad(signal.abs().square().sum(), b0)
        signals.append(signal.detach())
        grads.append(grad)
    (reused, anew, exact), (g_reused, g_anew, g_exact) = signals, grads
    assert nrmse(reused, exact) <= nrmse(anew, exact) + 1e-6 and nrmse(reused, exact) < 3e-3
    assert nrmse(g_reused, g_exact) <= nrmse(g_anew, g_exact) + 1e-6
    with pytest.raises(ValueError, match="plan of"):
        simulate_graph(build(GreProtocol(matrix=8)), twin, plan=plan)


def test_gradient_delays_get_exact_gradients_through_the_factorised_readout() -> None:
    seq, twin = build(GreProtocol(matrix=MATRIX, dummies=4), dtype=torch.float64), builtin("brain", matrix=MATRIX)
    twin = twin.to(dtype=torch.float64)
    target = simulate_graph(delayed(seq, torch.tensor([2e-6, -1e-6], dtype=torch.float64)), twin).detach()
    results = []
    for per_sample in (True, False):
        delay = torch.tensor([0.5e-6, 0.0], dtype=torch.float64, requires_grad=True)
        signal = simulate_graph(delayed(seq, delay), twin, per_sample_gradients=per_sample)
        (grad,) = torch.autograd.grad((signal - target).abs().square().sum(), delay)
        results.append((signal.detach(), grad))
    (exact_signal, exact_grad), (run_signal, run_grad) = results
    assert nrmse(run_signal, exact_signal) < 1e-10
    assert torch.allclose(run_grad, exact_grad, rtol=1e-6), (run_grad, exact_grad)
    assert exact_grad[0].abs() > 0  # the readout runs along x: a delay in y moves no sample
