"""Isochromat Bloch simulation: the reference simulator.

Every voxel with PD > 0 holds ``spins`` isochromats at deterministic (not random) places:

* sub-voxel offsets (x, y, z) on a product of regular grids (:func:`spin_grid`, :func:`spin_pattern`; z: the
  slice thickness in 2D): an axis the sequence never dephases gets one cell, an axis dephased by at most one
  cycle per voxel (rewound phase encoding) ``FRACTIONAL_SPINS``, spoiled axes the rest. A dephasing of m
  cycles per voxel along an axis of n cells then cancels exactly unless n divides m, so spoiled coherences
  vanish as they should up to order n (a low-discrepancy set that couples the axes, such as a rank-1
  lattice, leaks them at O(1/S) and does not converge for spoiled GRE);
* off-resonance Δf = B0 + tan(π(q − ½)) / (2π T2′) with stratified levels q = (k + ½)/S (dealt to the
  spins in golden-ratio order, so the spins of one cell differ): Lorentzian quantiles of half width
  1/(2πT2′), whose average over spins decays as e^{−|t|/T2′} (T2′ = ∞: no spread).

Physics per repetition (the time model of :mod:`mrbridge.sequence.model`): an instantaneous RF rotation of
angle α·B1+ and phase φ, then free evolution. Between two pulses nothing but the events' durations and moments
acts, so the transverse magnetisation after the events up to e is M+ · exp(−T_e/T2 − i2πΔf·T_e − i2πK_e·r),
with T_e and K_e the cumulative duration and moment since the pulse; Mz relaxes towards PD with T1. Every ADC
sample of a repetition is therefore computed at once from (T_e, K_e) at the ADC events (exact, no stepping):
s_c = Σ_spins (PD/spins)·C_c·M+ · exp(…) · e^{−iφ_adc}, in chunks of samples. Magnetisation is simulated
normalised (M0 = 1) and PD enters as the weight of each voxel's spins, which is exact because the Bloch
equations are linear in M0.

Speed: a readout whose events after the first share one duration and moment (every Cartesian readout) is
computed by powers of the per-spin factor z of one event, s_j = Σ a·e₀·z^j, as matrix products with a
block of powers: no exponential per sample and spin. Its values equal the direct formula (to rounding) and
its first derivatives w.r.t. every single event are exact (see :func:`_uniform_readout`); other readouts use
the direct exponentials.

Memory: √n checkpointing (:func:`torch.utils.checkpoint.checkpoint`): the n repetitions run in segments of
⌊√n⌋, each segment checkpointed and each repetition (and each chunk of samples) checkpointed inside it, so the
backward pass keeps about 2√n states (voxels × spins, complex + real) instead of every event's, at the cost of
recomputing the forward pass twice.

Convergence (``DEFAULT_SPINS``): NRMSE between the signals with S and with 2S spins per voxel, builtin
``brain`` twin (B0, B1, T2′ maps; CSF T2 ≈ 0.5 s) at 32×32, protocols/gre.yaml (100 dummies, 117° RF
spoiling, 2 cycles/voxel x spoiler) and protocols/tse.yaml (``bench/sim_bench.py --convergence --matrix 32``)::

    spins S    gre (S → 2S)   tse (S → 2S)
         64        31.5 %         0.43 %
        128        30.3 %         0.24 %
        256        19.4 %         0.15 %
        512         6.8 %         0.13 %
       1024         2.2 %         0.09 %
       2048         1.3 %            –

TSE converges (< 0.5 %) from 64 spins; the spoiled GRE does not reach 0.5 % within 4096: its spoiled
coherences reach hundreds of cycles per voxel over the dummies, which an isochromat grid resolves only with
that many cells along the spoiler axis. ``DEFAULT_SPINS`` = 1024 (GRE 2 %, TSE 0.1 %); for gradients in
an optimisation loop pass fewer spins (memory and time scale with voxels × spins).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.checkpoint import checkpoint

from mrbridge.sequence.model import Repetition, Sequence
from mrbridge.twin.twin import Twin

#: isochromats per voxel, from the convergence study above
DEFAULT_SPINS = 1024

#: complex elements of one chunk of (samples × spins) phase factors
CHUNK_ELEMENTS = 1 << 22

#: spins along an axis that the sequence dephases by at most one cycle per voxel
FRACTIONAL_SPINS = 4

#: readouts with at least this many samples of repeated events are computed by powers
MIN_POWER_RUN = 4

#: samples per matrix product in a readout computed by powers
POWER_CHUNK = 16


def spin_grid(seq: Sequence, voxel_size: tuple[float, float, float], spins: int) -> tuple[int, int, int]:
    """Spins per axis (x, y, z) of the sub-voxel grid, at most ``spins`` in all.

    An axis the sequence never dephases gets 1; an axis dephased by at most one cycle per voxel (cumulative
    moment × voxel size, e.g. phase encoding that is rewound) gets ``FRACTIONAL_SPINS``; the rest of the
    budget goes to the axes dephased by more (spoilers), shared evenly.
    """
    moments = torch.cat([rep.gradm.detach().to("cpu", torch.float64) for rep in seq.repetitions])
    cycles = (torch.cumsum(moments, dim=0).abs().amax(dim=0) * torch.tensor(voxel_size)).tolist()
    grid = [1 if c == 0 else FRACTIONAL_SPINS if c <= 1 else 0 for c in cycles]
    while math.prod(g for g in grid if g) > spins:  # small budgets: shrink the fractional axes
        grid = [max(1, g // 2) if g > 1 else g for g in grid]
    wide = [d for d in range(3) if grid[d] == 0]
    if wide:
        share = int((spins // math.prod(g for g in grid if g)) ** (1 / len(wide)) + 1e-9)
        for d in wide:
            grid[d] = max(1, share)
    return grid[0], grid[1], grid[2]


def spin_pattern(grid: tuple[int, int, int], spins: int = 1, dtype: torch.dtype = torch.float64,
                 device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Deterministic sub-voxel offsets and Lorentzian quantiles of S isochromats.

    Offsets: the product of regular grids (cell midpoints) along x, y and z (nx·ny·nz cells, each holding
    S/(nx·ny·nz) spins, S = ``spins`` rounded down to a multiple of the cell count, at least one per cell), so
    that a dephasing of m cycles per voxel along one axis cancels exactly over the spins unless m is a multiple
    of that axis's count, and the offsets average to zero. Quantiles: stratified levels (k + ½)/S dealt in
    golden-ratio order (so the spins of one cell get different off-resonances).

    Returns
    -------
    offsets: Tensor   # (S, 3) in units of the voxel size, in (−½, ½), axes (x, y, z)
    quantiles: Tensor # (S,) tan(π(q − ½)): standard Cauchy quantiles, summing to zero
    """
    axes = [(torch.arange(n, dtype=torch.float64) + 0.5) / n - 0.5 for n in grid]
    z, y, x = torch.meshgrid(axes[2], axes[1], axes[0], indexing="ij")
    cells = torch.stack([x, y, z], dim=-1).reshape(-1, 3)
    offsets = cells.repeat(max(1, spins // cells.shape[0]), 1).to(dtype=dtype, device=device)
    count = offsets.shape[0]
    golden = torch.frac(torch.arange(count, dtype=torch.float64) * (math.sqrt(5) - 1) / 2)
    levels = (torch.argsort(torch.argsort(golden)).to(torch.float64) + 0.5) / count
    quantiles = torch.tan(math.pi * (levels - 0.5)).to(dtype=dtype, device=device)
    return offsets, quantiles


def simulate_bloch(seq: Sequence, twin: Twin, *, spins: int = DEFAULT_SPINS) -> torch.Tensor:
    """Noise-free signal of every coil at every ADC sample.

    Runs on the twin's device, in float64 when any sequence tensor or tissue map is float64 (else float32).
    Differentiable w.r.t. every sequence tensor (angle, phase, event_time, gradm, adc_phase) and every twin
    map (pd, t1, t2, t2dash, b0, b1, coil_sens).

    Parameters
    ----------
    seq: the sequence (its tensors are moved to the twin's device)
    twin: the object; only voxels with pd > 0 are simulated
    spins: isochromats per voxel

    Returns
    -------
    Tensor  # (coils, adc_samples) complex64 (complex128 in float64), in acquisition order
    """
    if spins < 1:
        raise ValueError(f"spins = {spins}, expected at least 1")
    device = twin.pd.device
    dtype = torch.float32
    tensors = [twin.pd, twin.t1, twin.t2, twin.t2dash, twin.b0, twin.b1]
    for rep in seq.repetitions:
        tensors += [rep.pulse.angle, rep.event_time, rep.gradm]
    if any(t.dtype == torch.float64 for t in tensors):
        dtype = torch.float64
    cdtype = torch.complex128 if dtype == torch.float64 else torch.complex64

    voxel = twin.voxel_size.tolist()
    grid = spin_grid(seq, (voxel[0], voxel[1], voxel[2]), spins)
    tissue = _Tissue(twin, grid, spins, dtype, cdtype)
    mp = torch.zeros(tissue.spins_shape, dtype=cdtype, device=device)
    mz = torch.ones(tissue.spins_shape, dtype=dtype, device=device)
    params = [tuple(t.to(device=device, dtype=dtype) for t in
                    (rep.pulse.angle, rep.pulse.phase, rep.event_time, rep.gradm, rep.adc_phase))
              for rep in seq.repetitions]
    plans = [_readout_plan(rep) for rep in seq.repetitions]
    # √n checkpointing: segments of ~√n repetitions, each repetition checkpointed inside its segment
    size = max(1, math.isqrt(len(params)))
    signals = []
    for start in range(0, len(params), size):
        mp, mz, sig = _maybe_checkpoint(_segment, tissue, plans[start:start + size], params[start:start + size],
                                        mp, mz)
        signals.append(sig)
    return torch.cat(signals, dim=1)


def _segment(tissue: _Tissue, plans: list[list[tuple[int, int, bool]]], params: list[tuple[torch.Tensor, ...]],
             mp: torch.Tensor, mz: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Consecutive repetitions; returns the final (mp, mz) and their signals (C, adc)."""
    signals = []
    for plan, args in zip(plans, params, strict=True):
        mp, mz, sig = _maybe_checkpoint(_repetition, tissue, plan, mp, mz, *args)
        signals.append(sig)
    return mp, mz, torch.cat(signals, dim=1)


def _readout_plan(rep: Repetition) -> list[tuple[int, int, bool]]:
    """(first event, end event, uniform) of each readout; uniform: at least ``MIN_POWER_RUN`` samples whose
    events after the first share one duration and one moment (exactly)."""
    plan = []
    times, moments = rep.event_time.detach(), rep.gradm.detach()
    for start, end in rep.readout_spans():
        steps_t, steps_k = times[start + 1:end], moments[start + 1:end]
        uniform = end - start >= MIN_POWER_RUN and bool(
            (steps_t == steps_t[0]).all() and (steps_k == steps_k[0]).all())
        plan.append((start, end, uniform))
    return plan


class _Tissue:
    """Per-voxel (V, 1) and per-spin (V, S) quantities of the simulated voxels."""

    def __init__(self, twin: Twin, grid: tuple[int, int, int], spins: int, dtype: torch.dtype,
                 cdtype: torch.dtype) -> None:
        device = twin.pd.device
        mask = (twin.pd > 0).flatten()

        def voxels(m: torch.Tensor) -> torch.Tensor:
            return m.to(dtype=dtype).flatten()[mask][:, None]

        self.t1, self.t2, self.b1 = voxels(twin.t1), voxels(twin.t2), voxels(twin.b1)
        size = twin.voxel_size.to(dtype=dtype, device=device)
        pos = twin.positions().to(dtype=dtype, device=device).reshape(-1, 3)[mask]  # (V, 3) m
        offsets, quantiles = spin_pattern(grid, spins, dtype, device)
        spins = offsets.shape[0]
        self.spins_shape = (int(mask.sum()), spins)
        r = pos[:, None, :] + (offsets * size)[None]  # (V, S, 3) m
        # ω = 2π·Δf (rad/s) per spin: B0 plus the Lorentzian quantile of half width 1/(2πT2')
        omega = 2 * math.pi * voxels(twin.b0) + quantiles[None, :] / voxels(twin.t2dash)  # (V, S)
        # phase accrued by spin s over time t and moment k: −[t, k]·rate[s]
        self.rate = torch.cat([omega[..., None], 2 * math.pi * r], dim=-1).reshape(-1, 4)  # (V·S, 4)
        coil = twin.coil_sens.to(device=device, dtype=cdtype).reshape(twin.coils, -1)[:, mask]
        self.weight = (coil * voxels(twin.pd)[:, 0] / spins)[:, :, None]  # (C, V, 1)
        # d/dt and d/dk of the exponent per spin: (1/T2 + iω) and i2π·r, for exact gradients of fast readouts
        r2 = (1 / self.t2).expand(self.spins_shape).reshape(-1)
        self.rate_t = torch.complex(r2, omega.reshape(-1))  # (V·S,)
        self.r = r.reshape(-1, 3)  # (V·S, 3) m

    def evolve(self, time: torch.Tensor, moment: torch.Tensor) -> torch.Tensor:
        """Transverse factor exp(−t/T2 − i2πΔf·t − i2π k·r) for times (J,) s and moments (J, 3) 1/m.

        Returns: Tensor  # (J, V, S) complex
        """
        decay = torch.exp(-time[:, None, None] / self.t2)  # (J, V, 1)
        angle = -(torch.cat([time[:, None], moment], dim=1) @ self.rate.T).reshape(-1, *self.spins_shape)
        return torch.polar(decay.expand_as(angle), angle)


def _repetition(tissue: _Tissue, plan: list[tuple[int, int, bool]], mp: torch.Tensor, mz: torch.Tensor,
                angle: torch.Tensor, phase: torch.Tensor, event_time: torch.Tensor, gradm: torch.Tensor,
                adc_phase: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One repetition: RF rotation, ADC samples, free evolution to its end.

    mp: (V, S) complex transverse, mz: (V, S) longitudinal (M0 = 1). Returns (mp, mz, signal (C, adc)).
    """
    mp, mz = _rf(mp, mz, angle * tissue.b1, phase)
    coils = tissue.weight.shape[0]
    if event_time.shape[0] == 0:
        return mp, mz, mp.new_zeros((coils, 0))
    time = torch.cumsum(event_time, dim=0)
    moment = torch.cumsum(gradm, dim=0)
    signal = mp.new_zeros((coils, 0))
    if plan:
        a = (tissue.weight * mp).reshape(coils, -1)  # (C, V·S)
        parts = []
        for start, end, uniform in plan:
            if uniform:
                parts.append(_uniform_readout(tissue, a, time, moment, event_time, gradm, start, end))
            else:
                parts.append(_direct_readout(tissue, a, time[start:end], moment[start:end]))
        phases = torch.cat([adc_phase[start:end] for start, end, _ in plan])
        signal = torch.cat(parts, dim=1) * torch.polar(torch.ones_like(phases), -phases)
    mp = mp * tissue.evolve(time[-1:], moment[-1:])[0]
    e1 = torch.exp(-time[-1] / tissue.t1)
    mz = mz * e1 + (1 - e1)
    return mp, mz, signal


def _maybe_checkpoint(fn: Callable[..., Any], *args: Any) -> Any:
    if torch.is_grad_enabled():
        return checkpoint(fn, *args, use_reentrant=False)
    return fn(*args)


def _direct_readout(tissue: _Tissue, a: torch.Tensor, time: torch.Tensor, moment: torch.Tensor) -> torch.Tensor:
    """Σ_spins a·exp(−T_j/T2 − iω T_j − i2π K_j·r) at every sample: a (C, V·S), time (N,), moment (N, 3).

    Returns: Tensor  # (C, N)
    """
    chunk = max(1, CHUNK_ELEMENTS // max(1, a.shape[1]))
    return torch.cat([_maybe_checkpoint(_samples, tissue, a, time[i:i + chunk], moment[i:i + chunk])
                      for i in range(0, time.shape[0], chunk)], dim=1)


def _samples(tissue: _Tissue, a: torch.Tensor, time: torch.Tensor, moment: torch.Tensor) -> torch.Tensor:
    factors = tissue.evolve(time, moment).reshape(time.shape[0], -1)  # (J, V·S)
    return a @ factors.T


def _uniform_readout(tissue: _Tissue, a: torch.Tensor, time: torch.Tensor, moment: torch.Tensor,
                     event_time: torch.Tensor, gradm: torch.Tensor, start: int, end: int) -> torch.Tensor:
    """The samples of a readout whose events after the first repeat: s_j = Σ a·e₀·z^j, j = 0 … N−1.

    e₀ is the exact factor at the first sample, z the factor of one repeated event; z^0 … z^J are computed
    once (J = ``POWER_CHUNK``) and each block of J samples is one matrix product with them, the block's
    base z^(mJ) a running product: no exponential per sample and spin. The cumulative times and moments
    differ from j·step by D_j and ΔK_j, which are exactly zero in value but carry the gradient w.r.t. each
    event: the first-order term
    −D_j·Σ a e₀ z^j (1/T2 + iω) − i2πΔK_j·Σ a e₀ z^j r adds it (exact first derivatives; value unchanged).
    Returns: Tensor  # (C, N)
    """
    coils, n = a.shape[0], end - start
    b = a * tissue.evolve(time[start:start + 1], moment[start:start + 1]).reshape(1, -1)  # (C, V·S)
    step_t, step_k = event_time[start + 1], gradm[start + 1]
    chunk = min(n, POWER_CHUNK, max(1, CHUNK_ELEMENTS // max(1, a.shape[1])))
    j = torch.arange(chunk + 1, dtype=step_t.dtype, device=step_t.device)
    powers = tissue.evolve(j * step_t, j[:, None] * step_k).reshape(chunk + 1, -1)  # z^0 … z^chunk
    track = torch.is_grad_enabled() and (event_time.requires_grad or gradm.requires_grad)
    rows = torch.cat([b, b * tissue.rate_t, *(b * tissue.r[:, d] for d in range(3))]) if track else b
    base = None
    parts = []
    for first in range(0, n, chunk):
        block = rows if base is None else rows * base
        parts.append(block @ powers[:min(chunk, n - first)].T)
        base = powers[chunk] if base is None else base * powers[chunk]
    sums = torch.cat(parts, dim=1)  # (rows, N)
    if not track:
        return sums
    sums = sums.reshape(5, coils, n)
    zero = event_time.new_zeros(1)
    d_t = torch.cumsum(torch.cat([zero, event_time[start + 1:end] - step_t]), dim=0)  # (N,), zero in value
    d_k = torch.cumsum(torch.cat([zero[None].expand(1, 3), gradm[start + 1:end] - step_k]), dim=0)  # (N, 3)
    return sums[0] - d_t * sums[1] - 2j * math.pi * sum(d_k[:, d] * sums[2 + d] for d in range(3))


def _rf(mp: torch.Tensor, mz: torch.Tensor, angle: torch.Tensor,
        phase: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-handed rotation by ``angle`` (V, 1) about (cos φ, sin φ, 0): Mz = 1 → M+ = −i·e^{iφ}·sin α."""
    e = torch.polar(torch.ones_like(phase), phase)
    half = torch.sin(angle / 2) ** 2
    sin, cos = torch.sin(angle), torch.cos(angle)
    new_mp = (1 - half) * mp + half * e * e * mp.conj() - 1j * e * sin * mz
    new_mz = sin * (mp * e.conj()).imag + cos * mz
    return new_mp, new_mz
