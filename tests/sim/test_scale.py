"""The graph engine at scanner size: factorised readouts against the exact path, chunking under a memory budget,
long ADCs (a ~10 000-sample ramp-sampled EPI, an 8192-sample FID written with pypulseq), the budget error."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pypulseq as pp
import pytest
import torch
from torch.utils.checkpoint import checkpoint

import mrbridge.sim.graph as graph
import mrbridge.sim.readout as readout
from mrbridge.errors import ConfigError, InputError
from mrbridge.sequence.builders import build
from mrbridge.sequence.import_seq import import_seq
from mrbridge.sequence.model import Sequence
from mrbridge.sequence.protocol import GreProtocol
from mrbridge.sim.graph import simulate_graph
from mrbridge.sim.memory import Budget, available_gb, default_budget_gb
from mrbridge.sim.simulate import simulate
from mrbridge.twin.phantoms import builtin
from mrbridge.twin.twin import Twin
from tests.helpers import assert_gradcheck, nrmse
from tests.test_cli import assert_user_error, run_cli


def write_fid(path: Path, samples: int = 8192, dwell: float = 1e-4) -> Path:
    """A 90° block pulse and one ADC, no gradients."""
    system = pp.Opts()
    seq = pp.Sequence(system)
    seq.add_block(pp.make_block_pulse(math.pi / 2, duration=1e-4, system=system))
    seq.add_block(pp.make_adc(samples, dwell=dwell, delay=system.adc_dead_time, system=system))
    seq.write(str(path))
    return path


def write_epi(path: Path, fov: float = 0.22, n: int = 64, lines: int = 40, dwell: float = 4e-6) -> Path:
    """A single-shot EPI sampled on its ramps: one ADC over the whole train (~11 600 samples)."""
    system = pp.Opts(max_grad=30, grad_unit="mT/m", max_slew=120, slew_unit="T/m/s")
    seq = pp.Sequence(system)
    seq.set_definition("FOV", [fov, fov, 5e-3])
    dk, raster = 1 / fov, system.grad_raster_time
    amp = n * dk / (4 * n * dwell)
    ramp = math.ceil(amp / system.max_slew / raster) + 1
    flat = round(4 * n * dwell / raster)
    line = np.concatenate([np.linspace(0, amp, ramp, endpoint=False), np.full(flat, amp), np.linspace(amp, 0, ramp)])
    gx = np.concatenate([line * (-1) ** i for i in range(lines)])
    gy = np.zeros_like(gx)
    blip = np.concatenate([np.linspace(0, 1, ramp, endpoint=False), np.linspace(1, 0, ramp, endpoint=False)])
    for i in range(1, lines):
        gy[i * line.size - ramp:i * line.size + ramp] = blip * dk / (blip.sum() * raster)
    pre = pp.make_trapezoid("x", area=-n * dk / 2, system=system)
    pre_y = pp.make_trapezoid("y", area=-lines * dk / 2, duration=pp.calc_duration(pre), system=system)
    samples = int(gx.size * raster / dwell) // 10 * 10
    seq.add_block(pp.make_block_pulse(math.pi / 2, duration=1e-4, system=system))
    seq.add_block(pre, pre_y)
    seq.add_block(pp.make_arbitrary_grad("x", gx, system=system, first=0, last=0),
                  pp.make_arbitrary_grad("y", gy, system=system, first=0, last=0),
                  pp.make_adc(samples, dwell=dwell, system=system))
    seq.write(str(path))
    return path


def exact(seq: Sequence, twin: Twin, monkeypatch: pytest.MonkeyPatch, **options: float) -> torch.Tensor:
    """The signal with every sample's factor formed on its own (no factorised run)."""
    with monkeypatch.context() as m:
        m.setattr(readout, "MIN_RUN", 10**9)
        return simulate_graph(seq, twin, **options)


class Spy:
    """Records the (straight, samples) of every readout chunk the engine simulates."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[bool, int]] = []
        original = readout._chunk

        def spy(tissue, amp, q, time, moment, straight, budget):  # type: ignore[no-untyped-def]
            self.calls.append((straight, time.shape[0]))
            return original(tissue, amp, q, time, moment, straight, budget)

        monkeypatch.setattr(readout, "_chunk", spy)


@pytest.fixture(scope="module")
def epi(tmp_path_factory: pytest.TempPathFactory) -> Sequence:
    return import_seq(write_epi(tmp_path_factory.mktemp("epi") / "epi.seq"))


@pytest.fixture(scope="module")
def fid(tmp_path_factory: pytest.TempPathFactory) -> Sequence:
    return import_seq(write_fid(tmp_path_factory.mktemp("fid") / "fid.seq"))


@pytest.mark.parametrize("dtype, tolerance", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_factorised_readouts_equal_the_exact_path(dtype: torch.dtype, tolerance: float,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    seq, twin = build(GreProtocol(matrix=32, dummies=4)), builtin("brain", matrix=32)  # T2′ and B0 maps
    seq, twin = seq.to(dtype=dtype), twin.to(dtype=dtype)
    spy = Spy(monkeypatch)
    with torch.no_grad():
        fast = simulate_graph(seq, twin)
        assert spy.calls and all(straight for straight, _ in spy.calls)
        reference = exact(seq, twin, monkeypatch)
    assert nrmse(fast, reference) <= tolerance


def test_ramp_sampled_epi_mixes_runs_and_exact_samples(epi: Sequence, monkeypatch: pytest.MonkeyPatch) -> None:
    seq, twin = epi.to(dtype=torch.float64), builtin("brain", matrix=32).to(dtype=torch.float64)
    spy = Spy(monkeypatch)
    with torch.no_grad():
        fast = simulate_graph(seq, twin)
        kinds = {straight for straight, _ in spy.calls}
        reference = exact(seq, twin, monkeypatch)
    assert kinds == {True, False}  # the flat tops factorised, the ramps sample by sample
    assert nrmse(fast, reference) <= 1e-9


@pytest.mark.parametrize("case, chunk", [("gre", 400_000), ("epi", 40_000)])
def test_chunked_equals_unchunked(case: str, chunk: int, epi: Sequence, monkeypatch: pytest.MonkeyPatch) -> None:
    seq = build(GreProtocol(matrix=32, dummies=4)) if case == "gre" else epi
    seq, twin = seq.to(dtype=torch.float64), builtin("brain", matrix=32, coils=2).to(dtype=torch.float64)
    with torch.no_grad():
        whole = simulate_graph(seq, twin, memory_gb=1.0)
        spy = Spy(monkeypatch)
        products = []
        bmm = torch.bmm
        monkeypatch.setattr(torch, "bmm", lambda a, b: products.append(a.shape[-1]) or bmm(a, b))
        monkeypatch.setattr(graph, "fit_budget", lambda *_: Budget(10**9, 0, chunk))
        chunked = simulate_graph(seq, twin)
    assert max(products) < int((twin.pd > 0).sum())  # the voxels in blocks
    if case == "epi":
        assert max(n for _, n in spy.calls) < 2000  # the 11 600 samples in chunks
    assert nrmse(chunked, whole) <= 1e-12


def test_fid_decays_and_precesses_at_the_twins_rates(fid: Sequence, monkeypatch: pytest.MonkeyPatch) -> None:
    t2, t2dash, df = 0.08, 0.05, 30.0
    ones = torch.ones(1, 8, 8, dtype=torch.float64)
    twin = Twin.from_maps(ones, ones, ones * t2, (0.2, 0.2, 0.005), t2dash=ones * t2dash, b0=ones * df)
    seq = fid.to(dtype=torch.float64)
    time = seq.adc_times().to(torch.float64)
    with torch.no_grad():
        spy = Spy(monkeypatch)
        signal = simulate_graph(seq, twin, memory_gb=1e-3)[0]  # 1 MB: the 8192 samples in chunks
    assert signal.shape == (8192,) and len(spy.calls) > 1
    t = time - time[0]
    expected = signal[0] * torch.exp(-t * (1 / t2 + 1 / t2dash) - 2j * math.pi * df * t)
    assert nrmse(signal, expected) <= 1e-9


@pytest.mark.parametrize("case", ["epi", "fid"])
def test_long_adcs_on_a_64_twin_fit_a_small_budget(case: str, epi: Sequence, fid: Sequence) -> None:
    seq, twin = (epi if case == "epi" else fid), builtin("brain", matrix=64)
    with torch.no_grad():
        small = simulate_graph(seq, twin, memory_gb=0.02)
        large = simulate_graph(seq, twin, memory_gb=4.0)
    assert small.shape == (1, seq.samples_per_readout()) and bool(small.isfinite().all())
    assert nrmse(small, large) <= 1e-5


def test_gradients_of_the_maps_through_the_factorised_path(monkeypatch: pytest.MonkeyPatch) -> None:
    full = build(GreProtocol(matrix=16, dummies=0), dtype=torch.float64)
    seq = Sequence(full.repetitions[:2], full.info)
    base = builtin("brain", matrix=4).to(dtype=torch.float64)
    spy = Spy(monkeypatch)

    def signal(b0: torch.Tensor, t2: torch.Tensor, t2dash: torch.Tensor) -> torch.Tensor:
        twin = Twin.from_maps(base.pd, base.t1, t2, base.fov, t2dash=t2dash, b0=b0, b1=base.b1)
        return simulate_graph(seq, twin, memory_gb=0.01)

    maps = [(base.b0 + 20).requires_grad_(), base.t2.clone().requires_grad_(),
            base.t2dash.clamp(max=0.1).requires_grad_()]
    assert_gradcheck(signal, *maps, fast_mode=True)
    assert all(straight for straight, _ in spy.calls)


def test_a_budget_too_small_is_one_line_before_the_propagation(monkeypatch: pytest.MonkeyPatch,
                                                              tmp_path: Path) -> None:
    seq, twin = build(GreProtocol(matrix=16)), builtin("brain", matrix=16)

    def never(*_: object) -> None:
        raise AssertionError("the propagation started")

    with monkeypatch.context() as m:
        m.setattr(graph._Segment, "__call__", never)
        with pytest.raises(InputError, match=r"GB .*memory budget of 1e-06 GB"):
            simulate_graph(seq, twin, memory_gb=1e-6)
    with pytest.raises(ConfigError, match="memory_gb"):
        simulate(seq, twin, engine="bloch", memory_gb=1.0)
    output = tmp_path / "x.h5"
    result = run_cli("simulate", "--protocol", "protocols/gre.yaml", "--matrix", "64", "--memory-gb", "0.001",
                     "-o", str(output))  # resident: 17 MB
    assert_user_error(result, "more than the memory budget of 0.001 GB")
    assert not output.exists()


def test_the_default_budget_is_half_the_available_memory() -> None:
    free = available_gb()
    assert free is None or default_budget_gb() == pytest.approx(0.5 * free, rel=0.2)
    assert default_budget_gb() > 0


def test_recomputed_chunks_give_the_same_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    base = builtin("brain", matrix=8).to(dtype=torch.float64)
    checkpointed = []

    def gradients(chunk: int | None) -> torch.Tensor:
        seq = build(GreProtocol(matrix=16, dummies=2), dtype=torch.float64)
        for rep in seq:
            rep.gradm.requires_grad_(True)
        b0 = (base.b0 + 20).requires_grad_()
        twin = Twin.from_maps(base.pd, base.t1, base.t2, base.fov, t2dash=base.t2dash, b0=b0, b1=base.b1)
        with monkeypatch.context() as m:
            if chunk is not None:
                m.setattr(graph, "fit_budget", lambda *_: Budget(10**9, 0, chunk))
                m.setattr(readout, "checkpoint", lambda *a, **k: checkpointed.append(1) or checkpoint(*a, **k))
            simulate_graph(seq, twin).abs().square().sum().backward()
        assert b0.grad is not None
        return torch.cat([b0.grad.flatten(), *[rep.gradm.grad.flatten() for rep in seq if rep.gradm.grad is not None]])

    kept = gradients(None)
    recomputed = gradients(20_000)  # 20 kB: every chunk is recomputed in the backward pass
    assert checkpointed
    assert torch.allclose(recomputed, kept, rtol=1e-10, atol=1e-12 * float(kept.abs().max()))


def test_checkpointed_propagation_gives_the_same_gradients(monkeypatch: pytest.MonkeyPatch) -> None:
    base = builtin("brain", matrix=8).to(dtype=torch.float64)
    segmented = []

    def gradients(kept_bytes: int) -> torch.Tensor:
        seq = build(GreProtocol(matrix=16, dummies=40), dtype=torch.float64)  # 56 repetitions: 4 segments
        for rep in seq:
            rep.pulse.angle.requires_grad_(True)
        b1 = base.b1.clone().requires_grad_()
        twin = Twin.from_maps(base.pd, base.t1, base.t2, base.fov, t2dash=base.t2dash, b0=base.b0, b1=b1)
        with monkeypatch.context() as m:
            m.setattr(graph, "propagation_bytes", lambda *_: kept_bytes)
            m.setattr(graph, "checkpoint", lambda *a, **k: segmented.append(1) or checkpoint(*a, **k))
            simulate_graph(seq, twin).abs().square().sum().backward()
        assert b1.grad is not None
        return torch.cat([b1.grad.flatten(), *[rep.pulse.angle.grad.flatten() for rep in seq]])

    kept = gradients(0)  # every step's states kept: no segment is checkpointed
    assert not segmented
    recomputed = gradients(2**62)  # more than any budget: segments of repetitions recomputed in the backward pass
    assert len(segmented) == 4
    assert torch.allclose(recomputed, kept, rtol=1e-10, atol=1e-12 * float(kept.abs().max()))
