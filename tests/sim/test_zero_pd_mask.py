"""Both engines simulate only voxels with PD > 0: skipping the PD = 0 voxels changes neither the signal nor its
gradients w.r.t. the sequence (the reference simulates every voxel: PD = 1e-200 instead of 0), and the maps of
skipped voxels do not matter.

Case: an RF-spoiled inversion-recovery GRE (two inversions of 4 centric lines, spoilers), 8×8, PD only in a
block (or, in a batch, in two different blocks), two coils, float64. The background carries the block's tissue
classes (T1, T2, B1+), so the graph engine's pre-pass sees the same tissues either way.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from mrbridge.sequence.builders import build
from mrbridge.sequence.model import Sequence
from mrbridge.sequence.protocol import IrGreProtocol
from mrbridge.sim.bloch import simulate_bloch
from mrbridge.sim.graph import simulate_graph
from mrbridge.twin.coils import simulated_coils
from mrbridge.twin.twin import Twin

N = 8
#: PD of the "skipped" voxels in the reference that simulates every voxel
TINY = 1e-200


def sequence() -> Sequence:
    p = IrGreProtocol(matrix=N, fov_mm=200, dwell_us=80, te_ms=4, gre_tr_ms=10, flip_angle_deg=15,
                      lines_per_inversion=4, order="centric", ti_ms=50, tr_ms=400, rf_spoiling_deg=117)
    return build(p).to(dtype=torch.float64)


def sparse_twin(corner: int, batch: int = 0) -> Twin:
    """PD (random, > 0) in the 4×4 block at (corner, corner), 0 elsewhere; three tissue classes everywhere."""
    g = torch.Generator().manual_seed(corner + 10 * batch)
    pd = torch.zeros(1, N, N, dtype=torch.float64)
    pd[0, corner:corner + 4, corner:corner + 4] = 0.2 + torch.rand(4, 4, generator=g, dtype=torch.float64)
    cls = torch.randint(0, 3, (1, N, N), generator=g)
    t1 = torch.tensor([0.4, 0.9, 1.6], dtype=torch.float64)[cls]
    t2 = torch.tensor([0.05, 0.08, 0.3], dtype=torch.float64)[cls]
    b1 = torch.tensor([0.9, 1.0, 1.1], dtype=torch.float64)[cls]
    b0 = 40 * torch.rand(1, N, N, generator=g, dtype=torch.float64) - 20
    fov = (0.2, 0.2, 5e-3)
    return Twin.from_maps(pd, t1, t2, fov, b0=b0, b1=b1, coil_sens=simulated_coils((1, N, N), fov, 2))


def unmasked(twin: Twin) -> Twin:
    """The same object with every voxel simulated: PD 1e-200 where it was 0."""
    return replace(twin, pd=torch.where(twin.pd > 0, twin.pd, torch.full_like(twin.pd, TINY)))


def other_background(twin: Twin) -> Twin:
    """The same object with different T1, T2, B0 and coil sensitivity where PD = 0 (in every twin of a batch)."""
    zero = (twin.pd == 0).reshape(-1, *twin.pd.shape[-3:]).all(0)
    return replace(twin, t1=torch.where(zero, 3.0, twin.t1), t2=torch.where(zero, 0.01, twin.t2),
                   b0=torch.where(zero, 55.0, twin.b0), coil_sens=torch.where(zero[None], 0.5j, twin.coil_sens))


def batch(twins: list[Twin]) -> Twin:
    maps = {n: torch.stack([getattr(t, n) for t in twins]) for n in ("pd", "t1", "t2", "t2dash", "b0", "b1")}
    return replace(twins[0], **maps)


def signal_and_gradients(engine: str, twin: Twin) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Signal, and the gradients of a fixed random projection of it w.r.t. every flip angle and every event
    time (the inversion times included)."""
    seq = sequence()
    angles = [r.pulse.angle.clone().requires_grad_(True) for r in seq]
    times = [r.event_time.clone().requires_grad_(True) for r in seq]
    for r, a, t in zip(seq, angles, times, strict=True):
        r.pulse.angle, r.event_time = a, t
    if engine == "bloch":
        signal = simulate_bloch(seq, twin, spins=16)
    else:
        signal = simulate_graph(seq, twin)
    weights = torch.randn(signal.shape, generator=torch.Generator().manual_seed(3), dtype=torch.complex128)
    (signal * weights).real.sum().backward()
    d_angle = torch.stack([a.grad for a in angles])  # type: ignore[misc]
    d_time = torch.cat([t.grad for t in times])  # type: ignore[misc]
    return signal.detach(), d_angle, d_time


def close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert float((a - b).abs().max()) <= 1e-10 * float(b.abs().max())


CASES = [("bloch", False), ("graph", False), ("graph", True)]


@pytest.mark.parametrize(("engine", "batched"), CASES, ids=["bloch", "graph", "graph-batch"])
def test_skipping_zero_pd_voxels_changes_nothing(engine: str, batched: bool) -> None:
    twin = batch([sparse_twin(1), sparse_twin(3, 1)]) if batched else sparse_twin(2)
    assert float((twin.pd == 0).double().mean()) > 0.6
    signal, d_angle, d_time = signal_and_gradients(engine, twin)
    expected = (2, 2, sequence().adc_count) if batched else (2, sequence().adc_count)
    assert signal.shape == expected
    assert float(d_angle.abs().max()) > 0 and float(d_time.abs().max()) > 0
    reference = signal_and_gradients(engine, unmasked(twin))
    for ours, theirs in zip((signal, d_angle, d_time), reference, strict=True):
        close(ours, theirs)
    # the maps of skipped voxels are never read
    other = signal_and_gradients(engine, other_background(twin))
    for ours, theirs in zip((signal, d_angle, d_time), other, strict=True):
        assert torch.equal(ours, theirs)
