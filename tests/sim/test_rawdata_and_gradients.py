"""to_rawdata (noise, labels, flags, trajectory), simulate() dispatch, and gradients of the Bloch simulator."""

from __future__ import annotations

import math

import ismrmrd
import pytest
import torch

from mrbridge.errors import ConfigError
from mrbridge.sequence.builders import build
from mrbridge.sequence.model import Pulse, PulseUsage, Repetition, Sequence
from mrbridge.sequence.protocol import GreProtocol, TseProtocol
from mrbridge.sim.bloch import simulate_bloch
from mrbridge.sim.common import NOISE_SAMPLES, to_rawdata
from mrbridge.sim.simulate import simulate
from mrbridge.twin.twin import Twin


def small_twin(dtype: torch.dtype = torch.float32) -> Twin:
    """A 2 × 2 twin with four different tissues, B0 and B1."""
    maps = dict(
        pd=torch.tensor([[0.8, 1.0], [0.6, 0.9]]), t1=torch.tensor([[0.8, 1.2], [0.4, 2.0]]),
        t2=torch.tensor([[0.08, 0.1], [0.05, 0.3]]), t2dash=torch.tensor([[0.05, float("inf")], [0.1, 0.2]]),
        b0=torch.tensor([[0.0, 12.0], [-7.0, 3.0]]), b1=torch.tensor([[1.0, 0.9], [1.1, 0.95]]),
    )
    return Twin.from_maps(fov=(0.2, 0.2, 0.005), **maps).to(dtype=dtype)


def gre(matrix: int = 8, **kw: float) -> Sequence:
    return build(GreProtocol(matrix=matrix, dummies=2, **kw))


def test_rawdata_layout_labels_flags_and_trajectory() -> None:
    seq = gre()
    raw = to_rawdata(seq, simulate_bloch(seq, small_twin(), spins=4))
    assert raw.kdata.shape == (1, 8, 8) and raw.kdata.dtype == torch.complex64
    assert raw.center_sample == 4
    assert raw.dwell == pytest.approx(50e-6)
    assert raw.labels["kspace_encode_step_1"].tolist() == list(range(8))
    dk = 1 / 0.2
    assert torch.allclose(raw.traj[:, 4, 0], torch.zeros(8), atol=1e-3)  # k = 0 at the centre sample
    assert torch.allclose(raw.traj[:, 0, 1], dk * (torch.arange(8) - 4.0), atol=1e-3)
    assert torch.allclose(raw.traj[0, :, 0], dk * (torch.arange(8) - 4.0), atol=1e-3)
    first = raw.flags[0].item()
    last = raw.flags[-1].item()
    for bit in (ismrmrd.ACQ_FIRST_IN_ENCODE_STEP1, ismrmrd.ACQ_FIRST_IN_SLICE, ismrmrd.ACQ_FIRST_IN_REPETITION,
                ismrmrd.ACQ_FIRST_IN_CONTRAST):
        assert first & (1 << (bit - 1)) and not last & (1 << (bit - 1))
    for bit in (ismrmrd.ACQ_LAST_IN_ENCODE_STEP1, ismrmrd.ACQ_LAST_IN_SLICE, ismrmrd.ACQ_LAST_IN_REPETITION):
        assert last & (1 << (bit - 1)) and not first & (1 << (bit - 1))
    assert torch.all(raw.flags[1:-1] == 0)
    # the centre sample is recorded TE after its excitation
    tr, te = 12e-3, 5e-3
    assert raw.sample_time[3, 4].item() == pytest.approx((2 + 3) * tr + te, abs=1e-6)
    assert raw.header.encoded_matrix == (8, 8, 1) and raw.header.te == [pytest.approx(te)]
    assert raw.noise is None


def test_noise_sigma_and_seed() -> None:
    seq = gre(matrix=32)
    clean = simulate_bloch(seq, small_twin(), spins=4)
    noisy = to_rawdata(seq, clean, noise=0.05, seed=3)
    again = to_rawdata(seq, clean, noise=0.05, seed=3)
    other = to_rawdata(seq, clean, noise=0.05, seed=4)
    sigma = 0.05 * float(clean.abs().max())
    diff = noisy.kdata - clean.reshape(noisy.kdata.shape)
    for part in (diff.real, diff.imag):  # 1024 samples each: the estimate scatters by ~2 %
        assert float(part.std()) == pytest.approx(sigma, rel=0.07)
    assert float(torch.view_as_real(noisy.noise).std()) == pytest.approx(sigma, rel=0.15)  # 512 values
    assert noisy.noise.shape == (1, NOISE_SAMPLES)
    assert torch.equal(noisy.kdata, again.kdata) and torch.equal(noisy.noise, again.noise)
    assert not torch.equal(noisy.kdata, other.kdata)
    assert noisy.provenance["seed"] == "3"


def test_simulate_dispatch() -> None:
    seq, twin = gre(), small_twin()
    raw = simulate(seq, twin, engine="bloch", device="cpu", spins=4, noise=0.01, seed=1)
    assert raw.kdata.shape == (1, 8, 8) and raw.noise is not None
    assert raw.provenance["engine"] == "bloch" and raw.provenance["spins"] == "4"
    assert torch.allclose(raw.kdata, to_rawdata(seq, simulate_bloch(seq, twin, spins=4), noise=0.01, seed=1).kdata)
    with pytest.raises(ConfigError, match="engine 'graph2'"):
        simulate(seq, twin, engine="graph2")


def test_coil_count_and_tse_shape() -> None:
    twin = small_twin()
    twin.coil_sens = torch.stack([torch.ones(1, 2, 2), torch.full((1, 2, 2), 0.5j)]).to(torch.complex64)
    seq = build(TseProtocol(matrix=8, echo_train_length=4))
    raw = simulate(seq, twin, engine="bloch", spins=4)
    assert raw.kdata.shape == (2, 8, 8)
    assert torch.allclose(raw.kdata[1], 0.5j * raw.kdata[0], atol=1e-6)


def test_float64_in_float64_out() -> None:
    sig = simulate_bloch(gre().to(dtype=torch.float64), small_twin(torch.float64), spins=2)
    assert sig.dtype == torch.complex128


def _tiny_sequence(angle: torch.Tensor, moment: torch.Tensor, duration: torch.Tensor) -> Sequence:
    """Two excitations, each with a prephaser (its x moment and duration given) and a 3-sample readout."""
    f64 = torch.float64
    reps = []
    for i in range(2):
        times = torch.cat([duration[None], torch.full((3,), 1e-3, dtype=f64), torch.tensor([5e-3], dtype=f64)])
        gx = torch.cat([moment[None], torch.full((3,), 40.0, dtype=f64), torch.tensor([100.0], dtype=f64)])
        gradm = torch.stack([gx, torch.full((5,), 10.0 * i, dtype=f64), torch.zeros(5, dtype=f64)], dim=1)
        reps.append(Repetition(
            pulse=Pulse(angle * (1 + 0.5 * i), torch.tensor(0.3 * i, dtype=f64), PulseUsage.EXCITATION),
            event_time=times, gradm=gradm, adc_usage=torch.tensor([False, True, True, True, False]),
            adc_phase=torch.full((5,), 0.2 * i, dtype=f64),
        ))
    return Sequence(reps)


def test_gradcheck_flip_moment_duration_t1() -> None:
    base = small_twin(torch.float64)

    def run(angle: torch.Tensor, moment: torch.Tensor, duration: torch.Tensor, t1: torch.Tensor) -> torch.Tensor:
        twin = Twin.from_maps(base.pd, t1, base.t2, base.fov, t2dash=base.t2dash, b0=base.b0, b1=base.b1,
                              coil_sens=base.coil_sens)
        return torch.view_as_real(simulate_bloch(_tiny_sequence(angle, moment, duration), twin, spins=3))

    f64 = dict(dtype=torch.float64, requires_grad=True)
    inputs = (torch.tensor(0.5, **f64), torch.tensor(-60.0, **f64), torch.tensor(2e-3, **f64),
              base.t1.clone().requires_grad_(True))
    assert torch.autograd.gradcheck(run, inputs, eps=1e-7, atol=1e-6, rtol=1e-4)


def test_gradients_reach_every_sequence_tensor_and_map() -> None:
    seq = gre()
    twin = small_twin()
    leaves = [seq[3].pulse.angle, seq[3].pulse.phase, seq[3].event_time, seq[3].gradm, seq[3].adc_phase,
              twin.pd, twin.t1, twin.t2, twin.b0, twin.b1, twin.coil_sens]
    for t in leaves:
        t.requires_grad_(True)
    twin.t2dash = torch.full_like(twin.pd, 0.05, requires_grad=True)
    leaves.append(twin.t2dash)
    # 1024 spins: enough for off-resonance levels besides the spoiler cells (fewer ignore T2′)
    simulate_bloch(seq, twin, spins=1024).abs().square().sum().backward()
    for t in leaves:
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu() -> None:
    seq, twin = gre(), small_twin()
    cpu = simulate(seq, twin, spins=8).kdata
    gpu = simulate(seq, twin, spins=8, device="cuda").kdata
    assert gpu.device.type == "cuda"
    assert torch.allclose(gpu.cpu(), cpu, atol=1e-5 * float(cpu.abs().max()))


def test_excitation_phase_enters_the_signal() -> None:
    twin = small_twin()
    seq = gre()
    shifted = gre()
    for rep in shifted:
        rep.pulse.phase = rep.pulse.phase + math.pi / 3
    a, b = simulate_bloch(seq, twin, spins=4), simulate_bloch(shifted, twin, spins=4)
    # every excitation and the ADC phase relative to it unchanged → the signal turns by the added phase
    assert torch.allclose(b, a * complex(math.cos(math.pi / 3), math.sin(math.pi / 3)), atol=1e-5)


def _readout_sequence(dwell: torch.Tensor, step: torch.Tensor) -> Sequence:
    """Excitation, prephaser, then an 8-sample readout whose events each have their own dwell and x moment."""
    f64 = torch.float64
    times = torch.cat([torch.tensor([1.5e-3], dtype=f64), dwell])
    gx = torch.cat([torch.tensor([-20.0], dtype=f64), step])
    gradm = torch.stack([gx, torch.full_like(gx, 3.0), torch.zeros_like(gx)], dim=1)
    rep = Repetition(Pulse(torch.tensor(0.7, dtype=f64), torch.tensor(0.2, dtype=f64)), times, gradm,
                     torch.tensor([False] + [True] * 8), torch.linspace(0, 1, 9, dtype=f64))
    return Sequence([rep, rep])


def test_uniform_readout_by_powers_matches_direct_values_and_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    import mrbridge.sim.bloch as bloch

    twin = small_twin(torch.float64)
    results = []
    for min_run in (bloch.MIN_POWER_RUN, 10**9):  # powers, then the direct exponentials
        monkeypatch.setattr(bloch, "MIN_POWER_RUN", min_run)
        dwell = torch.full((8,), 1e-3, dtype=torch.float64, requires_grad=True)
        step = torch.full((8,), 5.0, dtype=torch.float64, requires_grad=True)
        twin.t2 = twin.t2.detach().requires_grad_(True)
        signal = simulate_bloch(_readout_sequence(dwell, step), twin, spins=5)
        loss = (signal * torch.linspace(1, 2, signal.shape[1], dtype=torch.float64)).real.sum()
        results.append((signal.detach(), *torch.autograd.grad(loss, (dwell, step, twin.t2))))
    for fast, direct in zip(*results, strict=True):
        assert torch.allclose(fast, direct, rtol=1e-9, atol=1e-12)
    assert results[0][1].std() > 0  # per-event gradients differ along the readout


def test_gradcheck_through_a_uniform_readout() -> None:
    twin = small_twin(torch.float64)

    def run(dwell: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
        return torch.view_as_real(simulate_bloch(_readout_sequence(dwell, step), twin, spins=3))

    f64 = dict(dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(run, (torch.full((8,), 1e-3, **f64), torch.full((8,), 5.0, **f64)),
                                    eps=1e-8, atol=1e-6, rtol=1e-4)
